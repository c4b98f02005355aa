"""Images: where one lives (:class:`ImageRef`), and how it becomes model input (:func:`prepare_images`).

Training records and benchmark items both hold :class:`ImageRef` s, and both are turned into model input by
:func:`prepare_images`: open as RGB, resize by Ocean-R1's pixel rule (:func:`fit_pixels`), and rescale a box
ground truth with its image.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image


class ImageError(ValueError):
    """An image that cannot be opened; the message names the image's field and where it was looked for."""


@dataclass(frozen=True)
class ImageRef:
    """One image: encoded bytes, or a file path to open (bytes win when both are set).

    ``source`` is the reference as an annotation wrote it, kept for messages when it was resolved to another
    ``path`` (or to none: the image was not found).
    """

    bytes: bytes | None = field(default=None, repr=False)
    path: str | None = None
    source: str | None = None

    @property
    def found(self) -> bool:
        return self.bytes is not None or self.path is not None

    def describe(self) -> str:
        if self.bytes is not None:
            return "bytes"
        return f"path {self.path}" if self.path else f"{self.source} (not found)"

    def open(self) -> Image.Image:
        """The image as RGB; :class:`ImageError` if it is missing or not decodable."""
        if not self.found:
            raise ImageError(f"cannot open {self.describe()}")
        try:
            with Image.open(io.BytesIO(self.bytes) if self.bytes is not None else self.path) as opened:
                return opened.convert("RGB")
        except Exception as error:  # PIL raises many types for bad data; all mean "cannot use it"
            raise ImageError(f"cannot open {self.describe()}: {error}") from error

    def check(self) -> None:
        """Decode the image once, or raise :class:`ImageError`: what training will do to it, at a bounded cost.

        PIL's ``verify`` reads headers (and PNG checksums) only, so a truncated JPEG passed it and failed when
        training sampled it. A JPEG is decoded at 1/8 scale (``draft``): the decoder still reads every byte of the
        scan, so a cut file fails, at about a third of the full decode's time.
        """
        if not self.found:
            raise ImageError(f"cannot open {self.describe()}")
        try:
            with Image.open(io.BytesIO(self.bytes) if self.bytes is not None else self.path) as opened:
                opened.draft("RGB", (max(1, opened.width // 8), max(1, opened.height // 8)))
                opened.load()
        except Exception as error:  # PIL raises many types for bad data; all mean "cannot use it"
            raise ImageError(f"cannot decode {self.describe()}: {error}") from error


def fit_pixels(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Ocean-R1's image size rule: scale by s = sqrt(limit / (w·h)) when w·h leaves [min_pixels, max_pixels].

    Down first (w·h > max_pixels), then up (w·h < min_pixels); the new sides are ⌊s·w⌋, ⌊s·h⌋, so the
    aspect ratio is kept to within a pixel.
    """
    for limit, outside in (
        (max_pixels, width * height > max_pixels),
        (min_pixels, width * height < min_pixels),
    ):
        if outside:
            scale = math.sqrt(limit / (width * height))
            width, height = max(1, int(width * scale)), max(1, int(height * scale))
    return width, height


def parse_box(text: str, allow_object: bool = True) -> list[float]:
    """A box written as JSON: ``[x1, y1, x2, y2]``, or (``allow_object``) ``{"bbox_2d": [x1, y1, x2, y2]}``.

    Raises ``ValueError`` for anything else. Answers and benchmark annotations come in both forms. A training
    record's ``iou`` ground truth must be the bare list (``allow_object=False``), Ocean-R1's format: the ``iou``
    reward reads only a list, and would score every completion 0 against an object. (The reward's own, lenient
    reading of a ground truth is :func:`ocean_lib.rewards.literal_box`.)
    """
    expected = '[x1, y1, x2, y2] or {"bbox_2d": [...]}' if allow_object else "a bare [x1, y1, x2, y2]"
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"not a JSON box: {text!r:.80}") from None
    box = value.get("bbox_2d") if isinstance(value, dict) and allow_object else value
    if not (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
    ):
        raise ValueError(f"expected {expected}, got {text!r:.80}")
    return [float(v) for v in box]


def rescale_box_truth(ground_truth: str, old_size: tuple[int, int], new_size: tuple[int, int]) -> str:
    """The ground truth with its box scaled by (new_w / old_w, new_h / old_h), rounded to whole pixels.

    The JSON form of the input is kept (plain list or ``bbox_2d`` object).
    """
    box = parse_box(ground_truth)
    sx, sy = new_size[0] / old_size[0], new_size[1] / old_size[1]
    scaled = [round(v * s) for v, s in zip(box, (sx, sy, sx, sy), strict=True)]
    value = json.loads(ground_truth)
    return json.dumps({**value, "bbox_2d": scaled} if isinstance(value, dict) else scaled)


def prepare_images(
    refs: Sequence[ImageRef], ground_truth: str, *, box_truth: bool, min_pixels: int, max_pixels: int
) -> tuple[list[Image.Image], str]:
    """The images as model input (RGB, resized by :func:`fit_pixels`, bicubic) and the ground truth in their pixels.

    With ``box_truth`` (``iou`` tasks) the box is rescaled with its image. Ocean-R1's loader resized images
    without touching the boxes, so a resized image there was scored against a box in the original pixels.
    Raises :class:`ImageError` naming ``images[i]`` for an image that cannot be opened.
    """
    images = []
    for i, ref in enumerate(refs):
        try:
            image = ref.open()
        except ImageError as error:
            raise ImageError(f"images[{i}]: {error}") from error
        size = fit_pixels(image.width, image.height, min_pixels, max_pixels)
        if size != image.size:
            if box_truth:
                ground_truth = rescale_box_truth(ground_truth, image.size, size)
            image = image.resize(size, Image.Resampling.BICUBIC)
        images.append(image)
    return images, ground_truth
