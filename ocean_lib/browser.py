"""The rollout browser of the aha-moment notebook: an ipywidgets view over a run's ``rollouts.jsonl``.

The logic lives in pure functions, :func:`filter_rollouts` and :func:`render_rollout_html`, which the tests call
directly; :class:`RolloutBrowser` only wires widgets to them. Completions are untrusted model output: every piece
of text is passed through ``html.escape`` before any markup of ours is put around it, so a completion holding
``<script>`` shows as text.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from ocean_lib.analysis import MAX_SCAN_CHARS, find_reflections, split_completion

IMAGE_MAX_SIDE = 384  # pixels; larger images are shown scaled down
IMAGE_MIN_WIDTH = 224  # CSS pixels; the miniature's 112 px images are shown enlarged (pixelated, not blurred)
MARK_STYLE = "background: #ffe08a; border-radius: 2px"


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
    lexicon (:func:`ocean_lib.analysis.find_reflections`).
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
    :data:`~ocean_lib.analysis.MAX_SCAN_CHARS` is cut, with a note of how much.
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


def image_html(path: Any, image_root: str | Path | None = None) -> str:
    """The image as an inline ``<img>`` (PNG, data URI), or a note saying why there is none.

    A relative ``path`` is resolved against ``image_root`` when given, else against the working directory
    (as the data loader does).
    """
    if not isinstance(path, str) or not path:  # None, or NaN from a column pandas filled
        return "<i>text-only prompt (no image)</i>"
    resolved = Path(path)
    if image_root is not None and not resolved.is_absolute():
        resolved = Path(image_root) / resolved
    if not resolved.is_file():
        return f"<i>image not found: {html.escape(str(resolved))}</i>"
    try:
        with Image.open(resolved) as opened:
            image = opened.convert("RGB")
    except Exception as error:  # PIL raises many types for bad data; all mean "cannot show it"
        return f"<i>image not readable: {html.escape(str(resolved))}: {html.escape(str(error))}</i>"
    image.thumbnail((IMAGE_MAX_SIDE, IMAGE_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    width = max(IMAGE_MIN_WIDTH, image.width)
    return (
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(path)}" '
        f'style="width: {width}px; image-rendering: pixelated">'
    )


def _value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def render_rollout_html(row: Mapping[str, Any], image_root: str | Path | None = None) -> str:
    """One rollout (a row of :func:`ocean_lib.analysis.load_rollouts`) as HTML.

    Shows the step, task, prompt id, length and whether generation finished; the image; the question and ground
    truth; the think text and the answer with reflective phrases highlighted, and any text outside the tags;
    the reward breakdown (every ``reward/...`` field) and the advantage. All text is escaped.
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
        f"<div>{image_html(row.get('image'), image_root)}</div>"
        f"<div><div><b>question</b></div><div style='{text_style}'>{html.escape(str(row.get('prompt') or ''))}</div>"
        f"<div><b>ground truth</b> <code>{html.escape(str(row.get('ground_truth') or ''))}</code></div>"
        f"<table style='margin-top: 6px'><tr><th colspan='2'>reward</th></tr>{breakdown}"
        f"<tr><td><b>advantage</b></td><td>{_value(row.get('advantage'))}</td></tr></table></div>"
        "</div>"
        f"{body}</div>"
    )


class RolloutBrowser:
    """Browse rollouts with filters (step range, task, reward range, length range, reflective phrase only) and
    previous/next buttons. Display it by ending a cell with it (or ``display(browser)``).

    ``rollouts`` is :func:`ocean_lib.analysis.load_rollouts` of a run; ``image_root`` resolves relative image
    paths. The widgets are attributes (``steps``, ``task``, ``reward``, ``length``, ``reflective``,
    ``previous``, ``next``, ``html``); ``filtered`` holds the rows that pass, ``index`` the one shown.
    """

    def __init__(self, rollouts: pd.DataFrame, image_root: str | Path | None = None):
        import ipywidgets as widgets

        if rollouts.empty:
            raise ValueError(
                "no rollouts to browse: the run has not logged any (see logging.rollouts_per_step)"
            )
        self.rollouts = rollouts.reset_index(drop=True)
        self.image_root = image_root
        first, last = int(self.rollouts["step"].min()), int(self.rollouts["step"].max())
        low = math.floor(float(self.rollouts["reward/overall"].min()) * 100) / 100
        high = math.ceil(float(self.rollouts["reward/overall"].max()) * 100) / 100
        shortest, longest = int(self.rollouts["length"].min()), int(self.rollouts["length"].max())
        wide = {"layout": widgets.Layout(width="420px"), "continuous_update": False}
        self.steps = widgets.IntRangeSlider(
            value=(first, last), min=first, max=last, description="step", **wide
        )
        self.task = widgets.Dropdown(
            options=["all", *sorted(self.rollouts["data_source"].unique())], value="all", description="task"
        )
        self.reward = widgets.FloatRangeSlider(
            value=(low, high), min=low, max=high, step=0.01, description="reward", **wide
        )
        self.length = widgets.IntRangeSlider(
            value=(shortest, longest), min=shortest, max=longest, description="tokens", **wide
        )
        self.reflective = widgets.Checkbox(value=False, description="with a reflective phrase only")
        self.previous = widgets.Button(description="◀ previous")
        self.next = widgets.Button(description="next ▶")
        self.position = widgets.Label()
        self.html = widgets.HTML()
        for control in (self.steps, self.task, self.reward, self.length, self.reflective):
            control.observe(self._apply_filters, names="value")
        self.previous.on_click(lambda _: self.show(self.index - 1))
        self.next.on_click(lambda _: self.show(self.index + 1))
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.steps, self.task]),
                widgets.HBox([self.reward, self.length]),
                widgets.HBox([self.reflective, self.previous, self.next, self.position]),
                self.html,
            ]
        )
        self.filtered = self.rollouts
        self.index = 0
        self._apply_filters()

    def _apply_filters(self, _change: Any = None) -> None:
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
        self.html.value = render_rollout_html(self.filtered.iloc[self.index].to_dict(), self.image_root)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
