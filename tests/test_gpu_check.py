"""gpu-check, as far as a CPU can run it: the refusals, the report, the real-width models and the micro-batch."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from ocean_lib.base.config import load_config
from ocean_lib.cli.gpu_check import (
    CHECKS,
    DEFAULT_PARAMS,
    Check,
    Result,
    Workspace,
    _how_it_ran,
    format_line,
    judge_sync,
    micro_batch_estimate_gb,
    missing_requirements,
    real_width_config,
    run_check,
    summary_line,
    synthetic_micro_batch,
    write_report,
)
from ocean_lib.training.forward import completion_logprobs
from ocean_lib.training.memory import QWEN25_VL, ModelShape, activation_bytes
from ocean_lib.training.models import load_policy

NO_CUDA = pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has a GPU: run `python -m ocean_lib gpu-check`"
)


def _gpu_check(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "report.json"
    args = [a for o in overrides for a in ("--set", o)]
    done = subprocess.run(
        [sys.executable, "-m", "ocean_lib", "gpu-check", "--out", str(report), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, json.loads(report.read_text())


@NO_CUDA
def test_without_cuda_every_check_fails_and_the_report_says_why(tmp_path):
    done, report = _gpu_check(tmp_path, "rollout.backend=hf")
    assert done.returncode == 1, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"gpu-check of {DEFAULT_PARAMS}")
    assert (
        lines[1].startswith("failed   environment")
        and "no CUDA GPU: torch.cuda.is_available() is False" in lines[1]
    )
    names = [c.name for c in CHECKS]
    assert [c["check"] for c in report["checks"]] == ["environment", *names]
    statuses = {c["check"]: c["status"] for c in report["checks"]}
    vllm_stages = [n for n in names if n.startswith("vLLM")]
    assert len(vllm_stages) == 4 and {statuses[n] for n in vllm_stages} == {"skipped"}  # rollout.backend=hf
    assert {statuses[n] for n in names if n not in vllm_stages} == {"failed"}
    assert lines[-1].startswith(report["summary"]) and "FAILED (environment, bf16 generation" in lines[-1]
    assert report["ok"] is False and report["rollout_backend"] == "hf"
    assert report["versions"]["torch"] == torch.__version__


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("vllm") is not None, reason="vLLM is installed here"
)
def test_params_asking_for_vllm_or_flash_attention_without_them_fail(tmp_path):
    done, report = _gpu_check(tmp_path, "model.attn_implementation=flash_attention_2")
    assert done.returncode == 1
    environment = report["checks"][0]["note"]
    assert "rollout.backend=vllm but vLLM is not installed (make install-gpu)" in environment
    assert "flash-attn is not installed (make flash-attn)" in environment
    notes = {c["check"]: c["note"] for c in report["checks"]}
    # never "skipped": the params ask for both
    assert notes["vLLM sync 3B (d)"] == "not installed: vllm, flash_attn"
    assert notes["training step"] == "not installed: flash_attn, vllm"


def _plan(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "plan.json"
    args = [a for o in overrides for a in ("--set", o)]
    done = subprocess.run(
        [sys.executable, "-m", "ocean_lib", "gpu-check", "--plan", "--out", str(report), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, json.loads(report.read_text())


@pytest.mark.parametrize("overrides", [[], ["algorithm.balance_ranks=8"]], ids=["default", "verl-8-ranks"])
def test_the_plan_of_the_default_params_would_start_every_check(tmp_path, overrides):
    """Every training check's configuration (the check's own overrides on the 3B params), its accelerate command
    as accelerate parses it, its DeepSpeed file against the params, the model configs: built on CPU. Params that
    fix verl's balance to 8 ranks, as Ocean-R1's one node did, still start: the checks' 8 sequences are balanced
    over the one process they start."""
    done, report = _plan(tmp_path, *overrides)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [
        line for line in done.stdout.splitlines() if line.split(" ")[0] in ("ready", "failed", "skipped")
    ]
    assert [line.split()[0] for line in lines] == ["ready"] * len(CHECKS)
    assert [c["check"] for c in report["checks"]] == [c.name for c in CHECKS]  # one line per check, in order
    notes = {c["check"]: c["note"] for c in report["checks"]}
    assert notes["vLLM sync (a) ZeRO-3"].startswith("ZeRO-3 (zero3.yaml), 2 x 4 sequences, 3 steps, lr 0.01")
    assert "rollout vllm" in notes["vLLM from final (c)"]
    assert report["ok"] is True and report["plan"] is True
    assert done.stdout.strip().splitlines()[-1].startswith(f"gpu-check --plan: {len(CHECKS)} ready, 0 failed")


def test_a_plan_that_could_not_start_fails_the_checks_it_stops(tmp_path):
    """DeepSpeed clips with its JSON's gradient_clipping (1.0): a different train.grad_clip stops the ZeRO
    launches (stage (c) runs (a)'s ZeRO-3 launch), not the plain ones."""
    done, report = _plan(tmp_path, "train.grad_clip=0.5")
    assert done.returncode == 1
    statuses = {c["check"]: c["status"] for c in report["checks"]}
    zero = [
        "ZeRO-2 step",
        "ZeRO-3 step",
        "vLLM sync (a) ZeRO-3",
        "vLLM sync (b) ZeRO-2",
        "vLLM from final (c)",
    ]
    assert {statuses[n] for n in zero} == {"failed"}
    assert {statuses[n] for n in statuses if n not in zero} == {"ready"}
    assert all("gradient_clipping=1.0" in c["note"] for c in report["checks"] if c["check"] in zero)


@pytest.mark.parametrize(
    ("overrides", "installed", "expected"),
    [
        (["rollout.backend=hf", "model.attn_implementation=sdpa"], {"deepspeed"}, []),
        (["rollout.backend=vllm"], {"deepspeed"}, ["rollout.backend=vllm but vLLM"]),
        (["rollout.backend=vllm"], {"deepspeed", "vllm"}, []),
        (["model.attn_implementation=flash_attention_2"], {"deepspeed", "vllm"}, ["flash_attention_2 but"]),
        (["rollout.backend=hf"], set(), ["DeepSpeed is not installed"]),
    ],
)
def test_missing_requirements_follow_the_params(overrides, installed, expected):
    cfg = load_config(DEFAULT_PARAMS, overrides)
    problems = missing_requirements(cfg, installed.__contains__)
    assert len(problems) == len(expected)
    assert all(p.startswith(e) or e in p for p, e in zip(problems, expected, strict=True))


def test_a_check_is_skipped_only_when_the_params_do_not_use_it(capsys):
    cfg = load_config(DEFAULT_PARAMS, ["rollout.backend=hf"])
    work = SimpleNamespace()  # stands for the GPU workspace: these checks only raise or return a note

    def raises(_):
        raise ValueError("tensor sizes differ\nsecond line")

    results = [
        run_check(
            Check("unused", raises, raises, applies=lambda c: False, why_not="not used"),
            work,
            cfg,
            lambda m: True,
        ),
        run_check(
            Check("needs x", raises, raises, needs=lambda c: ("x", "y")), work, cfg, lambda m: m == "y"
        ),
        run_check(Check("no gpu", raises, raises), None, cfg, lambda m: True),
        run_check(Check("fails", raises, raises), work, cfg, lambda m: True),
        run_check(Check("passes", lambda w: "fine", raises), work, cfg, lambda m: True),
    ]
    assert [(r.status, r.note) for r in results] == [
        ("skipped", "not used"),
        ("failed", "not installed: x"),
        ("failed", "no CUDA GPU"),
        ("failed", "ValueError: tensor sizes differ"),
        ("passed", "fine"),
    ]
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["skipped", "failed", "failed", "failed", "passed"]


def test_report_lines_summary_and_json(tmp_path):
    results = [
        Result("environment", "passed", 0.0, None, "torch 2.11"),
        Result("memory 3B", "passed", 12.34, 40.56, "peak 40.6 GB", {"estimate_gb": 38.0}),
        Result("ZeRO-3 step", "failed", 3.0, 2.0, "AssertionError: run_info.json says {}"),
        Result("vLLM sync 3B (d)", "skipped", 0.0, None, "hf"),
    ]
    assert format_line(results[1]) == "passed   memory 3B                 12.3 s    40.6 GB  peak 40.6 GB"
    assert format_line(results[0]).split()[4:6] == ["-", "GB"]
    summary = summary_line(results, 61.2)
    assert summary == "gpu-check: 2 passed, 1 failed, 1 skipped in 61 s: FAILED (ZeRO-3 step)"
    assert (
        summary_line(results[:2], 5, plan=True) == "gpu-check --plan: 0 ready, 0 failed, 0 skipped in 5 s: OK"
    )
    assert summary_line(results[:2], 5).endswith(": OK")
    path = tmp_path / "deep" / "report.json"
    write_report(path, results, {"device": "H200"}, 61.2)
    report = json.loads(path.read_text())
    assert (report["device"], report["ok"], report["summary"]) == ("H200", False, summary)
    assert report["checks"][1] == {
        "check": "memory 3B",
        "status": "passed",
        "seconds": 12.34,
        "peak_gb": 40.56,
        "note": "peak 40.6 GB",
        "details": {"estimate_gb": 38.0},
    }


def test_the_sync_stages_verdict_needs_steps_2_and_3_at_step_1s_level_and_a_policy_that_moved():
    def rows(gaps, kl):
        return [
            {"response/sampler_logprob_gap": g, "kl/mean": k}
            for g, k in zip(gaps, [0.0, kl, kl], strict=True)
        ]

    assert judge_sync(rows([0.02, 0.03, 0.025], 0.5)).startswith("sampler gap by step 2.00e-02, 3.00e-02")
    with pytest.raises(AssertionError, match="does not sample from the trained weights"):
        judge_sync(rows([0.02, 0.6, 0.9], 0.5))  # a stale engine: off by how far the policy moved
    with pytest.raises(AssertionError, match="inconclusive"):
        judge_sync(rows([0.02, 0.02, 0.02], 1e-4))  # the policy barely moved: a stale engine would look fine


def test_run_info_must_show_the_zero_stage_nccl_and_the_attention(tmp_path):
    info = tmp_path / "run_info.json"
    with pytest.raises(AssertionError, match="was not written"):
        _how_it_ran(info, 3, "sdpa")
    info.write_text(json.dumps({"zero_stage": 3, "backend": "nccl", "attn_implementation": "sdpa"}))
    assert _how_it_ran(info, 3, "sdpa")["zero_stage"] == 3
    with pytest.raises(AssertionError, match=r"says \{'zero_stage': 3\}"):
        _how_it_ran(info, 2, "sdpa")
    with pytest.raises(AssertionError, match="attn_implementation"):
        _how_it_ran(info, 3, "flash_attention_2")
    info.write_text(json.dumps({"zero_stage": 3, "backend": "gloo", "attn_implementation": "sdpa"}))
    with pytest.raises(AssertionError, match="'backend': 'gloo'"):
        _how_it_ran(info, 3, "sdpa")
    info.write_text(json.dumps({"zero_stage": None, "backend": None, "attn_implementation": "sdpa"}))
    assert _how_it_ran(info, None, "sdpa")["zero_stage"] is None  # a plain run: no ZeRO, any backend


@pytest.mark.parametrize(("size", "published"), [("3B", 3_754_622_976), ("7B", 8_292_166_656)])
def test_real_width_configs_have_the_published_parameter_counts(size, published):
    with torch.device("meta"):  # no memory: shapes only
        model = Qwen2_5_VLForConditionalGeneration(real_width_config(size))
    assert sum(p.numel() for p in model.parameters()) == published
    assert ModelShape.of(model) == QWEN25_VL[size]  # the memory model's table is these models
    assert (model.lm_head.weight is model.model.language_model.embed_tokens.weight) == (size == "3B")
    fewer = real_width_config(size, layers=2, vision_depth=1)
    assert fewer.text_config.num_hidden_layers == 2 and fewer.vision_config.fullatt_block_indexes == [0]
    assert fewer.text_config.hidden_size == model.config.text_config.hidden_size


def test_the_synthetic_micro_batch_runs_through_the_training_forward(tiny_model_dir):
    model, _ = load_policy(str(tiny_model_dir))
    batch = synthetic_micro_batch(model.config, rows=3, prompt_tokens=30, response_tokens=7, image_side=56)
    assert batch.prompt_ids.shape == (3, 30) and batch.completion_ids.shape == (3, 7)
    assert (
        int((batch.prompt_ids[0] == model.config.image_token_id).sum()) == 4
    )  # 56 px: 4x4 patches, 2x2 merge
    assert batch.pixel_values.shape[0] == int(batch.image_grid_thw.prod())
    logp, _, mask = completion_logprobs(model, model, batch, torch.arange(3), 1.0)
    assert logp.shape == mask.shape == (3, 7) and bool(torch.isfinite(logp).all())
    with pytest.raises(ValueError, match="leaves no room for text"):
        synthetic_micro_batch(model.config, rows=1, prompt_tokens=5, response_tokens=1, image_side=56)


def test_memory_check_estimate_is_the_memory_model_without_optimizer_or_reference():
    """One bf16 process, no DeepSpeed: weights and gradients 2 bytes each, plus the micro-batch's activations
    exactly as ocean_lib.training.memory counts them (the table in docs/real_scale.md), nothing else."""
    shape = ModelShape.of_config(real_width_config("3B"), params=1e9)
    rows, tokens, response = 8, 4096, 2048
    activations = activation_bytes(shape, rows * tokens, rows * response, chunk=256)
    expected = (2e9 + 2e9 + sum(activations.values())) / 1e9
    assert micro_batch_estimate_gb(shape, rows, tokens, response) == pytest.approx(expected)


@pytest.mark.slow
def test_generation_check_runs_on_cpu(tmp_path):
    """The check code itself, on CPU (the GPU machine runs the same method on cuda)."""
    work = Workspace.build(tmp_path, DEFAULT_PARAMS, ["rollout.backend=hf"], device="cpu")
    assert work.generation().startswith("attention sdpa, 8 samples, mean |Δ log p| vs training forward")
    assert work.details == {"attn_implementation": "sdpa"}
