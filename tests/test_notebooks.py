"""The notebooks: their contract (one parameters cell, no definitions, committed clean) and the whole study
pipeline run end to end through papermill on params/ci.yaml."""

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from ocean_lib.base.config import load_config
from ocean_lib.data import synthetic
from ocean_lib.study import pipeline

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_pipeline_runs_every_notebook_there_is():
    assert [p.stem for p in NOTEBOOKS] == pipeline.NOTEBOOKS
    assert sorted(pipeline.EXECUTION_ORDER) == pipeline.NOTEBOOKS  # each once, whatever the order


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_contract(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert re.search(r"^params = ", tagged[0].source, re.M) and re.search(
        r"^overrides = ", tagged[0].source, re.M
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert not re.search(r"^\s*(def|class)\s", cell.source, re.M), "computation belongs in ocean_lib"
        assert not cell.get("outputs") and cell.get("execution_count") is None, "commit notebooks clean"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


# Every figure a notebook promises: (notebook, a piece of the cell's source) -> the cell must display an image.
FIGURES = [
    ("00_grpo_walkthrough", "display(update.prompt.images[0]"),
    ("00_grpo_walkthrough", "table.plot.scatter("),
    ("01_data", "plots.example_grid("),
    ("02_train", "plots.LiveCurves(pipeline.figure_path(cfg, stage))"),  # one image per stage: checked below
    ("02_train", "plots.training_curves("),
    ("03_evaluate", "plots.benchmark_bars("),
    ("04_aha_moments", "plots.reflection_plot("),
    ("04_aha_moments", "plots.length_plot("),
    ("04_aha_moments", "plots.disagreement_plot("),
    ("05_results", "plots.benchmark_bars("),
]


def displayed_images(notebook, piece: str) -> int:
    """How many images the code cell holding ``piece`` displayed (PNG or JPEG outputs)."""
    (cell,) = [c for c in notebook.cells if c.cell_type == "code" and piece in c.source]
    return sum(1 for o in cell.outputs if {"image/png", "image/jpeg"} & set(o.get("data", {})))


def test_the_data_notebook_displays_its_figure(tmp_path, monkeypatch):
    """Executed as papermill runs it (the CI-size params): the example grid is an image output of its cell, not
    only a PNG file."""
    import papermill

    monkeypatch.chdir(ROOT)
    out = tmp_path / "01_data.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "01_data.ipynb"),
        str(out),
        parameters={"params": "params/ci.yaml", "overrides": [f"study.output_dir={tmp_path}/ci"]},
        kernel_name="python3",
        progress_bar=False,
    )
    notebook = nbformat.read(out, as_version=4)
    assert displayed_images(notebook, "plots.example_grid(") == 1


def test_reproduce_reports_where_training_and_evaluation_are(tmp_path):
    """What reproduce prints while 02_train and 03_evaluate run, read from the run and eval directories."""
    from ocean_lib.base.run_dir import plan_line

    cfg = load_config(ROOT / "params" / "ci.yaml", [f"study.output_dir={tmp_path}"])
    progress = pipeline.StudyProgress(cfg)
    assert progress.status("02_train") is None  # nothing started
    warm = pipeline.run_dir(cfg, "warmstart")
    (warm.final).mkdir(parents=True)
    (warm.final / "trainer_state.json").write_text("{}")
    text = pipeline.run_dir(cfg, "grpo_text")
    text.path.mkdir(parents=True)
    text.log.write_text("Loading weights\n")
    assert progress.status("02_train") == "grpo_text (stage 2 of 4): starting"
    text.log.write_text(f"Loading weights\n{plan_line(0, 40)}\n")
    for step in (1, 2, 3):
        text.log_metrics({"step": step})
    assert progress.status("02_train") == "grpo_text (stage 2 of 4): step 3 of 40"
    text.log_metrics({"step": 4})
    assert re.fullmatch(
        r"grpo_text \(stage 2 of 4\): step 4 of 40, [\d.]+ s/step, about \d+:\d\d left",
        progress.status("02_train"),
    )

    assert progress.status("03_evaluate") is None
    answers = pipeline.eval_dir(cfg, "base") / "mini_counting.jsonl"
    answers.parent.mkdir(parents=True)
    answers.write_text('{"id": 1}\n{"id": 2}\n')
    assert progress.status("03_evaluate") == "evaluation items answered: base 2, GRPO-text 0, GRPO-vis 0"
    synthetic.build(cfg)  # with the benchmarks' data there, the total and an ETA
    progress = pipeline.StudyProgress(cfg)
    assert (
        progress.status("03_evaluate")
        == "evaluation items answered: base 2 of 16, GRPO-text 0 of 16, GRPO-vis 0 of 16"
    )
    answers.write_text('{"id": 1}\n{"id": 2}\n{"id": 3}\n')
    assert re.fullmatch(
        r"evaluation items answered: base 3 of 16, .*; about \d+:\d\d left", progress.status("03_evaluate")
    )


def test_a_notebook_opened_before_the_study_ran_says_what_to_run_first(tmp_path):
    """Before: Run All on 04_aha_moments built the data and the model in silence (140 s on mini.yaml), then
    failed with a FileNotFoundError traceback."""
    import papermill

    out = tmp_path / "study"
    with pytest.raises(papermill.PapermillExecutionError) as raised:
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "04_aha_moments.ipynb"),
            str(tmp_path / "04.ipynb"),
            parameters={"params": str(ROOT / "params" / "ci.yaml"), "overrides": [f"study.output_dir={out}"]},
            kernel_name="python3",
            progress_bar=False,
        )
    assert raised.value.ename == "StudyNotReady"
    assert (
        "make reproduce" in raised.value.evalue and "stage grpo_vis_stage2 not trained" in raised.value.evalue
    )
    assert not (out / "data").exists() and not (out / "model").exists()  # refused before building anything
    shown = nbformat.read(tmp_path / "04.ipynb", 4).cells
    error = next(
        o for c in shown if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    )
    assert error.traceback[0].startswith("StudyNotReady: this notebook shows what 02_train produces")
    assert not any("File " in line and ".py" in line for line in error.traceback)  # the message, no traceback
    for name, after in (("03_evaluate", "02_train"), ("05_results", "03_evaluate")):
        with pytest.raises(pipeline.StudyNotReady, match=f"shows what {after} produces"):
            pipeline.open_study(ROOT / "params" / "ci.yaml", [f"study.output_dir={out}"], after=after)
        source = (ROOT / "notebooks" / f"{name}.ipynb").read_text()
        assert f'after=\\"{after}\\"' in source, name


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_study_keeps_its_data(tmp_path, how, capsys):
    """Before, the manifest's output_dir differed after a move, so opening the study rebuilt its data (and a
    read-only copy could not be opened)."""
    ci = ROOT / "params" / "ci.yaml"
    outside = "model.name_or_path=absent/model"  # data only: the tiny model is not what this is about
    pipeline.prepare(load_config(ci, [f"study.output_dir={tmp_path}/old", outside]))
    # a long build says what it does, then how long it took (a notebook showed a minute of silence)
    assert re.fullmatch(
        r"building the procedural data: [\d,]+ records into \S+ \.\.\.\ndone in \d+:\d\d\n",
        capsys.readouterr().out,
    )
    (shutil.move if how == "moved" else shutil.copytree)(tmp_path / "old", tmp_path / "new")
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "new" / "data").rglob("*")}
    pipeline.prepare(load_config(ci, [f"study.output_dir={tmp_path}/new", outside]))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "new" / "data").rglob("*")} == written
    assert capsys.readouterr().out == ""
    pipeline.prepare(load_config(ci, [f"study.output_dir={tmp_path}/new", outside, "data.synthetic.seed=1"]))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "new" / "data").rglob("*")} != written  # other data


@pytest.mark.slow
def test_reproduce_runs_the_study_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # notebooks resolve params/ from the project root
    overrides = [f"study.output_dir={tmp_path}/ci"]  # data, model and runs follow it
    report = pipeline.reproduce("params/ci.yaml", overrides)
    out = tmp_path / "ci"
    cfg = load_config("params/ci.yaml", overrides)

    assert report == out / "report.html" and report.stat().st_size > 10_000
    html = report.read_text()
    for name in pipeline.NOTEBOOKS:  # every notebook's title made it into the report
        title = (
            nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells[0].source.splitlines()[0]
        )
        assert title.lstrip("# ").split("·")[-1].strip() in html
    # Every promised figure is displayed in its executed notebook (what JupyterLab and the report show) ...
    executed = {
        name: nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4) for name in pipeline.NOTEBOOKS
    }
    for name, piece in FIGURES:
        assert displayed_images(executed[name], piece) >= 1, (name, piece)
    assert displayed_images(executed["02_train"], "LiveCurves(") == len(cfg.study.stages)
    # ... and in the report, which renders offline and shows what a reader needs, not a kernel's leftovers.
    assert (
        len(re.findall(r'src="data:image/(?:png|jpeg);base64,', html))
        >= len(FIGURES) + len(cfg.study.stages) - 1
    )
    assert not re.search(r"<script[^>]+src=", html) and "mathjax" not in html.lower()
    assert html.count('class="math"') >= 4  # the walkthrough's formulas, drawn
    assert 'class="ocean-rollouts"' in html or "class='ocean-rollouts'" in html  # the browser's static view
    for noise in ("VBox(children", "0step", "?it/s", "PosixPath(", "[WARNING]", "Setting accelerator to CPU"):
        assert noise not in html, noise
    assert not re.search(r"\d\.\d{12,}", html)  # no float32 noise such as 0.10000000149011612
    assert html.count("injected-parameters") <= len(pipeline.NOTEBOOKS)  # one parameters cell per notebook
    # The walkthrough ran after training: its group was sampled from the warm-started base.
    walkthrough = (out / "notebooks" / "00_grpo_walkthrough.ipynb").read_text()
    assert f"policy: {pipeline.run_dir(cfg, 'warmstart').final}" in walkthrough
    for stage in cfg.study.stages:
        run = pipeline.run_dir(cfg, stage)
        assert run.is_finished() and len(run.read_metrics()) == 2
    for label in pipeline.rows(cfg):
        summary = json.loads((pipeline.eval_dir(cfg, label) / "summary.json").read_text())
        for name in cfg.study.benchmarks:
            entry = summary["benchmarks"][name]
            assert entry["n"] == cfg.data.synthetic.n_test and 0.0 <= entry["accuracy"] <= 1.0
    results = (out / "results.md").read_text()
    assert all(label in results for label in pipeline.rows(cfg)) and "average" in results
    assert (out / "results.csv").read_text().count("\n") == 1 + 3 * (len(cfg.study.benchmarks) + 1)
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"examples", "warmstart", "training_curves", "benchmarks", "reflections", "results"} <= figures

    # Re-running skips finished work: no stage trains again, no item is generated again.
    before = {p: p.stat().st_mtime for p in (out / "eval").rglob("*.jsonl")}
    pipeline.reproduce("params/ci.yaml", overrides)
    assert {p: p.stat().st_mtime for p in (out / "eval").rglob("*.jsonl")} == before
    assert all(len(pipeline.run_dir(cfg, stage).read_metrics()) == 2 for stage in cfg.study.stages)
    shutil.rmtree(out)
