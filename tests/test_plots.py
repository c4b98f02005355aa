"""Figures: the right panels and lines from real run files, written as real PNGs, live curves in and out of Jupyter."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from PIL import Image

from ocean_lib.base.run_dir import RunDir
from ocean_lib.data import ImageRef, Record
from ocean_lib.study.analysis import (
    load_metrics,
    load_rollouts,
    metrics_frame,
    reflection_counts_per_step,
    response_length_per_step,
    think_answer_disagreement_rate_per_step,
)
from ocean_lib.study.plots import (
    LiveCurves,
    benchmark_bars,
    disagreement_plot,
    example_grid,
    length_plot,
    reflection_plot,
    training_curves,
)
from ocean_lib.study.report import results_table


def grpo_rows(steps: int) -> list[dict]:
    rows = []
    for step in range(1, steps + 1):
        row = {
            "step": step,
            "epoch": 0,
            "lr": 3e-5,
            "reward/overall": 0.1 * step,
            "reward/accuracy": 0.05 * step,
            "reward/format": 0.5,
            "accuracy/geometry": 0.3,
            "accuracy/counting": 0.6,
            "response/length_mean": 20.0 + step,
            "kl/mean": 0.001 * step,
            "entropy/mean": 1.2,
            "clip/fraction": 0.01,
            "ratio/min": 0.9,
            "ratio/max": 1.2,
            "groups/zero_variance_fraction": 0.25,
            "loss/total": 0.1,
            "time/step_s": 1.0,
        }
        if step % 5 == 0:
            row["val/accuracy"] = 0.4
        rows.append(row)
    return rows


def is_png(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data)).size


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


@pytest.fixture
def grpo_run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "grpo")
    for row in grpo_rows(12):
        run.log_metrics(row)
    return run


def test_training_curves_one_run(grpo_run, tmp_path):
    fig = training_curves(load_metrics(grpo_run), path=tmp_path / "figures" / "curves.png")
    # no warm-start loss in a GRPO run: that panel is left out
    assert titles(fig) == [
        "reward",
        "accuracy by task",
        "response length (tokens)",
        "KL to reference",
        "entropy (nats / token)",
        "clip fraction",
        "groups without signal (equal rewards)",
        "validation accuracy (greedy)",
    ]
    reward, accuracy = fig.axes[0], fig.axes[1]
    assert len(reward.lines) == 3 * 2  # raw + smoothed per key
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == ["counting", "geometry"]
    validation = fig.axes[-1]
    assert validation.lines[0].get_xdata().tolist() == [5, 10]  # only the steps that validated
    width, height = is_png(tmp_path / "figures" / "curves.png")
    assert width > height > 100


def test_clip_panel_is_left_out_where_the_ratio_never_left_one(grpo_run):
    """One update per rollout batch: the ratio is exactly 1 and the clip fraction 0 by construction."""
    one_update = load_metrics(grpo_run).assign(**{"ratio/min": 1.0, "ratio/max": 1.0, "clip/fraction": 0.0})
    assert "clip fraction" not in titles(training_curves(one_update))
    assert "clip fraction" in titles(training_curves({"one": one_update, "two": load_metrics(grpo_run)}))


def test_training_curves_raw_only_and_chosen_panels(grpo_run):
    fig = training_curves(
        load_metrics(grpo_run), panels=["kl/mean", ("rewards", ("reward/",))], smoothing=0.0
    )
    assert titles(fig) == ["kl/mean", "rewards"]
    assert len(fig.axes[0].lines) == 1
    assert fig.axes[0].lines[0].get_ydata() == pytest.approx([0.001 * s for s in range(1, 13)])
    assert len(fig.axes[1].lines) == 3


def test_training_curves_overlays_runs_given_as_tables_or_directories(grpo_run, tmp_path):
    warm = RunDir(tmp_path / "warm")
    for step in range(1, 6):
        warm.log_metrics({"step": step, "loss/sft": 2.0 / step, "lr": 1e-3})
    fig = training_curves({"warm-start": warm.path, "GRPO-vis": load_metrics(grpo_run)})
    assert "supervised loss (warm-start)" in titles(fig) and "reward" in titles(fig)
    by_title = dict(zip(titles(fig), fig.axes, strict=True))
    reward_labels = [t.get_text() for t in by_title["reward"].get_legend().get_texts()]
    assert reward_labels == [
        "GRPO-vis: overall",
        "GRPO-vis: accuracy",
        "GRPO-vis: format",
    ]
    sft_lines = by_title["supervised loss (warm-start)"].lines
    grpo_lines = by_title["reward"].lines
    assert sft_lines[0].get_color() != grpo_lines[0].get_color()  # one colour per run
    assert {line.get_linestyle() for line in grpo_lines} == {"-", "--", ":"}  # one style per key


def test_training_curves_without_data_says_so():
    fig = training_curves(metrics_frame([]))
    assert len(fig.axes) == 1 and "no metrics" in fig.axes[0].texts[0].get_text()


def test_live_curves_outside_jupyter_write_the_png_and_display_nothing(grpo_run, tmp_path, capsys):
    curves = LiveCurves(path=tmp_path / "live.png", panels=["kl/mean", "reward/overall"], smoothing=0.0)
    rows = grpo_run.read_metrics()
    curves(rows[:3])
    first = (tmp_path / "live.png").read_bytes()
    figure = curves(rows)
    assert figure is curves.figure and len(figure.axes) == 2
    assert figure.axes[0].lines[0].get_xdata().tolist() == list(range(1, 13))
    assert (tmp_path / "live.png").read_bytes() != first  # redrawn with the new rows
    assert capsys.readouterr().out == ""
    silent = LiveCurves(panels=["kl/mean"])
    silent(rows)
    assert silent.figure is not None and sorted(p.name for p in tmp_path.iterdir()) == ["grpo", "live.png"]


def test_live_curves_in_jupyter_update_one_display_in_place(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    rows = grpo_rows(6)
    source = (
        "from ocean_lib.study.plots import LiveCurves\n"
        f"rows = {json.dumps(rows)}\n"
        "curves = LiveCurves(panels=['kl/mean'])\n"
        "for n in (2, 4):\n"
        "    curves(rows[:n])\n"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = notebook.cells[0].outputs
    assert [o["output_type"] for o in outputs] == ["display_data"]  # two updates, one figure
    assert "image/png" in outputs[0]["data"]


# ---------------------------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------------------------


def write_summary(directory, benchmarks: dict[str, tuple[float, float, float]]):
    """A summary.json in the evaluation runner's format: accuracy, ci95, n per benchmark."""
    directory.mkdir(parents=True)
    entries = {
        name: {"accuracy": a, "ci95": [lo, hi], "n": 200, "title": name}
        for name, (a, lo, hi) in benchmarks.items()
    }
    (directory / "summary.json").write_text(json.dumps({"model": str(directory), "benchmarks": entries}))
    return directory


def test_benchmark_bars_with_intervals_and_published_rows(tmp_path):
    base = write_summary(tmp_path / "base", {"superclevr": (0.5, 0.4, 0.6), "geoqa": (0.3, 0.2, 0.4)})
    vis = write_summary(tmp_path / "vis", {"superclevr": (0.9, 0.85, 0.95)})
    table = results_table({"base": base, "GRPO-vis": vis})
    fig = benchmark_bars(table, path=tmp_path / "bars.png")
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    errors = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    # 2 measured rows (2 + 1 cells) and 3 published rows on the 2 columns
    assert [len(b.patches) for b in bars] == [2, 1, 2, 2, 2]
    assert len(errors) == 2  # published numbers have no interval
    assert [p.get_height() for p in bars[0].patches] == pytest.approx([50, 30])
    segments = next(c for c in errors[0].lines[2] if isinstance(c, LineCollection)).get_segments()
    assert [(s[0][1], s[1][1]) for s in segments] == [pytest.approx((40, 60)), pytest.approx((20, 40))]
    assert bars[2].patches[0].get_hatch() == "//"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["SuperCLEVR", "GEOQA"]
    is_png(tmp_path / "bars.png")


def test_benchmark_bars_without_reference_rows(tmp_path):
    base = write_summary(
        tmp_path / "base", {"mini_counting": (0.25, 0.2, 0.3), "mini_geometry": (0.0, 0.0, 0.02)}
    )
    fig = benchmark_bars(results_table({"base": base}))
    (ax,) = fig.axes
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [p.get_height() for p in bars.patches] == pytest.approx([25, 0])
    segments = next(c for c in ax.containers[0].lines[2]).get_segments()
    assert (segments[1][0][1], segments[1][1][1]) == pytest.approx((0, 2))  # a CI starting at 0 is drawn


def test_benchmark_bars_labels_do_not_overlap(tmp_path):
    """The study's five columns with their long titles, three models: every x label stays clear of the others."""
    titles = [f"miniature {task} (image)" for task in ("counting", "geometry", "grounding", "spatial")]
    summaries = {}
    for label in ("base", "GRPO-text", "GRPO-vis"):
        directory = write_summary(tmp_path / label, {t: (0.3, 0.25, 0.35) for t in [*titles, "average"]})
        summaries[label] = directory
    fig = benchmark_bars(results_table(summaries, published="none"))
    fig.canvas.draw()
    (ax,) = fig.axes
    boxes = [t.get_window_extent() for t in ax.get_xticklabels()]
    assert len(boxes) == 5
    for left, right in itertools.pairwise(boxes):
        assert left.x1 < right.x0, (left, right)


# ---------------------------------------------------------------------------------------------------------------
# Aha-moment analytics
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def rollouts(tmp_path):
    run = RunDir(tmp_path / "run")
    for step in range(1, 5):
        rows = []
        for i in range(4):
            completion = (
                "<think>Wait, 3.</think><answer>3</answer>"
                if i < step
                else "<think>3</think><answer>3</answer>"
            )
            reward = {"overall": 1.1, "accuracy": 1.0, "format": 1.0, "think_answer_disagree": i == 0}
            rows.append(
                {
                    "step": step,
                    "data_source": "counting",
                    "completion": completion,
                    "reward": reward,
                    "advantage": 0.0,
                    "length": 10 * step + i,
                    "finished": i != 3,
                }
            )
        run.log_rollouts(rows)
    return load_rollouts(run)


def test_reflection_plot(rollouts, tmp_path):
    counts = reflection_counts_per_step(rollouts)
    fig = reflection_plot(counts, smoothing=0.0, path=tmp_path / "reflection.png")
    left, right = fig.axes
    assert left.lines[0].get_ydata().tolist() == [0.25, 0.5, 0.75, 1.0]
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["wait"]  # only the patterns seen
    is_png(tmp_path / "reflection.png")
    none = reflection_plot(reflection_counts_per_step(rollouts.assign(completion="plain")))
    assert len(none.axes[1].lines) == 0 and "no reflective phrase" in none.axes[1].texts[0].get_text()


def test_length_plot(rollouts, tmp_path):
    fig = length_plot(response_length_per_step(rollouts), path=tmp_path / "length.png")
    left, right = fig.axes
    assert len(left.lines) == 2 and any(isinstance(c, PolyCollection) for c in left.collections)  # mean, band
    assert right.lines[0].get_ydata().tolist() == [0.25] * 4  # raw series: one of four cut per step
    is_png(tmp_path / "length.png")


def test_disagreement_plot(rollouts):
    fig = disagreement_plot(think_answer_disagreement_rate_per_step(rollouts), smoothing=0.0)
    (ax,) = fig.axes
    assert ax.lines[0].get_ydata().tolist() == [0.25] * 4


# ---------------------------------------------------------------------------------------------------------------
# Data examples
# ---------------------------------------------------------------------------------------------------------------


def png_bytes(size, color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_example_grid_images_text_only_and_unreadable(tmp_path):
    on_disk = tmp_path / "scene.png"
    on_disk.write_bytes(png_bytes((112, 84), (120, 30, 30)))
    records = [
        Record.from_question(
            data_source="counting",
            question="How many red objects?",
            answer="3",
            reward_func="acc",
            index=0,
            images=[ImageRef(bytes=png_bytes((112, 112), (0, 0, 255)))],
        ),
        Record.from_question(
            data_source="geometry",
            question="Find x.",
            answer="40°",
            reward_func="acc",
            index=1,
            images=[ImageRef(path=str(on_disk))],
        ),
        Record.from_question(
            data_source="counting_text",
            question="A scene has 3 red cubes. How many?",
            answer="3",
            reward_func="acc",
            index=2,
        ),
        Record.from_question(
            data_source="spatial",
            question="Which is closer?",
            answer="(A)",
            reward_func="acc",
            index=3,
            images=[ImageRef(path=str(tmp_path / "missing.png"))],
        ),
        Record.from_question(data_source="unused", question="q", answer="a", reward_func="acc", index=4),
    ]
    fig = example_grid(records, n=4, ncols=2, path=tmp_path / "grid.png")
    assert len(fig.axes) == 4
    pictures = [ax.images for ax in fig.axes]
    assert [len(p) for p in pictures] == [1, 1, 0, 0]
    assert pictures[0][0].get_array().shape[:2] == (112, 112)
    assert np.asarray(pictures[1][0].get_array())[0, 0].tolist() == [120, 30, 30]
    texts = [" ".join(t.get_text() for t in ax.texts) for ax in fig.axes]
    assert "How many red objects?" in texts[0] and "answer: 3" in texts[0]
    assert "text-only prompt" in texts[2] and "A scene has 3 red cubes" in texts[2]
    assert "image not readable" in texts[3]
    assert [ax.get_title() for ax in fig.axes] == ["counting", "geometry", "counting_text", "spatial"]
    is_png(tmp_path / "grid.png")
    two = [ImageRef(bytes=png_bytes((56, 56), (0, 0, 0))), ImageRef(path=str(on_disk))]
    pair = Record.from_question(
        data_source="compare", question="q", answer="a", reward_func="acc", index=5, images=two
    )
    assert example_grid([pair]).axes[0].get_title() == "compare (1 of 2 images)"
    with pytest.raises(ValueError, match="at least one record"):
        example_grid([])
