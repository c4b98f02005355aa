"""Like with like: each recipe's params beside its own published table, the verl repository's evaluation prompts
as its scripts wrote them, every cell's comparability, verl's validation metric, verl's balance over the launch's
world size, evaluation at a named checkpoint step, and the steps a params file plans."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ocean_lib.base import prompts
from ocean_lib.base.config import load_config
from ocean_lib.base.io import atomic_write_json
from ocean_lib.base.paths import PROJECT_ROOT
from ocean_lib.base.schema import RewardConfig
from ocean_lib.cli.main import main
from ocean_lib.data.records import Record
from ocean_lib.evaluation.benchmarks import get_benchmark
from ocean_lib.rewards import score_batch
from ocean_lib.study.report import INFERRED, MARKS, NOT_COMPARABLE, PUBLISHED_TABLES, results_table
from ocean_lib.training.launch import Topology, accelerate_command
from ocean_lib.training.metrics import Tally, tally_validation

REAL_SCALE = sorted(PROJECT_ROOT.glob("params/qwen25vl_*.yaml"))


def documented_template(benchmark: str) -> str:
    """The prompt template docs/evaluation.md quotes from the reference script for ``benchmark``: the first
    backticked text with ``{Question}`` on the benchmark's row of the protocol table."""
    for line in (PROJECT_ROOT / "docs/evaluation.md").read_text(encoding="utf-8").splitlines():
        if line.startswith(f"| `{benchmark}` |"):
            return next(q for q in re.findall(r"`([^`]*)`", line) if "{Question}" in q)
    raise AssertionError(f"docs/evaluation.md has no protocol row for {benchmark}")


@pytest.mark.parametrize(("name", "budget"), [("superclevr_verl", 256), ("geoqa_verl", 1024)])
def test_verl_variants_ask_the_verl_scripts_prompts_exactly(name, budget, tmp_path):
    benchmark = get_benchmark(name)
    annotation = tmp_path / benchmark.files[0]
    annotation.parent.mkdir(parents=True)
    question = "How many  cubes are there?"  # a double space: the template must keep the text as written
    annotation.write_text(json.dumps({"image_path": "a.png", "question": question, "ground_truth": 3}) + "\n")
    (item,) = benchmark.load_items(tmp_path)

    expected = documented_template(name).format(Question=question)
    messages = prompts.chat_messages(item.prompt)
    # The script's message: the image, then QUESTION_TEMPLATE.format(Question=...) as the only text.
    assert messages == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": expected}]}]
    assert benchmark.max_new_tokens == budget
    # The first repository's variant asks with another instruction: the two protocols differ in the prompt only.
    v1 = get_benchmark(name.removesuffix("_verl"))
    assert v1.score is benchmark.score and v1.max_new_tokens == budget
    (v1_item,) = v1.load_items(tmp_path)
    assert v1_item.prompt != item.prompt


def write_summary(directory: Path, benchmarks: list[str], judge: str = "") -> Path:
    entries = {}
    for name in benchmarks:
        entries[name] = {"accuracy": 0.5, "ci95": [0.4, 0.6], "n": 100}
        if judge:
            entries[name]["judge"] = judge
    atomic_write_json(directory / "summary.json", {"benchmarks": entries})
    return directory


def table_columns(cfg) -> list[str]:
    """The study's columns as the evaluation's summary names them (the RefCOCO splits as their average)."""
    splits = {"refcoco", "refcocop", "refcocog"}
    return [c for c in cfg.eval.benchmarks if c not in splits] + ["refcoco_avg"]


@pytest.mark.parametrize("params", REAL_SCALE, ids=lambda p: p.stem)
def test_each_recipe_is_reported_beside_its_own_published_table(params, tmp_path, capsys):
    cfg = load_config(params)
    verl = "stage" in params.stem
    assert cfg.eval.published_table == ("verl" if verl else "v1")
    ours = write_summary(tmp_path / "ours", table_columns(cfg))

    assert (
        main(
            ["eval", "table", "--params", str(params), "--row", f"ours={ours}", "--out", str(tmp_path / "r")]
        )
        == 0
    )
    markdown = capsys.readouterr().out
    assert markdown.startswith((tmp_path / "r.md").read_text())
    table = PUBLISHED_TABLES[cfg.eval.published_table]
    other = PUBLISHED_TABLES["v1" if verl else "verl"]
    for label in table.rows:
        assert f"| *{label}* |" in markdown
    assert not any(f"| *{label}* |" in markdown for label in set(other.rows) - set(table.rows))
    assert table.source in markdown and table.recipe in markdown and table.checkpoints in markdown
    # Every cell of a published column, measured or published, says how comparable it is.
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    header, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    published_headers = {column.header for column in table.columns.values()}
    for row in rows:
        for title, cell in zip(header[1:], row[1:], strict=True):
            if title in published_headers and cell != "–":
                assert cell.split()[-1] in MARKS.values(), (title, cell)


def test_judge_columns_are_not_comparable_without_a_judge_every_one_of_them(tmp_path):
    judge_columns = [c for c, column in PUBLISHED_TABLES["verl"].columns.items() if column.judge]
    assert sorted(judge_columns) == ["mathverse_judge", "mathvision_judge", "mathvista_judge"]

    def comparability(summary_dir: Path) -> dict[str, set[str]]:
        table = results_table({"ours": summary_dir}, published="verl")
        return {
            c: {row.cells[c].comparability for row in table.rows if c in row.cells} for c in judge_columns
        }

    rule_scored = write_summary(tmp_path / "rule", judge_columns)
    assert comparability(rule_scored) == {c: {NOT_COMPARABLE} for c in judge_columns}
    judged = write_summary(
        tmp_path / "judged", judge_columns, judge="Qwen/Qwen2.5-72B-Instruct at http://judge/v1"
    )
    assert comparability(judged) == {c: {INFERRED} for c in judge_columns}  # the VLMEvalKit split is inferred
    # The published cells alone (no measured model): not comparable either, since no judge scored anything here.
    alone = results_table({}, columns=judge_columns, published="verl")
    assert {row.cells[c].comparability for row in alone.rows for c in judge_columns} == {NOT_COMPARABLE}
    assert "≠ not comparable" in alone.markdown()


def test_validation_logs_verls_test_score_per_data_source():
    cfg = RewardConfig(mode="ocean_r1", format_weight=0.1)
    texts = [
        "<think>3 cubes</think><answer>3</answer>",  # right, well formed: 1 + 0.1
        "<think>4 cubes</think><answer>4</answer>",  # wrong, well formed: 0 + 0.1
        "<think>so 30</think><answer>30</answer>",  # right, well formed: 1 + 0.1
    ]
    truths, sources = ["3", "3", "30"], ["superclevr", "superclevr", "geoqa"]
    records = [
        Record.from_question(data_source=s, question="q", answer=t, reward_func="acc", index=i)
        for i, (s, t) in enumerate(zip(sources, truths, strict=True))
    ]
    scores = score_batch(texts, truths, ["acc"] * 3, cfg)
    assert [(s.accuracy, s.format) for s in scores] == [(1.0, 1.0), (0.0, 1.0), (1.0, 1.0)]
    tally = Tally()
    tally_validation(tally, scores, records)
    metrics = {k: v for k, v in tally.reduce(type("One", (), {"num_processes": 1})()).items()}
    assert metrics["val/test_score/superclevr"] == pytest.approx((1.1 + 0.1) / 2)
    assert metrics["val/test_score/geoqa"] == pytest.approx(1.1)
    assert metrics["val/accuracy/superclevr"] == pytest.approx(0.5) and metrics["val/format"] == 1.0


def launched_config(topology: Topology, overrides: list[str] = ()):
    """The config the training processes of a launch load: the params with the launch's own --set items."""
    command = accelerate_command(
        PROJECT_ROOT / "params/qwen25vl_3b_stage1.yaml", list(overrides), topology, False
    )
    sets = [command[i + 1] for i, part in enumerate(command) if part == "--set"]
    return load_config(PROJECT_ROOT / "params/qwen25vl_3b_stage1.yaml", sets)


def test_verl_balance_follows_the_launchs_world_size_unless_set():
    one_node = launched_config(Topology(num_processes=8))
    assert one_node.balance_ranks == 8
    four_nodes = Topology(num_processes=8, num_machines=4, main_process_ip="10.0.0.1")
    assert launched_config(four_nodes).balance_ranks == 32  # verl: n_gpus_per_node 8 x nnodes 4
    assert launched_config(four_nodes, ["algorithm.balance_ranks=8"]).balance_ranks == 8


def test_the_slurm_script_passes_the_node_count_to_the_launch():
    script = (PROJECT_ROOT / "scripts/slurm_multinode.sh").read_text()
    assert '--num-machines "$SLURM_NNODES"' in script and '--machine-rank "$SLURM_NODEID"' in script


def make_run_with_checkpoints(run: Path, steps: list[int]) -> None:
    from ocean_lib.base.run_dir import STATE_FILE

    for step in steps:
        (run / "checkpoints" / f"step_{step}").mkdir(parents=True)
        (run / "checkpoints" / f"step_{step}" / STATE_FILE).write_text("{}")


def test_eval_step_names_a_checkpoint_or_the_steps_there_are(tmp_path, capsys):
    run = tmp_path / "qwen25vl_3b_v1"
    make_run_with_checkpoints(run, [50, 100])
    (run / "checkpoints" / "step_150").mkdir()  # torn: no state file
    code = main(["eval", "--model", str(run), "--step", "150", "--benchmarks", "mini_counting"])
    assert code == 1
    assert "no complete checkpoint of step 150 (complete steps: 50, 100)" in capsys.readouterr().err


def test_eval_step_evaluates_that_checkpoint_under_its_own_name(tmp_path, tiny_model_dir, mini_data_dir):
    run = tmp_path / "runs" / "stage"
    make_run_with_checkpoints(run, [4])
    checkpoint = run / "checkpoints" / "step_4"
    for file in Path(tiny_model_dir).iterdir():
        (checkpoint / file.name).symlink_to(file)
    out = tmp_path / "eval"
    sets = [f"data.synthetic.output_dir={mini_data_dir}", f"eval.output_dir={out}", "eval.max_items=2"]
    argv = [
        "eval",
        "--model",
        str(run),
        "--step",
        "4",
        "--benchmarks",
        "mini_counting",
        "--max-new-tokens",
        "4",
    ]
    assert main([*argv, *sum((["--set", s] for s in sets), [])]) == 0
    summary = json.loads((out / "stage_step_4" / "summary.json").read_text())
    assert summary["benchmarks"]["mini_counting"]["n"] == 2


def test_plan_prints_the_steps_and_checkpoints_of_the_data(tmp_path, capsys):
    data = tmp_path / "train"
    data.mkdir()
    for part, rows in (("a", 100), ("b", 45)):
        pq.write_table(pa.table({"x": list(range(rows))}), data / f"{part}.parquet")
    sets = [f"data.train_files=[{data}]", "train.prompts_per_step=28", "train.save_every=2", "train.epochs=2"]
    argv = ["plan", "--params", str(PROJECT_ROOT / "params/qwen25vl_3b_v1.yaml")]
    assert main([*argv, *sum((["--set", s] for s in sets), [])]) == 0
    out = capsys.readouterr().out
    assert f"{data}: 145 rows" in out  # read from the parquet footers
    assert "28 prompts per step: 5 steps per epoch (5 rows of each epoch unused), 2 epochs: 10 steps" in out
    assert "step_2 ... step_8 (4; the last 3 kept), final/ = step 10" in out
    # The published text row's checkpoint-6250 cannot come from the v1 text params on a 44k set (docs/real_scale.md).
    assert (
        main(["plan", "--params", str(PROJECT_ROOT / "params/qwen25vl_3b_v1_text.yaml"), "--rows", "44000"])
        == 0
    )
    assert (
        "1,571 steps per epoch (12 rows of each epoch unused), 2 epochs: 3,142 steps"
        in capsys.readouterr().out
    )
