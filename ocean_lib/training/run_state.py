"""A training run's state: what a step needs (built once), and how it is saved, resumed and refused.

:func:`build_state` loads the policy (with LoRA adapters if asked) and its frozen KL reference, makes the optimizer
and its schedule, prepares them with accelerate, restores a checkpoint and makes the rollout engine.
:func:`save_checkpoint` writes a Hugging Face ``save_pretrained`` directory (plus optimizer state) atomically;
:func:`resume_point` finds where a run left off and refuses to mix two runs' settings.
"""

from __future__ import annotations

import errno
import functools
import resource
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ocean_lib.base.run_dir import RunDir, TrainingError, check_start, publish_dir, read_state
from ocean_lib.base.schema import RunConfig, TrainConfig
from ocean_lib.training import distributed
from ocean_lib.training.lora import ADAPTER_DIR, attach_lora, merged_state_dict, peft_model, unwrap_peft
from ocean_lib.training.models import load_policy
from ocean_lib.training.rollout import make_engine

SHARDED_STATE = "sharded_state"  # accelerate.save_state folder of a DeepSpeed checkpoint


def build_state(cfg: RunConfig, accelerator: Any, run: RunDir, checkpoint: Path | None = None) -> TrainState:
    """Everything a step needs: the policy (with LoRA adapters if asked), its frozen KL reference, AdamW and its
    schedule, prepared by ``accelerator`` and restored from ``checkpoint`` if given, and the rollout engine."""
    load = dict(
        attn_implementation=cfg.model.attn_implementation,
        min_pixels=cfg.data.processor_min_pixels or cfg.data.min_pixels,
        max_pixels=cfg.data.processor_max_pixels or cfg.data.max_pixels,
    )
    lora = cfg.model.lora_rank > 0
    # With LoRA the frozen weights always come from the start; a checkpoint holds the adapter (lora.py).
    start = cfg.model.name_or_path if lora or checkpoint is None else str(checkpoint)
    deepspeed = distributed.is_deepspeed(accelerator)
    kl = cfg.train.objective == "grpo" and cfg.algorithm.kl_coef > 0
    if cfg.model.reference_offload and not deepspeed:
        raise TrainingError(
            "model.reference_offload shards the reference with DeepSpeed ZeRO-3: launch with "
            "params/accelerate/single_node_zero{2,3}.yaml, or keep the reference in host memory with "
            "model.reference_on_cpu=true"
        )
    reference = None
    with distributed.whole_weights_loading(accelerator):
        model, processor = load_policy(start, dtype="float32", **load)
        if kl and not lora:
            # The reference is the stage's initial policy (Ocean-R1: stage 2's reference is stage 1's result),
            # frozen, in the inference dtype. (With LoRA it is the policy with its adapters off: no copy.)
            reference = load_policy(cfg.model.name_or_path, dtype=cfg.model.inference_dtype, **load)[0]
            reference.requires_grad_(False).eval()
    # from_pretrained returns eval mode, and transformers recomputes checkpointed layers only in training mode.
    check_no_dropout(model)
    model.train()
    if cfg.model.freeze_vision_tower or cfg.train.vision_lr_scale == 0:
        model.model.visual.requires_grad_(False)
    if cfg.model.gradient_checkpointing:
        # Non-reentrant: the reentrant variant breaks with frozen parameters under DDP/ZeRO.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        torch.manual_seed(cfg.train.seed)  # the adapters' initial A matrices
        m = cfg.model
        adapter = checkpoint / ADAPTER_DIR if checkpoint is not None else None
        model = attach_lora(model, m.lora_rank, m.lora_alpha, m.lora_target_modules, adapter)

    optimizer = make_optimizer(model, cfg.train)
    scheduler = make_schedule(optimizer, cfg.train)
    initial = distributed.trainable_weights(model) if deepspeed else {}
    if deepspeed:
        distributed.fill_deepspeed_auto_sizes(accelerator, model.config)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if initial:  # the masters start from the loaded fp32 weights, not from DeepSpeed's bf16 copy of them
        distributed.set_fp32_masters(accelerator, model, initial)
        del initial
    placement = "policy_with_adapters_off" if kl and lora else None
    if reference is not None and deepspeed:
        reference = distributed.deepspeed_reference(
            accelerator, reference, offload=cfg.model.reference_offload
        )
        placement = "deepspeed_zero3_offload" if cfg.model.reference_offload else "deepspeed_zero3"
    elif reference is not None:
        placement = "cpu" if cfg.model.reference_on_cpu else accelerator.device.type
        reference.to("cpu" if cfg.model.reference_on_cpu else accelerator.device)
    if checkpoint is not None and (checkpoint / SHARDED_STATE).is_dir():
        accelerator.load_state(str(checkpoint / SHARDED_STATE))  # DeepSpeed: every rank reads its shard
    elif checkpoint is not None:
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))

    state = TrainState(accelerator, model, reference, processor, optimizer, scheduler, cfg, run, deepspeed)
    state.reference_placement = placement
    # Under ZeRO-3 the HF sampler either holds the whole weights while it samples (rollout.gather_weights), or
    # every forward is a collective and the processes decode in lockstep until all are done.
    lockstep = weights = None
    if distributed.zero_stage(accelerator) == 3 and cfg.rollout.gather_weights:
        weights = functools.partial(distributed.whole_weights_sampling, model)
    elif distributed.zero_stage(accelerator) == 3:
        lockstep = functools.partial(distributed.all_done, accelerator)
    # once: vLLM is expensive; rows over data.max_images_per_prompt never reach it
    state.engine = make_engine(
        state.policy,
        processor,
        cfg.rollout,
        lockstep,
        weights=weights,
        dtype=cfg.model.inference_dtype,
        max_images_per_prompt=cfg.data.max_images_per_prompt,
    )
    return state


def check_no_dropout(model: Any) -> None:
    """Refuse a policy with dropout: training mode (needed for gradient checkpointing) would switch it on, and
    the sampler draws in eval mode, so the training forward's log-probs would differ from the sampler's and the
    PPO ratio would not start at 1. Qwen2.5-VL's configs have no dropout (attention_dropout 0.0)."""
    rates = {
        name: module.p
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Dropout) and module.p > 0
    }
    for where, config in (("text_config", model.config.get_text_config()), ("config", model.config)):
        for key in ("attention_dropout", "hidden_dropout", "dropout"):
            if float(getattr(config, key, 0.0) or 0.0) > 0:
                rates[f"{where}.{key}"] = getattr(config, key)
    if rates:
        raise TrainingError(
            f"the policy has dropout ({rates}); in training mode its forward would differ from the sampler's: "
            "set the model's dropout rates to 0"
        )


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
    reference_placement: str | None = None  # where the KL reference runs (run_info.json)

    @property
    def policy(self) -> Any:
        """The bare transformers model (for generation, positions and saving); with LoRA, adapters included."""
        return unwrap_peft(self.accelerator.unwrap_model(self.model))


def make_optimizer(model: Any, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, with the run's learning rate, weight decay and betas.

    With ``train.vision_lr_scale`` other than 1 the vision tower's trainable parameters (LoRA adapters in it
    included) are a second parameter group at ``lr x vision_lr_scale``; the schedule scales both groups alike.
    At 1 there is one group, as before the knob existed, so older optimizer checkpoints still load.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": trainable}]
    if train.vision_lr_scale != 1:
        tower = {id(p) for p in unwrap_peft(model).model.visual.parameters()}
        vision = [p for p in trainable if id(p) in tower]
        groups = [{"params": [p for p in trainable if id(p) not in tower]}]
        if vision:  # a frozen tower (vision_lr_scale 0, model.freeze_vision_tower) has no group
            groups.append({"params": vision, "lr": train.lr * train.vision_lr_scale})
    return torch.optim.AdamW(
        groups, lr=train.lr, weight_decay=train.weight_decay, betas=(train.adam_beta1, train.adam_beta2)
    )


def make_schedule(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of ``train.lr_schedule`` (:func:`lr_factor`), stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: lr_factor(done, train))


def lr_factor(done: int, train: TrainConfig) -> float:
    """The learning-rate multiplier of the step that follows ``done`` steps (LambdaLR's count), W = warm-up steps.

    constant        min(1, (done + 1) / W), or 1 without warm-up: step 1 trains at the full rate
    verl_constant   min(1, done / max(1, W)): verl's get_constant_schedule_with_warmup (Ocean-R1), whose
                    step 1 runs at lr 0 even without warm-up (AdamW then moves only its moments)
    """
    warmup = train.warmup_steps
    if train.lr_schedule == "verl_constant":
        return min(1.0, done / max(1, warmup))
    return min(1.0, (done + 1) / warmup) if warmup else 1.0


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


def save_checkpoint(state: TrainState, target: Path, step: int, epoch: int) -> None:
    """Policy + processor in save_pretrained format, plus optimizer and scheduler; published atomically."""
    acc = state.accelerator
    tmp = target.parent / f".tmp_{target.name}"
    weights = acc.get_state_dict(state.model)  # every process calls it: ZeRO-3 gathers the shards
    if (
        state.deepspeed
    ):  # the module holds bf16 copies; the trained weights are the fp32 masters (as without it)
        masters = distributed.fp32_masters(acc, state.model)
        if acc.is_main_process:
            weights.update(masters)
    if acc.is_main_process:
        try:
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
        except (OSError, RuntimeError) as error:  # a full disk reaches us as torch's "unexpected pos ..."
            raise TrainingError(
                f"could not write the checkpoint {target} ({write_limit_hit(error, tmp)}): {error}"
            ) from error
    acc.wait_for_everyone()
    if state.deepspeed:  # the optimizer states are sharded over ranks: each rank writes its own
        acc.save_state(str(tmp / SHARDED_STATE))
        acc.wait_for_everyone()
    if acc.is_main_process:
        publish_dir(tmp, target, {"step": step, "epoch": epoch, "seed": state.cfg.train.seed})
    acc.wait_for_everyone()


def write_limit_hit(error: BaseException, directory: Path) -> str:
    """Which limit a failed write met: the process's file-size limit (``ulimit -f``; EFBIG), or the disk's space.

    torch reports either as a RuntimeError without an errno; a file of ``directory`` that reached the size limit
    tells them apart (a write that meets the limit stops exactly there).
    """
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    at_limit = limit != resource.RLIM_INFINITY and any(
        path.is_file() and path.stat().st_size >= limit for path in directory.rglob("*")
    )
    if at_limit:
        return f"a file reached this process's file-size limit, ulimit -f: {limit / 2**20:,.0f} MiB"
    if getattr(error, "errno", None) == errno.EFBIG:
        return "a file reached the largest size its file system allows"
    return f"{shutil.disk_usage(directory.parent).free / 2**20:,.0f} MiB free on its disk"


def resume_point(run: RunDir, cfg: RunConfig, resume: bool, is_main: bool) -> tuple[int, Path | None]:
    """(steps already done, checkpoint to load) for this run; refuses to overwrite an existing run (the launcher
    refuses the same before it starts any process: :func:`ocean_lib.base.run_dir.check_start`)."""
    check_start(run, cfg, resume)
    if not resume:
        return 0, None
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
