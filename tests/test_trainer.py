"""The GRPO trainer end to end on the real tiny model: run directory, accumulation, processes, resume, errors."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_overrides

from ocean_lib import launch
from ocean_lib.config import load_config, save_config
from ocean_lib.io import read_jsonl
from ocean_lib.metrics import is_registered
from ocean_lib.models import load_policy
from ocean_lib.run_dir import RunDir
from ocean_lib.trainer import TrainingError, train

NOT_COMPARABLE = ("time/",)  # wall-clock metrics differ between any two runs


def _config(tiny_model_dir, mini_data_dir, tmp_path, *extra, name="run"):
    return load_config(None, [*tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path, name), *extra])


def _weights(path):
    model, _ = load_policy(str(path))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _comparable(rows):
    return [{k: v for k, v in row.items() if not k.startswith(NOT_COMPARABLE)} for row in rows]


def test_grpo_run_writes_a_complete_run_directory(tiny_model_dir, mini_data_dir, tmp_path):
    cfg = _config(tiny_model_dir, mini_data_dir, tmp_path)
    final = train(cfg)
    run = RunDir(cfg.run_dir)
    assert load_config(run.config) == cfg
    metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(is_registered(k) for m in metrics for k in m)
    for m in metrics:
        assert 0.0 <= m["reward/overall"] <= 1.0 + cfg.reward.format_weight
        assert m["ratio/mean"] == pytest.approx(1.0)  # one update per batch: the ratio is exactly 1
        assert m["response/sampler_logprob_gap"] < 1e-4
    rollouts = list(read_jsonl(run.rollouts))
    assert len(rollouts) == 2 * 4 * 4
    assert {"step", "prompt_id", "data_source", "completion", "reward", "advantage", "length"} <= set(
        rollouts[0]
    )
    # Embedded images are saved once as thumbnails the rollout browser can show (paths relative to the run).
    assert all((run.path / r["image"]).is_file() for r in rollouts)
    # Advantages are group-normalised: each group of 4 sums to zero.
    for start in range(0, len(rollouts), 4):
        assert sum(r["advantage"] for r in rollouts[start : start + 4]) == pytest.approx(0.0, abs=1e-4)
    assert [step for step, _ in run.complete_checkpoints()] == [1]
    assert final == run.final and run.is_finished()
    before, after = _weights(tiny_model_dir), _weights(final)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_an_existing_run_is_never_overwritten(tiny_model_dir, mini_data_dir, tmp_path):
    cfg = _config(tiny_model_dir, mini_data_dir, tmp_path, "train.max_steps=1")
    train(cfg)
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg)
    assert train(cfg, resume=True) == RunDir(cfg.run_dir).final  # finished: nothing to do
    assert len(RunDir(cfg.run_dir).read_metrics()) == 1


def test_micro_batches_accumulate_to_the_full_batch(tiny_model_dir, mini_data_dir, tmp_path):
    runs = {}
    for micro in (16, 2):
        cfg = _config(
            tiny_model_dir,
            mini_data_dir,
            tmp_path,
            "train.max_steps=1",
            f"train.micro_batch_size={micro}",
            name=f"micro{micro}",
        )
        train(cfg)
        runs[micro] = RunDir(cfg.run_dir).read_metrics()[0]
    for key in ("loss/total", "grad/norm", "kl/mean", "entropy/mean", "reward/overall"):
        assert runs[2][key] == pytest.approx(runs[16][key], rel=1e-5, abs=1e-7), key


def test_nonfinite_loss_stops_and_names_the_last_good_checkpoint(tiny_model_dir, mini_data_dir, tmp_path):
    cfg = _config(
        tiny_model_dir, mini_data_dir, tmp_path, "train.lr=1e30", "train.max_steps=3", "train.grad_clip=0"
    )
    with pytest.raises(TrainingError, match=r"non-finite .*step_1"):
        train(cfg)
    assert [step for step, _ in RunDir(cfg.run_dir).complete_checkpoints()] == [1]


@pytest.mark.slow
def test_two_processes_take_the_same_step_as_one(tiny_model_dir, mini_data_dir, tmp_path):
    one = _config(tiny_model_dir, mini_data_dir, tmp_path, "train.max_steps=1", name="one")
    train(one)
    params = tmp_path / "two.yaml"
    two = _config(tiny_model_dir, mini_data_dir, tmp_path, "train.max_steps=1", name="two")
    save_config(two, params)
    launch.train(params, topology=launch.Topology(num_processes=2))
    a, b = RunDir(one.run_dir).read_metrics()[0], RunDir(two.run_dir).read_metrics()[0]
    for key in ("loss/total", "grad/norm", "reward/overall", "kl/mean", "response/length_mean"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    wa, wb = _weights(RunDir(one.run_dir).final), _weights(RunDir(two.run_dir).final)
    # AdamW's first step moves each weight by about lr * sign(grad): compare to a small fraction of lr.
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < 1e-3 * one.train.lr * 10


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_model_dir, mini_data_dir, tmp_path):
    steps = ["train.max_steps=4", "train.save_every=1"]
    reference = _config(tiny_model_dir, mini_data_dir, tmp_path, *steps, name="uninterrupted")
    train(reference)

    killed = _config(tiny_model_dir, mini_data_dir, tmp_path, *steps, name="killed")
    params = tmp_path / "killed.yaml"
    save_config(killed, params)
    run = RunDir(killed.run_dir)
    child = subprocess.Popen(
        [sys.executable, "-m", "ocean_lib", "train", "--params", str(params)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while len(run.complete_checkpoints()) < 2 and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)  # mid-step 3 (or mid-save): whatever it was doing is lost
    child.wait()
    assert not run.is_finished()

    train(killed, resume=True)
    assert _comparable(run.read_metrics()) == _comparable(RunDir(reference.run_dir).read_metrics())
    wa, wb = _weights(RunDir(reference.run_dir).final), _weights(run.final)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_unimplemented_lora_is_refused_not_ignored(tiny_model_dir, mini_data_dir, tmp_path):
    cfg = _config(tiny_model_dir, mini_data_dir, tmp_path, "model.lora_rank=8")
    with pytest.raises(TrainingError, match="lora_rank=8"):
        train(cfg)
