"""``python -m ocean_lib gpu-check``: can this GPU machine run the real-scale recipe? (one GPU, ≤ 8 minutes on an H200)

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
``vLLM weight sync`` vLLM generates; after the policy changes, ``after_update`` (the weight push) brings vLLM's log-probs to it
``memory 3B``, ``memory 7B``  peak GPU memory of one GRPO micro-batch (forward, loss, backward; bf16,
                  gradient checkpointing) of a randomly initialised Qwen2.5-VL at the real width, built from its
                  config (no download), next to the memory model's estimate (:func:`micro_batch_estimate_gb`)

One line per check as it finishes (status, seconds, peak GPU memory, note), then a summary line, and every result
in a JSON file. Exit status 0 only if no check failed. Peak memory of the subprocess checks is sampled over the
whole device every 0.1 s; the in-process checks read ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
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
# One GRPO micro-batch of the memory checks: train.micro_batch_size rows of one prompt (an image of this side and
# text) and a response; Ocean-R1's limits are 8,192 + 4,096 tokens, typical responses a few hundred.
MEMORY_SHAPE = dict(prompt_tokens=2048, response_tokens=2048, image_side=448)


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
    """One line of the report: ``run(workspace)`` returns a note (and may add details); ``needs(cfg)`` are the
    modules it cannot run without for these params; ``applies(cfg)`` false means the params do not use it
    (skipped, saying ``why_not``)."""

    name: str
    run: Callable[[Workspace], str]
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
    return f"{result.status:<7}  {result.check:<18}  {result.seconds:6.1f} s  {peak:>6} GB  {result.note}"


def summary_line(results: list[Result], seconds: float) -> str:
    """The last line: counts by status, the failed checks by name, and the verdict."""
    failed = [r.check for r in results if r.status == "failed"]
    counts = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped")}
    verdict = f"FAILED ({', '.join(failed)})" if failed else "OK"
    return (
        f"gpu-check: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"in {seconds:.0f} s: {verdict}"
    )


def write_report(path: Path, results: list[Result], context: dict[str, Any], seconds: float) -> None:
    """Every result, the machine and the verdict as JSON (written whole, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        **context,
        "seconds": round(seconds, 1),
        "ok": not any(r.status == "failed" for r in results),
        "summary": summary_line(results, seconds),
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


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def main(
    params: str | Path | None = None, overrides: list[str] | None = None, out: str | Path | None = None
) -> int:
    """Run every check for ``params`` (+ ``overrides``), print the report, write ``out``; 0 if none failed."""
    from ocean_lib.base.config import load_config

    start = time.perf_counter()
    params = Path(params) if params else DEFAULT_PARAMS
    overrides = list(overrides or [])
    out = Path(out) if out else DEFAULT_OUT
    cfg = load_config(params, overrides)
    cuda = torch.cuda.is_available()
    context = {
        "params": str(params),
        "overrides": overrides,
        "device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda,
        "attn_implementation": cfg.model.attn_implementation,
        "rollout_backend": cfg.rollout.backend,
        "versions": package_versions(),
    }
    print(
        f"gpu-check of {params} {' '.join(overrides)}: {context['device'] or 'no CUDA GPU'}, "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), attention {cfg.model.attn_implementation}, "
        f"rollout {cfg.rollout.backend}",
        flush=True,
    )
    results = [environment_result(cfg, module_installed)]
    print(format_line(results[0]), flush=True)
    with tempfile.TemporaryDirectory(prefix="ocean-gpu-check-") as tmp:
        work = Workspace.build(Path(tmp), params, overrides) if cuda else None
        results += [run_check(check, work, cfg, module_installed) for check in CHECKS]
    seconds = time.perf_counter() - start
    write_report(out, results, context, seconds)
    print(summary_line(results, seconds) + f"; report: {out}", flush=True)
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

    def vllm_rollout(self) -> str:
        from ocean_lib.base.schema import RolloutConfig
        from ocean_lib.training.rollout_vllm import VLLMRolloutEngine

        model, processor = self._policy()
        cfg = RolloutConfig(
            backend="vllm", max_new_tokens=32, vllm_gpu_memory_utilization=0.3, vllm_max_model_len=2048
        )
        engine = VLLMRolloutEngine(model, processor, cfg, max_images_per_prompt=1, enforce_eager=True)
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
        stale = self._gap(model, batch)  # the same samples against the old weights
        if not (after < 0.1 and after < stale):
            raise AssertionError(
                f"after the push (after_update) vLLM's log-probs differ from the new policy's by {after:.3g} "
                f"(from the old policy's by {stale:.3g})"
            )
        return f"mean |Δ log p| {before:.1e}; after a weight change, sleep and sync {after:.1e} (stale {stale:.1e})"

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
            rows, shape = cfg.train.micro_batch_size, MEMORY_SHAPE
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

    def _train(self, name: str, zero_stage: int | None, extra: tuple[str, ...] = ()) -> str:
        from ocean_lib.base.run_dir import RunDir
        from ocean_lib.training import launch

        cfg = self.cfg
        overrides = [
            *self.overrides,
            f"model.name_or_path={self.model_dir}",
            "train.prompts_per_step=2",
            "rollout.n=4",
            "train.micro_batch_size=8",  # one micro-batch per step
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
        topology = launch.Topology(num_processes=1, accelerate_config=accelerate_config)
        final = launch.train(self.params, overrides, topology)
        run = RunDir(final.parent)
        metrics = run.read_metrics()
        if [m["step"] for m in metrics] != [1, 2]:
            raise AssertionError(
                f"expected metrics for steps 1 and 2, got {[m.get('step') for m in metrics]}"
            )
        how = _how_it_ran(final.parent / "run_info.json", zero_stage, self._expected_attention(cfg, extra))
        self.details["run_info"] = how
        backend = dict(o.split("=", 1) for o in overrides if o.startswith("rollout.backend=")).get(
            "rollout.backend", cfg.rollout.backend
        )
        return (
            f"{how['attn_implementation']}, rollout {backend}, ZeRO {how['zero_stage']} on {how['backend']}, "
            f"{metrics[-1]['time/step_s']:.1f} s/step"
        )

    @staticmethod
    def _expected_attention(cfg: Any, extra: tuple[str, ...]) -> str:
        asked = dict(o.split("=", 1) for o in extra).get("model.attn_implementation")
        return asked or cfg.model.attn_implementation

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

    def training_step(self) -> str:
        return self._train("plain", None)

    def lora_step(self) -> str:
        extra = (
            "rollout.backend=hf",
            "model.lora_rank=8",
            "model.reference_on_cpu=true",
            "train.micro_batch_tokens=2048",
        )
        return "LoRA r=8, CPU reference, length buckets, " + self._train("lora", None, extra)

    def zero2_step(self) -> str:
        return self._train("zero2", 2, ("rollout.backend=hf",))

    def zero3_step(self) -> str:
        return self._train("zero3", 3)


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


CHECKS: tuple[Check, ...] = (
    Check("bf16 generation", Workspace.generation, needs=attention_module),
    Check(
        "training step",
        Workspace.training_step,
        needs=lambda cfg: attention_module(cfg) + rollout_modules(cfg),
    ),
    Check("LoRA step", Workspace.lora_step, needs=lambda cfg: ("peft", *attention_module(cfg))),
    Check("ZeRO-2 step", Workspace.zero2_step, needs=lambda cfg: ("deepspeed", *attention_module(cfg))),
    Check(
        "ZeRO-3 step",
        Workspace.zero3_step,
        needs=lambda cfg: ("deepspeed", *attention_module(cfg), *rollout_modules(cfg)),
    ),
    Check(
        "vLLM weight sync",
        Workspace.vllm_rollout,
        needs=lambda cfg: ("vllm", *attention_module(cfg)),
        applies=lambda cfg: cfg.rollout.backend == "vllm",
        why_not="the params sample with rollout.backend=hf",
    ),
    Check("memory 3B", lambda work: work.memory("3B"), needs=attention_module),
    Check("memory 7B", lambda work: work.memory("7B"), needs=attention_module),
)
