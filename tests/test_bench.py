"""The benchmark scripts still run end to end (on small sizes); their numbers are not asserted: timing is not a test."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_script(name: str, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()


def test_reward_bench_checks_identical_verdicts_and_prints_a_ratio():
    lines = run_script("rewards.py", "--n", "400", "--rounds", "2", "--warm", "50")
    assert re.fullmatch(r"identical verdicts on all 400; speed-up: [0-9.]+x", lines[-1])


@pytest.mark.slow
def test_micro_batch_bench_checks_equal_gradients_and_flags_ratios_taken_under_load(tmp_path):
    """With a load limit of 0 every machine is too busy: the ratios are printed and saved as no measurement."""
    lines = run_script(
        "micro_batches.py",
        *("--rounds", "1", "--median", "16", "--max-len", "64", "--tokens", "400"),
        *("--out", str(tmp_path), "--load-limit", "0"),
    )
    assert re.search(r"bucketed: \d+% of computed token slots are padding", "\n".join(lines))
    assert re.fullmatch(
        r"with gradient checkpointing, consecutive / bucketed: [0-9.]+x "
        r"\(not a measurement: load average [0-9.]+ > 0\.0 on \d+ cores\)",
        lines[-1],
    )
    (saved,) = tmp_path.glob("*-micro-batches.json")
    result = json.loads(saved.read_text())
    assert result["measurement"] is False and result["load_limit"] == 0
    assert {"before", "without checkpointing, after round 1"} <= set(result["load_average"])
    assert result["machine"]["torch_cpu_capability"] and result["machine"]["cpu_count"] > 0
    assert result["with_checkpointing"]["ratio_consecutive_over_bucketed"] > 0


def test_bench_help_shows_the_benchmarks_own_options():
    done = subprocess.run(
        [sys.executable, "-m", "ocean_lib", "bench", "grpo", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--scaling-steps" in done.stdout, done.stdout + done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "ocean_lib", "bench", "grpo", "--shape", "scale", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--rounds" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
def test_scale_bench_runs_ours_under_zero3_and_trl_through_the_cli(tmp_path):
    """The scale bench's whole path (TRL with gradient checkpointing; ours launched on 2 processes under ZeRO-3,
    prompt-once on and off; the same-work checks, the JSON, both ratio lines) at a reduced shape, which the
    ratio lines name. The ratios' values are not a test; the FLOP counts' order is arithmetic."""
    done = subprocess.run(
        [sys.executable, "-m", "ocean_lib", "bench", "grpo", "--shape", "scale"]
        + ["--steps", "2", "--warmup", "1", "--rounds", "1", "--group", "4", "--image-size", "112"]
        + ["--new-tokens", "8", "--out", str(tmp_path), "--load-limit", "1000"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ratios = re.findall(
        r"^(TRL/ours|prompt-once off/on) per-step ratio \((.*)\): [0-9.]+$", done.stdout, re.M
    )
    assert [name for name, _ in ratios] == ["prompt-once off/on", "TRL/ours"], done.stdout
    assert all(label.startswith("reduced shape") for _, label in ratios), ratios
    (saved,) = tmp_path.glob("*-scale.json")
    result = json.loads(saved.read_text())
    assert {side: len(steps) for side, steps in result["raw"].items()} == {
        "trl": 2,
        "ours": 2,
        "ours_prompt_once_off": 2,
    }
    assert result["work"]["scale_shape"] is False and result["work"]["group"] == 4
    flops = result["flops_per_step"]
    assert flops["trl"] > flops["ours_prompt_once_off"] > flops["ours"] > 0


@pytest.mark.slow
def test_grpo_bench_runs_two_steps_per_side_through_the_cli(tmp_path):
    """The bench's whole path (TRL's GRPOTrainer and ours on the same work, the JSON, the ratio line) for two
    steps each (its statistics need two); the ratio's value is not a test. A load limit no machine reaches: the
    ratio counts as a measurement, with the machine's state saved beside it."""
    done = subprocess.run(
        [sys.executable, "-m", "ocean_lib", "bench", "grpo", "--steps", "2", "--warmup", "0"]
        + ["--scaling-steps", "0", "--out", str(tmp_path), "--load-limit", "1000"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^ratio TRL / ocean_lib: [0-9.]+x$", done.stdout, re.M), done.stdout
    (saved,) = tmp_path.glob("*.json")
    assert saved.read_text().count('"median"') >= 2
    result = json.loads(saved.read_text())
    assert result["measurement"] is True and result["highest_1min_load"] <= result["load_limit"]
    assert {"before", "after step 2", "after side by side"} <= set(result["load_average"])
    assert result["machine"]["torch_cpu_capability"] == re.search(r"torch CPU kernels (\w+)", done.stdout)[1]


def test_packing_simulation_prints_the_three_packings():
    lines = run_script("packing.py", "--seeds", "1")
    assert lines[0].startswith("simulated lengths, not a timing")
    rows = {line[:22].strip(): line[22:].split() for line in lines[2:]}
    assert list(rows) == ["consecutive (8 rows)", "length buckets", "prompt-once packing"]
    assert rows["consecutive (8 rows)"][:2] == ["64.0", "64.0"]  # 512 rows in 8s: one prompt each
    # Within the budget as the prompt-once forward runs it.
    assert int(rows["prompt-once packing"][-1]) <= 32768
