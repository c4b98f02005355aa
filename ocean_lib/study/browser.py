"""The rollout browser of the aha-moment notebook: an ipywidgets view over runs' ``rollouts.jsonl``.

The logic lives in pure functions, :func:`filter_rollouts`, :func:`render_rollout_html` and
:func:`rollout_table_html`, which the tests call directly; :class:`RolloutBrowser` only wires widgets to them.
Grounding rollouts (``reward_func: iou``) show the ground-truth box and the answered box drawn on the image.
Completions are untrusted model output: every piece of text is passed through ``html.escape`` before any markup
of ours is put around it, so a completion holding ``<script>`` shows as text.

Displayed, the browser carries a static HTML view beside the widget (:meth:`RolloutBrowser._repr_mimebundle_`):
JupyterLab shows the widget, and a page without a kernel (the study's report.html) shows a table of sample
rollouts instead of the widget's text.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw

from ocean_lib.base.config import load_config
from ocean_lib.base.run_dir import ROLLOUT_THUMBNAIL_SIDE, RunDir
from ocean_lib.data.images import fit_pixels
from ocean_lib.rewards import first_int_box, literal_box
from ocean_lib.study.analysis import MAX_SCAN_CHARS, find_reflections, load_rollouts, split_completion

IMAGE_MAX_SIDE = 384  # pixels; larger images are shown scaled down
IMAGE_MIN_WIDTH = 224  # CSS pixels; the miniature's 112 px images are shown enlarged (pixelated, not blurred)
MARK_STYLE = "background: #ffe08a; border-radius: 2px"
TRUTH_COLOUR, ANSWER_COLOUR = (0, 170, 70), (230, 30, 30)  # ground-truth box green, answered box red
BOX_LEGEND = (
    "<div style='font-size: 11px'><span style='color: rgb(0,170,70)'>&#9632;</span> ground truth "
    "<span style='color: rgb(230,30,30)'>&#9632;</span> answer</div>"
)

Box = Sequence[float]


def filter_rollouts(
    rollouts: pd.DataFrame,
    steps: tuple[int, int] | None = None,
    data_source: str | None = None,
    reward: tuple[float, float] | None = None,
    length: tuple[int, int] | None = None,
    reflective_only: bool = False,
) -> pd.DataFrame:
    """The rollouts that pass every given filter, in their original order.

    ``steps``, ``reward`` (on ``reward/overall``) and ``length`` (tokens) are inclusive ranges; ``data_source``
    None keeps every task; ``reflective_only`` keeps completions with at least one match of the reflection
    lexicon (:func:`ocean_lib.study.analysis.find_reflections`).
    """
    keep = pd.Series(True, index=rollouts.index)
    for column, bounds in (("step", steps), ("reward/overall", reward), ("length", length)):
        if bounds is not None:
            keep &= rollouts[column].between(bounds[0], bounds[1])
    if data_source is not None:
        keep &= rollouts["data_source"] == data_source
    kept = rollouts[keep]
    if reflective_only:
        kept = kept[kept["completion"].map(lambda text: bool(find_reflections(text)))]
    return kept


def highlight_reflections(text: str) -> str:
    """``text`` as HTML with each reflective phrase in a ``<mark>`` titled with its lexicon name.

    The text is escaped piece by piece around the matches (found on the raw text), so no character of it can
    become markup. Of overlapping matches the first (longest at equal start) is marked. Text beyond
    :data:`~ocean_lib.study.analysis.MAX_SCAN_CHARS` is cut, with a note of how much.
    """
    shown, cut = text[:MAX_SCAN_CHARS], len(text) - MAX_SCAN_CHARS
    parts, cursor = [], 0
    for name, start, end in find_reflections(shown):
        if start < cursor:
            continue
        parts.append(html.escape(shown[cursor:start]))
        marked = html.escape(shown[start:end])
        parts.append(
            f'<mark class="reflection" title="{html.escape(name)}" style="{MARK_STYLE}">{marked}</mark>'
        )
        cursor = end
    parts.append(html.escape(shown[cursor:]))
    if cut > 0:
        parts.append(f"<i> … ({cut} more characters not shown)</i>")
    return "".join(parts)


def grounding_boxes(row: Mapping[str, Any]) -> tuple[list[float] | None, list[float] | None]:
    """(ground-truth box, answered box) of a grounding rollout, in the model input's pixels; None where a box
    cannot be read (and both None for other tasks). The answer is the span the reward compared
    (``reward/answer_extracted``), else the completion's answer; its first ``[int, int, int, int]`` is the box,
    as the ``iou`` reward reads it."""
    if row.get("reward_func") != "iou":
        return None, None
    truth = literal_box(str(row.get("ground_truth") or ""))
    answer = row.get("reward/answer_extracted")
    if not isinstance(answer, str):
        answer = split_completion(str(row.get("completion") or ""))[1]
    return truth, first_int_box(answer)


def _draw_boxes(
    image: Image.Image, boxes: Sequence[tuple[Box, tuple[int, int, int]]], scale: tuple[float, float]
):
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 100))
    for box, colour in boxes:
        x1, y1, x2, y2 = (v * s for v, s in zip(box[:4], (*scale, *scale), strict=True))
        draw.rectangle((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), outline=colour, width=width)


def image_html(
    path: Any,
    image_root: str | Path | None = None,
    truth: Box | None = None,
    answer: Box | None = None,
    pixels: tuple[int, int] | None = None,
) -> str:
    """The image as an inline ``<img>`` (PNG, data URI), or a note saying why there is none.

    A relative ``path`` is looked for under ``image_root`` (the run directory, where the trainer saves thumbnails
    of embedded images), then against the working directory, as the trainer opened a record's relative image
    path (Ocean-R1's ``image_paths``). ``truth`` and ``answer`` boxes (model-input pixels) are drawn on it, green
    and red; ``pixels`` = (min_pixels, max_pixels) of the run says how the file was resized for the model (none:
    it was not). A thumbnail the trainer saved smaller than the model saw cannot be mapped back: no boxes then.
    """
    if not isinstance(path, str) or not path:  # None, or NaN from a column pandas filled
        return "<i>text-only prompt (no image)</i>"
    resolved, thumbnail = Path(path), False
    if image_root is not None and not resolved.is_absolute() and (Path(image_root) / resolved).is_file():
        resolved, thumbnail = Path(image_root) / resolved, True
    if not resolved.is_file():
        tried = (
            f"{Path(image_root) / path} or "
            if image_root is not None and not Path(path).is_absolute()
            else ""
        )
        return f"<i>image not found: {html.escape(tried + str(resolved.absolute()))}</i>"
    try:
        with Image.open(resolved) as opened:
            image = opened.convert("RGB")
    except Exception as error:  # PIL raises many types for bad data; all mean "cannot show it"
        return f"<i>image not readable: {html.escape(str(resolved))}: {html.escape(str(error))}</i>"
    boxes = [(box, colour) for box, colour in ((truth, TRUTH_COLOUR), (answer, ANSWER_COLOUR)) if box]
    note = ""
    if boxes and thumbnail and max(image.size) >= ROLLOUT_THUMBNAIL_SIDE:
        boxes, note = (
            [],
            "<div style='font-size: 11px'><i>boxes not drawn: the image was saved reduced</i></div>",
        )
    model = fit_pixels(*image.size, *pixels) if pixels else image.size
    image.thumbnail((IMAGE_MAX_SIDE, IMAGE_MAX_SIDE))
    width = max(IMAGE_MIN_WIDTH, image.width)  # shown at this CSS width, boxes or not
    if boxes:
        # Small images are drawn on enlarged, so that the box edges stay thin lines when shown enlarged.
        zoom = max(1, math.ceil(2 * IMAGE_MIN_WIDTH / image.width))
        image = image.resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST)
        _draw_boxes(image, boxes, (image.width / model[0], image.height / model[1]))
        note = BOX_LEGEND
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(path)}" '
        f'style="width: {width}px; image-rendering: pixelated">{note}'
    )


def _value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def render_rollout_html(
    row: Mapping[str, Any], image_root: str | Path | None = None, pixels: tuple[int, int] | None = None
) -> str:
    """One rollout (a row of :func:`ocean_lib.study.analysis.load_rollouts`) as HTML.

    Shows the step, task, prompt id, length and whether generation finished; the image (with the ground-truth and
    answered boxes of a grounding task; ``pixels`` as in :func:`image_html`); the question and ground truth; the
    think text and the answer with reflective phrases highlighted, and any text outside the tags; the reward
    breakdown (every ``reward/...`` field) and the advantage. All text is escaped.
    """
    think, answer, rest = split_completion(str(row["completion"]))
    finished = "finished" if row.get("finished", True) else "cut at max_new_tokens"
    header = " · ".join(
        f"<b>{label}</b> {_value(row.get(key))}"
        for label, key in (
            ("step", "step"),
            ("task", "data_source"),
            ("prompt", "prompt_id"),
            ("reward_func", "reward_func"),
            ("tokens", "length"),
        )
    )
    breakdown = "".join(
        f"<tr><td>{html.escape(key.removeprefix('reward/'))}</td><td>{_value(value)}</td></tr>"
        for key, value in row.items()
        if key.startswith("reward/")
    )
    text_style = "white-space: pre-wrap; background: #f6f6f6; padding: 6px; margin: 2px 0 8px 0"
    sections = [("think", think), ("answer", answer)] + ([("outside the tags", rest)] if rest else [])
    body = "".join(
        f"<div><b>{title}</b></div><div style='{text_style}'>"
        f"{highlight_reflections(text) if text else '<i>(none)</i>'}</div>"
        for title, text in sections
    )
    return (
        "<div class='ocean-rollout' style='font-family: sans-serif; font-size: 13px'>"
        f"<div>{header} · {finished}</div>"
        "<div style='display: flex; gap: 16px; margin: 8px 0'>"
        f"<div>{image_html(row.get('image'), image_root, *grounding_boxes(row), pixels)}</div>"
        f"<div><div><b>question</b></div><div style='{text_style}'>{html.escape(str(row.get('prompt') or ''))}</div>"
        f"<div><b>ground truth</b> <code>{html.escape(str(row.get('ground_truth') or ''))}</code></div>"
        f"<table style='margin-top: 6px'><tr><th colspan='2'>reward</th></tr>{breakdown}"
        f"<tr><td><b>advantage</b></td><td>{_value(row.get('advantage'))}</td></tr></table></div>"
        "</div>"
        f"{body}</div>"
    )


def sample_rollouts(rollouts: pd.DataFrame, per_task: int = 2) -> pd.DataFrame:
    """A few rollouts per task from the last logged step: the best and the worst by overall reward, then the
    next best and next worst (``per_task`` in all), in task order."""
    last = rollouts[rollouts["step"] == rollouts["step"].max()]
    picked = []
    for _, group in last.groupby("data_source", sort=True):
        ranked = group.sort_values("reward/overall", ascending=False, kind="stable")
        order = [i for pair in zip(ranked.index, ranked.index[::-1], strict=True) for i in pair]
        picked += list(dict.fromkeys(order))[:per_task]
    return rollouts.loc[picked]


def rollout_table_html(
    rollouts: pd.DataFrame,
    image_root: str | Path | None = None,
    pixels: tuple[int, int] | None = None,
    title: str = "",
) -> str:
    """Rollouts as one HTML table (step, task, image with boxes, question and ground truth, think and answer with
    reflective phrases marked, reward and advantage): the static view of the browser, for pages without a kernel.
    """
    cell = "style='vertical-align: top; text-align: left; padding: 4px 8px; border-top: 1px solid #ddd'"
    rows = []
    for _, series in rollouts.iterrows():
        row = series.to_dict()
        think, answer, _ = split_completion(str(row["completion"]))
        reward = ", ".join(f"{name} {_value(row.get(f'reward/{name}'))}" for name in ("accuracy", "format"))
        rows.append(
            f"<tr><td {cell}>{_value(row.get('step'))}</td><td {cell}>{_value(row.get('data_source'))}</td>"
            f"<td {cell}>{image_html(row.get('image'), image_root, *grounding_boxes(row), pixels)}</td>"
            f"<td {cell}>{html.escape(str(row.get('prompt') or ''))}<br><b>ground truth</b> "
            f"<code>{html.escape(str(row.get('ground_truth') or ''))}</code></td>"
            f"<td {cell}><b>think</b> {highlight_reflections(think) if think else '<i>(none)</i>'}<br>"
            f"<b>answer</b> {highlight_reflections(answer) if answer else '<i>(none)</i>'}</td>"
            f"<td {cell}><b>{_value(row.get('reward/overall'))}</b><br>{reward}<br>"
            f"advantage {_value(row.get('advantage'))}</td></tr>"
        )
    head = "".join(
        f"<th {cell}>{name}</th>" for name in ("step", "task", "image", "question", "completion", "reward")
    )
    caption = f"<caption style='text-align: left'><b>{html.escape(title)}</b></caption>" if title else ""
    return (
        "<table class='ocean-rollouts' style='font-family: sans-serif; font-size: 12px; border-collapse: "
        f"collapse'>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


@dataclasses.dataclass
class BrowsedRun:
    """One run's rollouts and what is needed to show their images."""

    rollouts: pd.DataFrame
    image_root: str | Path | None = None
    pixels: tuple[int, int] | None = None  # (min_pixels, max_pixels) the run resized images by

    @classmethod
    def load(cls, run: str | Path | RunDir) -> BrowsedRun:
        run = run if isinstance(run, RunDir) else RunDir(Path(run))
        pixels = None
        if run.config.exists():
            data = load_config(run.config).data
            pixels = (data.min_pixels, data.max_pixels)
        return cls(load_rollouts(run), run.path, pixels)


class RolloutBrowser:
    """Browse rollouts with filters (step range, task, reward range, length range, reflective phrase only) and
    previous/next buttons; with several runs, a run selector. Display it by ending a cell with it.

    ``runs``: one run's rollouts (:func:`ocean_lib.study.analysis.load_rollouts`, with ``image_root`` resolving its
    relative image paths), or a mapping from a label to a run directory (images, boxes and the run's pixel limits
    are then found there); runs without rollouts are left out. The widgets are attributes (``run``, ``steps``,
    ``task``, ``reward``, ``length``, ``reflective``, ``previous``, ``next``, ``html``); ``filtered`` holds the
    rows that pass, ``index`` the one shown.
    """

    def __init__(
        self,
        runs: pd.DataFrame | Mapping[str, str | Path | RunDir],
        image_root: str | Path | None = None,
    ):
        import ipywidgets as widgets

        if isinstance(runs, pd.DataFrame):
            loaded = {"": BrowsedRun(runs, image_root)}
        else:
            loaded = {label: BrowsedRun.load(path) for label, path in runs.items()}
        self.runs = {label: run for label, run in loaded.items() if not run.rollouts.empty}
        if not self.runs:
            raise ValueError(
                "no rollouts to browse: the run has not logged any (see logging.rollouts_per_step)"
            )
        wide = {"layout": widgets.Layout(width="420px"), "continuous_update": False}
        self.run = widgets.Dropdown(options=list(self.runs), description="run")
        self.steps = widgets.IntRangeSlider(description="step", **wide)
        self.task = widgets.Dropdown(description="task")
        self.reward = widgets.FloatRangeSlider(step=0.01, description="reward", **wide)
        self.length = widgets.IntRangeSlider(description="tokens", **wide)
        self.reflective = widgets.Checkbox(value=False, description="with a reflective phrase only")
        self.previous = widgets.Button(description="◀ previous")
        self.next = widgets.Button(description="next ▶")
        self.position = widgets.Label()
        self.html = widgets.HTML()
        self._loading = False
        self._select_run()
        self.run.observe(self._select_run, names="value")
        for control in (self.steps, self.task, self.reward, self.length, self.reflective):
            control.observe(self._apply_filters, names="value")
        self.previous.on_click(lambda _: self.show(self.index - 1))
        self.next.on_click(lambda _: self.show(self.index + 1))
        self.widget = widgets.VBox(
            [
                *([self.run] if len(self.runs) > 1 else []),
                widgets.HBox([self.steps, self.task]),
                widgets.HBox([self.reward, self.length]),
                widgets.HBox([self.reflective, self.previous, self.next, self.position]),
                self.html,
            ]
        )

    @property
    def rollouts(self) -> pd.DataFrame:
        """The selected run's rollouts."""
        return self.runs[self.run.value].rollouts

    def _select_run(self, _change: Any = None) -> None:
        """Reset every filter to the whole range of the selected run, then show its first rollout."""
        rollouts = self.rollouts
        first, last = int(rollouts["step"].min()), int(rollouts["step"].max())
        low = math.floor(float(rollouts["reward/overall"].min()) * 100) / 100
        high = math.ceil(float(rollouts["reward/overall"].max()) * 100) / 100
        shortest, longest = int(rollouts["length"].min()), int(rollouts["length"].max())
        self._loading = True  # one redraw after all the controls moved, not one per control
        for slider, (lo, hi) in (
            (self.steps, (first, last)),
            (self.reward, (low, high)),
            (self.length, (shortest, longest)),
        ):
            # widen before narrowing: a slider refuses a min above its current max
            slider.max = max(slider.max, hi)
            slider.min, slider.max = lo, hi
            slider.value = (lo, hi)
        self.task.options = ["all", *sorted(rollouts["data_source"].unique())]
        self.task.value = "all"
        self.reflective.value = False
        self._loading = False
        self._apply_filters()

    def _apply_filters(self, _change: Any = None) -> None:
        if self._loading:
            return
        self.filtered = filter_rollouts(
            self.rollouts,
            steps=self.steps.value,
            data_source=None if self.task.value == "all" else self.task.value,
            reward=self.reward.value,
            length=self.length.value,
            reflective_only=self.reflective.value,
        )
        self.show(0)

    def show(self, index: int) -> None:
        """Show the ``index``-th filtered rollout (clamped to the filtered rows)."""
        count = len(self.filtered)
        self.index = min(max(index, 0), max(count - 1, 0))
        self.previous.disabled = self.index == 0
        self.next.disabled = self.index >= count - 1
        if count == 0:
            self.position.value = "0 of 0"
            self.html.value = "<i>no rollout matches these filters</i>"
            return
        self.position.value = f"{self.index + 1} of {count}"
        run = self.runs[self.run.value]
        self.html.value = render_rollout_html(
            self.filtered.iloc[self.index].to_dict(), run.image_root, run.pixels
        )

    def static_html(self, per_task: int = 2) -> str:
        """Sample rollouts of every run (:func:`sample_rollouts`) as tables: what a page without a kernel shows."""
        tables = [
            rollout_table_html(
                sample_rollouts(run.rollouts, per_task),
                run.image_root,
                run.pixels,
                title=f"{label + ': ' if label else ''}sample rollouts of step {int(run.rollouts['step'].max())}, "
                "best and worst reward per task (static view; the interactive browser needs a running kernel)",
            )
            for label, run in self.runs.items()
        ]
        return "<div class='ocean-rollout-browser'>" + "<br>".join(tables) + "</div>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        # The widget for a live kernel; the static tables for any page that cannot run one (report.html).
        bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude)
        runs = ", ".join(label or "one run" for label in self.runs)
        return {**bundle, "text/html": self.static_html(), "text/plain": f"RolloutBrowser({runs})"}
