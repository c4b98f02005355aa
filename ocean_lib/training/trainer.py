"""The GRPO trainer: one loop, readable top to bottom.

Each step (``grpo_step``) is the recipe of Ocean-R1 / verl, in order:

1. take this step's prompts (a seeded permutation of the records; each process its own slice);
2. sample ``n`` completions per prompt (:mod:`ocean_lib.training.rollout`, handing back a :class:`ocean_lib.training.batch.RolloutBatch`);
3. score them with the rule-based reward (:mod:`ocean_lib.rewards`);
4. normalise rewards within each group into advantages (:func:`ocean_lib.training.grpo.group_advantages`);
5. reference log-probs from the frozen initial weights, when the KL coefficient is not 0 (with LoRA: the policy
   with its adapters off, :mod:`ocean_lib.training.lora`);
6. micro-batched (optionally length-bucketed) forward/backward of the clipped policy loss
   (:func:`ocean_lib.training.grpo.policy_loss`), gradients accumulated and all-reduced once, clipped, one AdamW step
   (Ocean-R1: one optimizer step per batch);
7. metrics (reduced as sums and counts over all processes), rollouts and checkpoints into the run directory.

Steps 1-4 are :func:`sample_groups`, 5-6 :func:`update`: the teaching walkthrough
(:mod:`ocean_lib.study.walkthrough`) runs these two, so what it shows is what the trainer does.

``objective: sft`` runs the supervised warm-start through the same loop: step 2 becomes the record's reference
completion and step 6 minimises its cross-entropy.

Determinism: the data order is a function of (seed, epoch) and every step re-seeds the samplers from
(seed, step, rank), so a run resumed from a checkpoint replays exactly what an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ocean_lib.base.config import save_config
from ocean_lib.base.io import atomic_write_bytes, atomic_write_json
from ocean_lib.base.prompts import Prompt
from ocean_lib.base.run_dir import ROLLOUT_THUMBNAIL_SIDE, RunDir, plan_line, prune_checkpoints
from ocean_lib.base.schema import RunConfig
from ocean_lib.data import Record, load_example, read_records
from ocean_lib.data.records import LoadReport, drop_overlong_prompts
from ocean_lib.rewards import RewardBreakdown, score_batch
from ocean_lib.training import distributed, grpo
from ocean_lib.training.batch import (
    RolloutBatch,
    teacher_forced_batch,
    texts_with_special_tokens,
    truncate_prompts_left,
)
from ocean_lib.training.forward import (
    balance_work,
    completion_logprobs,
    forward_passes,
    logprobs_no_grad,
    micro_batches,
    reference_logprobs,
    runs_prompts_once,
)
from ocean_lib.training.launch import Stopped, StopSignals
from ocean_lib.training.metrics import (
    POLICY_METRICS,
    Tally,
    check_registered,
    peak_flops_per_s,
    prompt_runs,
    tally_flops,
    tally_passes,
    tally_rewards,
    tally_tokens,
    tally_validation,
)
from ocean_lib.training.run_state import (
    Schedule,
    TrainingError,
    TrainState,
    build_state,
    loss_settings,
    resume_point,
    save_checkpoint,
)

# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------


def train(cfg: RunConfig, resume: bool = False) -> Path:
    """Run (or resume) one training stage; return the directory of the final weights.

    SIGTERM or SIGINT (a scheduler's cancel, the launcher's stop, Ctrl-C) stops the run at the end of the step
    it is in, every process at the same step, with a checkpoint to resume from; raises :class:`Stopped`."""
    with StopSignals() as signals:
        return _train(cfg, resume, signals)


def _train(cfg: RunConfig, resume: bool, signals: StopSignals) -> Path:
    # The launch file's settings, honoured or refused (DeepSpeed on CPU, precision, clipping, process count).
    # bf16 runs keep fp32 master weights: AdamW steps of lr 1e-6 vanish when applied to bf16 weights directly.
    accelerator = distributed.make_accelerator(cfg)
    # this machine's processes share its cores (on N machines, each has its own)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // distributed.local_processes(accelerator)))
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)

    run = RunDir(cfg.run_dir)
    start_step, checkpoint = resume_point(run, cfg, resume, accelerator.is_main_process)
    if run.is_finished():
        return run.final
    if accelerator.is_main_process:
        save_config(cfg, run.config)

    state = build_state(cfg, accelerator, run, checkpoint)
    records, reports = _read(cfg.data.train_files, cfg, state.processor.tokenizer)
    val_records, _ = _read(cfg.data.val_files, cfg, state.processor.tokenizer)
    try:
        schedule = Schedule(len(records), cfg)
    except TrainingError as error:  # too few records: say which were left out and why
        raise TrainingError("\n".join([str(error), *(report.summary() for report in reports)])) from None
    total = schedule.total_steps
    if accelerator.is_main_process:
        info = distributed.run_info(accelerator, cfg, state.policy, state.reference_placement)
        info["prompt_once"] = _prompt_once(state)
        atomic_write_json(run.run_info, info)
        print(plan_line(start_step, total), flush=True)  # the launcher's progress bar reads the total here

    if (
        val_records and cfg.train.val_at_start and start_step == 0
    ):  # verl's val_before_train: logged as step 0
        tally = Tally()
        with tally.timer("time/validate_s"):
            validate(state, val_records, tally)
        metrics = {**tally.reduce(accelerator), "step": 0, "epoch": 0}
        if accelerator.is_main_process:
            run.trim_to_step(-1)  # a restart from scratch replaces the step-0 row it logged before
            check_registered(set(metrics))
            run.log_metrics(metrics)

    progress = _progress(total, start_step, enabled=cfg.logging.progress and accelerator.is_main_process)
    peak = peak_flops_per_s(cfg.logging.peak_flops_per_s, accelerator.device)  # one device's; 0: unknown
    sampler_gap = SamplerGapGuard(cfg, run, accelerator.is_main_process)
    for step in range(start_step + 1, total + 1):
        t0 = time.perf_counter()
        lr = state.scheduler.get_last_lr()[0]  # the rate this step's update uses
        _seed(cfg.train.seed, step, accelerator.process_index)
        indices = schedule.indices(step, accelerator.process_index, accelerator.num_processes)
        rows = [records[i] for i in indices]
        if cfg.train.objective == "grpo":
            # Each prompt's samples depend on (seed, step, record) only: the same for any number of processes.
            seeds = [cfg.train.seed * 1_000_003 + step * 100_003 + i for i in indices]
            tally, rollout_rows = grpo_step(state, rows, step, seeds)
        else:
            tally, rollout_rows = sft_step(state, rows, step)
        periodic = cfg.train.val_every and step % cfg.train.val_every == 0
        if val_records and (periodic or (cfg.train.val_at_end and step == total)):
            with tally.timer("time/validate_s"):
                validate(state, val_records, tally)
        tally.add("time/step_s", time.perf_counter() - t0, reduce="max")
        metrics = tally.reduce(accelerator)
        metrics.update(step=step, epoch=schedule.epoch(step), lr=lr)
        metrics.update(throughput(metrics, peak * accelerator.num_processes))
        _check_finite(metrics, run)
        rollout_rows = _rollouts_to_main(accelerator, rollout_rows)
        if accelerator.is_main_process:
            check_registered(set(metrics))
            run.log_metrics(metrics)
            run.log_rollouts(_subsample(rollout_rows, cfg.logging.rollouts_per_step, step))
            progress.update(1)
            progress.set_postfix(
                {k: f"{metrics[k]:.3f}" for k in ("reward/overall", "loss/sft") if k in metrics}
            )
        sampler_gap.check(metrics)  # after the step is logged: the row that stops the run is on disk
        # A stop asked of any process stops all of them here (a collective: every process reaches this line).
        stop = step < total and distributed.all_reduce(accelerator, [float(bool(signals.received))], "max")[0]
        if stop or (cfg.train.save_every and step % cfg.train.save_every == 0 and step < total):
            save_checkpoint(state, run.checkpoint(step), step, schedule.epoch(step))
            if accelerator.is_main_process:
                prune_checkpoints(run, cfg.train.keep_last)
        if stop:
            progress.close()
            signum = signals.received[0] if signals.received else signal.SIGTERM
            raise Stopped(
                f"stopped by {signal.Signals(signum).name if signals.received else 'another process'} after step "
                f"{step} of {total}; its checkpoint is {run.checkpoint(step)}; continue with --resume",
                signum,
            )
    progress.close()
    save_checkpoint(state, run.final, total, schedule.epoch(total) if total else 0)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run.final


# ----------------------------------------------------------------------------------------------------------------
# One GRPO step
# ----------------------------------------------------------------------------------------------------------------


def grpo_step(
    state: TrainState, records: list[Record], step: int, seeds: list[int]
) -> tuple[Tally, list[dict[str, Any]]]:
    """One GRPO step on this process's share of the step's prompts (``seeds``: one per prompt): steps 1-4
    (:func:`sample_groups`), 5-6 (:func:`update`), then 7, the step's metrics and rollout records."""
    tally = Tally()
    groups = sample_groups(state, records, step, seeds, tally)
    update(state, groups, tally)

    # 7. Metrics (sums and counts) and rollout records.
    n, batch, rows_of = state.cfg.rollout.n, groups.batch, groups.rows_of
    tally_rewards(
        tally, groups.scores, rows_of, groups.rewards, groups.advantages, groups.flat_groups, batch, n
    )
    image_refs = [_image_ref(state.run, r, p) for r, p in zip(records, groups.prompts, strict=True)]
    rollout_rows = [
        {
            "step": step,
            "prompt_id": f"{r.data_source}:{r.index}",
            "data_source": r.data_source,
            "reward_func": r.reward_func,
            "image": image_refs[i // n],
            "prompt": r.question,
            "ground_truth": groups.truths[i // n],
            "completion": text,
            "reward": s.to_dict(),
            "advantage": float(groups.advantages[i]),
            "length": int(length),
            "finished": bool(fin),
        }
        for i, (r, text, s, length, fin) in enumerate(
            zip(rows_of, batch.texts, groups.scores, batch.completion_lengths, batch.finished, strict=True)
        )
    ]
    return tally, rollout_rows


@dataclass
class SampledGroups:
    """Steps 1-4 of a GRPO step for this process's prompts: ``n`` completions per prompt, their scores and
    group-normalised advantages, and the rows the update trains on."""

    prompts: list[Prompt]
    truths: list[str]
    batch: RolloutBatch
    rows_of: list[Record]  # the record each completion answers (row i: record i // n)
    scores: list[RewardBreakdown]
    rewards: torch.Tensor  # [prompts * n]
    advantages: torch.Tensor  # [prompts * n]
    flat_groups: torch.Tensor  # [prompts] groups whose rewards are all equal
    kept_rows: torch.Tensor  # rows the update trains on (dynamic sampling drops the flat groups')


def sample_groups(
    state: TrainState, records: list[Record], step: int, seeds: list[int], tally: Tally
) -> SampledGroups:
    """Steps 1-4: sample a group of ``n`` completions per prompt, score them, normalise within each group."""
    cfg, acc = state.cfg, state.accelerator
    n, alg = cfg.rollout.n, cfg.algorithm

    # 1-2. Sample a group of n completions for each prompt.
    prompts, truths = zip(*(prompt_of(r, cfg) for r in records), strict=True)
    distributed.check_same_modalities(acc, [bool(p.images) for p in prompts], f"step {step}")
    with tally.timer("time/generate_s"), acc.autocast():
        batch = state.engine.generate(list(prompts), n=n, seeds=seeds)
    state.engine.after_generate()  # vLLM frees its GPU memory for the update
    rows_of = [records[i // n] for i in range(len(batch.texts))]

    # 3. Score every completion with the rule-based reward.
    with tally.timer("time/reward_s"):
        scores = score_batch(
            reward_texts(state, batch),
            [truths[i // n] for i in range(len(batch.texts))],
            [r.reward_func for r in rows_of],
            cfg.reward,
        )
    rewards = torch.tensor([s.overall for s in scores], dtype=torch.float32)
    if (
        cfg.data.overlong_prompts == "truncate_left"
    ):  # TRL 0.14: the learner sees the prompts' last tokens only
        batch, cut = truncate_prompts_left(batch, cfg.data.max_prompt_tokens)
        tally.add("prompt/truncated_fraction", cut, count=len(batch.texts))

    # 4. Group-normalised advantages; groups whose rewards are all equal carry no signal (verl: fp32 rounding).
    advantages = grpo.group_advantages(
        rewards, n, eps=alg.adv_eps, scale=alg.scale_rewards, equal_groups=alg.equal_reward_groups
    )
    flat_groups = grpo.zero_variance_groups(rewards, n)
    keep = torch.ones(len(rewards), dtype=torch.bool)
    if alg.dynamic_sampling:
        keep = ~flat_groups.repeat_interleave(n)
    kept_rows = keep.nonzero().squeeze(1)
    return SampledGroups(
        list(prompts), list(truths), batch, rows_of, scores, rewards, advantages, flat_groups, kept_rows
    )


def update(state: TrainState, groups: SampledGroups, tally: Tally) -> None:
    """Steps 5-6: reference log-probs, then the micro-batched clipped-loss update and one optimizer step (per
    ``algorithm.updates_per_batch``).

    The loss of every micro-batch is normalised by global counts: ``num_tokens`` and ``num_seqs`` are summed over
    all micro-batches and all processes, so the micro-batch losses add up to the loss of the whole step. The
    per-process scaling lives in :func:`_backward`: DDP and DeepSpeed average gradients over processes, so each
    process's loss is multiplied by the process count to turn that average into the sum.
    """
    cfg, acc, alg = state.cfg, state.accelerator, state.cfg.algorithm
    batch, advantages, kept_rows = groups.batch, groups.advantages, groups.kept_rows

    # Normalisers over all processes (each micro-batch's loss is its share of the global batch loss). The values
    # go to the collective on accelerator.device: NCCL takes GPU tensors only.
    num_tokens, num_seqs = distributed.all_reduce(
        acc, [float(batch.completion_mask[kept_rows].sum()), float(len(kept_rows))], "sum"
    )
    if num_seqs == 0:
        raise TrainingError("no sequences to train on this step (all groups dropped by dynamic sampling)")
    # verl's per-row denominators come from the rows as sampled, in rank order: computed before any row moves and
    # carried with its row, so balancing cannot change the loss.
    denominators = _verl_denominators(acc, batch, cfg) if alg.token_mean_over == "micro_batch" else None
    prompt_once = _prompt_once(state)
    if cfg.train.balance_work and acc.num_processes > 1:
        batch, advantages, kept_rows, denominators = _balance_work(
            state, batch, advantages, kept_rows, denominators, prompt_once, tally
        )

    # 5. Reference (and, for several updates per batch, old) log-probs, without gradients, in the micro-batches
    #    the update will use or in their own (train.forward_micro_batch_tokens); every process runs as many as the
    #    busiest one (forward_passes). The log-probs are kept per row, whichever rows were computed together.
    #    Under prompt-once the token budget packs whole groups and counts each distinct prompt once. The setting
    #    is the same on every process: ZeRO-3 needs as many forwards everywhere.
    passes = forward_passes(acc, micro_batches(kept_rows, batch, cfg.train, prompt_once=prompt_once), batch)
    tally_passes(tally, passes, batch, acc.num_processes, prompt_once=prompt_once)
    no_grad_passes = passes  # the forwards without gradient may pack bigger micro-batches
    if cfg.train.forward_micro_batch_tokens:
        no_grad_passes = forward_passes(
            acc, micro_batches(kept_rows, batch, cfg.train, no_grad=True, prompt_once=prompt_once), batch
        )
    tally.add("micro_batch/prompt_once", float(prompt_once))
    ref_logprobs = old_logprobs = None
    temperature = cfg.rollout.temperature
    if alg.kl_coef > 0:
        with tally.timer("time/reference_s"), acc.autocast():
            ref_logprobs = reference_logprobs(
                state.model, state.policy, state.reference, batch, no_grad_passes, temperature, prompt_once
            )
    if alg.updates_per_batch > 1:
        with acc.autocast():
            old_logprobs = logprobs_no_grad(
                state.model, state.policy, batch, no_grad_passes, temperature, prompt_once
            )

    # 6. Micro-batched clipped-loss updates; normalisers are global so micro-batch losses add up exactly.
    if denominators is not None:  # verl: each sequence's own denominator, from its micro-batch
        num_tokens = denominators
    loss_sum = 0.0  # the batch loss is the sum of the micro-batch losses (global normalisers)
    with tally.timer("time/update_s"):
        for _ in range(alg.updates_per_batch):
            for k, (chunk, positions, real) in enumerate(passes):
                with acc.autocast():  # the output layer runs outside the model's (autocast) forward
                    logp, entropy, mask = completion_logprobs(
                        state.model,
                        state.policy,
                        batch,
                        chunk,
                        temperature,
                        entropy="loss" if alg.entropy_coef > 0 else "metric",
                        prompt_once=prompt_once,
                    )
                width = mask.shape[1]
                old = logp.detach() if old_logprobs is None or not real else old_logprobs[positions, :width]
                ref = None if ref_logprobs is None else ref_logprobs[positions, :width].to(logp.device)
                loss, stats = grpo.policy_loss(
                    logp,
                    old,
                    advantages[chunk].to(logp.device),
                    mask,
                    ref_logprobs=ref
                    if real or ref is None
                    else logp.detach(),  # a filler's loss counts for 0
                    entropy=entropy,
                    num_tokens=num_tokens[chunk] if isinstance(num_tokens, torch.Tensor) else num_tokens,
                    num_sequences=num_seqs,
                    **loss_settings(cfg),
                )
                if real:
                    tally.merge(stats, POLICY_METRICS)
                    loss_sum += float(loss.detach())
                    gap = (logp.detach().cpu() - batch.logprobs[chunk, :width]).abs() * mask.cpu()
                    tally.add("response/sampler_logprob_gap", float(gap.sum()), count=float(mask.sum()))
                _backward(state, loss if real else loss * 0.0, sync=k == len(passes) - 1)
            _optimizer_step(state, tally)
    _sync_sampler(state, tally)
    # Each process holds its share of the global loss: a count of 1/W makes the reduced "mean" their sum.
    tally.add("loss/total", loss_sum / alg.updates_per_batch, count=1 / acc.num_processes)
    tally_tokens(tally, batch, kept_rows, acc.num_processes)
    tally_flops(
        tally,
        acc.num_processes,
        state.policy.config,
        batch,
        kept_rows,
        generated=True,
        forward_only=int(alg.kl_coef > 0) + int(alg.updates_per_batch > 1),
        forward_runs=prompt_runs(no_grad_passes, batch, prompt_once),
        updates=alg.updates_per_batch,
        update_runs=prompt_runs(passes, batch, prompt_once),
        vision_trained=_vision_trained(state),
    )


def _balance_work(
    state: TrainState,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    kept_rows: torch.Tensor,
    denominators: torch.Tensor | None,
    prompt_once: bool,
    tally: Tally,
) -> tuple[RolloutBatch, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The rows this process trains on once whole groups have moved between processes so that each has about
    the same work (:func:`forward.balance_work`), each row with its advantage, kept flag and verl denominator."""
    keep = torch.zeros(len(batch.texts), dtype=torch.bool)
    keep[kept_rows] = True
    per_row = {"advantages": advantages, "keep": keep}
    if denominators is not None:
        per_row["denominators"] = denominators
    pad = state.processor.tokenizer.pad_token_id
    batch, per_row, stats = balance_work(batch, per_row, kept_rows, state.cfg.train, prompt_once, pad)
    for key, value in stats.items():  # the same plan on every process: the same values
        tally.add(f"micro_batch/{key}", value, reduce="max")
    return batch, per_row["advantages"], per_row["keep"].nonzero().squeeze(1), per_row.get("denominators")


def _vision_trained(state: TrainState) -> bool:
    """Whether gradients reach the vision tower (not with freeze_vision_tower, nor under LoRA's default targets)."""
    return any(p.requires_grad for name, p in state.policy.named_parameters() if "visual." in name)


def _prompt_once(state: TrainState) -> bool:
    """Whether the GRPO forwards run each distinct prompt once (``forward.runs_prompts_once``)."""
    return state.cfg.train.prompt_once and runs_prompts_once(state.policy)


def prompt_of(record: Record, cfg: RunConfig) -> tuple[Prompt, str]:
    """The model input of a record and its ground truth (boxes rescaled with resized images)."""
    images, truth = load_example(record, cfg.data)
    d = cfg.data
    system = d.text_only_system_prompt if not images and d.text_only_system_prompt else d.system_prompt
    return Prompt(record.content, images, system=system, keep_whitespace=d.keep_prompt_whitespace), truth


def reward_texts(state: TrainState, batch: RolloutBatch) -> list[str]:
    """The completions as the reward reads them: without special tokens, or with them (``reward.keep_special_tokens``,
    verl's reward manager: a finished completion ends in ``<|im_end|>``)."""
    if state.cfg.reward.keep_special_tokens:
        return texts_with_special_tokens(state.processor.tokenizer, batch)
    return batch.texts


def _verl_denominators(acc: Any, batch: RolloutBatch, cfg: RunConfig) -> torch.Tensor:
    """This process's rows' token-mean denominators in verl's loss (:func:`grpo.verl_token_mean_denominators`
    over the whole step: every process's completion and prompt + completion lengths, in rank order)."""
    local = torch.stack([batch.completion_mask.sum(-1), batch.lengths]).to(acc.device)  # [2, R]
    every = acc.gather(local[None]).cpu()  # [W, 2, R], rank by rank
    denominators = grpo.verl_token_mean_denominators(
        every[:, 0].reshape(-1).tolist(),
        every[:, 1].reshape(-1).tolist(),
        cfg.balance_ranks,
        cfg.train.micro_batch_size,
    )
    rows = local.shape[1]
    return torch.tensor(denominators[acc.process_index * rows : (acc.process_index + 1) * rows])


# ----------------------------------------------------------------------------------------------------------------
# One supervised warm-start step
# ----------------------------------------------------------------------------------------------------------------


def sft_step(state: TrainState, records: list[Record], step: int) -> tuple[Tally, list[dict[str, Any]]]:
    """Teacher-forced cross-entropy on each record's reference completion (completion tokens only)."""
    cfg, acc, tally = state.cfg, state.accelerator, Tally()
    prompts, completions = [], []
    for record in records:
        if record.completion is None:
            raise TrainingError(
                f"objective sft needs extra_info.reasoning; record {record.data_source}:{record.index} has none"
            )
        prompts.append(prompt_of(record, cfg)[0])
        completions.append(record.completion)
    distributed.check_same_modalities(acc, [bool(p.images) for p in prompts], f"step {step}")
    batch = teacher_forced_batch(state.processor, prompts, completions)
    all_rows = torch.arange(len(prompts))
    (num_tokens,) = distributed.all_reduce(acc, [float(batch.completion_mask.sum())], "sum")
    with tally.timer("time/update_s"):
        passes = forward_passes(acc, micro_batches(all_rows, batch, cfg.train), batch)
        tally_passes(tally, passes, batch, acc.num_processes)
        for k, (chunk, _, real) in enumerate(passes):
            with acc.autocast():
                # Supervised rows share no prompt: the plain forward, one pass.
                logp, _, mask = completion_logprobs(
                    state.model, state.policy, batch, chunk, temperature=1.0, prompt_once=False
                )
            token_nll = -(logp * mask).sum()
            if real:
                tally.add("loss/sft", float(token_nll.detach()), count=float(mask.sum()))
            _backward(state, token_nll / num_tokens * float(real), sync=k == len(passes) - 1)
        _optimizer_step(state, tally)
    _sync_sampler(state, tally)
    tally.add("response/length_mean", float(batch.completion_mask.sum()), count=len(prompts))
    tally_tokens(tally, batch, all_rows, acc.num_processes)
    tally_flops(
        tally,
        acc.num_processes,
        state.policy.config,
        batch,
        all_rows,
        generated=False,
        forward_only=0,
        forward_runs=None,
        updates=1,
        update_runs=None,
        vision_trained=_vision_trained(state),
    )
    return tally, []


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def validate(state: TrainState, records: list[Record], tally: Tally) -> None:
    """Greedy generation on this process's share of the validation records, scored by the training reward.

    Every process generates as often as the busiest one (under ZeRO-3 every forward is a collective): one with
    fewer chunks repeats its first (or the first record) and scores nothing for it."""
    cfg, acc = state.cfg, state.accelerator
    mine = records[acc.process_index :: acc.num_processes]
    chunks = [mine[start : start + cfg.eval.batch_size] for start in range(0, len(mine), cfg.eval.batch_size)]
    (count,) = distributed.all_reduce(acc, [float(len(chunks))], "max")
    for k in range(int(count)):
        chunk = chunks[k] if k < len(chunks) else (chunks[0] if chunks else records[:1])
        prompts, truths = zip(*(prompt_of(r, cfg) for r in chunk), strict=True)
        distributed.check_same_modalities(acc, [bool(p.images) for p in prompts], "validation")
        with acc.autocast():
            texts = reward_texts(state, state.engine.generate(list(prompts), n=1, greedy=True))
        if k >= len(chunks):
            continue
        scores = score_batch(texts, list(truths), [r.reward_func for r in chunk], cfg.reward)
        tally_validation(tally, scores, chunk)


# ----------------------------------------------------------------------------------------------------------------
# Small pieces
# ----------------------------------------------------------------------------------------------------------------


def _read(paths: list[str], cfg: RunConfig, tokenizer: Any) -> tuple[list[Record], list[LoadReport]]:
    """The records of ``paths`` and each path's report; with ``data.overlong_prompts: drop``, those over
    ``data.max_prompt_tokens`` as verl counted them are left out (counted and logged)."""
    records, reports = [], []
    for path in paths:
        loaded = read_records(path, cfg.data)
        if cfg.data.overlong_prompts == "drop":
            loaded = drop_overlong_prompts(loaded, tokenizer, cfg.data.max_prompt_tokens)
        records += loaded
        reports.append(loaded.report)
    return records, reports


def _image_ref(run: RunDir, record: Record, prompt: Prompt) -> str | None:
    """Where the rollout browser finds a prompt's (first) image: its path on disk, or for images embedded as
    bytes a thumbnail (``ROLLOUT_THUMBNAIL_SIDE``) saved once under ``<run>/images/`` (path relative to the run directory)."""
    if record.image_paths:
        return record.image_paths[0]
    if not prompt.images:
        return None
    relative = f"images/{record.data_source}_{record.index}.png"
    target = run.path / relative
    if not target.exists():
        thumbnail = prompt.images[0].copy()
        thumbnail.thumbnail((ROLLOUT_THUMBNAIL_SIDE, ROLLOUT_THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        thumbnail.save(buffer, format="PNG")
        atomic_write_bytes(target, buffer.getvalue())
    return relative


def _backward(state: TrainState, loss: torch.Tensor, sync: bool) -> None:
    """Accumulate gradients; all-reduce only on the last micro-batch. DDP averages over processes, so the
    globally normalised loss is scaled by the process count to make the average a sum."""
    acc = state.accelerator
    acc.sync_gradients = sync  # DeepSpeed steps its engine on backward only when this is set
    context = contextlib.nullcontext() if sync or state.deepspeed else acc.no_sync(state.model)
    with context:
        acc.backward(loss * acc.num_processes)


def _optimizer_step(state: TrainState, tally: Tally) -> None:
    cfg, acc = state.cfg, state.accelerator
    params = [p for p in state.model.parameters() if p.requires_grad]
    max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
    norm = acc.clip_grad_norm_(params, max_norm)
    tally.add("grad/norm", float(norm))
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)


def _sync_sampler(state: TrainState, tally: Tally) -> None:
    """Once the step's updates are done: vLLM samples from its own copy of the weights, so push them (timed
    apart from the update: at scale it is the ZeRO-3 gather of every layer)."""
    with tally.timer("time/weight_sync_s"):
        state.engine.after_update(state.model)


def throughput(metrics: dict[str, float], peak: float) -> dict[str, float]:
    """Tokens trained on and model FLOPs per second of the whole step, all processes together (prompt and
    completion apart: at real scale the prompt, image tokens included, is most of the work), and MFU against
    ``peak``, the processes' summed peak FLOP/s (0: unknown, no MFU)."""
    seconds = metrics["time/step_s"]
    if seconds <= 0:
        return {}
    rates = {
        f"throughput/{part}_tokens_per_s": metrics[f"tokens/{part}"] / seconds
        for part in ("prompt", "completion")
        if f"tokens/{part}" in metrics
    }
    if "flops/step" in metrics:
        rates["throughput/model_flops_per_s"] = metrics["flops/step"] / seconds
        if peak > 0:
            rates["throughput/mfu"] = rates["throughput/model_flops_per_s"] / peak
    return rates


def _check_finite(metrics: dict[str, float], run: RunDir) -> None:
    bad = [
        k
        for k in ("loss/total", "loss/sft", "reward/overall", "grad/norm")
        if k in metrics and not math.isfinite(metrics[k])
    ]
    if bad:
        last = run.last_checkpoint()
        kept = f"the last good checkpoint is {last[1]}" if last else "no checkpoint was written yet"
        raise TrainingError(
            f"non-finite {', '.join(f'{k}={metrics[k]}' for k in bad)} at step "
            f"{metrics.get('step')}; stopping; {kept}"
        )


class SamplerGapGuard:
    """Does the sampler sample from the weights being trained? ``response/sampler_logprob_gap`` (mean |sampler
    log p - trainer log p| per completion token) is the kernels' rounding when it does (bf16 vLLM against the
    training forward: a few 1e-2 nats, docs/real_scale.md) and grows with every step the sampler's copy stays
    behind. Past ``rollout.sampler_gap_warn`` a warning goes to the log; past ``rollout.sampler_gap_stop`` for
    ``rollout.sampler_gap_steps`` steps in a row the run stops (one noisy step is not a verdict). The gap is
    reduced over processes, so every process decides alike."""

    def __init__(self, cfg: RunConfig, run: RunDir, is_main: bool):
        self.cfg, self.run, self.is_main, self.past = cfg.rollout, run, is_main, []

    def check(self, metrics: dict[str, float]) -> None:
        gap, step, r = metrics.get("response/sampler_logprob_gap"), metrics.get("step"), self.cfg
        if gap is None:
            return
        if r.sampler_gap_warn and gap > r.sampler_gap_warn and self.is_main:
            print(
                f"warning: step {step}: response/sampler_logprob_gap {gap:.3g} nats/token > "
                f"rollout.sampler_gap_warn={r.sampler_gap_warn}: the sampler may not follow the trained weights",
                flush=True,
            )
        self.past = [*self.past, step] if r.sampler_gap_stop and gap > r.sampler_gap_stop else []
        if len(self.past) >= r.sampler_gap_steps:
            last = self.run.last_checkpoint()
            kept = f"the last checkpoint is {last[1]}" if last else "no checkpoint was written yet"
            raise TrainingError(
                f"response/sampler_logprob_gap above rollout.sampler_gap_stop={r.sampler_gap_stop} nats/token at "
                f"steps {self.past} (now {gap:.3g}): the {r.backend} sampler does not sample from the trained "
                f"weights (a failed weight sync?); stopping; {kept}. gpu-check's vLLM sync stages decide it"
            )


def _rollouts_to_main(accelerator: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's rollout rows, in rank order, on the main process (which alone writes them); [] elsewhere.
    A gather, not an all-gather: the other processes never need the step's completions."""
    if accelerator.num_processes == 1:
        return rows
    parts: list[Any] | None = [None] * accelerator.num_processes if accelerator.is_main_process else None
    torch.distributed.gather_object(rows, parts, dst=0)
    return [row for part in parts for row in part] if parts is not None else []


def _subsample(rows: list[dict[str, Any]], limit: int, step: int) -> list[dict[str, Any]]:
    if limit < 0 or len(rows) <= limit:
        return rows
    picked = torch.randperm(len(rows), generator=torch.Generator().manual_seed(step))[:limit]
    return [rows[i] for i in sorted(picked.tolist())]


def _seed(seed: int, step: int, rank: int) -> None:
    torch.manual_seed(seed * 1_000_003 + step * 1_009 + rank)


def _progress(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)
