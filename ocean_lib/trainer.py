"""The GRPO trainer: one loop, readable top to bottom.

Each step (``grpo_step``) is the recipe of Ocean-R1 / verl, in order:

1. take this step's prompts (a seeded permutation of the records; each process its own slice);
2. sample ``n`` completions per prompt (:mod:`ocean_lib.rollout`);
3. score them with the rule-based reward (:mod:`ocean_lib.rewards`);
4. normalise rewards within each group into advantages (:func:`ocean_lib.grpo.group_advantages`);
5. reference log-probs from the frozen initial weights, when the KL coefficient is not 0 (with LoRA: the policy
   with its adapters off, :mod:`ocean_lib.lora`);
6. micro-batched (optionally length-bucketed) forward/backward of the clipped policy loss
   (:func:`ocean_lib.grpo.policy_loss`), gradients accumulated and all-reduced once, clipped, one AdamW step
   (Ocean-R1: one optimizer step per batch);
7. metrics (reduced as sums and counts over all processes), rollouts and checkpoints into the run directory.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from ocean_lib import grpo
from ocean_lib.config import RunConfig, TrainConfig, config_changes, load_config, save_config
from ocean_lib.data import Record, load_example, read_records
from ocean_lib.io import atomic_write_bytes
from ocean_lib.lora import ADAPTER_DIR, attach_lora, merged_state_dict, peft_model, unwrap_peft
from ocean_lib.metrics import check_registered
from ocean_lib.models import load_policy
from ocean_lib.prompts import Prompt
from ocean_lib.rewards import score_batch
from ocean_lib.rollout import RolloutBatch, encode_prompts, make_engine, mrope_positions, select_images
from ocean_lib.run_dir import RunDir, prune_checkpoints, publish_dir, read_state

SHARDED_STATE = "sharded_state"  # accelerate.save_state folder of a DeepSpeed checkpoint


class TrainingError(RuntimeError):
    """The run cannot continue (non-finite loss or reward, wrong process count, existing run directory)."""


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------


def train(cfg: RunConfig, resume: bool = False) -> Path:
    """Run (or resume) one training stage; return the directory of the final weights."""
    from accelerate import Accelerator

    # bf16 runs keep fp32 master weights and compute under autocast: AdamW steps of lr 1e-6 vanish when
    # applied to bf16 weights directly.
    precision = "bf16" if cfg.model.dtype == "bfloat16" else "no"
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    if (
        _is_deepspeed(accelerator)
        and accelerator.state.deepspeed_plugin.zero_stage == 3
        and cfg.rollout.backend == "hf"
    ):
        raise TrainingError(
            "DeepSpeed ZeRO-3 with rollout.backend=hf would deadlock (every forward gathers weights across ranks "
            "and ranks stop decoding at different steps); use rollout.backend=vllm or ZeRO-2"
        )
    if accelerator.num_processes != cfg.train.num_processes:
        raise TrainingError(
            f"train.num_processes={cfg.train.num_processes} but {accelerator.num_processes} process(es) started; "
            "on CPU launch with `accelerate launch --multi_gpu --num_processes N` (`--cpu` starts only one)"
        )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)

    run = RunDir(cfg.run_dir)
    start_step, checkpoint = _resume_point(run, cfg, resume, accelerator.is_main_process)
    if run.is_finished():
        return run.final
    if accelerator.is_main_process:
        save_config(cfg, run.config)

    records = [r for path in cfg.data.train_files for r in read_records(path, cfg.data)]
    val_records = [r for path in cfg.data.val_files for r in read_records(path, cfg.data)]
    schedule = Schedule(len(records), cfg)
    total = schedule.total_steps
    state = build_state(cfg, accelerator, run, checkpoint)

    progress = _progress(total, start_step, enabled=cfg.logging.progress and accelerator.is_main_process)
    for step in range(start_step + 1, total + 1):
        t0 = time.perf_counter()
        _seed(cfg.train.seed, step, accelerator.process_index)
        indices = schedule.indices(step, accelerator.process_index, accelerator.num_processes)
        rows = [records[i] for i in indices]
        if cfg.train.objective == "grpo":
            # Each prompt's samples depend on (seed, step, record) only: the same for any number of processes.
            seeds = [cfg.train.seed * 1_000_003 + step * 100_003 + i for i in indices]
            tally, rollout_rows = grpo_step(state, rows, step, seeds)
        else:
            tally, rollout_rows = sft_step(state, rows, step)
        if val_records and cfg.train.val_every and step % cfg.train.val_every == 0:
            with tally.timer("time/validate_s"):
                validate(state, val_records, tally)
        tally.add("time/step_s", time.perf_counter() - t0, reduce="max")
        metrics = tally.reduce(accelerator)
        metrics.update(step=step, epoch=schedule.epoch(step), lr=state.scheduler.get_last_lr()[0])
        _check_finite(metrics, run)
        rollout_rows = _gather(accelerator, rollout_rows)
        if accelerator.is_main_process:
            check_registered(set(metrics))
            run.log_metrics(metrics)
            run.log_rollouts(_subsample(rollout_rows, cfg.logging.rollouts_per_step, step))
            progress.update(1)
            progress.set_postfix(
                {k: f"{metrics[k]:.3f}" for k in ("reward/overall", "loss/sft") if k in metrics}
            )
        if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total:
            save_checkpoint(state, run.checkpoint(step), step, schedule.epoch(step))
            if accelerator.is_main_process:
                prune_checkpoints(run, cfg.train.keep_last)
    progress.close()
    save_checkpoint(state, run.final, total, schedule.epoch(total) if total else 0)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run.final


def build_state(cfg: RunConfig, accelerator: Any, run: RunDir, checkpoint: Path | None = None) -> TrainState:
    """Everything a step needs: the policy (with LoRA adapters if asked), its frozen KL reference, AdamW and its
    schedule, prepared by ``accelerator`` and restored from ``checkpoint`` if given, and the rollout engine."""
    load = dict(
        attn_implementation=cfg.model.attn_implementation,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
    )
    lora = cfg.model.lora_rank > 0
    # With LoRA the frozen weights always come from the start; a checkpoint holds the adapter (lora.py).
    start = cfg.model.name_or_path if lora or checkpoint is None else str(checkpoint)
    model, processor = load_policy(start, dtype="float32", **load)
    reference = None
    if cfg.train.objective == "grpo" and cfg.algorithm.kl_coef > 0 and not lora:
        # The reference is the stage's initial policy (Ocean-R1: stage 2's reference is stage 1's result),
        # frozen, in the compute dtype. (With LoRA it is the policy with its adapters off: no copy.)
        reference = load_policy(cfg.model.name_or_path, dtype=cfg.model.dtype, **load)[0]
        reference.requires_grad_(False).eval().to("cpu" if cfg.model.reference_on_cpu else accelerator.device)
    if cfg.model.freeze_vision_tower:
        model.model.visual.requires_grad_(False)
    if cfg.model.gradient_checkpointing:
        # Non-reentrant: the reentrant variant breaks with frozen parameters under DDP/ZeRO.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        torch.manual_seed(cfg.train.seed)  # the adapters' initial A matrices
        m = cfg.model
        adapter = checkpoint / ADAPTER_DIR if checkpoint is not None else None
        model = attach_lora(model, m.lora_rank, m.lora_alpha, m.lora_target_modules, adapter)

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
    )
    warmup = cfg.train.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if checkpoint is not None and (checkpoint / SHARDED_STATE).is_dir():
        accelerator.load_state(str(checkpoint / SHARDED_STATE))  # DeepSpeed: every rank reads its shard
    elif checkpoint is not None:
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))

    state = TrainState(
        accelerator, model, reference, processor, optimizer, scheduler, cfg, run, _is_deepspeed(accelerator)
    )
    state.engine = make_engine(state.policy, processor, cfg.rollout)  # once: a vLLM engine is expensive
    return state


@dataclass
class TrainState:
    accelerator: Any
    model: Any  # the prepared (possibly DDP-wrapped) policy
    reference: Any | None
    processor: Any
    optimizer: Any
    scheduler: Any
    cfg: RunConfig
    run: RunDir
    deepspeed: bool = False
    engine: Any = None  # the rollout engine, made once per process

    @property
    def policy(self) -> Any:
        """The bare transformers model (for generation, positions and saving); with LoRA, adapters included."""
        return unwrap_peft(self.accelerator.unwrap_model(self.model))


# ----------------------------------------------------------------------------------------------------------------
# One GRPO step
# ----------------------------------------------------------------------------------------------------------------


def grpo_step(
    state: TrainState, records: list[Record], step: int, seeds: list[int]
) -> tuple[Tally, list[dict[str, Any]]]:
    cfg, acc, tally = state.cfg, state.accelerator, Tally()
    n, alg = cfg.rollout.n, cfg.algorithm

    # 1-2. Sample a group of n completions for each prompt.
    prompts, truths = zip(*(prompt_of(r, cfg) for r in records), strict=True)
    with tally.timer("time/generate_s"), acc.autocast():
        batch = state.engine.generate(list(prompts), n=n, seeds=seeds)
    rows_of = [records[i // n] for i in range(len(batch.texts))]

    # 3. Score every completion with the rule-based reward.
    with tally.timer("time/reward_s"):
        scores = score_batch(
            batch.texts,
            [truths[i // n] for i in range(len(batch.texts))],
            [r.reward_func for r in rows_of],
            cfg.reward,
        )
    rewards = torch.tensor([s.overall for s in scores], dtype=torch.float32)

    # 4. Group-normalised advantages; groups whose rewards are all equal carry no signal.
    advantages = grpo.group_advantages(rewards, n, eps=alg.adv_eps, scale=alg.scale_rewards)
    flat_groups = grpo.zero_variance_groups(rewards, n)
    keep = torch.ones(len(rewards), dtype=torch.bool)
    if alg.dynamic_sampling:
        keep = ~flat_groups.repeat_interleave(n)
    kept_rows = keep.nonzero().squeeze(1)

    # 5. Reference (and, for several updates per batch, old) log-probs, without gradients, in the micro-batches
    #    the update will use.
    micro_batches = _micro_batches(kept_rows, batch, cfg.train)
    ref_logprobs = old_logprobs = None
    if alg.kl_coef > 0:
        with tally.timer("time/reference_s"):
            ref_logprobs = reference_logprobs(state, batch, micro_batches)
    if alg.updates_per_batch > 1:
        old_logprobs = _logprobs_no_grad(state.model, state.policy, batch, micro_batches, cfg)

    # 6. Micro-batched clipped-loss updates; normalisers are global so micro-batch losses add up exactly.
    num_tokens = acc.reduce(batch.completion_mask[kept_rows].sum().float(), "sum").item()
    num_seqs = acc.reduce(torch.tensor(float(len(kept_rows))), "sum").item()
    loss_sum = 0.0  # the batch loss is the sum of the micro-batch losses (global normalisers)
    with tally.timer("time/update_s"):
        for _ in range(alg.updates_per_batch):
            for k, (chunk, positions) in enumerate(micro_batches):
                logp, entropy, mask = completion_logprobs(
                    state.model,
                    state.policy,
                    batch,
                    chunk,
                    cfg.rollout.temperature,
                    entropy="loss" if alg.entropy_coef > 0 else "metric",
                )
                width = mask.shape[1]
                old = logp.detach() if old_logprobs is None else old_logprobs[positions, :width]
                loss, stats = grpo.policy_loss(
                    logp,
                    old,
                    advantages[chunk].to(logp.device),
                    mask,
                    ref_logprobs=None
                    if ref_logprobs is None
                    else ref_logprobs[positions, :width].to(logp.device),
                    entropy=entropy,
                    num_tokens=num_tokens,
                    num_sequences=num_seqs,
                    **loss_settings(cfg),
                )
                tally.merge(stats, POLICY_METRICS)
                loss_sum += float(loss.detach())
                gap = (logp.detach().cpu() - batch.logprobs[chunk, :width]).abs() * mask.cpu()
                tally.add("response/sampler_logprob_gap", float(gap.sum()), count=float(mask.sum()))
                _backward(state, loss, sync=k == len(micro_batches) - 1)
            _optimizer_step(state, tally)
    # Each process holds its share of the global loss: a count of 1/W makes the reduced "mean" their sum.
    tally.add("loss/total", loss_sum / alg.updates_per_batch, count=1 / acc.num_processes)

    # 7. Metrics (sums and counts) and rollout records.
    _tally_rewards(tally, scores, rows_of, rewards, advantages, flat_groups, batch, n)
    image_refs = [_image_ref(state.run, r, p) for r, p in zip(records, prompts, strict=True)]
    rollout_rows = [
        {
            "step": step,
            "prompt_id": f"{r.data_source}:{r.index}",
            "data_source": r.data_source,
            "reward_func": r.reward_func,
            "image": image_refs[i // n],
            "prompt": r.question,
            "ground_truth": truths[i // n],
            "completion": text,
            "reward": s.to_dict(),
            "advantage": float(advantages[i]),
            "length": int(length),
            "finished": bool(fin),
        }
        for i, (r, text, s, length, fin) in enumerate(
            zip(rows_of, batch.texts, scores, batch.completion_lengths, batch.finished, strict=True)
        )
    ]
    return tally, rollout_rows


def loss_settings(cfg: RunConfig) -> dict[str, Any]:
    """The keyword arguments of ``grpo.policy_loss`` that come straight from the config."""
    alg = cfg.algorithm
    return dict(
        clip_low=alg.clip_low,
        clip_high=alg.clip_high,
        dual_clip=alg.dual_clip,
        kl_coef=alg.kl_coef,
        kl_estimator=alg.kl_estimator,
        entropy_coef=alg.entropy_coef,
        loss_agg=alg.loss_agg,
        max_len=cfg.rollout.max_new_tokens,
    )


def prompt_of(record: Record, cfg: RunConfig) -> tuple[Prompt, str]:
    """The model input of a record and its ground truth (boxes rescaled with resized images)."""
    images, truth = load_example(record, cfg.data)
    return Prompt(record.content, images), truth


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
    batch = teacher_forced_batch(state.processor, prompts, completions)
    all_rows = torch.arange(len(prompts))
    num_tokens = acc.reduce(batch.completion_mask.sum().float(), "sum").item()
    with tally.timer("time/update_s"):
        micro_batches = _micro_batches(all_rows, batch, cfg.train)
        for k, (chunk, _) in enumerate(micro_batches):
            logp, _, mask = completion_logprobs(state.model, state.policy, batch, chunk, temperature=1.0)
            token_nll = -(logp * mask).sum()
            tally.add("loss/sft", float(token_nll.detach()), count=float(mask.sum()))
            _backward(state, token_nll / num_tokens, sync=k == len(micro_batches) - 1)
        _optimizer_step(state, tally)
    tally.add("response/length_mean", float(batch.completion_mask.sum()), count=len(prompts))
    return tally, []


def teacher_forced_batch(processor: Any, prompts: list[Prompt], completions: list[str]) -> RolloutBatch:
    """A RolloutBatch (n = 1) holding given completions, so SFT uses the same forward as GRPO."""
    inputs = encode_prompts(processor, prompts)
    tokenizer = processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text in completions]
    width = max(map(len, ids))
    completion_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        completion_ids[i, : len(row)] = torch.tensor(row)
        completion_mask[i, : len(row)] = 1
    return RolloutBatch(
        prompt_ids=inputs["input_ids"],
        prompt_mask=inputs["attention_mask"],
        prompt_token_types=inputs["mm_token_type_ids"],
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=torch.zeros(completion_ids.shape),
        pixel_values=inputs.get("pixel_values"),
        image_grid_thw=inputs.get("image_grid_thw"),
        images_per_prompt=[len(p.images) for p in prompts],
        n=1,
        texts=completions,
        finished=[True] * len(completions),
    )


# ----------------------------------------------------------------------------------------------------------------
# The training forward: log-probs of completion tokens given prompt and images
# ----------------------------------------------------------------------------------------------------------------


def completion_logprobs(
    model: Any,
    policy: Any,
    batch: RolloutBatch,
    rows: torch.Tensor,
    temperature: float,
    entropy: Literal["none", "metric", "loss"] = "none",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-token log-probs (and entropies) of the completions of ``rows``, trimmed to the rows' longest one.

    ``entropy``: "none" skips it; "metric" computes it without gradient (for logging); "loss" keeps its graph.

    Returns ``(logprobs [r, w], entropy [r, w] or None, mask [r, w])`` with ``w`` the longest completion among
    ``rows``. The forward sees exactly what the sampler saw: the same images, token types and 3-D positions
    (``model`` may be DDP-wrapped; ``policy`` is the bare model used to compute positions).
    """
    prompt_mask = batch.prompt_mask[rows]
    first = int((prompt_mask.sum(0) > 0).nonzero()[0])  # drop columns that are padding in every row
    width = int(batch.completion_mask[rows].sum(-1).max())
    completion = batch.completion_ids[rows, :width]
    completion_mask = batch.completion_mask[rows, :width]
    ids = torch.cat([batch.prompt_ids[rows, first:], completion], 1)
    mask = torch.cat([prompt_mask[:, first:], completion_mask], 1)
    types = torch.cat([batch.prompt_token_types[rows, first:], torch.zeros_like(completion)], 1)
    pixel_values, grid = select_images(
        batch.pixel_values, batch.image_grid_thw, batch.images_per_prompt, batch.prompt_index[rows]
    )
    device = next(policy.parameters()).device
    ids, mask, types = ids.to(device), mask.to(device), types.to(device)
    grid = None if grid is None else grid.to(device)
    positions = mrope_positions(policy, ids, mask, types, grid)
    if _can_run_prompts_once(model, batch.prompt_index[rows], width):
        logits = _logits_running_prompts_once(model, batch, rows, ids, mask, positions, width)
    else:
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            image_grid_thw=grid,
            pixel_values=None if pixel_values is None else pixel_values.to(device),
            logits_to_keep=width + 1,
        ).logits[:, :-1]
    temperature = temperature if temperature > 0 else 1.0
    logprobs = grpo.token_logprobs(logits, completion.to(device), temperature=temperature)
    entropies = None
    if entropy == "loss":
        entropies = grpo.token_entropy(logits, temperature=temperature)
    elif entropy == "metric":
        with torch.no_grad():
            entropies = grpo.token_entropy(logits.detach(), temperature=temperature)
    return logprobs, entropies, completion_mask.to(device).to(logprobs.dtype)


def _can_run_prompts_once(model: Any, prompt_index: torch.Tensor, width: int) -> bool:
    """Whether ``_logits_running_prompts_once`` applies: some rows share a prompt, the completions are longer
    than one token, the model keeps a KV cache in a training forward (gradient checkpointing drops it), its
    attention reads a left-padded cache (sdpa, eager), and it is a plain module or DDP-wrapped (a DeepSpeed
    engine must see exactly one forward per backward)."""
    bare = _bare(model)
    return (
        width > 1
        and len(prompt_index.unique()) < len(prompt_index)
        and isinstance(bare, PreTrainedModel)
        and not bare.is_activation_checkpointing
        and bare.config._attn_implementation in ("sdpa", "eager")
    )


def _logits_running_prompts_once(
    model: Any,
    batch: RolloutBatch,
    rows: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """The completion logits [r, w, V] of ``completion_logprobs``, each distinct prompt run through the model once.

    A GRPO group is n completions of one prompt, so the plain forward encodes every image and prompt token n
    times. Here the distinct prompts fill a KV cache (keeping its autograd graph), each row reads its prompt's
    keys and values, and only the completions run per row: the same maths (equal to float rounding, tested),
    with the prompt's and the vision tower's work done once per group. ``ids``, ``mask`` and ``positions`` are
    the plain forward's inputs (prompt columns, then ``width`` completion columns).
    """
    from transformers import DynamicCache

    bare = _bare(model)
    device = ids.device
    # Row i answers prompts[row_prompt[i]]; first_row[k] is a row of prompt k.
    prompts, row_prompt = batch.prompt_index[rows].unique(return_inverse=True)
    first_row = torch.tensor([row_prompt.tolist().index(k) for k in range(len(prompts))], device=device)
    row_prompt = row_prompt.to(device)
    pixel_values, grid = select_images(
        batch.pixel_values, batch.image_grid_thw, batch.images_per_prompt, prompts
    )
    prompt_len = ids.shape[1] - width
    cache = DynamicCache(config=bare.config)
    # The bare module runs the prompts, so that a DDP wrapper sees one forward (the completions') per backward.
    prompt_logits = bare(
        input_ids=ids[first_row, :prompt_len],
        attention_mask=mask[first_row, :prompt_len],
        position_ids=positions[:, first_row, :prompt_len],
        pixel_values=None if pixel_values is None else pixel_values.to(device),
        image_grid_thw=None if grid is None else grid.to(device),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits
    cache.batch_select_indices(row_prompt)
    completion_logits = model(
        input_ids=ids[:, prompt_len:-1],
        attention_mask=mask[:, :-1],
        position_ids=positions[:, :, prompt_len:-1],
        cache=cache,
        use_cache=True,
    ).logits
    # A prompt's last position predicts the first token of each of its completions.
    return torch.cat([prompt_logits[row_prompt], completion_logits], 1)


def reference_logprobs(state: TrainState, batch: RolloutBatch, micro_batches: MicroBatches) -> torch.Tensor:
    """Log-probs under the frozen initial policy: its own copy (on the training device, or on the CPU with
    ``model.reference_on_cpu``), or, with LoRA, the policy itself with its adapters switched off."""
    if state.reference is not None:
        return _logprobs_no_grad(state.reference, state.reference, batch, micro_batches, state.cfg)
    with peft_model(state.model).disable_adapter():
        return _logprobs_no_grad(state.model, state.policy, batch, micro_batches, state.cfg)


def _logprobs_no_grad(
    model: Any, policy: Any, batch: RolloutBatch, micro_batches: MicroBatches, cfg: RunConfig
) -> torch.Tensor:
    """Log-probs of the micro-batches' rows under ``model`` without gradients, as one [rows, Lc] tensor (0-padded),
    row ``i`` holding position ``i`` of the micro-batches."""
    out = torch.zeros(sum(len(chunk) for chunk, _ in micro_batches), batch.completion_ids.shape[1])
    with torch.no_grad():
        for chunk, positions in micro_batches:
            logp, _, _ = completion_logprobs(model, policy, batch, chunk, cfg.rollout.temperature)
            out[positions, : logp.shape[1]] = logp.float().cpu()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Validation, checkpoints, resume
# ----------------------------------------------------------------------------------------------------------------


def validate(state: TrainState, records: list[Record], tally: Tally) -> None:
    """Greedy generation on this process's share of the validation records, scored by the training reward."""
    cfg, acc = state.cfg, state.accelerator
    mine = records[acc.process_index :: acc.num_processes]
    for start in range(0, len(mine), cfg.eval.batch_size):
        chunk = mine[start : start + cfg.eval.batch_size]
        prompts, truths = zip(*(prompt_of(r, cfg) for r in chunk), strict=True)
        with acc.autocast():
            texts = state.engine.generate(list(prompts), n=1, greedy=True).texts
        for record, score in zip(
            chunk, score_batch(texts, list(truths), [r.reward_func for r in chunk], cfg.reward), strict=True
        ):
            tally.add("val/accuracy", score.accuracy)
            tally.add(f"val/accuracy/{record.data_source}", score.accuracy)
            tally.add("val/format", score.format)


def save_checkpoint(state: TrainState, target: Path, step: int, epoch: int) -> None:
    """Policy + processor in save_pretrained format, plus optimizer and scheduler; published atomically."""
    acc = state.accelerator
    tmp = target.parent / f".tmp_{target.name}"
    weights = acc.get_state_dict(state.model)  # every process calls it: ZeRO-3 gathers the shards
    if acc.is_main_process:
        tmp.mkdir(parents=True, exist_ok=True)
        adapters = peft_model(state.model)
        if adapters is not None:
            # PEFT keeps only the adapter's tensors of the full state dict (gathered under ZeRO-3).
            adapters.save_pretrained(tmp / ADAPTER_DIR, state_dict=weights)
            m = state.cfg.model
            weights = merged_state_dict(weights, scaling=m.lora_alpha / m.lora_rank)
        state.policy.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        state.processor.save_pretrained(tmp)
        if not state.deepspeed:
            torch.save(state.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(state.scheduler.state_dict(), tmp / "scheduler.pt")
    acc.wait_for_everyone()
    if state.deepspeed:  # the optimizer states are sharded over ranks: each rank writes its own
        acc.save_state(str(tmp / SHARDED_STATE))
        acc.wait_for_everyone()
    if acc.is_main_process:
        publish_dir(tmp, target, {"step": step, "epoch": epoch, "seed": state.cfg.train.seed})
    acc.wait_for_everyone()


def _resume_point(run: RunDir, cfg: RunConfig, resume: bool, is_main: bool) -> tuple[int, Path | None]:
    """(steps already done, checkpoint to load) for this run; refuses to overwrite an existing run."""
    if not resume:
        if run.metrics.exists() and run.read_metrics():
            raise TrainingError(
                f"{run.path} already holds a run; pass --resume to continue it or pick a new run_name"
            )
        return 0, None
    if run.config.exists():
        _check_resumable(run, cfg)
    if run.is_finished():
        return read_state(run.final)["step"], None
    last = run.last_checkpoint()
    if last is None:
        if is_main:
            run.trim_to_step(0)
        return 0, None
    step, path = last
    if is_main:
        run.trim_to_step(step)
    return step, path


# Knobs that do not change what a run computes: a resumed (or reused finished) run may differ in these only.
RESUME_MAY_CHANGE = ("logging.progress", "train.save_every", "train.keep_last", "eval.", "study.")


def _check_resumable(run: RunDir, cfg: RunConfig) -> None:
    """Refuse to continue (or reuse the result of) a run that was started with other settings."""
    changes = {
        key: values
        for key, values in config_changes(load_config(run.config), cfg).items()
        if not key.startswith(RESUME_MAY_CHANGE)
    }
    if changes:
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in sorted(changes.items()))
        raise TrainingError(
            f"{run.path} was trained with other settings ({listed}); resuming would mix two runs. Pick a new "
            "logging.run_name (or study.output_dir), or delete the run (`reproduce --force` clears a study)"
        )


# ----------------------------------------------------------------------------------------------------------------
# Small pieces
# ----------------------------------------------------------------------------------------------------------------


class Schedule:
    """Which records each step trains on: a seeded permutation per epoch, cut into global batches."""

    def __init__(self, n_records: int, cfg: RunConfig):
        self.per_step = cfg.train.prompts_per_step
        if n_records < self.per_step:
            raise TrainingError(f"{n_records} training records < train.prompts_per_step={self.per_step}")
        self.steps_per_epoch = n_records // self.per_step
        self.n_records, self.seed, self.shuffle = n_records, cfg.train.seed, cfg.data.shuffle
        planned = self.steps_per_epoch * cfg.train.epochs
        self.total_steps = min(planned, cfg.train.max_steps) if cfg.train.max_steps else planned

    def epoch(self, step: int) -> int:
        return (step - 1) // self.steps_per_epoch

    def indices(self, step: int, rank: int, world: int) -> list[int]:
        epoch, within = divmod(step - 1, self.steps_per_epoch)
        if self.shuffle:
            order = torch.randperm(
                self.n_records, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch)
            )
        else:
            order = torch.arange(self.n_records)
        batch = order[within * self.per_step : (within + 1) * self.per_step].tolist()
        share = self.per_step // world
        return batch[rank * share : (rank + 1) * share]


# grpo.policy_loss's statistic names -> registered metric keys.
POLICY_METRICS = {
    "pg_loss": "loss/policy",
    "kl": "kl/mean",
    "entropy": "entropy/mean",
    "clipfrac": "clip/fraction",
    "clipfrac_low": "clip/low_fraction",
    "clipfrac_high": "clip/high_fraction",
    "clipfrac_dual": "clip/dual_fraction",
    "ratio_mean": "ratio/mean",
    "ratio_min": "ratio/min",
    "ratio_max": "ratio/max",
}


@dataclass
class Tally:
    """A step's metrics as grpo.Stats (sums and counts, minima, maxima), reduced exactly over processes."""

    stats: grpo.Stats = field(default_factory=dict)

    def add(self, key: str, value: float, count: float = 1.0, reduce: str = "mean") -> None:
        self.stats = grpo.merge_stats(self.stats, {key: grpo.Stat(float(value), float(count), reduce)})

    def merge(self, stats: grpo.Stats, rename: dict[str, str]) -> None:
        self.stats = grpo.merge_stats(self.stats, {rename[k]: v for k, v in stats.items()})

    @contextlib.contextmanager
    def timer(self, key: str):
        """Seconds spent in the block; over processes the slowest one counts."""
        t0 = time.perf_counter()
        yield
        self.add(key, time.perf_counter() - t0, reduce="max")

    def reduce(self, accelerator: Any) -> dict[str, float]:
        parts = [self.stats]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object([self.stats])
        return grpo.stat_values(grpo.merge_stats(*parts))


def _tally_rewards(
    tally: Tally, scores, rows, rewards, advantages, flat_groups, batch: RolloutBatch, n: int
) -> None:
    for score, record in zip(scores, rows, strict=True):
        tally.add("reward/overall", score.overall)
        tally.add("reward/accuracy", score.accuracy)
        tally.add("reward/format", score.format)
        tally.add(f"accuracy/{record.data_source}", score.accuracy)
        tally.add("reward/timeouts", float(score.timed_out))
        tally.add("reward/unknown_reward_func", float(score.unknown_reward_func))
    groups = rewards.view(-1, n)
    tally.add("reward/std_in_group", float(groups.std(-1, unbiased=True).sum()), count=len(groups))
    tally.add("groups/zero_variance_fraction", float(flat_groups.sum()), count=len(flat_groups))
    tally.add("advantage/mean", float(advantages.sum()), count=len(advantages))
    tally.add("advantage/abs_mean", float(advantages.abs().sum()), count=len(advantages))
    lengths = batch.completion_mask.sum(-1).float()
    tally.add("response/length_mean", float(lengths.sum()), count=len(lengths))
    tally.add("response/length_max", float(lengths.max()), reduce="max")
    tally.add("response/clipped_fraction", float(sum(not f for f in batch.finished)), count=len(lengths))


def _image_ref(run: RunDir, record: Record, prompt: Prompt) -> str | None:
    """Where the rollout browser finds a prompt's (first) image: its path on disk, or for images embedded as
    bytes a 256-px thumbnail saved once under ``<run>/images/`` (path relative to the run directory)."""
    if record.image_paths:
        return record.image_paths[0]
    if not prompt.images:
        return None
    relative = f"images/{record.data_source}_{record.index}.png"
    target = run.path / relative
    if not target.exists():
        thumbnail = prompt.images[0].copy()
        thumbnail.thumbnail((256, 256))
        buffer = io.BytesIO()
        thumbnail.save(buffer, format="PNG")
        atomic_write_bytes(target, buffer.getvalue())
    return relative


def _is_deepspeed(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _bare(model: Any) -> Any:
    """The transformers model inside DDP and PEFT wrappers (LoRA layers, injected in place, stay active).

    A DeepSpeed engine is returned as it is: it must see exactly one forward per backward."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return unwrap_peft(model)


def pack_micro_batches(lengths: list[int], size: int, max_tokens: int = 0) -> list[list[int]]:
    """Cut positions ``0..len(lengths)-1`` into micro-batches of at most ``size`` sequences.

    ``max_tokens == 0``: consecutive runs (a group's samples stay together, so its prompt runs once).
    ``max_tokens > 0``, length-bucketed: positions sorted longest first and packed greedily while
    ``sequences × longest length ≤ max_tokens`` (the padded cost of the forward); a longer sequence goes alone.
    Long responses then share micro-batches with long ones and short with short, instead of padding every short
    response to the longest in a mixed batch. Any partition gives the same gradient: the loss normalisers are
    global (see ``grpo_step``).
    """
    if max_tokens <= 0:
        return [list(range(start, min(start + size, len(lengths)))) for start in range(0, len(lengths), size)]
    chunks: list[list[int]] = []
    for position in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        chunk = chunks[-1] if chunks else None
        # Sorted longest first: the chunk's first sequence is its longest.
        if chunk and len(chunk) < size and (len(chunk) + 1) * lengths[chunk[0]] <= max_tokens:
            chunk.append(position)
        else:
            chunks.append([position])
    return chunks


# Per micro-batch: (row ids of the batch, their positions within the rows being trained on).
MicroBatches = list[tuple[torch.Tensor, torch.Tensor]]


def _micro_batches(rows: torch.Tensor, batch: RolloutBatch, train: TrainConfig) -> MicroBatches:
    """(row ids, their positions within ``rows``) per micro-batch (:func:`pack_micro_batches`)."""
    if len(rows) == 0:
        raise TrainingError("no sequences to train on this step (all groups dropped by dynamic sampling)")
    chunks = pack_micro_batches(
        batch.lengths[rows].tolist(), train.micro_batch_size, train.micro_batch_tokens
    )
    return [(rows[chunk], torch.tensor(chunk)) for chunk in chunks]


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
    if hasattr(state.engine, "sync_weights"):  # vLLM samples from its own copy of the weights
        state.engine.sync_weights(state.model)


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


def _gather(accelerator: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if accelerator.num_processes == 1:
        return rows
    from accelerate.utils import gather_object

    return gather_object(rows)


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
