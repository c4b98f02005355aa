"""``python -m ocean_lib gpu-check``: can this GPU machine run the real-scale recipe? (one GPU, ~11 minutes, estimated)

It checks what a params file (default: the 3B stage-1 recipe) asks for, and fails rather than skips when a piece
the params ask for is missing. With the tiny Qwen2.5-VL (built on the fly) and a few procedural records:

``environment``   the params' rollout backend (vLLM), attention kernel (flash-attn) and DeepSpeed are installed
``bf16 generation`` the HF engine samples in bf16; the training forward reproduces its log-probs; the attention
                  kernel that really ran is reported
``training step`` two GRPO steps of the recipe through ``launch`` (a real accelerate subprocess): bf16, gradient
                  checkpointing, the params' attention and rollout backend (vLLM inside a training step)
``LoRA step``     the same with LoRA, the reference on the CPU and length buckets (HF rollouts)
``ZeRO-2 step``, ``ZeRO-3 step``  the same through ``params/accelerate/single_node_zero{2,3}.yaml``, one process,
                  NCCL; ``run_info.json`` must say ZeRO stage 2 / 3 on nccl (ZeRO-3 with the params' backend)
``vLLM sync (a)``, ``(b)``  does vLLM sample from the trained weights? three steps of the params' launch (ZeRO-3,
                  ZeRO-2) with vLLM and CUDA graphs at a constant lr that moves the weights: the sampler gap of
                  steps 2-3 stays at step 1's level (:func:`judge_sync`)
``vLLM from final (c)`` one step from (a)'s saved ``final/``: vLLM loads what the trainer saved
``vLLM sync 3B (d)`` a random Qwen2.5-VL with the 3B's widths and a tiny vocabulary: vLLM generates, sleeps
                  (level 2), the policy changes, ``after_update`` (the weight push): vLLM's log-probs follow the new weights
``memory 3B``, ``memory 7B``  peak GPU memory of one GRPO micro-batch (forward, loss, backward; bf16,
                  gradient checkpointing) of a randomly initialised Qwen2.5-VL at the real width, built from its
                  config (no download), next to the memory model's estimate (:func:`micro_batch_estimate_gb`)

One line per check as it finishes (status, seconds, peak GPU memory, note), then a summary line, and every result
in a JSON file. Exit status 0 only if no check failed. ``--plan`` builds and validates on CPU what every check
would start with (configuration, launch command and files, model configs; no GPU, seconds): exit status 0 only
if every check would start. Peak memory of the subprocess checks is sampled over the
whole device every 0.1 s; the in-process checks read ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ocean_lib.base.paths import PROJECT_ROOT
from ocean_lib.base.schema import RunConfig
from ocean_lib.training.distributed import package_versions
from ocean_lib.training.memory import QWEN25_VL_WIDTHS, ModelShape, per_process_bytes

DEFAULT_PARAMS = PROJECT_ROOT / "params" / "qwen25vl_3b_stage1.yaml"
ACCELERATE_CONFIGS = {2: "single_node_zero2.yaml", 3: "single_node_zero3.yaml"}
DEFAULT_OUT = PROJECT_ROOT / "outputs" / "gpu_check.json"
# Packages whose versions the report states (distribution names).

# Qwen2.5-VL-3B/7B-Instruct's config.json (the hub files): the text sizes are ocean_lib.training.memory.QWEN25_VL_WIDTHS,
# the vision tower (the same in both) is here.
QWEN_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    in_chans=3,
    hidden_act="silu",
)
QWEN_TOKENS = dict(
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653
)
# One GRPO micro-batch of the memory checks: rows of one prompt (an image of this side and text) and a response;
# Ocean-R1's limits are 8,192 + 4,096 tokens, typical responses a few hundred. As many rows as the trainer would
# put together (memory_rows).
MEMORY_SHAPE = dict(prompt_tokens=2048, response_tokens=2048, image_side=448)


def memory_rows(cfg: RunConfig) -> int:
    """Rows of MEMORY_SHAPE in one training micro-batch: as many as train.micro_batch_tokens holds when it is set
    (forward.pack_micro_batches: the budget alone decides), else train.micro_batch_size."""
    if cfg.train.micro_batch_tokens:
        return max(
            1,
            cfg.train.micro_batch_tokens // (MEMORY_SHAPE["prompt_tokens"] + MEMORY_SHAPE["response_tokens"]),
        )
    return cfg.train.micro_batch_size


@dataclass
class Result:
    check: str
    status: str  # passed / failed / skipped
    seconds: float
    peak_gb: float | None
    note: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One line of the report: ``run(workspace)`` returns a note (and may add details); ``plan(workspace)``
    builds and validates on CPU everything ``run`` would start with (configuration, launch command, DeepSpeed
    file, model config) and returns a note, raising where the check could not start; ``needs(cfg)`` are the
    modules it cannot run without for these params; ``applies(cfg)`` false means the params do not use it
    (skipped, saying ``why_not``)."""

    name: str
    run: Callable[[Workspace], str]
    plan: Callable[[Workspace], str]
    needs: Callable[[Any], tuple[str, ...]] = lambda cfg: ()
    applies: Callable[[Any], bool] = lambda cfg: True
    why_not: str = ""


# ----------------------------------------------------------------------------------------------------------------
# What the params ask for, and the report (pure; tested on CPU)
# ----------------------------------------------------------------------------------------------------------------


def missing_requirements(cfg: Any, installed: Callable[[str], bool]) -> list[str]:
    """What ``cfg`` (and the recipe's DeepSpeed launch files) need that is not importable, each with its fix."""
    problems = []
    if cfg.rollout.backend == "vllm" and not installed("vllm"):
        problems.append("rollout.backend=vllm but vLLM is not installed (make install-gpu)")
    if cfg.model.attn_implementation == "flash_attention_2" and not installed("flash_attn"):
        problems.append(
            "model.attn_implementation=flash_attention_2 but flash-attn is not installed (make flash-attn), "
            "or set model.attn_implementation=sdpa"
        )
    if not installed("deepspeed"):
        problems.append(
            "DeepSpeed is not installed; the ZeRO launch files need it (make install-gpu; offline: "
            "make gpu-check-wheels, then carry .whl/)"
        )
    return problems


def attention_module(cfg: Any) -> tuple[str, ...]:
    """The module the params' attention kernel needs (flash-attn's), if any."""
    return ("flash_attn",) if cfg.model.attn_implementation == "flash_attention_2" else ()


def rollout_modules(cfg: Any) -> tuple[str, ...]:
    """The modules the params' rollout backend needs, beyond the attention kernel."""
    return ("vllm",) if cfg.rollout.backend == "vllm" else ()


def module_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def format_line(result: Result) -> str:
    """One report line: status, check, seconds, peak GPU memory (- when not measured), note."""
    peak = "-" if result.peak_gb is None else f"{result.peak_gb:.1f}"
    return f"{result.status:<7}  {result.check:<22}  {result.seconds:6.1f} s  {peak:>6} GB  {result.note}"


def summary_line(results: list[Result], seconds: float, plan: bool = False) -> str:
    """The last line: counts by status, the failed checks by name, and the verdict."""
    failed = [r.check for r in results if r.status == "failed"]
    statuses = ("ready" if plan else "passed", "failed", "skipped")
    counts = ", ".join(f"{sum(r.status == s for r in results)} {s}" for s in statuses)
    verdict = f"FAILED ({', '.join(failed)})" if failed else "OK"
    return f"gpu-check{' --plan' if plan else ''}: {counts} in {seconds:.0f} s: {verdict}"


def write_report(
    path: Path, results: list[Result], context: dict[str, Any], seconds: float, plan: bool = False
) -> None:
    """Every result, the machine and the verdict as JSON (written whole, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        **context,
        "seconds": round(seconds, 1),
        "ok": not any(r.status == "failed" for r in results),
        "summary": summary_line(results, seconds, plan),
        "checks": [asdict(r) for r in results],
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def run_check(check: Check, work: Workspace | None, cfg: Any, installed: Callable[[str], bool]) -> Result:
    """Run one check (or skip or fail it without running) and print its line."""
    start = time.perf_counter()
    details: dict[str, Any] = {}
    peak = None
    if not check.applies(cfg):
        status, note = "skipped", check.why_not
    elif missing := [m for m in check.needs(cfg) if not installed(m)]:
        status, note = "failed", f"not installed: {', '.join(missing)}"
    elif work is None:
        status, note = "failed", "no CUDA GPU"
    else:
        work.details = details
        with DevicePeak() as device:
            try:
                note, status = check.run(work), "passed"
            except Exception as error:  # a failed check is reported, and the others still run
                traceback.print_exc()
                first = str(error).splitlines()[0] if str(error) else ""
                note, status = f"{type(error).__name__}: {first}", "failed"
        peak = details.pop("peak_gb", device.gb)
    result = Result(check.name, status, time.perf_counter() - start, peak, note, details)
    print(format_line(result), flush=True)
    return result


def plan_check(check: Check, work: Workspace, cfg: Any, installed: Callable[[str], bool]) -> Result:
    """Build and validate what one check would start with, on CPU (``gpu-check --plan``), and print its line:
    ready, failed (it would die before touching the GPU) or skipped (the params do not use it). A module that
    is missing here is noted, not failed: the plan runs on machines without the GPU stack."""
    start = time.perf_counter()
    work.details = {}
    if not check.applies(cfg):
        status, note = "skipped", check.why_not
    else:
        try:
            note, status = check.plan(work), "ready"
        except Exception as error:  # reported per check; the others are still planned
            first = str(error).strip().splitlines()
            note, status = f"{type(error).__name__}: {' '.join(first[:3])}", "failed"
        if missing := [m for m in check.needs(cfg) if not installed(m)]:
            note += f" [needs {', '.join(missing)}: not installed here]"
    result = Result(check.name, status, time.perf_counter() - start, None, note, work.details)
    print(format_line(result), flush=True)
    return result


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def main(
    params: str | Path | None = None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    plan: bool = False,
) -> int:
    """Run every check for ``params`` (+ ``overrides``), print the report, write ``out``; 0 if none failed.

    ``plan``: build and validate every check's configuration on CPU instead (no GPU needed, seconds): 0 only if
    every check would start."""
    from ocean_lib.base.config import load_config

    start = time.perf_counter()
    params = Path(params) if params else DEFAULT_PARAMS
    overrides = list(overrides or [])
    out = Path(out) if out else DEFAULT_OUT.with_name("gpu_check_plan.json") if plan else DEFAULT_OUT
    cfg = load_config(params, overrides)
    cuda = torch.cuda.is_available()
    context = {
        "params": str(params),
        "overrides": overrides,
        "plan": plan,
        "device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda,
        "attn_implementation": cfg.model.attn_implementation,
        "rollout_backend": cfg.rollout.backend,
        "versions": package_versions(),
    }
    print(
        f"gpu-check{' --plan' if plan else ''} of {params} {' '.join(overrides)}: "
        f"{context['device'] or 'no CUDA GPU'}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"attention {cfg.model.attn_implementation}, rollout {cfg.rollout.backend}",
        flush=True,
    )
    results = [] if plan else [environment_result(cfg, module_installed)]
    if results:
        print(format_line(results[0]), flush=True)
    with tempfile.TemporaryDirectory(prefix="ocean-gpu-check-") as tmp:
        if plan:  # the tiny model and records are built as the run builds them (CPU, seconds)
            work = Workspace.build(Path(tmp), params, overrides, device="cpu")
            results += [plan_check(check, work, cfg, module_installed) for check in CHECKS]
        else:
            work = Workspace.build(Path(tmp), params, overrides) if cuda else None
            results += [run_check(check, work, cfg, module_installed) for check in CHECKS]
    seconds = time.perf_counter() - start
    write_report(out, results, context, seconds, plan)
    print(summary_line(results, seconds, plan) + f"; report: {out}", flush=True)
    return int(any(r.status == "failed" for r in results))


def environment_result(cfg: Any, installed: Callable[[str], bool]) -> Result:
    """The ``environment`` line: what the params need that is missing, and whether there is a GPU at all."""
    problems = missing_requirements(cfg, installed)
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        problems.insert(
            0, f"no CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, {build})"
        )
    found = package_versions()
    note = "; ".join(problems) or ", ".join(f"{k} {v}" for k, v in found.items() if v)
    return Result("environment", "failed" if problems else "passed", 0.0, None, note, {"versions": found})


class DevicePeak:
    """Peak memory in use on GPU 0 (all processes) while the block runs, sampled every 0.1 s (None without CUDA)."""

    def __enter__(self) -> DevicePeak:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if torch.cuda.is_available():
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info(0)
            self.peak = max(self.peak, total - free)
            self._stop.wait(0.1)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def gb(self) -> float | None:
        return self.peak / 1e9 if torch.cuda.is_available() else None


# ----------------------------------------------------------------------------------------------------------------
# Real-width models (no download)
# ----------------------------------------------------------------------------------------------------------------


def real_width_config(size: str, layers: int | None = None, vision_depth: int | None = None):
    """Qwen2.5-VL-``size``'s configuration (3B or 7B), optionally with fewer layers (tests build it on CPU)."""
    from transformers import Qwen2_5_VLConfig

    w = QWEN25_VL_WIDTHS[size]
    text = dict(
        vocab_size=w["vocab"],
        hidden_size=w["hidden"],
        intermediate_size=w["intermediate"],
        num_hidden_layers=layers or w["layers"],
        num_attention_heads=w["heads"],
        num_key_value_heads=w["kv_heads"],
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        bos_token_id=151643,
        eos_token_id=151645,
        hidden_act="silu",
        tie_word_embeddings=w["tied"],
    )
    vision = QWEN_VISION | {"out_hidden_size": w["hidden"]}
    if vision_depth is not None:
        vision |= {"depth": vision_depth, "fullatt_block_indexes": [vision_depth - 1]}
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=w["tied"], **QWEN_TOKENS
    )


def synthetic_micro_batch(config: Any, rows: int, prompt_tokens: int, response_tokens: int, image_side: int):
    """A GRPO micro-batch of random tokens: ``rows`` completions of one prompt (an image of ``image_side`` px,
    then text, ``prompt_tokens`` in all) each ``response_tokens`` long, as :class:`RolloutBatch`."""
    from ocean_lib.training.batch import RolloutBatch

    vision = config.vision_config
    patches = image_side // vision.patch_size
    image_tokens = patches * patches // vision.spatial_merge_size**2
    text_tokens = prompt_tokens - image_tokens - 2
    if text_tokens < 1:
        raise ValueError(
            f"prompt_tokens={prompt_tokens} leaves no room for text after {image_tokens} image tokens"
        )
    generator = torch.Generator().manual_seed(0)
    vision_ids = torch.tensor(
        [
            config.image_token_id,
            config.video_token_id,
            config.vision_start_token_id,
            config.vision_end_token_id,
        ]
    )

    def text(*shape: int) -> torch.Tensor:  # random ids, vision tokens (which splice images in) excluded
        ids = torch.randint(0, config.text_config.vocab_size, shape, generator=generator)
        return ids.masked_fill(torch.isin(ids, vision_ids), config.text_config.eos_token_id)

    prompt = torch.cat(
        [
            torch.tensor([config.vision_start_token_id]),
            torch.full((image_tokens,), config.image_token_id),
            torch.tensor([config.vision_end_token_id]),
            text(text_tokens),
        ]
    )
    types = (prompt == config.image_token_id).int()
    patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
    return RolloutBatch(
        prompt_ids=prompt.repeat(rows, 1),
        prompt_mask=torch.ones(rows, prompt_tokens, dtype=torch.long),
        prompt_token_types=types.repeat(rows, 1),
        completion_ids=text(rows, response_tokens),
        completion_mask=torch.ones(rows, response_tokens, dtype=torch.long),
        logprobs=torch.zeros(rows, response_tokens),
        pixel_values=torch.randn(patches * patches, patch_dim, generator=generator),
        image_grid_thw=torch.tensor([[1, patches, patches]]),
        images_per_prompt=[1],
        n=rows,
        texts=[""] * rows,
        finished=[False] * rows,
    )


def micro_batch_estimate_gb(shape: ModelShape, rows: int, tokens: int, response_tokens: int) -> float:
    """The memory model's peak for the memory check's micro-batch (:mod:`ocean_lib.training.memory`, docs/real_scale.md):
    one process, no DeepSpeed, bf16 weights and their bf16 gradients, no optimizer state, no reference."""
    parts = per_process_bytes(
        shape,
        world=1,
        zero_stage=0,
        tokens=rows * tokens,
        completion_tokens=rows * response_tokens,
        reference="none",
        gradient_bytes=2,
    )
    return (sum(parts.values()) - parts["optimizer"] - parts["master_weights"]) / 1e9


# ----------------------------------------------------------------------------------------------------------------
# The checks (GPU)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    """The tiny model, the procedural records and the run directory the checks share."""

    root: Path
    model_dir: Path
    data_dir: Path
    params: Path
    overrides: list[str]
    device: str = "cuda"
    details: dict[str, Any] = field(default_factory=dict)  # the running check's extra report fields

    @classmethod
    def build(cls, root: Path, params: Path, overrides: list[str], device: str = "cuda") -> Workspace:
        from ocean_lib.base.config import load_config
        from ocean_lib.base.schema import TinyModelConfig
        from ocean_lib.data import synthetic
        from ocean_lib.training.models import build_tiny_model

        cfg = load_config(
            None,
            [
                f"data.synthetic.output_dir={root / 'data'}",
                "data.synthetic.n_train=16",
                "data.synthetic.n_test=8",
            ],
        )
        synthetic.build(cfg)
        # head dims of 64 (text and vision): sizes every attention kernel supports
        tiny = TinyModelConfig(
            vocab_size=2048, hidden_size=256, num_heads=4, vision_hidden_size=128, vision_heads=2
        )
        corpus = list(synthetic.corpus(cfg, per_level=50))
        model_dir = build_tiny_model(tiny, corpus, root / "tiny", cfg.data.min_pixels, cfg.data.max_pixels)
        return cls(root, model_dir, root / "data", Path(params), list(overrides), device)

    @property
    def cfg(self):
        from ocean_lib.base.config import load_config

        return load_config(self.params, self.overrides)

    def _prompts(self):
        from ocean_lib.base.prompts import Prompt
        from ocean_lib.base.schema import DataConfig
        from ocean_lib.data import load_example, read_records

        records = list(read_records(self.data_dir / "test", DataConfig()))[:2]
        return [Prompt(r.content, load_example(r, DataConfig())[0]) for r in records]

    def _policy(self):
        from ocean_lib.training.models import load_policy

        cfg = self.cfg
        model, processor = load_policy(
            str(self.model_dir), dtype="bfloat16", attn_implementation=cfg.model.attn_implementation
        )
        return model.to(self.device), processor

    def _gap(self, model, batch) -> float:
        """Mean |log p(sampler) - log p(training forward)| over the completion tokens."""
        from ocean_lib.training.forward import completion_logprobs

        rows = torch.arange(len(batch.texts))
        with torch.no_grad():
            logp, _, mask = completion_logprobs(model, model, batch, rows, temperature=1.0)
        sampled = batch.logprobs[:, : mask.shape[1]].to(logp.device)
        return float(((logp.float() - sampled).abs() * mask).sum() / mask.sum())

    # -- in-process checks --------------------------------------------------------------------------------------

    def generation(self) -> str:
        from ocean_lib.base.schema import RolloutConfig
        from ocean_lib.training.rollout import make_engine

        model, processor = self._policy()
        ran = model.config._attn_implementation
        self.details["attn_implementation"] = ran
        batch = make_engine(model, processor, RolloutConfig(max_new_tokens=32)).generate(
            self._prompts(), n=4, seeds=[1, 2]
        )
        gap = self._gap(model, batch)
        if not gap < 0.1:
            raise AssertionError(f"training forward disagrees with the sampler: mean |Δ log p| = {gap:.3g}")
        return f"attention {ran}, {len(batch.texts)} samples, mean |Δ log p| vs training forward {gap:.1e}"

    def memory(self, size: str) -> str:
        """Peak memory of one GRPO micro-batch of the real-width model, next to the docs' estimate."""
        from transformers import Qwen2_5_VLForConditionalGeneration

        from ocean_lib.training import grpo
        from ocean_lib.training.forward import completion_logprobs
        from ocean_lib.training.run_state import loss_settings

        cfg = self.cfg
        config = real_width_config(size)
        config._attn_implementation = cfg.model.attn_implementation
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.device(self.device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        try:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()
            rows, shape = memory_rows(cfg), MEMORY_SHAPE
            batch = synthetic_micro_batch(config, rows, **shape)
            index = torch.arange(rows)
            logp, entropy, mask = completion_logprobs(model, model, batch, index, 1.0, entropy="loss")
            advantages = torch.linspace(-1, 1, rows, device=logp.device)
            loss, _ = grpo.policy_loss(
                logp,
                logp.detach(),
                advantages,
                mask,
                ref_logprobs=logp.detach() + 0.01,
                entropy=entropy,
                num_tokens=float(mask.sum()),
                num_sequences=float(rows),
                **loss_settings(cfg),
            )
            loss.backward()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 1e9
            model_shape = ModelShape.of(model)
            parameters = int(model_shape.params)
        finally:
            del model
            torch.cuda.empty_cache()
        tokens = shape["prompt_tokens"] + shape["response_tokens"]
        estimate = micro_batch_estimate_gb(model_shape, rows, tokens, shape["response_tokens"])
        self.details.update(
            peak_gb=peak,
            estimate_gb=estimate,
            parameters=parameters,
            rows=rows,
            **shape,
            attn_implementation=config._attn_implementation,
        )
        return (
            f"{parameters / 1e9:.2f} B parameters, {rows} x ({shape['prompt_tokens']} + {shape['response_tokens']}) "
            f"tokens, {config._attn_implementation}: peak {peak:.1f} GB allocated, estimate {estimate:.1f} GB"
        )

    # -- training steps (accelerate subprocesses) ---------------------------------------------------------------

    def _launch(self, name: str, zero_stage: int | None, extra: tuple[str, ...]) -> tuple[list[str], Any]:
        """The overrides and topology of a training check (one process): what ``_train`` launches and
        ``_plan_train`` validates."""
        from ocean_lib.training import launch

        overrides = [
            *self.overrides,
            f"model.name_or_path={self.model_dir}",
            "train.prompts_per_step=2",
            "rollout.n=4",
            "train.micro_batch_size=8",  # one micro-batch per step
            # verl's micro-batch mean over the processes really started (a params file's 8 would need 64 sequences)
            "algorithm.balance_ranks=0",
            "rollout.max_new_tokens=32",
            "rollout.vllm_gpu_memory_utilization=0.3",
            "rollout.vllm_max_model_len=2048",
            "train.max_steps=2",
            "train.save_every=0",
            "train.val_every=0",
            f"data.train_files=[{self.data_dir / 'train'}]",
            "data.val_files=[]",
            f"logging.output_dir={self.root / 'runs'}",
            f"logging.run_name={name}",
            "logging.progress=false",
            *extra,
        ]
        accelerate_config = None if zero_stage is None else str(self._accelerate_config(zero_stage))
        return overrides, launch.Topology(num_processes=1, accelerate_config=accelerate_config)

    def _train(
        self, name: str, zero_stage: int | None, extra: tuple[str, ...] = ()
    ) -> tuple[str, list[dict]]:
        """Launch a training check; its note and metrics rows (one per step, checked)."""
        from ocean_lib.base.run_dir import RunDir
        from ocean_lib.training import launch

        overrides, topology = self._launch(name, zero_stage, extra)
        cfg = self._config(overrides)
        final = launch.train(self.params, overrides, topology)
        metrics = RunDir(final.parent).read_metrics()
        if [m["step"] for m in metrics] != list(range(1, cfg.train.max_steps + 1)):
            raise AssertionError(
                f"expected metrics for steps 1 to {cfg.train.max_steps}, got {[m.get('step') for m in metrics]}"
            )
        how = _how_it_ran(final.parent / "run_info.json", zero_stage, cfg.model.attn_implementation)
        self.details["run_info"] = how
        note = (
            f"{how['attn_implementation']}, rollout {cfg.rollout.backend}, ZeRO {how['zero_stage']} on "
            f"{how['backend']}, {metrics[-1]['time/step_s']:.1f} s/step"
        )
        return note, metrics

    def _config(self, overrides: list[str]):
        from ocean_lib.base.config import load_config

        return load_config(self.params, [*overrides, "train.num_processes=1"])

    def _plan_train(self, name: str, zero_stage: int | None, extra: tuple[str, ...] = ()) -> str:
        """What ``_train`` would start, validated on CPU: the config (every cross-field rule), the accelerate
        command as accelerate's own parser reads it (the launch file included) and, for ZeRO, the DeepSpeed file
        against the params, as the trainer refuses it."""
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser

        from ocean_lib.training import launch
        from ocean_lib.training.distributed import deepspeed_conflicts, precision_of

        overrides, topology = self._launch(name, zero_stage, extra)
        cfg = self._config(overrides)
        command = launch.accelerate_command(self.params, overrides, topology, False, precision_of(cfg))
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
        if zero_stage is not None:
            import yaml

            local = yaml.safe_load(Path(topology.accelerate_config).read_text())["deepspeed_config"]
            ds_file = Path(local["deepspeed_config_file"])
            ds = json.loads(ds_file.read_text())
            if (
                ds.get("bf16", {}).get("enabled") == "auto"
            ):  # accelerate fills it from the precision asked for
                ds["bf16"]["enabled"] = precision_of(cfg) == "bf16"
            stage = ds.get("zero_optimization", {}).get("stage")
            if stage != zero_stage:
                raise ValueError(f"{ds_file} has zero_optimization.stage={stage}, expected {zero_stage}")
            problems = deepspeed_conflicts(ds, bool(local.get("zero3_init_flag")), str(ds_file), cfg)
            if problems:
                raise ValueError("; ".join(problems))
        launcher = "plain" if zero_stage is None else f"ZeRO-{zero_stage} ({Path(args.config_file).name})"
        return (
            f"{launcher}, {cfg.train.prompts_per_step} x {cfg.rollout.n} sequences, {cfg.train.max_steps} steps, "
            f"lr {cfg.train.lr:g} ({cfg.train.lr_schedule}), rollout {cfg.rollout.backend}, "
            f"{cfg.model.attn_implementation}, {cfg.model.train_precision}"
        )

    def _accelerate_config(self, stage: int) -> Path:
        """The repository's ZeRO launch file with its DeepSpeed JSON path made absolute (we launch from anywhere)."""
        import yaml

        config = yaml.safe_load(
            (PROJECT_ROOT / "params" / "accelerate" / ACCELERATE_CONFIGS[stage]).read_text()
        )
        ds = config["deepspeed_config"]
        ds["deepspeed_config_file"] = str(PROJECT_ROOT / ds["deepspeed_config_file"])
        local = self.root / f"zero{stage}.yaml"
        local.write_text(yaml.safe_dump(config))
        return local

    # -- vLLM follows the trained weights (stages a-c: launch subprocesses) -------------------------------------

    def sync_stage(self, zero_stage: int) -> str:
        """Stages (a), (b): the params' launch with vLLM (CUDA graphs) on the tiny model and a constant lr that
        moves the weights; the sampler gap of steps 2-3 must stay at step 1's level (step 1 samples from the
        weights vLLM loaded from disk; later steps from the pushed ones)."""
        note, metrics = self._train(*SYNC_STAGES[zero_stage])
        return note + "; " + judge_sync(metrics)

    def final_stage(self) -> str:
        """Stage (c): one step from stage (a)'s saved ``final/``: vLLM starts from what the trainer saved."""
        from ocean_lib.base.run_dir import RunDir

        first = self.root / "runs" / SYNC_STAGES[3][0] / "final"
        if not first.is_dir():
            raise AssertionError(f"stage (a) left no {first}: run it first (it failed or was skipped)")
        reference = RunDir(first.parent).read_metrics()[0]["response/sampler_logprob_gap"]
        note, metrics = self._train(*final_stage_launch(first))
        gap = metrics[0]["response/sampler_logprob_gap"]
        if not gap <= SYNC_FACTOR * reference + SYNC_SLACK:
            raise AssertionError(
                f"vLLM started from {first} samples {gap:.3g} nats/token away from the trainer's forward of the "
                f"same weights; stage (a) started at {reference:.3g}: the saved weights are not the trained ones"
            )
        return f"{note}; gap {gap:.2e} (stage (a) step 1: {reference:.2e})"

    def plan_final_stage(self) -> str:
        return self._plan_train(*final_stage_launch(self.root / "runs" / SYNC_STAGES[3][0] / "final"))

    # -- vLLM follows the trained weights at the 3B's widths (stage d: in process) ------------------------------

    def _width_model(self) -> Path:
        """A random Qwen2.5-VL with the 3B's widths and the tiny model's vocabulary and tokenizer, saved to disk
        (vLLM loads a directory); bf16 on the GPU, ~6 GB."""
        from transformers import Qwen2_5_VLForConditionalGeneration

        target = self.root / "width3b"
        if not target.is_dir():
            config = width_config(self.model_dir)
            with torch.device(self.device):
                model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
            model.save_pretrained(target)
            del model
            for file in self.model_dir.iterdir():  # tokenizer, processor, chat template, generation config
                if file.is_file() and not (file.name == "config.json" or ".safetensors" in file.name):
                    (target / file.name).write_bytes(file.read_bytes())
            torch.cuda.empty_cache()
        return target

    def plan_width_stage(self) -> str:
        config = width_config(self.model_dir)
        with torch.device("meta"):
            from transformers import Qwen2_5_VLForConditionalGeneration

            parameters = sum(
                p.numel() for p in Qwen2_5_VLForConditionalGeneration._from_config(config).parameters()
            )
        return (
            f"random Qwen2.5-VL, 3B widths ({config.text_config.num_hidden_layers} layers x "
            f"{config.text_config.hidden_size}), vocabulary {config.text_config.vocab_size}: "
            f"{parameters / 1e9:.2f} B parameters; vLLM with CUDA graphs, sleep level 2, perturb, sync"
        )

    def vllm_rollout(self) -> str:
        """Stage (d): vLLM (CUDA graphs, as in training) generates from the 3B-width model, sleeps at level 2,
        the policy changes, ``after_update`` (the weight push): vLLM's log-probs must follow the new weights (HF forward)."""
        from ocean_lib.base.schema import RolloutConfig
        from ocean_lib.training.models import load_policy
        from ocean_lib.training.rollout_vllm import VLLMRolloutEngine

        cfg = self.cfg
        model, processor = load_policy(
            str(self._width_model()), dtype="bfloat16", attn_implementation=cfg.model.attn_implementation
        )
        model = model.to(self.device)
        rollout = RolloutConfig(
            backend="vllm", max_new_tokens=32, vllm_gpu_memory_utilization=0.3, vllm_max_model_len=2048
        )
        engine = VLLMRolloutEngine(model, processor, rollout, max_images_per_prompt=1)
        try:
            prompts = self._prompts()
            before = self._gap(model, engine.generate(prompts, n=4, seeds=[1, 2]))
            engine.after_generate()  # as the trainer does: weights and KV cache freed (sleep level 2)

            # Change the policy, push it, sample again: vLLM must now agree with the changed policy.
            original = {k: v.clone() for k, v in model.state_dict().items()}
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(torch.randn_like(parameter) * 0.02)
            engine.after_update(model)
            batch = engine.generate(prompts, n=4, seeds=[1, 2])
            after = self._gap(model, batch)
            model.load_state_dict(original)
            del original
            stale = self._gap(model, batch)  # the same samples against the old weights
        finally:  # the memory checks that follow need the GPU: vLLM's weights and KV cache go (level-2 sleep)
            engine.after_generate()
            del model
            torch.cuda.empty_cache()
        if not (after < SYNC_FACTOR * before + SYNC_SLACK and after < stale):
            raise AssertionError(
                f"after the push (after_update) vLLM's log-probs differ from the new policy's by {after:.3g} "
                f"(before the change {before:.3g}; from the old policy's {stale:.3g})"
            )
        return f"mean |Δ log p| {before:.1e}; after a weight change, sleep and sync {after:.1e} (stale {stale:.1e})"

    # -- plans of the in-process checks -------------------------------------------------------------------------

    def plan_generation(self) -> str:
        model, _ = self._policy()
        return f"tiny model on the CPU in bf16, attention {model.config._attn_implementation}; 2 prompts x 4 samples"

    def plan_memory(self, size: str) -> str:
        cfg = self.cfg
        config = real_width_config(size)
        with torch.device("meta"):
            from transformers import Qwen2_5_VLForConditionalGeneration

            shape = ModelShape.of(Qwen2_5_VLForConditionalGeneration._from_config(config))
        rows, tokens = memory_rows(cfg), MEMORY_SHAPE["prompt_tokens"] + MEMORY_SHAPE["response_tokens"]
        synthetic_micro_batch(config, rows, **MEMORY_SHAPE)
        estimate = micro_batch_estimate_gb(shape, rows, tokens, MEMORY_SHAPE["response_tokens"])
        return f"{shape.params / 1e9:.2f} B parameters, {rows} x {tokens} tokens: estimate {estimate:.1f} GB"


# Sampler gap of a synced vLLM against its step-1 level: at most this factor, plus this slack (nats per token)
# for bf16 noise on near-zero gaps. A stale engine is off by the policy's movement instead (see judge_sync).
SYNC_FACTOR, SYNC_SLACK = 2.0, 0.01
# The sync stages' training: the params' vLLM rollouts (CUDA graphs, sleep), a constant lr from step 1 that
# moves the tiny model's weights far (Adam: ~lr per weight per step, weights of ~0.02), 3 steps, the trainer's
# own guard off (the stage judges).
SYNC_TRAINING = (
    "rollout.backend=vllm",
    "train.lr_schedule=constant",
    "train.lr=1e-2",
    "train.max_steps=3",
    "rollout.sampler_gap_stop=0",
)
SYNC_STAGES = {
    3: ("sync-zero3", 3, SYNC_TRAINING),
    2: ("sync-zero2", 2, SYNC_TRAINING),
}


def final_stage_launch(final: Path) -> tuple[str, int | None, tuple[str, ...]]:
    """Stage (c)'s launch: one step of (a)'s launch (ZeRO-3) from (a)'s ``final/``, so that step 1 compares like
    with like."""
    return ("from-final", 3, (*SYNC_TRAINING, f"model.name_or_path={final}", "train.max_steps=1"))


def judge_sync(metrics: list[dict[str, Any]]) -> str:
    """Stages (a)/(b): did vLLM sample from the trained weights at steps 2 and 3?

    Step 1 samples from the weights vLLM loaded itself, so its gap is the kernels' noise. A stale vLLM at step
    s would be off by how far the policy moved from those weights, about sqrt(2 KL) nats per token (k3's KL to
    the initial weights ~ E[(Δ log p)^2] / 2). The verdict is only conclusive when that movement is well above
    the noise; then steps 2-3 must stay within SYNC_FACTOR x step 1 + SYNC_SLACK."""
    gaps = [m["response/sampler_logprob_gap"] for m in metrics]
    moved = math.sqrt(2 * max(m.get("kl/mean", 0.0) for m in metrics[1:]))
    bound = SYNC_FACTOR * gaps[0] + SYNC_SLACK
    series = ", ".join(f"{g:.2e}" for g in gaps)
    if moved < 2 * bound:
        raise AssertionError(
            f"inconclusive: the policy moved ~{moved:.2e} nats/token (sqrt(2 KL)), not clearly above the allowed "
            f"gap {bound:.2e}; raise the stage's lr (gaps by step: {series})"
        )
    if max(gaps[1:]) > bound:
        raise AssertionError(
            f"vLLM does not sample from the trained weights: sampler gap by step {series} nats/token, step 1's "
            f"level allows {bound:.2e} (the policy moved ~{moved:.2e})"
        )
    return f"sampler gap by step {series} (allowed {bound:.2e}; a stale engine ~{moved:.2e})"


def width_config(tiny_dir: Path):
    """Qwen2.5-VL-3B's widths with the tiny model's vocabulary and special tokens (its tokenizer works)."""
    from transformers import AutoConfig

    tiny = AutoConfig.from_pretrained(tiny_dir)
    config = real_width_config("3B")
    config.text_config.vocab_size = tiny.text_config.vocab_size
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, getattr(tiny.text_config, key, None))
    for key in QWEN_TOKENS:
        setattr(config, key, getattr(tiny, key))
    return config


def _how_it_ran(run_info: Path, zero_stage: int | None, attention: str) -> dict[str, Any]:
    """``run_info.json`` of a training check, which must show the ZeRO stage, NCCL and the attention asked for."""
    if not run_info.is_file():
        raise AssertionError(f"{run_info} was not written: how the run ran cannot be confirmed")
    info = json.loads(run_info.read_text())
    wanted: dict[str, Any] = {"zero_stage": zero_stage, "attn_implementation": attention}
    if zero_stage is not None:
        wanted["backend"] = "nccl"
    wrong = {key: info.get(key) for key, value in wanted.items() if info.get(key) != value}
    if wrong:
        raise AssertionError(f"run_info.json says {wrong}, expected {wanted}")
    return info


LORA = (
    "rollout.backend=hf",
    "model.lora_rank=8",
    "model.reference_on_cpu=true",
    "train.micro_batch_tokens=2048",
)
uses_vllm = dict(
    applies=lambda cfg: cfg.rollout.backend == "vllm", why_not="the params sample with rollout.backend=hf"
)


def _vllm_needs(cfg: Any) -> tuple[str, ...]:
    return ("vllm", *attention_module(cfg))


CHECKS: tuple[Check, ...] = (
    Check("bf16 generation", Workspace.generation, Workspace.plan_generation, needs=attention_module),
    Check(
        "training step",
        lambda work: work._train("plain", None)[0],
        lambda work: work._plan_train("plain", None),
        needs=lambda cfg: attention_module(cfg) + rollout_modules(cfg),
    ),
    Check(
        "LoRA step",
        lambda work: "LoRA r=8, CPU reference, length buckets, " + work._train("lora", None, LORA)[0],
        lambda work: work._plan_train("lora", None, LORA),
        needs=lambda cfg: ("peft", *attention_module(cfg)),
    ),
    Check(
        "ZeRO-2 step",
        lambda work: work._train("zero2", 2, ("rollout.backend=hf",))[0],
        lambda work: work._plan_train("zero2", 2, ("rollout.backend=hf",)),
        needs=lambda cfg: ("deepspeed", *attention_module(cfg)),
    ),
    Check(
        "ZeRO-3 step",
        lambda work: work._train("zero3", 3)[0],
        lambda work: work._plan_train("zero3", 3),
        needs=lambda cfg: ("deepspeed", *attention_module(cfg), *rollout_modules(cfg)),
    ),
    Check(
        "vLLM sync (a) ZeRO-3",
        lambda work: work.sync_stage(3),
        lambda work: work._plan_train(*SYNC_STAGES[3]),
        needs=lambda cfg: ("deepspeed", *_vllm_needs(cfg)),
        **uses_vllm,
    ),
    Check(
        "vLLM sync (b) ZeRO-2",
        lambda work: work.sync_stage(2),
        lambda work: work._plan_train(*SYNC_STAGES[2]),
        needs=lambda cfg: ("deepspeed", *_vllm_needs(cfg)),
        **uses_vllm,
    ),
    Check(
        "vLLM from final (c)",
        Workspace.final_stage,
        Workspace.plan_final_stage,
        needs=_vllm_needs,
        **uses_vllm,
    ),
    Check(
        "vLLM sync 3B (d)", Workspace.vllm_rollout, Workspace.plan_width_stage, needs=_vllm_needs, **uses_vllm
    ),
    Check(
        "memory 3B",
        lambda work: work.memory("3B"),
        lambda work: work.plan_memory("3B"),
        needs=attention_module,
    ),
    Check(
        "memory 7B",
        lambda work: work.memory("7B"),
        lambda work: work.plan_memory("7B"),
        needs=attention_module,
    ),
)
