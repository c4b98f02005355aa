"""How the training processes run together: the launch file honoured (or refused), DeepSpeed set up for
Qwen2.5-VL, collectives on the right device, and a record of it all in ``run_info.json``.

``accelerate launch --config_file params/accelerate/<file>.yaml`` hands its settings to the training process
through environment variables that ``Accelerator()`` reads. Left alone, four of them go wrong without a word:

* ``Accelerator(cpu=True)``, which a CPU run needs for a gloo process group, drops DeepSpeed; and without it,
  accelerate starts DeepSpeed on a CPU machine with no backend and counts ONE process. :func:`make_accelerator`
  starts DeepSpeed with gloo on CPU machines (the CPU tests run the same ZeRO code as GPUs) and refuses a launch
  whose file it cannot honour (:func:`check_launch`, :class:`LaunchMismatch`), naming the file and the knob.
* accelerate fills the DeepSpeed JSON's ``"auto"`` bucket sizes from ``model.config.hidden_size``; Qwen2.5-VL
  keeps it in ``text_config`` and ``prepare`` raises: :func:`fill_deepspeed_auto_sizes`.
* accelerate registers its DeepSpeed config with transformers whatever ``zero3_init_flag`` says, so under ZeRO-3
  every ``from_pretrained`` comes up partitioned, the frozen reference included, whose forward then fails
  (``'weight' must be 2-D``): :func:`whole_weights_loading`.
* NCCL takes only GPU tensors; gloo takes CPU tensors too, so a CPU test cannot see a host tensor handed to a
  collective. The trainer's own collectives go through :func:`all_reduce`, which puts the values on
  ``accelerator.device``; ``tests/collective_spy.py`` enforces the rule on CPU.

Under ZeRO-3 every forward gathers weights from all processes, so every process must run the same forwards in
the same order: the trainer pads micro-batch counts (:func:`all_reduce` with ``max``), the HF sampler decodes
until every process is done (:func:`all_done`), and :func:`check_same_modalities` refuses steps where some
processes would run the vision tower and others not.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from collections.abc import Iterator
from typing import Any, Literal

import torch

from ocean_lib.base.schema import RunConfig
from ocean_lib.training.compat import activation_checkpointing


class LaunchMismatch(RuntimeError):
    """The launch (accelerate config file, DeepSpeed JSON, process count) cannot be honoured as written."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def precision_of(cfg: RunConfig) -> Literal["bf16", "no"]:
    """The accelerate mixed precision a config asks for: ``model.train_precision: bfloat16`` keeps fp32 master
    weights (in the optimizer) and computes in bf16, since AdamW steps of lr 1e-6 vanish in bf16 weights."""
    return "bf16" if cfg.model.train_precision == "bfloat16" else "no"


def is_deepspeed(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator: Any) -> int | None:
    """The DeepSpeed ZeRO stage the run uses, ``None`` without DeepSpeed."""
    return accelerator.state.deepspeed_plugin.zero_stage if is_deepspeed(accelerator) else None


# ----------------------------------------------------------------------------------------------------------------
# The accelerator the launch asked for
# ----------------------------------------------------------------------------------------------------------------


def make_accelerator(cfg: RunConfig) -> Any:
    """The ``Accelerator`` of this training process, as the launch file describes it, or a ``LaunchMismatch``."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    deepspeed = _env_flag("ACCELERATE_USE_DEEPSPEED")
    on_gpu = torch.cuda.is_available()
    handlers = []
    if deepspeed and not on_gpu:
        # accelerate starts DeepSpeed's process group with the backend it is given and finds none to infer on a
        # CPU machine; with none it counts one process. gloo, as for plain CPU runs.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(
        cpu=not on_gpu and not deepspeed, mixed_precision=precision_of(cfg), kwargs_handlers=handlers
    )
    check_launch(accelerator, cfg)
    return accelerator


def check_launch(accelerator: Any, cfg: RunConfig) -> None:
    """Refuse a launch whose file this trainer would not honour, instead of silently running something else."""
    errors = []
    if _env_flag("ACCELERATE_USE_FSDP"):
        errors.append(
            "the launch file asks for FSDP, which this trainer does not support (checkpoints, the frozen "
            "reference and weight syncing assume DDP or DeepSpeed): use params/accelerate/single_node_zero3.yaml"
        )
    if _env_flag("ACCELERATE_USE_DEEPSPEED") and not is_deepspeed(accelerator):
        errors.append(
            f"the launch file asks for DeepSpeed but accelerate started {accelerator.distributed_type}"
        )
    if accelerator.num_processes != cfg.train.num_processes:
        errors.append(
            f"train.num_processes={cfg.train.num_processes} but {accelerator.num_processes} process(es) started; "
            "on CPU launch with `accelerate launch --multi_gpu --num_processes N` (`--cpu` starts only one)"
        )
    if is_deepspeed(accelerator):
        plugin = accelerator.state.deepspeed_plugin
        where = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or "the DeepSpeed config"
        errors += deepspeed_conflicts(plugin.deepspeed_config, plugin.zero3_init_flag, where, cfg)
    else:
        asked = os.environ.get("ACCELERATE_MIXED_PRECISION")
        if asked is not None and asked != precision_of(cfg):
            errors.append(
                f"the launch asks for mixed_precision={asked} but model.train_precision={cfg.model.train_precision} means "
                f"mixed_precision={precision_of(cfg)} (bfloat16: fp32 weights, bf16 compute); make them agree"
            )
    if errors:
        raise LaunchMismatch("this launch cannot run as written:\n  " + "\n  ".join(errors))


def deepspeed_conflicts(ds: dict[str, Any], zero3_init_flag: bool, where: str, cfg: RunConfig) -> list[str]:
    """What a DeepSpeed JSON ``ds`` (named ``where``) says that the params file contradicts (DeepSpeed would win
    without a word). ``ds`` as accelerate hands it over, ``"auto"`` precision filled (gpu-check's plan fills it
    the same way from the file)."""
    errors = []
    bf16 = ds.get("bf16", {}).get("enabled") is True
    if bf16 != (cfg.model.train_precision == "bfloat16"):
        errors.append(
            f"{where} has bf16.enabled={bf16} but model.train_precision={cfg.model.train_precision}: with bf16 DeepSpeed keeps fp32 "
            "master weights and computes in bf16, which is model.train_precision=bfloat16 here"
        )
    if ds.get("fp16", {}).get("enabled") is True:
        errors.append(f"{where} enables fp16; this trainer runs fp32 or bf16 only")
    if ds.get("gradient_accumulation_steps", 1) not in (1, "auto"):
        errors.append(
            f"{where} has gradient_accumulation_steps={ds['gradient_accumulation_steps']}: the trainer accumulates "
            "its own micro-batches with global normalisers, and DeepSpeed would divide the loss again; set 1"
        )
    clipping = ds.get("gradient_clipping", 0.0)
    if clipping != "auto" and float(clipping) != cfg.train.grad_clip:
        errors.append(
            f"{where} has gradient_clipping={clipping} but train.grad_clip={cfg.train.grad_clip}: DeepSpeed clips "
            "inside its own step and train.grad_clip is not applied; make them equal"
        )
    if zero3_init_flag:
        errors.append(
            "zero3_init_flag: true: the trainer loads whole weights and DeepSpeed shards them at prepare "
            "(the frozen reference becomes its own ZeRO-3 engine); set zero3_init_flag: false"
        )
    return errors


def trainable_weights(model: Any) -> dict[str, torch.Tensor]:
    """The trainable parameters' current tensors by name (references, no copies): the fp32 values DeepSpeed's
    bf16 cast at ``prepare`` would round, kept for :func:`set_fp32_masters`."""
    return {name: p.data for name, p in model.named_parameters() if p.requires_grad}


def set_fp32_masters(accelerator: Any, model: Any, values: dict[str, torch.Tensor]) -> None:
    """Make DeepSpeed's fp32 master weights the given fp32 values (by parameter name of the unwrapped model).

    With bf16, DeepSpeed casts the module to bf16 and then builds the masters from that copy: a stage starting
    from fp32 weights (stage 1's ``final/``, written from its masters) would start from their bf16 rounding,
    and with lr 1e-6 a rounding step (2^-8 of a weight) is many optimizer steps. Not a collective."""
    from deepspeed.utils import safe_set_full_fp32_param

    for name, p in accelerator.unwrap_model(model).named_parameters():
        if name in values:
            safe_set_full_fp32_param(p, values[name].to(accelerator.device, torch.float32))


def fp32_masters(accelerator: Any, model: Any) -> dict[str, torch.Tensor]:
    """DeepSpeed's fp32 master weights of the trainable parameters, whole, on the main process (host memory);
    empty elsewhere. A collective per parameter (ZeRO shards the masters): every process calls it."""
    from deepspeed.utils import safe_get_full_fp32_param

    masters, names = {}, {}
    # Tied weights (the 3B's output layer and embeddings) are one parameter: one master, written under each name.
    for name, p in accelerator.unwrap_model(model).named_parameters(remove_duplicate=False):
        names.setdefault(p, []).append(name)
    for p, aliases in names.items():
        if p.requires_grad:
            value = safe_get_full_fp32_param(p)
            if accelerator.is_main_process and value is not None:
                masters |= dict.fromkeys(aliases, value.cpu())
    return masters


@contextlib.contextmanager
def whole_weights_loading(accelerator: Any) -> Iterator[None]:
    """``from_pretrained`` without ZeRO-3 partitioning inside this block.

    accelerate 1.15 registers its DeepSpeed config with transformers (``HfDeepSpeedConfig``) whatever
    ``zero3_init_flag`` says, and transformers then loads every model under ``deepspeed.zero.Init``: the policy
    (harmless: ``prepare`` would shard it anyway) and the frozen reference, which is no DeepSpeed engine and
    whose forward fails on the empty shards. ``zero3_init_flag: false`` means "load whole": honoured here.
    """
    plugin = accelerator.state.deepspeed_plugin if is_deepspeed(accelerator) else None
    if plugin is None or getattr(plugin, "dschf", None) is None:
        yield
        return
    from transformers.integrations import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(plugin.dschf)


@contextlib.contextmanager
def whole_weights_sampling(engine: Any) -> Iterator[None]:
    """Under ZeRO-3, every process holds the policy's whole weights inside this block, gathered once.

    ZeRO-3 hooks each module: its weight shards are gathered from all processes before it runs and freed after. A
    decode loop then gathers every layer at every token (a collective each time, so every process must also decode
    as long as the slowest). Here the hooks come off, every weight is gathered once
    (``deepspeed.zero.GatheredParameters``), the processes sample on their own, and on the way out the weights are
    partitioned again and the hooks put back (DeepSpeed then re-records its prefetch order at the next forward).
    TRL's ``ds3_gather_for_generation`` does the same for its ``generate``."""
    import deepspeed

    offload = engine.optimizer.parameter_offload  # DeepSpeedZeRoOffload: the module hooks' owner
    for handle in offload.forward_hooks + offload.backward_hooks:
        handle.remove()
    offload.forward_hooks, offload.backward_hooks = [], []
    try:
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            yield
    finally:
        offload._register_deepspeed_module(offload.module, count=[0])  # module ids from 0, as at start


# DeepSpeed's "auto" values that depend on the model's width, as accelerate and transformers fill them.
HIDDEN_SIZE_AUTO = {
    "zero_optimization.reduce_bucket_size": lambda h: h * h,
    "zero_optimization.stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "zero_optimization.stage3_param_persistence_threshold": lambda h: 10 * h,
}


def text_hidden_size(config: Any) -> int:
    """The language model's width (Qwen2.5-VL: ``text_config.hidden_size``; the top level has none)."""
    return int(config.get_text_config().hidden_size)


def fill_deepspeed_auto_sizes(accelerator: Any, config: Any) -> None:
    """Fill the DeepSpeed JSON's ``"auto"`` bucket sizes from the text model's width before ``prepare``, which
    would look for ``config.hidden_size`` and raise for Qwen2.5-VL."""
    plugin = accelerator.state.deepspeed_plugin
    hidden = text_hidden_size(config)
    for key, size in HIDDEN_SIZE_AUTO.items():
        if plugin.is_auto(key):
            plugin.fill_match(key, must_match=False, **{key: size(hidden)})


def deepspeed_reference(accelerator: Any, reference: torch.nn.Module, offload: bool) -> Any:
    """The frozen KL reference as a DeepSpeed ZeRO-3 inference engine, whatever the policy's stage.

    Its weights are sharded over the processes (1/W of them per GPU) and gathered layer by layer for its
    forward; with ``offload`` the shards live in host memory between uses and are copied to the GPU for the
    computation (what verl's reference does with FSDP parameter offload). Every process must then run the same
    reference forwards: the trainer pads micro-batch counts.
    """
    import deepspeed

    policy = accelerator.state.deepspeed_plugin.deepspeed_config
    hidden = text_hidden_size(reference.config)
    zero = {
        "stage": 3,
        "stage3_prefetch_bucket_size": HIDDEN_SIZE_AUTO["zero_optimization.stage3_prefetch_bucket_size"](
            hidden
        ),
        "stage3_param_persistence_threshold": HIDDEN_SIZE_AUTO[
            "zero_optimization.stage3_param_persistence_threshold"
        ](hidden),
        "offload_param": {"device": "cpu", "pin_memory": True} if offload else {"device": "none"},
    }
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": accelerator.num_processes,
        "bf16": {"enabled": policy.get("bf16", {}).get("enabled") is True},
        "zero_optimization": zero,
        "steps_per_print": 1 << 62,
    }
    engine, *_ = deepspeed.initialize(model=reference, config=config)
    engine.eval()  # DeepSpeedEngine.eval returns None
    return engine


# ----------------------------------------------------------------------------------------------------------------
# Collectives
# ----------------------------------------------------------------------------------------------------------------


def local_processes(accelerator: Any) -> int:
    """The training processes on this machine: torchrun's LOCAL_WORLD_SIZE, or all of them (one machine)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def all_reduce(accelerator: Any, values: list[float], op: Literal["sum", "max", "min"]) -> list[float]:
    """``values`` reduced element-wise over all processes, in float64 (exact for counts).

    The tensor is built on ``accelerator.device``: NCCL rejects host tensors, gloo (CPU tests) does not. The
    collective runs whenever there is a process group, one process included (a one-GPU check then meets NCCL)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
        torch.distributed.all_reduce(tensor, op=ops.get(op, torch.distributed.ReduceOp.MIN))
    return tensor.tolist()


def all_done(accelerator: Any, done: bool) -> bool:
    """Whether every process is done (each passes its own flag; a collective: all must call it together)."""
    return all_reduce(accelerator, [float(done)], "min")[0] == 1.0


def gather_lists(values: list[int]) -> list[list[int]]:
    """Every process's ``values``, in rank order, on every process (an object collective: torch puts its bytes on
    the backend's device, the current CUDA device under NCCL)."""
    every: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, values)
    return every


def exchange_objects(transfers: list[tuple[int, int]], outgoing: dict[int, Any]) -> dict[int, Any]:
    """Point-to-point transfers of Python objects: ``transfers`` lists every ``(source, destination)`` pair of the
    step, the same list on every process; this process sends ``outgoing[destination]`` for its pairs as source and
    returns what it received, by source. Only the objects' bytes travel, each to its one destination.

    Every process walks the list in the same order, sending or receiving in the pairs that name it: the earliest
    pair not done has both its processes waiting on it, so the blocking sends and receives cannot deadlock.
    Object collectives put their bytes on the backend's device themselves (the current CUDA device under NCCL)."""
    rank, received = torch.distributed.get_rank(), {}
    for source, destination in transfers:
        if rank == source:
            torch.distributed.send_object_list([outgoing[destination]], dst=destination)
        elif rank == destination:
            box: list[Any] = [None]
            torch.distributed.recv_object_list(box, src=source)
            received[source] = box[0]
    return received


def check_same_modalities(accelerator: Any, has_images: list[bool], where: str) -> None:
    """Under ZeRO-3, refuse a step in which some processes would run the vision tower and others not.

    Every ZeRO-3 forward gathers each module's weights from all processes as it runs; a process whose
    micro-batch has no image skips the vision tower and the processes' gathers no longer pair up (a hang).
    All records with images, or none, keeps every micro-batch on every process alike."""
    if zero_stage(accelerator) != 3 or accelerator.num_processes == 1:
        return
    # One collective: the minimum of -any is minus the maximum of any.
    every, minus_some = all_reduce(accelerator, [float(all(has_images)), -float(any(has_images))], "min")
    if minus_some == -1.0 and every == 0.0:
        raise LaunchMismatch(
            f"{where}: under ZeRO-3 either every record has an image or none does (records with and without "
            "images would run the vision tower on some processes only, and their weight gathers would not pair "
            "up); train text-only and image records in separate stages, or use ZeRO-2"
        )


# ----------------------------------------------------------------------------------------------------------------
# run_info.json
# ----------------------------------------------------------------------------------------------------------------


VERSIONED = ("torch", "transformers", "accelerate", "deepspeed", "vllm", "peft", "flash-attn")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a run depends on (``None``: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_info(accelerator: Any, cfg: RunConfig, policy: Any, reference: str | None) -> dict[str, Any]:
    """How this run actually runs, read from the live objects (not from the config that asked for it)."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config if is_deepspeed(accelerator) else None
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    weights = next(p for p in policy.parameters())
    return {
        "world_size": accelerator.num_processes,
        "processes_per_machine": local_processes(accelerator),
        "threads_per_process": torch.get_num_threads(),
        "distributed_type": str(accelerator.distributed_type).removeprefix("DistributedType."),
        "backend": backend,
        "device": accelerator.device.type,
        "zero_stage": zero_stage(accelerator),
        "deepspeed_config_file": os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") if ds else None,
        "grad_accum_dtype": ds.get("data_types", {}).get("grad_accum_dtype") if ds else None,
        "communication_data_type": ds.get("communication_data_type") if ds else None,
        "weights_dtype": str(weights.dtype).removeprefix("torch."),
        "mixed_precision": "bf16"
        if ds and ds.get("bf16", {}).get("enabled")
        else accelerator.mixed_precision,
        "attn_implementation": policy.config._attn_implementation,
        "gradient_checkpointing": activation_checkpointing(policy),
        "training_mode": bool(policy.training),
        "reference": reference,
        "rollout_backend": cfg.rollout.backend,
        "versions": package_versions(),
    }
