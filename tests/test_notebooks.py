"""The notebooks: their contract (one parameters cell, no definitions, committed clean) and the whole study
pipeline run end to end through papermill on params/ci.yaml."""

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from ocean_lib import study
from ocean_lib.config import load_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_pipeline_runs_every_notebook_there_is():
    assert [p.stem for p in NOTEBOOKS] == study.NOTEBOOKS
    assert sorted(study.EXECUTION_ORDER) == study.NOTEBOOKS  # each once, whatever the order


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


@pytest.mark.slow
def test_reproduce_runs_the_study_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # notebooks resolve params/ and outputs/ from the project root
    overrides = [
        f"study.output_dir={tmp_path}/ci",
        f"data.synthetic.output_dir={tmp_path}/ci/data",
        f"model.name_or_path={tmp_path}/ci/models/tiny",
        f"data.train_files=[{tmp_path}/ci/data/train]",
        f"study.stages.grpo_text.set.data.train_files=[{tmp_path}/ci/data/train_text]",
        f"study.stages.grpo_vis_stage1.set.data.train_files=[{tmp_path}/ci/data/train/geometry.parquet]",
        f"study.stages.grpo_vis_stage2.set.data.train_files=[{tmp_path}/ci/data/train/counting.parquet]",
    ]
    report = study.reproduce("params/ci.yaml", overrides)
    out = tmp_path / "ci"
    cfg = load_config("params/ci.yaml", overrides)

    assert report == out / "report.html" and report.stat().st_size > 10_000
    html = report.read_text()
    for name in study.NOTEBOOKS:  # every notebook's title made it into the report
        title = (
            nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells[0].source.splitlines()[0]
        )
        assert title.lstrip("# ").split("·")[-1].strip() in html
    # The walkthrough ran after training: its group was sampled from the warm-started base.
    walkthrough = (out / "notebooks" / "00_grpo_walkthrough.ipynb").read_text()
    assert f"policy: {study.run_dir(cfg, 'warmstart').final}" in walkthrough
    for stage in cfg.study.stages:
        run = study.run_dir(cfg, stage)
        assert run.is_finished() and len(run.read_metrics()) == 2
    for label in study.rows(cfg):
        summary = json.loads((study.eval_dir(cfg, label) / "summary.json").read_text())
        for name in cfg.study.benchmarks:
            entry = summary["benchmarks"][name]
            assert entry["n"] == cfg.data.synthetic.n_test and 0.0 <= entry["accuracy"] <= 1.0
    results = (out / "results.md").read_text()
    assert all(label in results for label in study.rows(cfg)) and "average" in results
    assert (out / "results.csv").read_text().count("\n") == 1 + 3 * (len(cfg.study.benchmarks) + 1)
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"examples", "warmstart", "training_curves", "benchmarks", "reflections", "results"} <= figures

    # Re-running skips finished work: no stage trains again, no item is generated again.
    before = {p: p.stat().st_mtime for p in (out / "eval").rglob("*.jsonl")}
    study.reproduce("params/ci.yaml", overrides)
    assert {p: p.stat().st_mtime for p in (out / "eval").rglob("*.jsonl")} == before
    assert all(len(study.run_dir(cfg, stage).read_metrics()) == 2 for stage in cfg.study.stages)
    shutil.rmtree(out)
