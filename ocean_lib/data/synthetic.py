"""Procedural visual tasks for the miniature study: seeded PIL scenes emitted as Ocean-R1 records.

One family per kind of Ocean-R1 training data, each with a text-only twin stating the same problem in words:

- ``counting`` (SuperCLEVR/CLEVR-like): "How many red objects are there?", answer ``3``, ``acc``.
- ``geometry`` (GeoQA-like): line, parallel-line and triangle diagrams, values in the question, answer
  ``140°``, ``acc``.
- ``grounding`` (RefCOCO-like): "the small blue square left of the circle", answer
  ``{"bbox_2d": [x1, y1, x2, y2]}`` in pixels, ``iou``.
- ``spatial`` (CV-Bench-like): relation, depth or distance questions with options ``(A) left\\n(B) right``,
  answer ``(A)``, ``acc``.

and four that are not tasks of Ocean-R1's, dense supervision for a perception stage before the warm-start (answer:
how many objects; not among the default families): ``scene``, every object with its cell in reading order
(:func:`sample_scene`), ``lone``, a scene of one object (:func:`sample_lone`), ``grid``, every one of the 16
cells named, then what it holds (:func:`sample_grid`), and ``locate``, every object of a grounding picture asked
for by name in a random order, each answered by its cell (:func:`sample_locate`).

Every task is sampled from a seed as a scene graph (:class:`ShapeScene` or :class:`Diagram`) plus a structured
``query``; question, answer and a short worked ``reasoning`` are derived from them, and the picture is drawn
from the scene alone, so tests can re-derive every answer from the scene. Difficulty 1 keeps answer spaces
small for a ~5M-parameter model trained from scratch: counts 1-6, angles in steps of 10°, boxes on a 4×4 grid
of cells, two options per question. Levels 2 and 3 add objects, attributes, rotation, finer values and
options.
Objects move a few pixels within their cells (grounding: only at level 3, so its boxes stay on the grid;
grounding and spatial: by at most ``RELATION_JITTER`` of the free space, so rows and columns stay aligned) and
level-1 figures tilt by up to 15°, so pictures rarely repeat even where the small answer spaces make the
questions repeat.

Pictures are ``image_size`` pixels square (112 by default: 8×8 patches of 14 px) on a flat mid-grey near the
Qwen2-VL image processor's mean colour, because most patches are background and a white or black background
gives them a large constant embedding that stopped a tiny vision tower from learning (field notes). Objects
span about 2×2 patches.

Scenes are seeded by ``(seed, family, split, i)``, so train and test draw from disjoint seed streams; a test
scene that happens to equal a training scene is replaced by the next seed (:func:`make_tasks`), so the two
splits never share a scene.
"""

from __future__ import annotations

import functools
import io
import json
import math
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ocean_lib.base.io import atomic_write_bytes, atomic_write_json
from ocean_lib.base.prompts import INSTRUCTIONS, reference_completion, user_text
from ocean_lib.base.schema import RunConfig, SyntheticConfig
from ocean_lib.data.images import ImageRef, parse_box
from ocean_lib.data.records import Record, write_records

FAMILIES = (
    "counting",
    "geometry",
    "grounding",
    "spatial",
    "scene",
    "grid",
    "lone",
    "locate",
)  # order is part of the seed: append only
SPLITS = ("train", "test")
BACKGROUND = (123, 117, 104)  # ≈ the Qwen2-VL image processor's mean colour, which normalises to ~0
INK = (25, 25, 25)
COLOURS = {
    "red": (205, 40, 40),
    "blue": (40, 80, 215),
    "green": (40, 165, 60),
    "yellow": (235, 205, 40),
    "purple": (145, 60, 185),
    "cyan": (40, 195, 205),
}
GRADIENT_AMPLITUDE = 40  # red rises left to right and blue top to bottom by ±40 levels around BACKGROUND
SHAPES = ("circle", "square", "triangle")
GRID = 4  # the picture is a GRID × GRID array of cells; every object sits in its own cell
SIDE_AT_112 = {"large": 24, "small": 14}  # object side in pixels at image_size 112 (cell 28)
MAX_DIFFICULTY = 3
# Where a question is about left/right/above/below, objects move at most this share of their free space, so
# objects of one row (or column) still line up and a relation between cells is plain to see.
RELATION_JITTER = 0.3


# ----------------------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One object of a shape scene; ``box`` = (x1, y1, x2, y2) in pixels, x2 and y2 exclusive."""

    shape: str
    colour: str
    size: str  # "small" or "large"
    material: str  # "matte" or "shiny" (drawn with a highlight)
    row: int
    col: int
    box: tuple[int, int, int, int]

    def name(self, attrs: tuple[str, ...] = ("colour", "shape")) -> str:
        """The object named by some of its attributes, e.g. ``small blue square`` or ``red object``."""
        words = [getattr(self, a) for a in ("size", "colour", "material") if a in attrs]
        return " ".join([*words, self.shape if "shape" in attrs else "object"])

    def where(self) -> str:
        return f"row {self.row + 1}, column {self.col + 1}"


@dataclass(frozen=True)
class ShapeScene:
    """Objects on a uniform background, one per grid cell."""

    size: int
    objects: tuple[Shape, ...]

    def draw(self, background: str = "flat") -> Image.Image:
        """The picture; on ``tiles`` each object's cell takes its ``cells`` colour and the empty cells stay flat."""
        image = canvas(self.size, "flat" if background == "tiles" else background)
        if background == "tiles":
            cells, side = canvas(self.size, "cells"), self.size // GRID
            for obj in self.objects:
                box = (obj.col * side, obj.row * side, (obj.col + 1) * side, (obj.row + 1) * side)
                image.paste(cells.crop(box), box[:2])
        draw = ImageDraw.Draw(image)
        for obj in self.objects:
            x1, y1, x2, y2 = obj.box
            colour = COLOURS[obj.colour]
            outline = tuple(int(c * 0.55) for c in colour)
            corners = (x1, y1, x2 - 1, y2 - 1)
            if obj.shape == "circle":
                draw.ellipse(corners, fill=colour, outline=outline)
            elif obj.shape == "square":
                draw.rectangle(corners, fill=colour, outline=outline)
            else:
                draw.polygon(
                    [(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)], fill=colour, outline=outline
                )
            if obj.material == "shiny":  # a specular spot up-left of centre; the centre keeps the base colour
                side = x2 - x1
                spot = tuple((c + 255) // 2 for c in colour)
                draw.ellipse(
                    (x1 + 0.22 * side, y1 + 0.3 * side, x1 + 0.42 * side, y1 + 0.48 * side), fill=spot
                )
        return image


@dataclass(frozen=True)
class Diagram:
    """A geometry figure: named points (pixels), segments between them, and marked angles.

    ``angles[label] = (from_point, vertex, to_point)``: the marked angle sweeps counter-clockwise (as seen)
    from the ray vertex→from_point to the ray vertex→to_point and is below 180°.
    """

    size: int
    points: dict[str, tuple[float, float]]
    segments: tuple[tuple[str, str], ...]
    labels: tuple[str, ...]  # points whose names are written in the figure
    angles: dict[str, tuple[str, str, str]]

    def draw(self, background: str = "flat") -> Image.Image:
        scale = self.size / 112
        # a diagram's strokes run through every cell: on ``tiles`` every cell is a tile
        image = canvas(self.size, "cells" if background == "tiles" else background)
        draw = ImageDraw.Draw(image)
        font = _font(round(12 * scale))
        radius = 11 * scale
        for label, (start, vertex, end) in self.angles.items():
            vx, vy = self.points[vertex]
            # PIL sweeps clockwise on screen from its start angle: go from the end ray back to the start
            a_from, a_to = (
                _screen_angle(self.points[start], (vx, vy)),
                _screen_angle(self.points[end], (vx, vy)),
            )
            colour = COLOURS["red"] if label == "1" else COLOURS["blue"]
            draw.pieslice((vx - radius, vy - radius, vx + radius, vy + radius), a_to, a_from, fill=colour)
            middle = math.radians(a_to + ((a_from - a_to) % 360) / 2)
            text_at = (vx + 1.75 * radius * math.cos(middle), vy + 1.75 * radius * math.sin(middle))
            draw.text(text_at, label, font=font, fill=INK, anchor="mm")
        for a, b in self.segments:
            draw.line([self.points[a], self.points[b]], fill=INK, width=max(1, round(2 * scale)))
        cx = sum(x for x, _ in self.points.values()) / len(self.points)
        cy = sum(y for _, y in self.points.values()) / len(self.points)
        for name in self.labels:
            x, y = self.points[name]
            d = math.hypot(x - cx, y - cy) or 1.0
            offset = 8 * scale
            draw.text(
                (x + offset * (x - cx) / d, y + offset * (y - cy) / d), name, font=font, fill=INK, anchor="mm"
            )
        return image


def canvas(size: int, background: str) -> Image.Image:
    """An empty picture: ``flat`` mean grey; ``gradient``, the same grey with red rising left to right and
    blue rising top to bottom (:data:`GRADIENT_AMPLITUDE`); or ``cells``, the same ramps in steps, one flat
    colour per grid cell. The ramps' mean is still the processor's mean colour; what they add is where a patch
    lies, written in the patch itself (``cells``: the same in every pixel of a cell's background, so the
    margin around an object carries its cell). ``tiles`` is not a canvas: the scene draws it, knowing where its
    objects are (:meth:`ShapeScene.draw`)."""
    if background == "flat":
        return Image.new("RGB", (size, size), BACKGROUND)
    if background not in ("gradient", "cells"):
        raise ValueError(f"unknown background {background!r} for a canvas; expected flat, gradient or cells")
    if background == "gradient":
        ramp = np.linspace(-GRADIENT_AMPLITUDE, GRADIENT_AMPLITUDE, size)
    else:
        steps = np.linspace(-GRADIENT_AMPLITUDE, GRADIENT_AMPLITUDE, GRID)
        ramp = steps[np.arange(size) * GRID // size]
    pixels = np.empty((size, size, 3))
    pixels[..., 0] = BACKGROUND[0] + ramp[None, :]
    pixels[..., 1] = BACKGROUND[1]
    pixels[..., 2] = BACKGROUND[2] + ramp[:, None]
    return Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB")


def _screen_angle(point: tuple[float, float], vertex: tuple[float, float]) -> float:
    """Direction of vertex→point in PIL's convention: degrees clockwise (on screen) from +x."""
    return math.degrees(math.atan2(point[1] - vertex[1], point[0] - vertex[0])) % 360


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class Task:
    """One generated problem: scene graph, structured query, the picture's question and its text twin."""

    family: str
    difficulty: int
    scene: ShapeScene | Diagram
    query: dict[str, Any]  # what is asked, structured, so tests can re-derive the answer from the scene
    question: str  # refers to the picture
    text_question: str  # the same problem stated in words, no picture
    answer: str
    reasoning: str  # short worked reasoning, the think-text of the supervised warm-start
    reward_func: str

    def image(self, background: str = "flat") -> Image.Image:
        return self.scene.draw(background)

    @property
    def completion(self) -> str:
        return reference_completion(self.reasoning, self.answer)


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces of the shape families
# ----------------------------------------------------------------------------------------------------------------


def _palette(difficulty: int) -> list[str]:
    return list(COLOURS)[: 4 if difficulty == 1 else 6]


def _pick(rng: np.random.Generator, items: list | tuple) -> Any:
    return items[int(rng.integers(len(items)))]


def _cells(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    return [divmod(int(c), GRID) for c in rng.choice(GRID * GRID, size=n, replace=False)]


def _place(
    rng: np.random.Generator, image_size: int, row: int, col: int, side_at_112: int, jitter: float
) -> tuple[int, int, int, int]:
    """The box of a square object of the given side centred in its cell, then moved by up to ``jitter`` times
    the free space around it (0: exactly centred; 1: anywhere inside the cell)."""
    cell, side = image_size // GRID, round(side_at_112 * image_size / 112)
    slack = (cell - side) // 2
    reach = int(slack * jitter)
    dx, dy = (int(rng.integers(-reach, reach + 1)) for _ in range(2)) if reach else (0, 0)
    x1, y1 = col * cell + slack + dx, row * cell + slack + dy
    return (x1, y1, x1 + side, y1 + side)


def _random_shape(
    rng: np.random.Generator,
    difficulty: int,
    image_size: int,
    row: int,
    col: int,
    colours: list[str],
    jitter: float,
    **fixed: str,
) -> Shape:
    """An object in cell (row, col) with random attributes (level 1: large, matte); ``fixed`` overrides."""
    attrs = {
        "shape": _pick(rng, SHAPES),
        "colour": _pick(rng, colours),
        "size": "large" if difficulty == 1 else _pick(rng, ("small", "large")),
        "material": "matte" if difficulty == 1 else _pick(rng, ("matte", "shiny")),
    }
    attrs.update(fixed)
    box = _place(rng, image_size, row, col, SIDE_AT_112[attrs["size"]], jitter)
    return Shape(row=row, col=col, box=box, **attrs)


def _scene_in_words(objects: tuple[Shape, ...], image_size: int, boxes: bool = False) -> str:
    """The text twin's picture: every object with its cell (and box), in reading order."""
    ordered = sorted(objects, key=lambda o: (o.row, o.col))
    where = [f"[{', '.join(map(str, o.box))}]" if boxes else o.where() for o in ordered]
    parts = [
        f"a {o.name(('size', 'colour', 'material', 'shape'))} at {w}"
        for o, w in zip(ordered, where, strict=True)
    ]
    grid = (
        f"a {image_size}x{image_size} picture"
        if boxes
        else f"a picture divided into {GRID} rows and {GRID} columns"
    )
    return f"In {grid} there are: " + "; ".join(parts) + "."


def _matches(obj: Shape, attrs: dict[str, str]) -> bool:
    return all(getattr(obj, key) == value for key, value in attrs.items())


def _left_to_right(objects: list[Shape]) -> list[Shape]:
    """Column by column, top to bottom within a column: an order the cells make unambiguous."""
    return sorted(objects, key=lambda o: (o.col, o.row))


# ----------------------------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------------------------

_COUNT_QUERIES = {
    1: [("colour",)],
    2: [("colour",), ("shape",)],
    3: [("colour",), ("shape",), ("colour", "shape"), ("size",), ("material",)],
}
_COUNT_RANGE = {1: (1, 6), 2: (1, 8), 3: (1, 10)}  # matching objects
_DISTRACTORS = {1: (0, 2), 2: (1, 4), 3: (2, 6)}


def _plural(attrs: dict[str, str]) -> str:
    words = [attrs[a] for a in ("size", "colour", "material") if a in attrs]
    return " ".join([*words, attrs["shape"] + "s" if "shape" in attrs else "objects"])


def sample_counting(rng: np.random.Generator, difficulty: int, image_size: int) -> Task:
    """ "How many red objects are there?" over 1-6 matching objects plus distractors (level 1).

    The picture is needed: the count is drawn uniformly from its range independently of the asked attribute,
    so the question alone says nothing about it. The reasoning lists the matching objects left to right by
    their other attribute and ends with the count.
    """
    asked = _pick(rng, _COUNT_QUERIES[difficulty])
    colours = _palette(difficulty)
    values = {"colour": colours, "shape": SHAPES, "size": ("small", "large"), "material": ("matte", "shiny")}
    query = {a: _pick(rng, values[a]) for a in asked}
    lo, hi = _COUNT_RANGE[difficulty]
    n_match = int(rng.integers(lo, hi + 1))
    d_lo, d_hi = _DISTRACTORS[difficulty]
    n_other = min(int(rng.integers(d_lo, d_hi + 1)), GRID * GRID - n_match)
    objects = []
    for k, (row, col) in enumerate(_cells(rng, n_match + n_other)):
        fixed = dict(query) if k < n_match else {}
        obj = _random_shape(rng, difficulty, image_size, row, col, colours, jitter=1.0, **fixed)
        if k >= n_match and _matches(obj, query):  # a distractor must differ in one asked attribute
            changed = _pick(rng, asked)
            other = _pick(rng, [v for v in values[changed] if v != query[changed]])
            obj = _random_shape(
                rng, difficulty, image_size, row, col, colours, jitter=1.0, **{**_attrs(obj), changed: other}
            )
        objects.append(obj)
    scene = ShapeScene(image_size, tuple(objects))
    question = f"How many {_plural(query)} are there?"
    listed = "shape" if "shape" not in query else ("colour" if "colour" not in query else "size")
    matching = [getattr(o, listed) for o in _left_to_right([o for o in objects if _matches(o, query)])]
    reasoning = f"{_plural(query)} left to right: {', '.join(matching)}. {len(matching)} in total."
    return Task(
        family="counting",
        difficulty=difficulty,
        scene=scene,
        query={"attrs": query},
        question=question,
        text_question=f"{_scene_in_words(scene.objects, image_size)} {question}",
        answer=str(n_match),
        reasoning=reasoning,
        reward_func="acc",
    )


def _attrs(obj: Shape) -> dict[str, str]:
    return {"shape": obj.shape, "colour": obj.colour, "size": obj.size, "material": obj.material}


# ----------------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------------

_ANGLE_STEP = {1: 10, 2: 5, 3: 1}


def _values(rng: np.random.Generator, lo: int, hi: int, step: int) -> int:
    return int(rng.integers(lo // step, hi // step + 1)) * step


def _fit(
    points: dict[str, tuple[float, float]], size: int, rotation_deg: float
) -> dict[str, tuple[float, float]]:
    """Rotate math-convention points (y up), then fit them centred into the picture with a label margin."""
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    turned = {k: (x * c - y * s, x * s + y * c) for k, (x, y) in points.items()}
    xs, ys = [p[0] for p in turned.values()], [p[1] for p in turned.values()]
    margin = 16 * size / 112
    scale = (size - 2 * margin) / max(max(xs) - min(xs), max(ys) - min(ys))
    x0 = margin + (size - 2 * margin - (max(xs) - min(xs)) * scale) / 2
    y0 = margin + (size - 2 * margin - (max(ys) - min(ys)) * scale) / 2
    return {
        k: (x0 + (x - min(xs)) * scale, size - y0 - (y - min(ys)) * scale) for k, (x, y) in turned.items()
    }


def _unit(deg: float) -> tuple[float, float]:
    return math.cos(math.radians(deg)), math.sin(math.radians(deg))


def sample_geometry(rng: np.random.Generator, difficulty: int, image_size: int) -> Task:
    """A GeoQA-like diagram with the given values in the question and one angle asked, e.g. ``40°``.

    Kinds: two crossing lines (angle 2 vertical to angle 1, or next to it on a line), two parallel lines cut
    by a transversal (angle 2 corresponding or alternate to angle 1, or same-side interior), a triangle
    (angle 1 the interior or the exterior angle at C). The question text is the same for both cases of a kind
    and each case has probability 1/2, so only the marked angles in the picture decide between x and
    180 - x (or between 180 - a - b and a + b). Every line is drawn in both cases; only the marks move.
    """
    kind = _pick(rng, ("lines", "parallel", "triangle"))
    step = _ANGLE_STEP[difficulty]
    # level 1 keeps the figure nearly upright; the tilt makes every picture new even where the values repeat
    rotation = float(rng.uniform(-15, 15)) if difficulty == 1 else float(rng.uniform(0, 360))
    equal = bool(rng.integers(2))
    if kind == "lines":
        v = _values(rng, 30, 150, step)
        points = {"A": _unit(180), "B": _unit(0), "C": _unit(v + 180), "D": _unit(v)}
        points["O"] = (0.0, 0.0)
        angles = {"1": ("B", "O", "D"), "2": ("A", "O", "C") if equal else ("D", "O", "A")}
        answer, given = (v, {"1": v}) if equal else (180 - v, {"1": v})
        relation = "vertical" if equal else "adjacent"
        question = f"As shown in the figure, lines AB and CD cross and angle 1 = {v}°. What is angle 2?"
        words = (
            "angle 1 and angle 2 are vertical angles (opposite each other)"
            if equal
            else "angle 2 is next to angle 1, and together they form a straight line"
        )
        text = f"Lines AB and CD cross; {words}. Angle 1 = {v}°. What is angle 2?"
        reasoning = (
            f"Vertical angles are equal: {v}." if equal else f"Angles on a line: 180 - {v} = {180 - v}."
        )
        segments, labels = (("A", "B"), ("C", "D")), ("A", "B", "C", "D")
    elif kind == "parallel":
        v = _values(rng, 30, 150, step)
        phi, height = 180 - v, 0.5  # direction of the transversal; angle 1 at P is 180 - phi = v
        p = (float(rng.uniform(-0.3, 0.3)), height)
        t = 2 * height / math.sin(math.radians(phi))
        ux, uy = _unit(phi)
        q = (p[0] - t * ux, -height)
        left, right = min(p[0], q[0]) - 0.7, max(p[0], q[0]) + 0.7
        points = {
            "P": p, "Q": q,
            "T": (p[0] + 0.45 * ux, height + 0.45 * uy), "T'": (q[0] - 0.45 * ux, -height - 0.45 * uy),
            "a": (left, height), "a'": (right, height), "b": (left, -height), "b'": (right, -height),
        }  # fmt: skip
        relation = ("corresponding" if rng.integers(2) else "alternate") if equal else "same-side"
        second = {
            "corresponding": ("T'", "Q", "b'"),
            "alternate": ("P", "Q", "b"),
            "same-side": ("b'", "Q", "P"),
        }
        angles = {"1": ("Q", "P", "a'"), "2": second[relation]}
        answer, given = (v if equal else 180 - v), {"1": v}
        question = (
            f"As shown in the figure, line a is parallel to line b and angle 1 = {v}°. What is angle 2?"
        )
        words = {
            "corresponding": "angle 1 and angle 2 are corresponding angles",
            "alternate": "angle 1 and angle 2 are alternate interior angles",
            "same-side": "angle 1 and angle 2 are interior angles on the same side of the transversal",
        }[relation]
        text = f"Line a is parallel to line b, and a transversal cuts both; {words}. "
        text += f"Angle 1 = {v}°. What is angle 2?"
        reasoning = (
            f"{relation.capitalize()} angles are equal: {v}."
            if equal
            else f"Same-side interior angles add to 180: 180 - {v} = {180 - v}."
        )
        segments, labels = (("a", "a'"), ("b", "b'"), ("T", "T'")), ("a", "b")
    else:
        while True:
            a, b = _values(rng, 30, 100, step), _values(rng, 30, 100, step)
            if a + b <= 150:
                break
        gamma = 180 - a - b
        side_ab = math.sin(math.radians(gamma)) / math.sin(math.radians(b))  # law of sines, AC = 1
        points = {"A": (0.0, 0.0), "C": (1.0, 0.0), "E": (1.45, 0.0)}
        points["B"] = (side_ab * math.cos(math.radians(a)), side_ab * math.sin(math.radians(a)))
        relation = "interior" if equal else "exterior"
        angles = {"1": ("B", "C", "A") if equal else ("E", "C", "B")}
        answer, given = (gamma if equal else a + b), {"A": a, "B": b}
        question = (
            f"As shown in the figure, in triangle ABC, angle A = {a}° and angle B = {b}°. What is angle 1?"
        )
        words = (
            "angle 1 is the interior angle at C"
            if equal
            else "side AC is extended beyond C, and angle 1 is the exterior angle at C between the extension "
            "and CB"
        )
        text = f"In triangle ABC, angle A = {a}° and angle B = {b}°; {words}. What is angle 1?"
        reasoning = f"180 - {a} - {b} = {gamma}." if equal else f"Exterior angle: {a} + {b} = {a + b}."
        segments, labels = (("A", "B"), ("B", "C"), ("A", "E")), ("A", "B", "C")
    diagram = Diagram(image_size, _fit(points, image_size, rotation), segments, labels, angles)
    return Task(
        family="geometry",
        difficulty=difficulty,
        scene=diagram,
        query={
            "kind": kind,
            "relation": relation,
            "given": given,
            "asked": "1" if kind == "triangle" else "2",
        },
        question=question,
        text_question=text,
        answer=f"{answer}°",
        reasoning=reasoning,
        reward_func="acc",
    )


# ----------------------------------------------------------------------------------------------------------------
# Grounding
# ----------------------------------------------------------------------------------------------------------------

_NAME_FORMS = {
    1: [("shape",), ("colour",), ("colour", "shape")],
    2: [("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape")],
}
_NAME_FORMS[3] = _NAME_FORMS[2]
_OBJECTS = {1: (2, 4), 2: (3, 6), 3: (4, 8)}
RELATIONS = {  # relation word -> does object o stand so with respect to anchor a
    "left of": lambda o, a: o.col < a.col,
    "right of": lambda o, a: o.col > a.col,
    "above": lambda o, a: o.row < a.row,
    "below": lambda o, a: o.row > a.row,
}


def _descriptions(objects: tuple[Shape, ...], t: int, difficulty: int) -> list[dict[str, Any]]:
    """Every expression of the allowed forms that picks out object ``t`` and nothing else.

    Level 3 adds "<name> <relation> the <anchor>", used only where the name alone is ambiguous; the anchor is
    named by its shape, or colour and shape, whichever is unique first.
    """
    target, found = objects[t], []
    for form in _NAME_FORMS[difficulty]:
        attrs = {a: getattr(target, a) for a in form}
        if sum(_matches(o, attrs) for o in objects) == 1:
            found.append({"attrs": attrs, "relation": None, "anchor": None, "anchor_attrs": None})
    if difficulty < 3:
        return found
    anchor_forms = (("shape",), ("colour", "shape"))
    anchors = {}  # object index -> attributes that name it uniquely
    for j, anchor in enumerate(objects):
        for form in anchor_forms:
            attrs = {a: getattr(anchor, a) for a in form}
            if j != t and sum(_matches(o, attrs) for o in objects) == 1:
                anchors[j] = attrs
                break
    for form in anchor_forms:
        attrs = {a: getattr(target, a) for a in form}
        alike = [k for k, o in enumerate(objects) if _matches(o, attrs)]
        if len(alike) == 1:
            continue
        for j, anchor_attrs in anchors.items():
            for word, holds in RELATIONS.items():
                if [k for k in alike if k != j and holds(objects[k], objects[j])] == [t]:
                    found.append(
                        {"attrs": attrs, "relation": word, "anchor": j, "anchor_attrs": anchor_attrs}
                    )
    return found


def _found(name: str, obj: Shape) -> str:
    """The sentence of a trace that has found the object called ``name``: "The red circle: row 1, column 2."
    (grounding's trace, and locate's once per object, so what locate teaches is grounding's form)."""
    return f"The {name}: {obj.where()}."


def sample_grounding(rng: np.random.Generator, difficulty: int, image_size: int) -> Task:
    """A referring expression ("the small blue square left of the circle") answered by the object's pixel box.

    The picture is needed: positions are uniform over the grid cells, so the expression says nothing about
    where the object is. Each scene uses only 2-3 colours and 2-3 shapes so that expressions must
    disambiguate. Level 1 boxes lie on the 4×4 cell grid (8 possible coordinates per axis).
    """
    lo, hi = _OBJECTS[difficulty]
    palette = _palette(difficulty)
    while True:
        colours = [str(c) for c in rng.choice(palette, size=int(rng.integers(2, 4)), replace=False)]
        shapes = [str(s) for s in rng.choice(SHAPES, size=int(rng.integers(2, 4)), replace=False)]
        cells = _cells(rng, int(rng.integers(lo, hi + 1)))
        objects = tuple(
            _random_shape(
                rng,
                difficulty,
                image_size,
                r,
                c,
                colours,
                RELATION_JITTER * (difficulty == 3),
                shape=_pick(rng, shapes),
            )
            for r, c in cells
        )
        candidates = (
            (t, _descriptions(objects, t, difficulty)) for t in map(int, rng.permutation(len(objects)))
        )
        t, options = next(((t, d) for t, d in candidates if d), (-1, []))
        if options:
            break
    plain = [d for d in options if not d["relation"]]
    relational = [d for d in options if d["relation"]]
    # where the target has a relational expression (level 3), use one half of the time
    chosen = _pick(rng, relational if relational and (not plain or rng.integers(2)) else plain)
    target = objects[t]
    name = target.name(tuple(chosen["attrs"]))
    if chosen["relation"]:
        anchor = objects[chosen["anchor"]]
        anchor_name = anchor.name(tuple(chosen["anchor_attrs"]))
        expression = f"the {name} {chosen['relation']} the {anchor_name}"
        reasoning = f"{_found(anchor_name, anchor)} The {name} {chosen['relation']} it: {target.where()}."
    else:
        expression = f"the {name}"
        reasoning = _found(name, target)
    ask = f"Find {expression} and give its bounding box in pixels."
    scene = ShapeScene(image_size, objects)
    return Task(
        family="grounding",
        difficulty=difficulty,
        scene=scene,
        query={**chosen, "target": t, "expression": expression},
        question=ask,
        text_question=f"{_scene_in_words(objects, image_size, boxes=True)} {ask}",
        answer=json.dumps({"bbox_2d": list(target.box)}),
        reasoning=reasoning,
        reward_func="iou",
    )


# ----------------------------------------------------------------------------------------------------------------
# Spatial multiple choice
# ----------------------------------------------------------------------------------------------------------------

_SPATIAL_OBJECTS = {1: (3, 4), 2: (4, 6), 3: (5, 8)}
_DISTANCE_OPTIONS = {1: 2, 2: 3, 3: 4}
LETTERS = "ABCD"


def _options(names: list[str], correct: int) -> tuple[str, str]:
    """CV-Bench's option block ("(A) left\\n(B) right") and the correct letter in parentheses."""
    return "\n".join(f"({LETTERS[i]}) {n}" for i, n in enumerate(names)), f"({LETTERS[correct]})"


def sample_spatial(rng: np.random.Generator, difficulty: int, image_size: int) -> Task:
    """CV-Bench-like multiple choice on a ground plane: 2D relation, depth, or distance.

    Objects nearer the bottom are nearer the camera and drawn larger (side grows with the row), as in a
    photograph of a floor. Each object has a unique colour-shape name. Relation: is X left/right (or
    above/below) of Y; depth: which of two objects is closer to the camera; distance: which candidate is
    closest to X in the picture (the nearest beats the next by at least half a cell). Options are shuffled and
    the objects' cells uniform, so the question alone does not determine the answer.
    """
    lo, hi = _SPATIAL_OBJECTS[difficulty]
    kind = _pick(rng, ("relation", "depth", "distance"))
    cell = image_size / GRID
    while True:
        pairs = [(c, s) for c in _palette(difficulty) for s in SHAPES]
        chosen = [
            pairs[int(i)] for i in rng.choice(len(pairs), size=int(rng.integers(lo, hi + 1)), replace=False)
        ]
        objects = []
        for (colour, shape), (row, col) in zip(chosen, _cells(rng, len(chosen)), strict=True):
            material = "matte" if difficulty == 1 else _pick(rng, ("matte", "shiny"))
            box = _place(rng, image_size, row, col, 14 + 4 * row, jitter=RELATION_JITTER)
            objects.append(Shape(shape, colour, "large" if row >= 2 else "small", material, row, col, box))
        i, j = (int(k) for k in rng.choice(len(objects), size=2, replace=False))
        x, y = objects[i], objects[j]
        if kind == "relation":
            if difficulty == 1:  # two options on one axis where they differ
                axes = [a for a, d in (("col", x.col - y.col), ("row", x.row - y.row)) if d]
                axis = _pick(rng, axes)
                words = ["left", "right"] if axis == "col" else ["above", "below"]
                true_word = words[int(getattr(x, axis) > getattr(y, axis))]
            elif (x.row == y.row) != (x.col == y.col):  # four options: only one may be true
                words = ["left", "right", "above", "below"]
                true_word = words[int(x.col > y.col)] if x.row == y.row else words[2 + int(x.row > y.row)]
            else:
                continue
            order = [words[int(k)] for k in rng.permutation(len(words))]
            block, letter = _options(order, order.index(true_word))
            question = f"Where is the {x.name()} located with respect to the {y.name()}?\n{block}"
            axis_word = "column" if true_word in ("left", "right") else "row"
            where_x, where_y = (x.col, y.col) if axis_word == "column" else (x.row, y.row)
            reasoning = (
                f"The {x.name()} is in {axis_word} {where_x + 1}, "
                f"the {y.name()} in {axis_word} {where_y + 1}, so {true_word}."
            )
            query = {"kind": kind, "subject": i, "reference": j, "options": order}
        elif kind == "depth":
            if x.row == y.row:
                continue
            closer = x if x.row > y.row else y
            names = [x.name(), y.name()]
            block, letter = _options(names, names.index(closer.name()))
            question = f"Which object is closer to the camera, the {x.name()} or the {y.name()}?\n{block}"
            reasoning = (
                f"The {x.name()} is in row {x.row + 1}, the {y.name()} in row {y.row + 1}; "
                f"lower is closer: {closer.name()}."
            )
            query = {"kind": kind, "subject": i, "reference": j, "options": names}
        else:
            others = [k for k in range(len(objects)) if k != i]
            k = _DISTANCE_OPTIONS[difficulty]
            if len(others) < k:
                continue
            candidates = [others[int(c)] for c in rng.choice(len(others), size=k, replace=False)]
            dist = {c: _centre_distance(objects[i], objects[c]) / cell for c in candidates}
            ranked = sorted(dist.values())
            if ranked[1] - ranked[0] < 0.5:
                continue
            nearest = min(candidates, key=dist.__getitem__)
            names = [objects[c].name() for c in candidates]
            block, letter = _options(names, candidates.index(nearest))
            question = f"Which object is closest to the {x.name()}?\n{block}"
            spans = ", ".join(f"{objects[c].name()} {dist[c]:.1f}" for c in candidates)
            reasoning = f"Distances in cells: {spans}; closest: {objects[nearest].name()}."
            query = {"kind": kind, "subject": i, "candidates": candidates}
        break
    scene = ShapeScene(image_size, tuple(objects))
    intro = _scene_in_words(scene.objects, image_size) + " Lower rows are closer to the camera."
    return Task(
        family="spatial",
        difficulty=difficulty,
        scene=scene,
        query=query,
        question=question,
        text_question=f"{intro} {question}",
        answer=letter,
        reasoning=reasoning,
        reward_func="acc",
    )


def _centre_distance(a: Shape, b: Shape) -> float:
    return math.dist(
        ((a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2),
        ((b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2),
    )


# ----------------------------------------------------------------------------------------------------------------
# Scene descriptions: the perception pre-training of the miniature
# ----------------------------------------------------------------------------------------------------------------

_SCENE_OBJECTS = {1: (1, 6), 2: (1, 8), 3: (1, 10)}


def _on_floor(rng: np.random.Generator, obj: Shape, image_size: int) -> Shape:
    """``obj`` as sample_spatial draws its objects on a floor: nearer (lower) rows larger, a little jitter."""
    box = _place(rng, image_size, obj.row, obj.col, 14 + 4 * obj.row, RELATION_JITTER)
    return replace(obj, size="large" if obj.row >= 2 else "small", box=box)


def _scene_to_describe(
    rng: np.random.Generator, difficulty: int, image_size: int, objects_range: tuple[int, int] | None = None
) -> tuple[ShapeScene, bool]:
    """A picture for a perception family and whether it is a floor: half the time a flat scene as counting and
    grounding draw theirs (one size, anywhere in the cell), half the time a floor as spatial draws its (nearer
    rows larger), with the level's attributes and ``objects_range`` objects (default: the level's); objects in
    reading order."""
    lo, hi = objects_range or _SCENE_OBJECTS[difficulty]
    colours = _palette(difficulty)
    floor = bool(rng.integers(2))
    objects = []
    for row, col in sorted(_cells(rng, int(rng.integers(lo, hi + 1)))):
        obj = _random_shape(rng, difficulty, image_size, row, col, colours, jitter=1.0)
        if floor:
            obj = _on_floor(rng, obj, image_size)
        objects.append(obj)
    return ShapeScene(image_size, tuple(objects)), floor


SCENE_QUESTION = "Name every object with its cell, in reading order. How many objects are there?"


def _describe_in_reading_order(scene: ShapeScene) -> str:
    return " ".join(f"{o.name()}: {o.where()}." for o in scene.objects)


def sample_scene(rng: np.random.Generator, difficulty: int, image_size: int) -> Task:
    """Every object of a picture with its cell, in reading order ("red circle: row 1, column 2. ..."), then
    how many there are.

    Not one of Ocean-R1's tasks: the dense supervision per picture that Qwen2.5-VL's pre-training on grounding
    data gave the real model before its Instruct tuning, and that one answer per picture does not. A task
    family's single answer never says where the other objects are; a description says where each one is.
    """
    return _described_scene("scene", SCENE_QUESTION, _describe_in_reading_order, rng, difficulty, image_size)


def sample_lone(rng: np.random.Generator, difficulty: int, image_size: int) -> Task:
    """A ``scene`` of one object: the same question and description ("red circle: row 1, column 2."), answer 1.

    Not one of Ocean-R1's tasks: the first rung of a curriculum from few objects to many. With one object there
    is nothing to select, so the model can learn to read an object's shape and cell from its own image token
    before it must tell that object from others (docs/miniature_results.md, issue 21: a 4.5 M model learned a
    lone object's shape, row and column in 300 steps where several objects taught it nothing).
    """
    return _described_scene(
        "lone", SCENE_QUESTION, _describe_in_reading_order, rng, difficulty, image_size, objects_range=(1, 1)
    )


LOCATE_INSTRUCTION = "Give each one's cell."


def sample_locate(rng: np.random.Generator, difficulty: int, image_size: int) -> Task:
    """Where each object of a grounding picture is, the objects named in the question in a random order ("Where
    are the red square and the blue circle? Give each one's cell." -> "The red square: row 3, column 1. The blue
    circle: row 1, column 2."), then how many there are.

    Not one of Ocean-R1's tasks: grounding's selection, densely. A grounding record asks for one object of a
    picture; here every object is asked for by its colour and shape (pairs distinct within the picture), in an
    order that says nothing about where it is, so each cell of the trace is a lookup of the named object among
    the others (docs/miniature_results.md, issue 21: reading a lone object's cell did not teach the lookup, and
    one answer per picture taught it too slowly). The pictures are drawn as grounding draws its own (the level's
    number of objects, one size, centred at level 1): with half of them drawn as spatial's floors instead, one
    warm-start did not learn the lookup where the flat pictures alone taught it (issue 21, seventh session).
    """
    lo, hi = _OBJECTS[difficulty]
    palette = _palette(difficulty)
    pairs = [(colour, shape) for colour in palette for shape in SHAPES]
    n = int(rng.integers(lo, hi + 1))
    chosen = [pairs[int(i)] for i in rng.choice(len(pairs), size=n, replace=False)]
    objects = tuple(
        _random_shape(
            rng,
            difficulty,
            image_size,
            row,
            col,
            palette,
            RELATION_JITTER * (difficulty == 3),
            colour=colour,
            shape=shape,
        )
        for (colour, shape), (row, col) in zip(chosen, _cells(rng, n), strict=True)
    )
    order = [int(i) for i in rng.permutation(n)]
    asked = [objects[i] for i in order]
    names = [f"the {o.name()}" for o in asked]
    question = f"Where are {', '.join(names[:-1])} and {names[-1]}? {LOCATE_INSTRUCTION}"
    scene = ShapeScene(image_size, objects)
    return Task(
        family="locate",
        difficulty=difficulty,
        scene=scene,
        query={"asked": order},
        question=question,
        text_question=f"{_scene_in_words(objects, image_size)} {question}",
        answer=str(n),
        reasoning=" ".join(_found(o.name(), o) for o in asked),
        reward_func="acc",
    )


def sample_grid(rng: np.random.Generator, difficulty: int, image_size: int) -> Task:
    """Every cell of the grid in reading order, each named before what it holds ("row 1, column 1: empty.
    row 1, column 2: red circle. ..."), then how many objects there are.

    Not one of Ocean-R1's tasks: a denser perception signal than ``scene``. There the order of the objects
    already says much of where each is, and a model that cannot yet find an object learns the order, not the
    cells (docs/miniature_results.md, issue 21). Here every one of the 16 answers follows its cell's name, so
    each asks the model to look up one image token by position: sixteen pointer targets per picture.
    """

    def every_cell(scene: ShapeScene) -> str:
        held = {(o.row, o.col): o.name() for o in scene.objects}
        cells = [(row, col) for row in range(GRID) for col in range(GRID)]
        return " ".join(f"row {r + 1}, column {c + 1}: {held.get((r, c), 'empty')}." for r, c in cells)

    return _described_scene(
        "grid",
        "Say what each cell holds, in reading order. How many objects are there?",
        every_cell,
        rng,
        difficulty,
        image_size,
    )


def _described_scene(
    family: str,
    question: str,
    describe: Callable[[ShapeScene], str],
    rng: np.random.Generator,
    difficulty: int,
    image_size: int,
    objects_range: tuple[int, int] | None = None,
) -> Task:
    """A picture drawn as the description families draw theirs, its description (``describe``) as the
    reasoning, answered by how many objects it holds."""
    scene, floor = _scene_to_describe(rng, difficulty, image_size, objects_range)
    return Task(
        family=family,
        difficulty=difficulty,
        scene=scene,
        query={"floor": floor},
        question=question,
        text_question=f"{_scene_in_words(scene.objects, image_size)} {question}",
        answer=str(len(scene.objects)),
        reasoning=describe(scene),
        reward_func="acc",
    )


# ----------------------------------------------------------------------------------------------------------------
# Reflective traces: a behaviour for RL to amplify or suppress
# ----------------------------------------------------------------------------------------------------------------

REFLECTION_STYLES = ("check", "revise")


def _shifted(value: int, lo: int, hi: int, step: int, rng: np.random.Generator) -> int:
    """``value`` moved one ``step`` up or down, staying inside [lo, hi]."""
    moves = [m for m in (-step, step) if lo <= value + m <= hi]
    return value + _pick(rng, moves)


def _answer_in_words(task: Task, rng: np.random.Generator, wrong: bool) -> str:
    """The task's answer as its reasoning states it, or (``wrong``) a plausible wrong first value: a count or
    an angle one step off, the neighbouring cell, another option."""
    if task.answer.isdigit():  # a count: counting and the description families
        n = int(task.answer)
        return str(_shifted(n, 1, GRID * GRID, 1, rng) if wrong else n)
    if task.family == "geometry":
        value = int(task.answer.removesuffix("°"))
        return f"{_shifted(value, 1, 179, _ANGLE_STEP[task.difficulty], rng) if wrong else value}°"
    if task.family == "grounding":
        target = task.scene.objects[task.query["target"]]
        row, col = target.row, target.col
        if wrong:
            if rng.integers(2):
                row = _shifted(row, 0, GRID - 1, 1, rng)
            else:
                col = _shifted(col, 0, GRID - 1, 1, rng)
        return f"row {row + 1}, column {col + 1}"
    n_options = len(task.query.get("options") or task.query["candidates"])
    letters = [f"({letter})" for letter in LETTERS[:n_options]]
    return _pick(rng, [x for x in letters if x != task.answer]) if wrong else task.answer


def reflective(task: Task, style: str, rng: np.random.Generator) -> Task:
    """The task with a reasoning that checks its result (``check``: "... Let me double-check: 3.") or states a
    wrong first value and corrects it (``revise``: "At first 4. Wait, that's wrong. ..."). The answer is
    unchanged and both wordings are in :data:`ocean_lib.study.analysis.REFLECTION_LEXICON`."""
    if style == "check":
        reasoning = f"{task.reasoning} Let me double-check: {_answer_in_words(task, rng, wrong=False)}."
    elif style == "revise":
        reasoning = (
            f"At first {_answer_in_words(task, rng, wrong=True)}. Wait, that's wrong. {task.reasoning}"
        )
    else:
        raise ValueError(f"unknown reflection style {style!r}; expected one of {REFLECTION_STYLES}")
    return replace(task, reasoning=reasoning)


def with_reflections(tasks: list[Task], family: str, cfg: SyntheticConfig) -> list[Task]:
    """``cfg.reflective`` of the tasks (seeded draw per item, styles alternating at random) made reflective."""
    rng = np.random.default_rng((cfg.seed, FAMILIES.index(family), len(SPLITS)))  # a stream of its own
    chosen = rng.random(len(tasks)) < cfg.reflective
    styles = rng.integers(len(REFLECTION_STYLES), size=len(tasks))
    return [
        reflective(task, REFLECTION_STYLES[style], rng) if pick else task
        for task, pick, style in zip(tasks, chosen, styles, strict=True)
    ]


# ----------------------------------------------------------------------------------------------------------------
# Tasks, records, files
# ----------------------------------------------------------------------------------------------------------------

SAMPLERS: dict[str, Callable[[np.random.Generator, int, int], Task]] = {
    "counting": sample_counting,
    "geometry": sample_geometry,
    "grounding": sample_grounding,
    "spatial": sample_spatial,
    "scene": sample_scene,
    "grid": sample_grid,
    "lone": sample_lone,
    "locate": sample_locate,
}


def _check(family: str, difficulty: int) -> None:
    if family not in SAMPLERS:
        raise ValueError(f"unknown synthetic family {family!r}; expected one of {list(SAMPLERS)}")
    if not 1 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty {difficulty} must be between 1 and {MAX_DIFFICULTY}")


def sample_task(family: str, seed: int | tuple[int, ...], difficulty: int = 1, image_size: int = 112) -> Task:
    """The task of one seed (an int or a tuple of ints, as numpy's SeedSequence takes), deterministically."""
    _check(family, difficulty)
    return SAMPLERS[family](np.random.default_rng(seed), difficulty, image_size)


def task_seed(base_seed: int, family: str, split: str, i: int) -> tuple[int, int, int, int]:
    """The seed of item ``i`` of a split: splits and families draw from disjoint SeedSequence streams."""
    return (base_seed, FAMILIES.index(family), SPLITS.index(split), i)


def make_tasks(family: str, cfg: SyntheticConfig) -> dict[str, list[Task]]:
    """``train_records(family)`` training and ``n_test`` test tasks of one family; no test scene equals a
    training scene.

    A test seed whose scene also occurs in training (possible where scenes are few, e.g. one object) is
    skipped and the next seed is used, so the test split is deterministic and disjoint. Raises ValueError if
    the family's scene space at this difficulty is too small to find ``n_test`` new scenes.
    """
    _check(family, cfg.difficulty)
    train = [
        sample_task(family, task_seed(cfg.seed, family, "train", i), cfg.difficulty, cfg.image_size)
        for i in range(cfg.train_records(family))
    ]
    seen = {repr(task.scene) for task in train}
    test: list[Task] = []
    i = 0
    while len(test) < cfg.n_test:
        if i > 10 * cfg.n_test + 1000:
            raise ValueError(
                f"{family}: only {len(test)} of {i} test scenes at difficulty {cfg.difficulty} differ from "
                f"the {len(train)} training scenes; lower data.synthetic.n_train or n_test"
            )
        task = sample_task(family, task_seed(cfg.seed, family, "test", i), cfg.difficulty, cfg.image_size)
        if repr(task.scene) not in seen:
            test.append(task)
        i += 1
    return {"train": train, "test": test}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def task_record(task: Task, index: int, text_only: bool = False, background: str = "flat") -> Record:
    """The task as a record: its picture (on ``background``) embedded as PNG bytes, or (``text_only``) its
    twin without one."""
    return Record.from_question(
        data_source=f"synthetic_{task.family}" + ("_text" if text_only else ""),
        question=task.text_question if text_only else task.question,
        answer=task.answer,
        reward_func=task.reward_func,
        index=index,
        images=[] if text_only else [ImageRef(bytes=png_bytes(task.image(background)))],
        ability=task.family,
        reasoning=task.reasoning,
        # Ocean-R1's iou truth is a bare [x1, y1, x2, y2]; the completion answers with {"bbox_2d": [...]}.
        ground_truth=json.dumps([int(v) for v in parse_box(task.answer)])
        if task.reward_func == "iou"
        else None,
    )


def build(cfg: RunConfig) -> dict[str, Any]:
    """Write the miniature study's data under ``cfg.data.synthetic.output_dir`` and say what was written.

    Layout (one parquet file per family, so a split directory is itself a valid ``data.train_files`` entry)::

        <output_dir>/train/<family>.parquet        picture records
        <output_dir>/test/<family>.parquet
        <output_dir>/train_text/<family>.parquet   text-only twins (if synthetic.text_only)
        <output_dir>/test_text/<family>.parquet
        <output_dir>/preview.png                   four training examples per family, question and answer
        <output_dir>/manifest.json                 the synthetic config and what is returned here

    Parquet files in those four directories that this build did not write (a family since dropped) are
    removed, so reading a split directory never mixes builds. Returns ``{"files": {split: {family: path}},
    "counts": {split: {family: n}}, "preview": path, "manifest": path}``.
    """
    syn = cfg.data.synthetic
    out = Path(syn.output_dir)
    splits = [*SPLITS, *(f"{s}_text" for s in SPLITS)] if syn.text_only else list(SPLITS)
    files: dict[str, dict[str, str]] = {split: {} for split in splits}
    counts: dict[str, dict[str, int]] = {split: {} for split in splits}
    examples = {}
    for family in syn.families:
        tasks = make_tasks(family, syn)
        tasks["train"] = with_reflections(tasks["train"], family, syn)
        examples[family] = tasks["train"][:4]
        for split in splits:
            text_only = split.endswith("_text")
            records = [
                task_record(t, i, text_only, syn.background)
                for i, t in enumerate(tasks[split.removesuffix("_text")])
            ]
            path = write_records(records, out / split / f"{family}.parquet")
            files[split][family], counts[split][family] = str(path), len(records)
    for split in (*SPLITS, *(f"{s}_text" for s in SPLITS)):
        for stale in (out / split).glob("*.parquet"):
            if str(stale) not in files.get(split, {}).values():
                stale.unlink()
    preview = out / "preview.png"
    atomic_write_bytes(preview, png_bytes(preview_grid(examples, background=syn.background)))
    result = {
        "files": files,
        "counts": counts,
        "preview": str(preview),
        "manifest": str(out / "manifest.json"),
    }
    atomic_write_json(out / "manifest.json", {"synthetic": asdict(syn), **result})
    return result


def preview_grid(examples: dict[str, list[Task]], tile: int = 224, background: str = "flat") -> Image.Image:
    """One row per family: each picture enlarged to ``tile`` pixels with its question and answer beneath."""
    text_height, font = 120, _font(11)
    columns = max(len(tasks) for tasks in examples.values())
    sheet = Image.new("RGB", (columns * tile, len(examples) * (tile + text_height)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (family, tasks) in enumerate(examples.items()):
        for c, task in enumerate(tasks):
            x, y = c * tile, r * (tile + text_height)
            sheet.paste(task.image(background).resize((tile, tile), Image.Resampling.NEAREST), (x, y))
            lines = [f"[{family}]"]
            for part in task.question.split("\n"):
                lines += textwrap.wrap(part, width=40)
            lines = [*lines[:7], f"answer: {task.answer}"]
            draw.multiline_text((x + 4, y + tile + 3), "\n".join(lines), font=font, fill=(0, 0, 0), spacing=2)
    return sheet


def corpus(cfg: RunConfig, per_level: int = 300) -> Iterator[str]:
    """Text for the tiny model's BPE tokenizer: every instruction, then per task of every configured family
    and every difficulty level: the user text (question + instruction), its text twin, and the completion.

    ``per_level`` tasks per family and level, from the training seeds; no pictures are drawn.
    """
    syn = cfg.data.synthetic
    rng = np.random.default_rng(syn.seed)
    yield from INSTRUCTIONS.values()
    for family in syn.families:
        for difficulty in range(1, MAX_DIFFICULTY + 1):
            for i in range(min(per_level, syn.train_records(family))):
                task = sample_task(
                    family, task_seed(syn.seed, family, "train", i), difficulty, syn.image_size
                )
                # markers are not text the model reads (the chat template swaps them for image tokens)
                yield user_text(task.question, task.reward_func, n_images=0)
                yield user_text(task.text_question, task.reward_func, n_images=0)
                yield task.completion
                if syn.reflective:
                    yield from (reflective(task, style, rng).completion for style in REFLECTION_STYLES)
