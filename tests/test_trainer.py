"""The GRPO trainer end to end on the real tiny model: run directory, accumulation, processes, resume, errors."""

import dataclasses
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import peft
import pytest
import torch
from conftest import tiny_overrides

from ocean_lib.base.config import load_config, save_config
from ocean_lib.base.io import read_jsonl
from ocean_lib.base.prompts import Prompt, user_text
from ocean_lib.base.run_dir import RunDir
from ocean_lib.base.schema import TrainConfig
from ocean_lib.data.synthetic import sample_task
from ocean_lib.training import launch, run_state
from ocean_lib.training.batch import teacher_forced_batch
from ocean_lib.training.forward import (
    balance_groups,
    completion_logprobs,
    group_costs,
    micro_batch_cost,
    pack_micro_batches,
)
from ocean_lib.training.lora import ADAPTER_DIR, attach_lora
from ocean_lib.training.metrics import is_registered, peak_flops_per_s
from ocean_lib.training.models import load_policy
from ocean_lib.training.rollout import HFRolloutEngine
from ocean_lib.training.run_state import resume_point
from ocean_lib.training.trainer import SamplerGapGuard, TrainingError, train

NOT_COMPARABLE = ("time/", "throughput/")  # wall-clock metrics differ between any two runs
LORA = ["model.lora_rank=4", "model.lora_alpha=8", "train.lr=1e-2"]  # adapters move visibly in one step


def _config(tiny_model_dir, mini_data_dir, tmp_path, *extra, name="run"):
    return load_config(None, [*tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path, name), *extra])


def _weights(path):
    model, _ = load_policy(str(path))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _comparable(rows):
    return [{k: v for k, v in row.items() if not k.startswith(NOT_COMPARABLE)} for row in rows]


@pytest.mark.trajectory
def test_grpo_run_writes_a_complete_run_directory(tiny_model_dir, mini_data_dir, tmp_path):
    cfg = _config(tiny_model_dir, mini_data_dir, tmp_path)
    final = train(cfg)
    run = RunDir(cfg.run_dir)
    assert load_config(run.config) == cfg
    metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(is_registered(k) for m in metrics for k in m)
    # what a GPU user reads on step 1: throughput, and the weight push apart from the update
    for m in metrics:
        assert m["throughput/prompt_tokens_per_s"] == pytest.approx(m["tokens/prompt"] / m["time/step_s"])
        assert m["tokens/completion"] > 0 and m["time/weight_sync_s"] >= 0
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
    # Readable by all, as every output (transformers wrote the weights 0600, the tiny model's folder was 0700)
    for written in (run.final, run.checkpoint(1), tiny_model_dir):
        for path in [written, *written.rglob("*")]:
            assert oct(path.stat().st_mode & 0o777) == ("0o755" if path.is_dir() else "0o644"), path
    before, after = _weights(tiny_model_dir), _weights(final)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_the_trainer_drives_the_engine_through_its_lifecycle_each_step(
    tiny_model_dir, mini_data_dir, tmp_path, monkeypatch
):
    """generate -> after_generate -> (update) -> after_update, each step, on any engine (vLLM's frees memory and
    receives the weights there): the trainer asks the protocol, not the engine's class."""
    calls = []

    class RecordingEngine(HFRolloutEngine):
        def generate(self, *args, **kwargs):
            calls.append("generate")
            return super().generate(*args, **kwargs)

        def after_generate(self):
            calls.append("after_generate")

        def after_update(self, model):
            calls.append(f"after_update(step {len(calls) // 3 + 1})")
            assert model is not None

    monkeypatch.setattr(
        run_state,
        "make_engine",
        lambda model, processor, cfg, all_done, **engine_options: RecordingEngine(model, processor, cfg),
    )
    train(_config(tiny_model_dir, mini_data_dir, tmp_path))
    assert calls == [
        *["generate", "after_generate", "after_update(step 1)"],
        *["generate", "after_generate", "after_update(step 2)"],
    ]


def test_an_existing_run_is_never_overwritten(tiny_model_dir, mini_data_dir, tmp_path):
    cfg = _config(tiny_model_dir, mini_data_dir, tmp_path, "train.max_steps=1")
    train(cfg)
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg)
    assert train(cfg, resume=True) == RunDir(cfg.run_dir).final  # finished: nothing to do
    assert len(RunDir(cfg.run_dir).read_metrics()) == 1
    # A finished run is reused only for the settings it was trained with: a changed knob is named, not ignored.
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=cfg.train.lr * 2))
    with pytest.raises(TrainingError, match=r"train\.lr .*->"):
        train(changed, resume=True)
    quiet = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, progress=False))
    assert train(quiet, resume=True) == RunDir(cfg.run_dir).final  # display knobs may change


@pytest.mark.trajectory
def test_micro_batches_accumulate_to_the_full_batch(tiny_model_dir, mini_data_dir, tmp_path):
    # (objective, sequences, token budget): one micro-batch; consecutive pairs; length-bucketed packs (the SFT
    # reference answers differ in length, so its packs are not consecutive: [[0, 2], [3, 1]] here).
    variants = [("grpo", 16, 0), ("grpo", 2, 0), ("grpo", 16, 450), ("sft", 16, 0), ("sft", 16, 450)]
    runs = {}
    for objective, micro, tokens in variants:
        cfg = _config(
            tiny_model_dir,
            mini_data_dir,
            tmp_path,
            "train.max_steps=1",
            f"train.objective={objective}",
            f"train.micro_batch_size={micro}",
            f"train.micro_batch_tokens={tokens}",
            name=f"{objective}_{micro}_{tokens}",
        )
        train(cfg)
        runs[objective, micro, tokens] = RunDir(cfg.run_dir).read_metrics()[0]
    for objective, micro, tokens in variants[1:]:
        full = runs[objective, 16, 0]
        keys = (
            ("loss/total", "grad/norm", "kl/mean", "entropy/mean")
            if objective == "grpo"
            else ("loss/sft", "grad/norm")
        )
        for key in keys:
            assert runs[objective, micro, tokens][key] == pytest.approx(full[key], rel=1e-5, abs=1e-7), (
                key,
                objective,
                micro,
                tokens,
            )


@pytest.mark.trajectory
def test_verl_micro_batch_mean_is_the_same_whatever_rows_are_computed_together(
    tiny_model_dir, mini_data_dir, tmp_path
):
    """verl's per-micro-batch token mean groups the step's 16 sequences in twos (train.micro_batch_size=2); the
    update computes them two at a time, all 16 at once (a token budget), or with the reference's forwards in
    one pass: the same loss, gradient and weights."""
    verl = ["algorithm.token_mean_over=micro_batch", "train.micro_batch_size=2", "train.max_steps=1"]
    runs = {
        "pairs": [],
        "one_micro_batch": ["train.micro_batch_tokens=100000"],
        "reference_in_one_pass": ["train.forward_micro_batch_tokens=100000"],
    }
    steps, weights = {}, {}
    for name, extra in runs.items():
        cfg = _config(tiny_model_dir, mini_data_dir, tmp_path, *verl, *extra, name=name)
        train(cfg)
        (steps[name],) = RunDir(cfg.run_dir).read_metrics()
        weights[name] = _weights(RunDir(cfg.run_dir).final)
    assert [steps[name]["micro_batch/count"] for name in runs] == [8, 1, 8]  # different compute partitions
    assert steps["pairs"]["kl/mean"] > 0 or steps["pairs"]["grad/norm"] > 0
    for name in ("one_micro_batch", "reference_in_one_pass"):
        for key in ("loss/total", "grad/norm", "kl/mean", "entropy/mean"):
            assert steps[name][key] == pytest.approx(steps["pairs"][key], rel=1e-5, abs=1e-7), (name, key)
        worst = max((weights[name][k] - weights["pairs"][k]).abs().max().item() for k in weights[name])
        assert worst < 1e-3 * 1e-3  # lr 1e-3: a tiny fraction of one AdamW step


def test_verl_denominators_come_from_every_process_lengths_in_rank_order():
    from accelerate import Accelerator

    from ocean_lib.training.trainer import _verl_denominators

    # 4 sequences (2 prompts x 2): completion lengths [3, 1, 2, 5], prompt lengths [1, 1, 1, 1] (left-padded
    # to 2 columns), so prompt + completion = [4, 2, 3, 6]. Balanced over 2 ranks: sorted (2, 1), (3, 2), (4, 0),
    # (6, 3); runs {1, 2} and {0, 3}; joined: {3, 1} (6 + 2) and {0, 2} (4 + 3): micro-batches of 2, M = 2.
    # {1, 3}: 1 + 5 = 6 tokens -> 2 * 6 = 12; {0, 2}: 3 + 2 = 5 -> 10.
    lengths = [3, 1, 2, 5]
    batch = _handmade_batch([[0, 1]] * 4, lengths, n=2)
    cfg = load_config(
        None,
        [
            "algorithm.token_mean_over=micro_batch",
            "algorithm.balance_ranks=2",
            "train.micro_batch_size=2",
            "train.prompts_per_step=2",
            "rollout.n=2",
        ],
    )
    assert _verl_denominators(Accelerator(cpu=True), batch, cfg).tolist() == [10.0, 12.0, 10.0, 12.0]


@pytest.mark.trajectory
def test_verl_schedule_runs_step_one_at_lr_zero_and_validates_at_start_and_end(
    tiny_model_dir, mini_data_dir, tmp_path
):
    cfg = _config(
        tiny_model_dir,
        mini_data_dir,
        tmp_path,
        "train.lr_schedule=verl_constant",
        "train.save_every=1",
        f"data.val_files=[{mini_data_dir}/test/counting.parquet]",
        "train.val_every=0",
        "train.val_at_start=true",
        "train.val_at_end=true",
    )
    final = train(cfg)
    metrics = RunDir(cfg.run_dir).read_metrics()
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert [("val/accuracy" in m) for m in metrics] == [True, False, True]  # before training and at the end
    # verl's own validation metric, per data source: mean(accuracy + format_weight * format)
    sources = {k.removeprefix("val/accuracy/") for k in metrics[0] if k.startswith("val/accuracy/")}
    for source in sources:
        expected = metrics[0][f"val/accuracy/{source}"] + cfg.reward.format_weight * metrics[0]["val/format"]
        assert metrics[0][f"val/test_score/{source}"] == pytest.approx(expected)
    assert sources
    assert [m.get("lr") for m in metrics] == [None, 0.0, cfg.train.lr]
    # Step 1 ran at lr 0: AdamW moved its moments only, so the weights are the initial ones, bit for bit.
    initial, after_one = _weights(tiny_model_dir), _weights(RunDir(cfg.run_dir).checkpoint(1))
    assert all(torch.equal(initial[k], after_one[k]) for k in initial)
    assert any(not torch.equal(initial[k], v) for k, v in _weights(final).items())


@pytest.mark.trajectory
def test_a_reference_kept_on_the_cpu_gives_the_same_step(tiny_model_dir, mini_data_dir, tmp_path):
    steps = {}
    for on_cpu in (False, True):
        cfg = _config(
            tiny_model_dir,
            mini_data_dir,
            tmp_path,
            "train.max_steps=2",
            f"model.reference_on_cpu={on_cpu}",
            name=f"reference_on_cpu_{on_cpu}",
        )
        train(cfg)
        steps[on_cpu] = RunDir(cfg.run_dir).read_metrics()[-1]
    assert steps[True]["kl/mean"] > 0  # step 2: the policy has moved away from the reference
    for key in ("kl/mean", "loss/total", "grad/norm"):
        assert steps[True][key] == pytest.approx(steps[False][key], rel=1e-6), key


def test_length_bucketed_micro_batches_pack_alike_lengths_within_the_budget():
    # Without groups (train.prompt_once=false) every row runs its own prompt: rows x longest sequence.
    lengths = [90, 30, 85, 32, 300, 31, 88, 29]
    prompts = [10] * len(lengths)
    completions = [n - 10 for n in lengths]
    chunks = pack_micro_batches(prompts, completions, size=8, max_tokens=200)
    assert sorted(p for chunk in chunks for p in chunk) == list(range(len(lengths)))  # each exactly once
    assert chunks[0] == [4]  # longer than the budget: alone
    for chunk in chunks:
        longest = max(lengths[p] for p in chunk)
        assert len(chunk) == 1 or len(chunk) * longest <= 200
        assert micro_batch_cost(prompts, completions, chunk) == len(chunk) * longest
    padded = sum(len(c) * max(lengths[p] for p in c) for c in chunks)
    consecutive = pack_micro_batches(prompts, completions, size=2)
    assert consecutive == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert padded < sum(len(c) * max(lengths[p] for p in c) for c in consecutive)
    # The token budget alone decides what is computed together: size (verl's loss micro-batch) does not cap it.
    assert pack_micro_batches(prompts, completions, size=2, max_tokens=10_000) == [
        [4, 0, 6, 2, 3, 5, 1, 7]
    ]  # longest first


def test_prompt_once_packing_keeps_groups_together_and_counts_each_prompt_once():
    # Seven groups of 4 (rows interleaved, so that nothing depends on groups being consecutive), budget 300.
    spec = {  # group: (prompt length, completion lengths); cost prompt-once = prompt + 4 x longest completion
        0: (100, [10, 12, 8, 11]),  # 148 prompt-once; 4 x 112 = 448 with each row's prompt
        1: (100, [50, 45, 40, 35]),  # 300: exactly the budget
        2: (60, [40, 30, 20, 10]),  # 220 (split [40] + [30, 20, 10]: 250)
        3: (400, [10, 10, 10, 10]),  # one row alone is over the budget: four lone pieces
        4: (50, [100, 90, 30, 20]),  # 450 whole; two pieces fit: [100, 90] (250) and [30, 20] (110)
        5: (20, [10, 10, 10, 10]),  # 60: fits beside group 0 (2 x 100 + 8 x 12 = 296)
        6: (20, [60, 2, 2, 2]),  # 260 whole; [60] + [2, 2, 2]: 80 + 26 (padding costs more than a prompt)
    }
    groups = [g for _ in range(4) for g in spec]
    seen = {g: 0 for g in spec}
    prompts, completions = [], []
    for g in groups:
        prompts.append(spec[g][0])
        completions.append(spec[g][1][seen[g]])
        seen[g] += 1
    budget = 300
    chunks = pack_micro_batches(prompts, completions, size=4, max_tokens=budget, groups=groups)

    assert sorted(p for chunk in chunks for p in chunk) == list(range(len(groups)))  # every row exactly once
    for chunk in chunks:  # within the budget, costed prompt-once, except a lone row over it
        assert len(chunk) == 1 or micro_batch_cost(prompts, completions, chunk, groups) <= budget
    holding = {g: [k for k, chunk in enumerate(chunks) if any(groups[p] == g for p in chunk)] for g in spec}

    def pieces(g):
        return sorted(sorted(completions[p] for p in chunks[k] if groups[p] == g) for k in holding[g])

    for g in (0, 1, 2, 5):  # a group that fits, its completions alike, stays whole: its prompt runs once
        assert len(holding[g]) == 1, (g, chunks)
    assert pieces(4) == [[20, 30], [90, 100]]  # too big: the fewest pieces, longest completions together
    assert pieces(6) == [[2, 2, 2], [60]]  # a long completion goes apart from the short ones it would pad
    assert pieces(3) == [[10]] * 4 and all(len(chunks[k]) == 1 for k in holding[3])  # oversize rows alone
    assert holding[0] == holding[5]  # small groups share a micro-batch (bin-packed), each prompt counted once
    assert micro_batch_cost(prompts, completions, chunks[holding[0][0]], groups) == 2 * 100 + 8 * 12
    # Each row's own prompt (train.prompt_once=false) would cost group 0 alone over the budget.
    group0 = [p for p, g in enumerate(groups) if g == 0]
    assert micro_batch_cost(prompts, completions, group0) == 4 * 112 > budget


def _groups_on(costs, where, rank):
    """The costs of the groups ``where`` puts on ``rank``."""
    return [
        c
        for row, there in zip(costs, where, strict=True)
        for c, r in zip(row, there, strict=True)
        if r == rank
    ]


def test_balancing_moves_few_whole_groups_and_evens_the_work():
    # Even already (equal loads, or no group smaller than the gap): nothing moves.
    assert balance_groups([[5, 7], [6, 6]]) == [[0, 0], [1, 1]]
    assert balance_groups([[50], [10]]) == [[0], [1]]  # moving the one group would make rank 1 the heavier
    # One move evens it, and it is the one taken: the group nearest half the gap goes heaviest -> lightest.
    # 80 against 20: the 30 moves (50/50), not the 40 (40/60) nor the 10 (70/30).
    assert balance_groups([[40, 30, 10], [10, 0, 10]]) == [[0, 1, 0], [1, 1, 1]]
    # A group that trains on nothing (cost 0: dropped by dynamic sampling) never moves, even from the heaviest.
    assert balance_groups([[0, 20, 20], [0, 0, 0]]) == [[0, 1, 0], [1, 1, 1]]
    # Four ranks, one holding every long group (the shape of image prompts sampled on one rank).
    costs = [[90, 80, 70, 60], [10, 10, 10, 10], [20, 10, 10, 10], [10, 10, 10, 5]]
    where = balance_groups(costs)
    assert where == balance_groups([list(row) for row in costs])  # a pure function of the costs
    on = [_groups_on(costs, where, rank) for rank in range(4)]
    assert sorted(sum(costs, [])) == sorted(sum(on, []))  # whole groups, each on exactly one rank
    loads = [sum(groups) for groups in on]
    # from 300 against 35: within the smallest group on the heaviest rank
    assert max(loads) - min(loads) <= 10
    assert sum(there != rank for rank, row in enumerate(where) for there in row) <= 6  # of 16 groups

    # Random cases: the rule's guarantees (each group once; every group left on the heaviest rank costs 0 or at
    # least the gap to the lightest; the heaviest is never heavier than before; deterministic).
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        ranks, groups = int(torch.randint(2, 9, (1,), generator=generator)), 8
        costs = torch.randint(0, 1000, (ranks, groups), generator=generator).tolist()
        where = balance_groups(costs)
        assert where == balance_groups(costs)
        assert all(0 <= r < ranks for row in where for r in row)
        loads = [sum(_groups_on(costs, where, rank)) for rank in range(ranks)]
        assert sum(loads) == sum(map(sum, costs)) and max(loads) <= max(map(sum, costs))
        heaviest, gap = loads.index(max(loads)), max(loads) - min(loads)
        assert all(c == 0 or c >= gap for c in _groups_on(costs, where, heaviest)), (costs, where)


def test_group_costs_are_the_forwards_tokens_of_the_rows_trained_on():
    # Two groups of 2: prompts of 3 and 1 tokens, completions [2, 1] and [4, 1].
    batch = _handmade_batch([[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]], [2, 1, 4, 1], n=2)
    budget = TrainConfig(micro_batch_tokens=100)
    every = torch.arange(4)
    # prompt-once: the pieces the packing cuts a group into (its prompt once per piece, its completions padded
    # to the piece's longest): group 0 whole (3 + 2 x 2 = 7 < 5 + 4), group 1 in two ((1 + 4) + (1 + 1) < 1 + 2 x 4)
    assert group_costs(batch, every, budget, prompt_once=True) == [7, 7]
    assert group_costs(batch, every, TrainConfig(micro_batch_tokens=6), prompt_once=True) == [9, 7]  # 7 > 6
    # each row its own prompt and completion, unpadded (each row is its own piece in the packing)
    assert group_costs(batch, every, budget, prompt_once=False) == [5 + 4, 5 + 2]
    assert group_costs(batch, torch.tensor([2, 3]), budget, prompt_once=True) == [0, 7]  # group 0 not trained
    # Micro-batches of micro_batch_size rows: the pass count follows the rows.
    assert group_costs(batch, torch.tensor([0, 1, 3]), TrainConfig(), prompt_once=True) == [2, 1]


def test_padding_fraction_counts_the_prompts_the_forward_runs():
    from ocean_lib.training import grpo
    from ocean_lib.training.metrics import Tally, tally_passes

    # 2 prompts x 2 rows: prompts of 3 and 1 tokens (left-padded to 3), completions [2, 1, 4, 1].
    completions = [2, 1, 4, 1]
    batch = _handmade_batch([[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]], completions, n=2)

    def padding(passes, prompt_once):
        tally = Tally()
        tally_passes(tally, passes, batch, world=1, prompt_once=prompt_once)
        return grpo.stat_values(tally.stats)["micro_batch/padding_fraction"]

    whole = [(torch.arange(4), torch.arange(4), True)]
    # Every row runs its prompt: 4 x (3 + 4) slots for 3 + 3 + 1 + 1 + 8 tokens.
    assert padding(whole, prompt_once=False) == pytest.approx(12 / 28)
    # Each prompt once: 2 x 3 + 4 x 4 slots for 3 + 1 + 8 tokens.
    assert padding(whole, prompt_once=True) == pytest.approx(10 / 22)
    # One group per micro-batch and a filler, which does not count: (3 + 2 x 2) + (1 + 2 x 4) slots, 6 + 6 tokens.
    split = [(torch.tensor(rows), torch.tensor(rows), True) for rows in ([0, 1], [2, 3])]
    filler = (torch.tensor([2, 3]), torch.tensor([2, 3]), False)
    assert padding([*split, filler], prompt_once=True) == pytest.approx(4 / 16)


def test_nonfinite_loss_stops_and_names_the_last_good_checkpoint(tiny_model_dir, mini_data_dir, tmp_path):
    cfg = _config(
        tiny_model_dir, mini_data_dir, tmp_path, "train.lr=1e30", "train.max_steps=3", "train.grad_clip=0"
    )
    with pytest.raises(TrainingError, match=r"non-finite .*step_1"):
        train(cfg)
    assert [step for step, _ in RunDir(cfg.run_dir).complete_checkpoints()] == [1]


def test_a_sampler_gap_past_the_thresholds_warns_then_stops_the_run(
    tiny_model_dir, mini_data_dir, tmp_path, capsys
):
    """The real gap of the HF sampler on CPU is float rounding (< 1e-4, above): thresholds below it make every
    step one past them, as a sampler stuck on stale weights would be."""
    gaps = ["rollout.sampler_gap_warn=1e-12", "rollout.sampler_gap_stop=1e-12", "rollout.sampler_gap_steps=2"]
    cfg = _config(tiny_model_dir, mini_data_dir, tmp_path, "train.max_steps=3", *gaps)
    with pytest.raises(TrainingError, match=r"sampler_gap_stop=1e-12 nats/token at steps \[1, 2\].*step_1"):
        train(cfg)
    metrics = RunDir(cfg.run_dir).read_metrics()
    assert [m["step"] for m in metrics] == [1, 2]  # the step that stops the run is logged first
    assert all(m["response/sampler_logprob_gap"] > 1e-12 for m in metrics)
    printed = capsys.readouterr().out
    assert "warning: step 1: response/sampler_logprob_gap" in printed and "warning: step 2" in printed


def test_the_sampler_gap_guard_counts_consecutive_steps_only(tmp_path):
    cfg = load_config(None, ["rollout.sampler_gap_stop=0.5", "rollout.sampler_gap_steps=3"])
    guard = SamplerGapGuard(cfg, RunDir(tmp_path), is_main=False)
    for step, gap in enumerate([0.6, 0.6, 0.2, 0.6, 0.6], start=1):  # the third step resets the count
        guard.check({"step": step, "response/sampler_logprob_gap": gap})
    with pytest.raises(TrainingError, match=r"at steps \[4, 5, 6\]"):
        guard.check({"step": 6, "response/sampler_logprob_gap": 0.7})
    off = SamplerGapGuard(load_config(None, ["rollout.sampler_gap_stop=0"]), RunDir(tmp_path), is_main=False)
    for step in range(1, 10):
        off.check({"step": step, "response/sampler_logprob_gap": 5.0})


def test_every_prompt_dropped_as_overlong_is_named_as_the_reason(
    tiny_model_dir, mini_data_dir, tmp_path, caplog
):
    cfg = _config(tiny_model_dir, mini_data_dir, tmp_path, "data.max_prompt_tokens=8")
    with pytest.raises(TrainingError) as raised:
        train(cfg)
    # Before: "0 training records < train.prompts_per_step=4" alone, and a log line "... N loaded, N bad".
    message = str(raised.value)
    assert message.startswith("0 training records < train.prompts_per_step=4")
    counted = re.findall(r": (\d+) rows, 0 loaded, (\d+) bad \(overlong_prompt (\d+)\)", message)
    assert counted and all(rows == bad == overlong for rows, bad, overlong in counted), message
    assert "tokens > data.max_prompt_tokens=8" in message
    assert "left out" in caplog.text and not re.search(r"(\d+) rows, \1 loaded", caplog.text)  # log: dropped


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        [],
        LORA,
        ["algorithm.token_mean_over=micro_batch", "algorithm.balance_ranks=2", "train.micro_batch_size=4"],
    ],
    ids=["full", "lora", "verl-micro-batch-mean"],
)
@pytest.mark.trajectory
def test_two_processes_take_the_same_step_as_one(tiny_model_dir, mini_data_dir, tmp_path, extra):
    one = _config(tiny_model_dir, mini_data_dir, tmp_path, "train.max_steps=1", *extra, name="one")
    train(one)
    params = tmp_path / "two.yaml"
    two = _config(tiny_model_dir, mini_data_dir, tmp_path, "train.max_steps=1", *extra, name="two")
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


@pytest.mark.trajectory
def test_lora_trains_only_the_adapters_and_saves_merged_weights(tiny_model_dir, mini_data_dir, tmp_path):
    cfg = _config(tiny_model_dir, mini_data_dir, tmp_path, *LORA)
    final = train(cfg)
    metrics = RunDir(cfg.run_dir).read_metrics()
    assert metrics[0]["kl/mean"] == 0.0  # B starts at 0: the policy is the reference
    # The reference is the policy with its adapters off, so once they have moved the KL term sees it.
    assert metrics[1]["kl/mean"] > 0.0
    assert all(m["response/sampler_logprob_gap"] < 1e-4 for m in metrics)  # sampler and trainer agree

    before, after = _weights(tiny_model_dir), _weights(final)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    targeted = re.compile(cfg.model.lora_target_modules + r"\.weight")
    assert changed and all(targeted.fullmatch(k) for k in changed)  # nothing outside the adapted layers moved

    # The merged checkpoint computes what base + adapter computes.
    base, processor = load_policy(str(tiny_model_dir))
    adapted = peft.PeftModel.from_pretrained(base, str(final / ADAPTER_DIR)).eval()
    merged, _ = load_policy(str(final))
    ids = processor.tokenizer("<think>3 red cubes</think><answer>3</answer>", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits)


def test_a_lora_run_resumes_from_its_adapter_exactly(tiny_model_dir, mini_data_dir, tmp_path):
    _assert_resumes_exactly(_config(tiny_model_dir, mini_data_dir, tmp_path, *LORA, "train.max_steps=3"))


def _assert_resumes_exactly(cfg) -> None:
    """A 3-step run killed during step 3 (only step_1 and step_2 saved) and resumed logs the same metrics and
    ends with the same weights as the run that was not interrupted."""
    run = RunDir(cfg.run_dir)
    uninterrupted = _weights(train(cfg))
    metrics = _comparable(run.read_metrics())
    shutil.rmtree(run.final)
    shutil.rmtree(run.checkpoint(2))
    train(cfg, resume=True)
    assert _comparable(run.read_metrics()) == metrics
    resumed = _weights(run.final)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_lora_targets_that_match_nothing_are_an_error(tiny_model_dir):
    model, _ = load_policy(str(tiny_model_dir))
    with pytest.raises(ValueError, match="lora_target_modules='nothing': .*not found"):
        attach_lora(model, rank=4, alpha=8, target_modules="nothing")


# ----------------------------------------------------------------------------------------------------------------
# Which runs may be continued (resume_point)
# ----------------------------------------------------------------------------------------------------------------


def test_a_run_that_stopped_before_its_first_step_restarts_with_the_fixed_settings(tmp_path):
    """A typo in the data paths stops a stage after it wrote config.yaml and before any step: fixing the typo
    and starting again must not be refused as "trained with other settings"."""
    cfg = load_config(None, [f"logging.output_dir={tmp_path}", "data.train_files=[fixed.parquet]"])
    run = RunDir(cfg.run_dir)
    save_config(
        load_config(None, [f"logging.output_dir={tmp_path}", "data.train_files=[typo.parquet]"]), run.config
    )
    assert resume_point(run, cfg, resume=True, is_main=True) == (0, None)
    run.log_metrics({"step": 1})  # once a step is logged, mixing settings is refused
    with pytest.raises(TrainingError, match=r"data.train_files \['typo.parquet'\] -> \['fixed.parquet'\]"):
        resume_point(run, cfg, resume=True, is_main=True)
    with pytest.raises(TrainingError, match="stopped at step 1.*--resume.*--set logging.run_name=NEW_NAME"):
        resume_point(run, cfg, resume=False, is_main=True)


def test_a_finished_stage_of_a_moved_study_is_reused(tmp_path):
    """Runs compare their settings relative to the study's directory: a study moved (or copied) elsewhere and
    re-run with the new study.output_dir reuses its finished stages."""
    from ocean_lib.study import pipeline

    ci = Path(__file__).resolve().parents[1] / "params" / "ci.yaml"
    old = load_config(ci, [f"study.output_dir={tmp_path}/old"])
    stage = load_config(ci, [f"study.output_dir={tmp_path}/old", *pipeline.stage_overrides(old, "grpo_text")])
    run = pipeline.run_dir(old, "grpo_text")
    save_config(stage, run.config)
    run.log_metrics({"step": 2})
    (run.final).mkdir(parents=True)
    (run.final / "trainer_state.json").write_text('{"step": 2}')
    shutil.move(tmp_path / "old", tmp_path / "new")

    new = load_config(ci, [f"study.output_dir={tmp_path}/new"])
    moved = load_config(ci, [f"study.output_dir={tmp_path}/new", *pipeline.stage_overrides(new, "grpo_text")])
    assert resume_point(pipeline.run_dir(new, "grpo_text"), moved, resume=True, is_main=True) == (2, None)
    changed = load_config(
        ci, [f"study.output_dir={tmp_path}/new", *pipeline.stage_overrides(new, "grpo_text"), "train.lr=0.5"]
    )
    with pytest.raises(TrainingError, match="train.lr"):
        resume_point(pipeline.run_dir(new, "grpo_text"), changed, resume=True, is_main=True)


def test_a_full_disk_is_told_from_a_file_size_limit(tmp_path):
    from ocean_lib.training.run_state import write_limit_hit

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"\0" * 4096)
    full = write_limit_hit(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "ckpt")
    assert re.fullmatch(r"[\d,]+ MiB free on its disk", full), full
    too_big = write_limit_hit(OSError(errno.EFBIG, "File too large"), tmp_path / "ckpt")
    assert too_big == "a file reached the largest size its file system allows"


def test_model_flops_by_hand_for_the_tiny_config(tiny_model_dir):
    """conftest.TINY: text width 64, 2 layers, 2 heads of 32, 1 kv head, MLP 128; vision width 32, 1 block (full
    attention), MLP 128, 14-px patches x 2 frames x 3 channels, 2x2 merge into width 64."""
    from transformers import AutoConfig

    from ocean_lib.training.metrics import FlopModel, Tally, step_flops, tally_flops

    config = AutoConfig.from_pretrained(tiny_model_dir)
    vocab = config.text_config.vocab_size
    flops = FlopModel.of(config)
    # per token and layer: q 64x64, k and v 64x32 each, o 64x64, MLP 3 x 64x128 multiply-adds; 2 layers, 2 FLOPs each
    token = 2 * 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128)
    pair = 2 * 2 * (2 * 2 * 32)  # 2 layers; QK^T and AV of 2 heads of 32
    # a 10-token prompt and a 5-token completion: 15 tokens, 15 * 16 / 2 causal pairs, the head at 5 positions
    want = 15 * token + 120 * pair + 5 * 2 * 64 * vocab
    assert flops.text(torch.tensor([10]), torch.tensor([5])).item() == want
    # an image of 4x4 patches (4 image tokens): embedding 1176x32 and one block (qkv + proj 4 x 32x32, MLP
    # 3 x 32x128) per patch, 16 x 16 attention pairs of width 32, the merger 128x128 + 128x64 per image token
    image = (
        16 * 2 * (1176 * 32 + 4 * 32 * 32 + 3 * 32 * 128)
        + 16 * 16 * 2 * 2 * 32
        + 4 * 2 * (128 * 128 + 128 * 64)
    )
    assert flops.image(torch.tensor([16])).item() == image
    # A step: 2 rows sharing that prompt (its image included), one trained on; generation of both (the prompt
    # prefilled once for the group), a reference forward, one update with the vision tower trained.
    batch = dataclasses.replace(
        _handmade_batch([[0, 0] + [1] * 10] * 2, [5, 3], n=2),  # left padding is not counted
        image_grid_thw=torch.tensor([[1, 4, 4]]),
        images_per_prompt=[1],
    )
    prompt = flops.text(torch.tensor([10]), torch.tensor([0])).item() + image
    row = [flops.text(torch.tensor([10]), torch.tensor([n])).item() + image for n in (5, 3)]
    generation = prompt + sum(r - prompt for r in row)
    repeated = {"forward_runs": None, "update_runs": None}
    kwargs = {"generated": True, "forward_only": 1, "updates": 1}
    tally = Tally()
    tally_flops(tally, 1, config, batch, torch.tensor([0]), vision_trained=True, **kwargs, **repeated)
    assert tally.stats["flops/step"].total == pytest.approx(generation + row[0] + 3 * row[0], rel=1e-12)
    frozen = Tally()  # a frozen vision tower: its forward once per update, no backward
    tally_flops(frozen, 1, config, batch, torch.tensor([0]), vision_trained=False, **kwargs, **repeated)
    assert tally.stats["flops/step"].total - frozen.stats["flops/step"].total == pytest.approx(2 * image)
    # Both rows trained: repeated, each row runs the prompt; prompt-once, it runs once per forward (or twice where
    # the packing put the group in two micro-batches); gradient checkpointing's recompute is one forward more.
    both = torch.tensor([0, 1])
    step = dict(kwargs, vision_trained=True)
    assert step_flops(config, batch, both, **step, **repeated) == pytest.approx(generation + 4 * sum(row))
    # TRL's generate prefills every row's prompt (and encodes its image) itself.
    trl = step_flops(config, batch, both, **step, **repeated, generation_repeats_prompts=True)
    assert trl == pytest.approx(5 * sum(row))
    once = {"forward_runs": torch.tensor([1.0]), "update_runs": torch.tensor([1.0])}
    assert step_flops(config, batch, both, **step, **once) == pytest.approx(5 * generation)
    split = {"forward_runs": torch.tensor([1.0]), "update_runs": torch.tensor([2.0])}
    assert step_flops(config, batch, both, **step, **split) == pytest.approx(5 * generation + 3 * prompt)
    assert step_flops(config, batch, both, **step, **once, recompute=True) == pytest.approx(6 * generation)


def test_prompt_runs_count_the_micro_batches_each_prompt_is_in():
    from ocean_lib.training.metrics import prompt_runs

    batch = _handmade_batch([[1, 1]] * 6, [1] * 6, n=2)  # 3 prompts of 2 rows
    passes = [(torch.tensor([0, 1, 2]), None, True), (torch.tensor([3, 4, 5]), None, True)]
    filler = [(torch.tensor([0]), None, False)]
    assert prompt_runs(passes + filler, batch, prompt_once=True).tolist() == [1.0, 2.0, 1.0]
    assert prompt_runs(passes, batch, prompt_once=False) is None


def test_model_flops_equal_torchs_count_on_the_real_tiny_model(tiny_model_dir):
    """torch's FLOP counter on the real model's forward, with eager attention (which multiplies every (query, key)
    pair, the causally masked ones too): our count plus those masked pairs, exactly; the vision tower exactly."""
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode

    from ocean_lib.training.metrics import FlopModel

    model, processor = load_policy(str(tiny_model_dir), attn_implementation="eager")
    flops = FlopModel.of(model.config)
    tokens = 16
    with torch.no_grad(), FlopCounterMode(display=False) as counted:
        model(input_ids=torch.randint(10, 100, (1, tokens)), logits_to_keep=0)  # logits at every position
    masked = tokens * tokens - tokens * (tokens + 1) // 2
    ours = flops.text(torch.tensor([0]), torch.tensor([tokens])).item()
    assert _without_rotary_angles(counted) == ours + masked * flops.text_pair
    image = processor.image_processor(
        images=[Image.new("RGB", (56, 56), (123, 117, 104))], return_tensors="pt"
    )
    with torch.no_grad(), FlopCounterMode(display=False) as counted:
        model.model.visual(image["pixel_values"], grid_thw=image["image_grid_thw"])
    assert _without_rotary_angles(counted) == flops.image(image["image_grid_thw"].prod(-1)).item()


def _without_rotary_angles(counted) -> int:
    """torch's count less the rotary angles' (positions times inverse frequencies): transformers 5.16 forms them
    with a matmul, 5.24 without one, and no FLOP convention counts them (1,536 FLOPs of 3.5 M here)."""
    rotary = [
        ops
        for name, ops in counted.get_flop_counts().items()
        if name.endswith(("rotary_emb", "rotary_pos_emb"))
    ]
    return counted.get_total_flops() - sum(sum(ops.values()) for ops in rotary)


def _handmade_batch(prompt_mask: list[list[int]], completions: list[int], n: int):
    """A text-only batch of all-ones tokens: row i's prompt mask (left-padded) and completion length; n rows per
    prompt."""
    from ocean_lib.training.batch import RolloutBatch

    rows, width = len(completions), max(completions)
    return RolloutBatch(
        prompt_ids=torch.ones(rows, len(prompt_mask[0]), dtype=torch.long),
        prompt_mask=torch.tensor(prompt_mask),
        prompt_token_types=torch.zeros(rows, len(prompt_mask[0]), dtype=torch.long),
        completion_ids=torch.ones(rows, width, dtype=torch.long),
        completion_mask=(torch.arange(width) < torch.tensor(completions)[:, None]).long(),
        logprobs=torch.zeros(rows, width),
        pixel_values=None,
        image_grid_thw=None,
        images_per_prompt=[0] * (rows // n),
        n=n,
        texts=[""] * rows,
        finished=[True] * rows,
    )


def test_step_one_logs_model_flops_and_mfu_against_the_configured_peak(
    tiny_model_dir, mini_data_dir, tmp_path
):
    cfg = _config(
        tiny_model_dir,
        mini_data_dir,
        tmp_path,
        "train.max_steps=1",
        "train.save_every=0",
        "logging.peak_flops_per_s=1e12",
    )
    train(cfg)
    (step,) = RunDir(cfg.run_dir).read_metrics()
    assert step["flops/step"] > 0
    assert step["throughput/model_flops_per_s"] == pytest.approx(step["flops/step"] / step["time/step_s"])
    assert step["throughput/mfu"] == pytest.approx(step["throughput/model_flops_per_s"] / 1e12)
    assert peak_flops_per_s(0.0, torch.device("cpu")) == 0.0  # unknown on a CPU: no MFU


# ----------------------------------------------------------------------------------------------------------------
# The vision tower's own learning rate (train.vision_lr_scale)
# ----------------------------------------------------------------------------------------------------------------


def _one_adamw_step(tiny_model_dir, vision_lr_scale):
    """Every weight's change after one AdamW step of the SFT loss on one real counting picture."""
    model, processor = load_policy(str(tiny_model_dir))
    model.train()
    task = sample_task("counting", 3)
    prompt = Prompt(user_text(task.question, "acc", 1), [task.image()])
    batch = teacher_forced_batch(processor, [prompt], [task.completion])
    train_cfg = dataclasses.replace(TrainConfig(), lr=1e-3, vision_lr_scale=vision_lr_scale)
    optimizer = run_state.make_optimizer(model, train_cfg)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    logprobs, _, mask = completion_logprobs(model, model, batch, torch.arange(1), temperature=1.0)
    (-(logprobs * mask).sum()).backward()
    optimizer.step()
    return {k: (p.detach() - before[k]) for k, p in model.named_parameters()}


def test_vision_lr_scale_moves_the_tower_that_fraction_of_the_language_models_rate(tiny_model_dir):
    full, tenth = _one_adamw_step(tiny_model_dir, 1.0), _one_adamw_step(tiny_model_dir, 0.1)
    tower = [k for k in full if ".visual." in k]
    language = [k for k in full if ".visual." not in k]
    assert tower and language
    # AdamW's first step moves a weight by lr x (sign of its gradient + weight decay): proportional to the rate.
    for k in tower:
        torch.testing.assert_close(tenth[k], 0.1 * full[k], rtol=1e-3, atol=1e-9)
    assert max(full[k].abs().max().item() for k in tower) > 5e-4  # the tower did move at the full rate
    for k in language:
        torch.testing.assert_close(tenth[k], full[k], rtol=0, atol=0)


def test_a_run_with_its_own_vision_rate_resumes_exactly_and_zero_freezes_the_tower(
    tiny_model_dir, mini_data_dir, tmp_path
):
    # Two parameter groups go into the checkpoint's optimizer state and come back from it.
    _assert_resumes_exactly(
        _config(tiny_model_dir, mini_data_dir, tmp_path, "train.max_steps=3", "train.vision_lr_scale=0.1")
    )

    frozen = _config(tiny_model_dir, mini_data_dir, tmp_path, "train.vision_lr_scale=0", name="frozen")
    start, after = _weights(tiny_model_dir), _weights(train(frozen))
    tower = [k for k in start if ".visual." in k]
    assert tower and all(torch.equal(start[k], after[k]) for k in tower)
    assert any(not torch.equal(start[k], after[k]) for k in start if ".visual." not in k)
