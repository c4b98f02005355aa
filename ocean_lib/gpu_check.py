"""``python -m ocean_lib gpu-check``: does the real-scale code path work on this GPU machine? (one GPU, < 5 minutes)

With the tiny Qwen2.5-VL (built on the fly in a temporary directory) and a few procedural records:

1. ``bf16 generation``: the HF rollout engine samples a group in bf16 on the GPU; the training forward
   reproduces its log-probs (mean |Δ log p| printed).
2. ``training step``: two GRPO steps of the 3B stage-1 recipe through ``launch.train`` (a real accelerate
   subprocess), bf16, gradient checkpointing, flash-attention 2 when ``flash_attn`` imports (sdpa otherwise).
3. ``DeepSpeed ZeRO-2``: the same two steps with ``params/accelerate/single_node_zero2.yaml`` on one process.
4. ``vLLM``: the vLLM backend generates a group; after the policy's weights change, ``sync_weights`` must bring
   vLLM's log-probs back to the training forward's.

Prints one row per check (passed / failed / skipped, seconds, peak GPU memory in use on the device, a note) and
returns 0 when nothing failed. Peak memory is sampled every 0.1 s over the whole device, so it includes
accelerate's subprocesses and vLLM's reserved cache.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ocean_lib.paths import PROJECT_ROOT

RECIPE = PROJECT_ROOT / "params" / "qwen25vl_3b_stage1.yaml"
ZERO2 = PROJECT_ROOT / "params" / "accelerate" / "single_node_zero2.yaml"


class Skip(Exception):
    """A check that cannot run here (the reason is the message)."""


@dataclass
class Result:
    check: str
    status: str  # passed / failed / skipped
    seconds: float
    peak_gb: float | None
    note: str


def main() -> int:
    """Run every check and print the table; 0 if none failed, 1 otherwise (and without CUDA)."""
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(
            f"gpu-check needs a CUDA GPU, and torch.cuda.is_available() is False here (torch {torch.__version__}, "
            f"{build}). Run it on a GPU machine with the GPU extra installed: pip install -e .[gpu]",
            file=sys.stderr,
        )
        return 1
    print(
        f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    )
    with tempfile.TemporaryDirectory(prefix="ocean-gpu-check-") as tmp:
        work = Workspace.build(Path(tmp))
        checks: list[tuple[str, Callable[[], str]]] = [
            ("bf16 generation", work.generation),
            ("training step", work.training_step),
            ("LoRA step", work.lora_step),
            ("DeepSpeed ZeRO-2", work.deepspeed_step),
            ("vLLM backend", work.vllm_rollout),
        ]
        results = [_run(name, check) for name, check in checks]
    print(format_table(results))
    return int(any(r.status == "failed" for r in results))


def format_table(results: list[Result]) -> str:
    """The results as an aligned text table."""
    rows = [("check", "result", "seconds", "peak GB", "note")]
    rows += [
        (r.check, r.status, f"{r.seconds:.1f}", "-" if r.peak_gb is None else f"{r.peak_gb:.1f}", r.note)
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )


def _run(name: str, check: Callable[[], str]) -> Result:
    print(f"-- {name}", flush=True)
    start = time.perf_counter()
    with DevicePeak() as peak:
        try:
            note, status = check(), "passed"
        except Skip as reason:
            note, status = str(reason), "skipped"
        except Exception as error:  # a failed check is reported, and the others still run
            traceback.print_exc()
            note, status = (
                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                "failed",
            )
    return Result(name, status, time.perf_counter() - start, peak.gb, note)


class DevicePeak:
    """Peak memory in use on GPU 0 (all processes) while the block runs, sampled every 0.1 s."""

    def __enter__(self) -> DevicePeak:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info(0)
            self.peak = max(self.peak, total - free)
            self._stop.wait(0.1)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gb(self) -> float:
        return self.peak / 1e9


@dataclass
class Workspace:
    """The tiny model, the procedural records and the run directory the checks share."""

    root: Path
    model_dir: Path
    data_dir: Path
    device: str = "cuda"

    @classmethod
    def build(cls, root: Path, device: str = "cuda") -> Workspace:
        from ocean_lib.config import TinyModelConfig, load_config
        from ocean_lib.data import synthetic
        from ocean_lib.models import build_tiny_model

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
        return cls(root, model_dir, root / "data", device)

    def _prompts(self):
        from ocean_lib.config import DataConfig
        from ocean_lib.data import load_example, read_records
        from ocean_lib.prompts import Prompt

        records = list(read_records(self.data_dir / "test", DataConfig()))[:2]
        return [Prompt(r.content, load_example(r, DataConfig())[0]) for r in records]

    def _gap(self, model, batch) -> float:
        """Mean |log p(sampler) - log p(training forward)| over the completion tokens."""
        from ocean_lib.forward import completion_logprobs

        rows = torch.arange(len(batch.texts))
        with torch.no_grad():
            logp, _, mask = completion_logprobs(model, model, batch, rows, temperature=1.0)
        sampled = batch.logprobs[:, : mask.shape[1]].to(logp.device)
        return float(((logp.float() - sampled).abs() * mask).sum() / mask.sum())

    # -- the checks ---------------------------------------------------------------------------------------------

    def generation(self) -> str:
        from ocean_lib.config import RolloutConfig
        from ocean_lib.models import load_policy
        from ocean_lib.rollout import make_engine

        model, processor = load_policy(str(self.model_dir), dtype="bfloat16")
        model.to(self.device)
        batch = make_engine(model, processor, RolloutConfig(max_new_tokens=32)).generate(
            self._prompts(), n=4, seeds=[1, 2]
        )
        gap = self._gap(model, batch)
        if not gap < 0.1:
            raise AssertionError(f"training forward disagrees with the sampler: mean |Δ log p| = {gap:.3g}")
        return f"{len(batch.texts)} samples, mean |Δ log p| vs training forward {gap:.1e}"

    def _train(self, name: str, accelerate_config: str | None, extra: tuple[str, ...] = ()) -> str:
        from ocean_lib import launch

        attention = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
        overrides = [
            f"model.name_or_path={self.model_dir}",
            f"model.attn_implementation={attention}",
            "rollout.backend=hf",
            "train.prompts_per_step=2",
            "rollout.n=4",
            "train.micro_batch_size=8",  # one micro-batch per step
            "rollout.max_new_tokens=32",
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
        topology = launch.Topology(num_processes=1, accelerate_config=accelerate_config)
        final = launch.train(RECIPE, overrides, topology)
        from ocean_lib.run_dir import RunDir

        metrics = RunDir(final.parent).read_metrics()
        if [m["step"] for m in metrics] != [1, 2]:
            raise AssertionError(
                f"expected metrics for steps 1 and 2, got {[m.get('step') for m in metrics]}"
            )
        return f"{attention}, bf16, 2 steps, {metrics[-1]['time/step_s']:.1f} s/step"

    def training_step(self) -> str:
        if not RECIPE.is_file():
            raise Skip(f"{RECIPE} not found (run from a source checkout)")
        return self._train("plain", None)

    def lora_step(self) -> str:
        if not RECIPE.is_file():
            raise Skip(f"{RECIPE} not found (run from a source checkout)")
        extra = ("model.lora_rank=8", "model.reference_on_cpu=true", "train.micro_batch_tokens=2048")
        return "LoRA r=8, CPU reference, length buckets, " + self._train("lora", None, extra)

    def deepspeed_step(self) -> str:
        if importlib.util.find_spec("deepspeed") is None:
            raise Skip("deepspeed is not installed (pip install -e .[gpu])")
        if not ZERO2.is_file():
            raise Skip(f"{ZERO2} not found (run from a source checkout)")
        import yaml

        # The repository's config, with its DeepSpeed JSON path made absolute (we launch from anywhere).
        config = yaml.safe_load(ZERO2.read_text())
        ds = config["deepspeed_config"]
        ds["deepspeed_config_file"] = str(PROJECT_ROOT / ds["deepspeed_config_file"])
        local = self.root / "zero2.yaml"
        local.write_text(yaml.safe_dump(config))
        return "ZeRO-2, " + self._train("zero2", str(local))

    def vllm_rollout(self) -> str:
        if importlib.util.find_spec("vllm") is None:
            raise Skip("vllm is not installed (pip install -e .[gpu])")
        from ocean_lib.config import RolloutConfig
        from ocean_lib.models import load_policy
        from ocean_lib.rollout_vllm import VLLMRolloutEngine

        model, processor = load_policy(str(self.model_dir), dtype="bfloat16")
        model.to(self.device)
        cfg = RolloutConfig(
            backend="vllm", max_new_tokens=32, vllm_gpu_memory_utilization=0.3, vllm_max_model_len=2048
        )
        engine = VLLMRolloutEngine(model, processor, cfg, max_images_per_prompt=1, enforce_eager=True)
        prompts = self._prompts()
        before = self._gap(model, engine.generate(prompts, n=4, seeds=[1, 2]))

        # Change the policy, push it, sample again: vLLM must now agree with the changed policy.
        original = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.02)
        engine.sync_weights(model)
        batch = engine.generate(prompts, n=4, seeds=[1, 2])
        after = self._gap(model, batch)
        model.load_state_dict(original)
        stale = self._gap(model, batch)  # the same samples against the old weights
        if not (after < 0.1 and after < stale):
            raise AssertionError(
                f"after sync_weights vLLM's log-probs differ from the new policy's by {after:.3g} "
                f"(from the old policy's by {stale:.3g})"
            )
        return f"mean |Δ log p| {before:.1e}; after a weight change and sync {after:.1e} (stale weights: {stale:.1e})"
