"""Every figure the notebooks show: training curves (also live), benchmark bars, aha-moment analytics, examples.

Each function returns a matplotlib ``Figure`` and, given ``path``, also writes it there atomically (PNG unless
the suffix says otherwise), so the study's ``figures/*.png`` never hold half a picture. Figures are closed in
pyplot's registry before they are returned: Jupyter shows the returned figure once, and a loop that draws
hundreds of figures (live curves) does not keep them all in memory. Works headless (Agg).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ocean_lib.base.io import atomic_write_bytes
from ocean_lib.base.schema import DataConfig
from ocean_lib.data.records import DataError, Record, load_images
from ocean_lib.study.analysis import REFLECTION_LEXICON, load_metrics, metrics_frame, smooth

if TYPE_CHECKING:
    from ocean_lib.study.report import ResultsTable

# A panel: a title and the metric keys it draws; a key ending in "/" stands for its whole family
# ("accuracy/" draws accuracy/<data_source> for every data source the run logged).
Panel = tuple[str, tuple[str, ...]]

TRAINING_PANELS: tuple[Panel, ...] = (
    ("reward", ("reward/overall", "reward/accuracy", "reward/format")),
    ("accuracy by task", ("accuracy/",)),
    ("response length (tokens)", ("response/length_mean",)),
    ("KL to reference", ("kl/mean",)),
    ("entropy (nats / token)", ("entropy/mean",)),
    ("clip fraction", ("clip/fraction",)),
    ("groups without signal (equal rewards)", ("groups/zero_variance_fraction",)),
    ("supervised loss (warm-start)", ("loss/sft",)),
    ("validation accuracy (greedy)", ("val/accuracy", "val/accuracy/")),
)

# A run that takes one update per rollout batch computes its ratio against the weights that sampled: the ratio
# is exactly 1 and nothing can be clipped. Its clip panel (all zeros by construction) is left out.
RATIO_KEYS = ("ratio/min", "ratio/max")

LABEL_CHARS = 14  # benchmark names on the bar chart's x axis are wrapped at this many characters
RAW_ALPHA = 0.25  # the unsmoothed series is drawn faintly under its smoothed line
LINESTYLES = ("-", "--", ":", "-.")


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` atomically; the format follows the suffix (PNG when there is none)."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    plt.close(fig)
    if path is not None:
        save_figure(fig, path)
    return fig


def _grid(n_axes: int, ncols: int, cell: tuple[float, float]) -> tuple[Figure, list[Any]]:
    """A figure with ``n_axes`` axes in rows of ``ncols``; the unused cells of the last row are removed."""
    ncols = max(1, min(ncols, n_axes))
    nrows = math.ceil(n_axes / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell[0] * ncols, cell[1] * nrows), squeeze=False, layout="constrained"
    )
    flat = list(axes.flat)
    for ax in flat[n_axes:]:
        fig.delaxes(ax)
    return fig, flat[:n_axes]


def _plot_series(ax: Any, steps: Any, values: Any, smoothing: float, **style: Any) -> None:
    """A series against steps: the raw values faint, their :func:`~ocean_lib.study.analysis.smooth` on top.

    NaN values (a key not logged at that step) are dropped first; with ``smoothing`` 0 only the raw line is drawn.
    """
    series = pd.Series(np.asarray(values, dtype=float), index=np.asarray(steps)).dropna()
    if series.empty:
        return
    marker = "o" if len(series) <= 30 else None
    if smoothing > 0:
        raw_style = {k: v for k, v in style.items() if k != "label"}
        ax.plot(series.index, series.values, alpha=RAW_ALPHA, linewidth=0.8, **raw_style)
        ax.plot(
            series.index,
            smooth(series.values, smoothing),
            linewidth=1.6,
            marker=marker,
            markersize=3,
            **style,
        )
    else:
        ax.plot(series.index, series.values, linewidth=1.4, marker=marker, markersize=3, **style)


# ----------------------------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------------------------


def _ratio_never_left_one(table: pd.DataFrame) -> bool:
    if not set(RATIO_KEYS) <= set(table.columns):
        return False
    values = table[list(RATIO_KEYS)].to_numpy(float)
    values = values[~np.isnan(values)]
    return values.size > 0 and bool(np.all(np.abs(values - 1.0) < 1e-6))


def _panel_keys(panel: Panel, table: pd.DataFrame) -> list[str]:
    if panel[1] == ("clip/fraction",) and _ratio_never_left_one(table):
        return []
    columns, keys = list(table.columns), []
    for key in panel[1]:
        if key.endswith("/"):
            keys += sorted(c for c in columns if c.startswith(key) and "/" not in c[len(key) :])
        elif key in columns:
            keys.append(key)
    return keys


def training_curves(
    runs: pd.DataFrame | Mapping[str, pd.DataFrame | str | Path],
    panels: Sequence[Panel | str] = TRAINING_PANELS,
    smoothing: float = 0.6,
    ncols: int = 3,
    path: str | Path | None = None,
) -> Figure:
    """Training curves against optimizer step, one panel per metric group, several runs overlaid.

    ``runs``: one metrics table (:func:`~ocean_lib.study.analysis.load_metrics`), or a mapping from a run label to its
    table or run directory (e.g. ``{"GRPO-text": ..., "GRPO-vis": ...}``). ``panels``: :data:`TRAINING_PANELS`
    by default; a plain key string is a panel of its own. Panels with no data in any run are left out (a
    warm-start run has no reward, a GRPO run no supervised loss), and so is the clip fraction of a run whose
    importance ratio never left 1 (one update per rollout batch: nothing can be clipped). One run: one colour per key. Several runs:
    one colour per run, one line style per key. Each series is drawn raw (faint) and smoothed with
    :func:`~ocean_lib.study.analysis.smooth` (``smoothing`` is its weight; 0 draws the raw series alone).
    """
    single = isinstance(runs, pd.DataFrame)
    tables = (
        {"": runs}
        if single
        else {
            label: table if isinstance(table, pd.DataFrame) else load_metrics(table)
            for label, table in runs.items()
        }
    )
    specs = [(p, (p,)) if isinstance(p, str) else p for p in panels]
    drawn = [
        (title, {label: _panel_keys((title, keys), t) for label, t in tables.items()})
        for title, keys in specs
    ]
    drawn = [(title, per_run) for title, per_run in drawn if any(per_run.values())]
    if not drawn:
        fig, (ax,) = _grid(1, 1, (5.0, 3.0))
        ax.text(0.5, 0.5, "no metrics logged yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _finish(fig, path)
    fig, axes = _grid(len(drawn), ncols, (4.4, 3.1))
    for ax, (title, per_run) in zip(axes, drawn, strict=True):
        for run_index, (label, keys) in enumerate(per_run.items()):
            table = tables[label]
            for key_index, key in enumerate(keys):
                name = key.rsplit("/", 1)[-1] if len(keys) > 1 else key
                if single:
                    style = {"color": f"C{key_index % 10}", "label": name}
                else:
                    style = {
                        "color": f"C{run_index % 10}",
                        "linestyle": LINESTYLES[key_index % len(LINESTYLES)],
                        "label": f"{label}: {name}",
                    }
                _plot_series(ax, table.index, table[key], smoothing, **style)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _finish(fig, path)


def _in_jupyter() -> bool:
    """Whether we run inside a Jupyter kernel (where display handles exist), not a script or plain IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class LiveCurves:
    """Training curves that redraw in place while a run trains.

    Pass it as ``ocean_lib.training.launch.train(params, overrides, on_metrics=LiveCurves(...))``: the launcher calls it
    with all metric rows so far whenever new ones appear. In Jupyter the first call displays the figure and the
    following ones replace it (one display handle, so the cell keeps one figure); anywhere else nothing is
    displayed. With ``path`` every update is also written there (atomically), which is what a script or a
    terminal gets to look at. ``figure`` is the latest figure.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        panels: Sequence[Panel | str] = TRAINING_PANELS,
        smoothing: float = 0.6,
    ):
        self.path = None if path is None else Path(path)
        self.panels = panels
        self.smoothing = smoothing
        self.figure: Figure | None = None
        self._handle: Any = None

    def update(self, rows: Sequence[Mapping[str, Any]]) -> Figure:
        """Redraw from every metrics row so far (rows of ``metrics.jsonl``)."""
        self.figure = training_curves(metrics_frame(rows), self.panels, self.smoothing, path=self.path)
        if _in_jupyter():
            from IPython.display import display

            if self._handle is None:
                self._handle = display(self.figure, display_id=True)
            else:
                self._handle.update(self.figure)
        return self.figure

    __call__ = update


# ----------------------------------------------------------------------------------------------------------------
# Benchmarks
# ----------------------------------------------------------------------------------------------------------------


def benchmark_bars(
    table: ResultsTable, title: str = "accuracy by benchmark", path: str | Path | None = None
) -> Figure:
    """Grouped bars: one group per benchmark (the table's columns), one bar per model (its rows).

    ``table`` is :func:`ocean_lib.study.report.results_table` (accuracies in percent). Measured rows carry their
    95% bootstrap interval as an error bar; reference rows (Ocean-R1's published numbers, which have no
    interval) are hatched and have none. A model without a result on a benchmark has no bar there.
    """
    columns, rows = list(table.columns), list(table.rows)
    # Headers are wrapped onto lines of a group's width, and each group is at least as wide as its label.
    labels = [textwrap.fill(table.headers.get(c, c), LABEL_CHARS) for c in columns]
    group_width = max(0.45 * len(rows), 0.1 * LABEL_CHARS)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + group_width * len(columns)), 3.8), layout="constrained")
    width = 0.8 / max(1, len(rows))
    measured_index = 0
    for i, row in enumerate(rows):
        present = [j for j, column in enumerate(columns) if column in row.cells]
        if not present:
            continue
        cells = [row.cells[columns[j]] for j in present]
        x = np.asarray(present, dtype=float) - 0.4 + width * (i + 0.5)
        heights = [cell.value for cell in cells]
        if row.reference:
            bars = ax.bar(x, heights, width, label=row.label, facecolor="white", edgecolor="0.35", hatch="//")
        else:
            # an interval that was not measured (None or NaN) draws no error bar
            bounds = np.array(
                [[np.nan if b is None else b for b in (c.low, c.high)] for c in cells], dtype=float
            )
            errors = np.nan_to_num(np.abs(bounds - np.array(heights)[:, None]).T, nan=0.0)
            bars = ax.bar(
                x,
                heights,
                width,
                yerr=errors,
                capsize=3,
                label=row.label,
                color=f"C{measured_index % 10}",
                error_kw={"linewidth": 1},
            )
            measured_index += 1
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(range(len(columns)), labels, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# Aha-moment analytics
# ----------------------------------------------------------------------------------------------------------------


def reflection_plot(counts: pd.DataFrame, smoothing: float = 0.6, path: str | Path | None = None) -> Figure:
    """Two panels from :func:`~ocean_lib.study.analysis.reflection_counts_per_step`: the fraction of completions with a
    reflective phrase, and each pattern's occurrences per completion (patterns never seen are left out)."""
    fig, (left, right) = _grid(2, 2, (4.8, 3.2))
    _plot_series(left, counts.index, counts["reflective_fraction"], smoothing, color="C0")
    left.set_title("completions with a reflective phrase", fontsize=10)
    left.set_ylabel("fraction")
    seen = [name for name in REFLECTION_LEXICON if name in counts and counts[name].sum() > 0]
    for i, name in enumerate(seen):
        _plot_series(
            right, counts.index, counts[name] / counts["n"], smoothing, color=f"C{i % 10}", label=name
        )
    if seen:
        right.legend(fontsize=7)
    else:
        right.text(
            0.5, 0.5, "no reflective phrase found", ha="center", va="center", transform=right.transAxes
        )
    right.set_title("occurrences per completion, by pattern", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _finish(fig, path)


def length_plot(lengths: pd.DataFrame, smoothing: float = 0.6, path: str | Path | None = None) -> Figure:
    """Two panels from :func:`~ocean_lib.study.analysis.response_length_per_step`: mean length with the 10–90th
    percentile band, and the fraction of completions cut at max_new_tokens."""
    fig, (left, right) = _grid(2, 2, (4.8, 3.2))
    left.fill_between(
        lengths.index, lengths["q10"], lengths["q90"], color="C0", alpha=0.15, label="10–90th pct"
    )
    _plot_series(left, lengths.index, lengths["mean"], smoothing, color="C0", label="mean")
    left.set_title("response length", fontsize=10)
    left.set_ylabel("tokens")
    left.legend(fontsize=7)
    _plot_series(right, lengths.index, lengths["unfinished_fraction"], smoothing, color="C3")
    right.set_title("cut at max_new_tokens", fontsize=10)
    right.set_ylabel("fraction")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _finish(fig, path)


def disagreement_plot(rates: pd.DataFrame, smoothing: float = 0.6, path: str | Path | None = None) -> Figure:
    """The rate from :func:`~ocean_lib.study.analysis.think_answer_disagreement_rate_per_step` against step."""
    fig, (ax,) = _grid(1, 1, (5.0, 3.2))
    _plot_series(ax, rates.index, rates["rate"], smoothing, color="C1")
    if rates["rate"].isna().all():
        ax.text(0.5, 0.5, "no completion could be checked", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("<answer> disagrees with a number in <think>", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("fraction of checked completions")
    ax.grid(alpha=0.3)
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# Data examples
# ----------------------------------------------------------------------------------------------------------------


def _caption(text: str, width: int, max_chars: int) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= max_chars else text[: max_chars - 1] + "…"
    return "\n".join(textwrap.wrap(text, width))


def example_grid(
    records: Sequence[Record],
    n: int = 8,
    cfg: DataConfig | None = None,
    ncols: int = 4,
    path: str | Path | None = None,
) -> Figure:
    """The first ``n`` records as a grid: the image (loaded and resized by ``data.load_images`` under ``cfg``),
    the data source as title, the question and the answer below.

    Text-only records (the GRPO-text twins) show their question in the image's place; a record whose image cannot
    be opened shows why; a record with several images shows the first and says how many there are.
    """
    shown = list(records[:n])
    if not shown:
        raise ValueError("example_grid needs at least one record")
    cfg = cfg or DataConfig()
    fig, axes = _grid(len(shown), ncols, (3.2, 4.2))
    for ax, record in zip(axes, shown, strict=True):
        title, question, note = record.data_source, _caption(record.question, 40, 200), ""
        if not record.images:  # the question states the scene in words: show it where the image would be
            note, question = "text-only prompt\n\n" + _caption(record.question, 38, 600), ""
        else:
            try:
                images = load_images(record, cfg)
                ax.imshow(images[0])
                if len(images) > 1:
                    title += f" (1 of {len(images)} images)"
            except DataError as error:
                note = _caption(f"image not readable: {error}", 34, 200)
        if note:
            ax.text(
                0.5, 0.5, note, ha="center", va="center", fontsize=7.5, transform=ax.transAxes, color="0.3"
            )
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        caption = "\n".join(filter(None, [question, _caption(f"answer: {record.answer}", 40, 80)]))
        ax.text(0.5, -0.03, caption, ha="center", va="top", fontsize=7.5, transform=ax.transAxes)
    return _finish(fig, path)
