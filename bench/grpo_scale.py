"""Seconds per GRPO step at the real-scale shape on CPU: ocean_lib (2 processes, ZeRO-3) against TRL's GRPOTrainer.

ocean_lib runs on 2 processes under the shipped DeepSpeed ZeRO-3 file, started by the real launcher; both sides
checkpoint their layers' activations (gradient checkpointing).

The shape. A real Ocean-R1 step (Qwen2.5-VL-3B, ``params/qwen25vl_3b_stage1.yaml``) samples 16 completions per
prompt, and its prompts (~700 tokens, ~600 of them image tokens) are longer than its completions (~400). Here:
the miniature's tiny Qwen2.5-VL, the four procedural prompts of ``grpo_step.py`` drawn at 448 px (256 image
tokens, 294-297 prompt tokens), 16 samples each, exactly 160 new tokens per sample (prompt / completion 1.85, at
real scale 1.75), fp32, gradient checkpointing, a frozen reference with beta 0.04 (k3), clip 0.2, token-mean loss
(TRL: ``loss_type="dapo"``), one optimizer step per batch. Every other setting is ``grpo_step.py``'s, and both
sides are checked to share them (``grpo_step.check_same_settings``).

The sides.
- ``ocean_lib``, prompt-once on (the default): ``python -m ocean_lib train`` through
  :func:`ocean_lib.training.launch.train` with ``params/accelerate/single_node_zero3.yaml`` (the shipped file,
  DeepSpeed over gloo on CPU), 2 processes of 1 thread each (the trainer gives each process its share of the
  cores), each sampling and training its 2 prompts' 32 rows in one micro-batch.
- ``ocean_lib``, prompt-once off (``train.prompt_once=false``): every row runs its prompt and image in the
  reference and training forwards, as verl's and TRL's trainers do; the sampler still prefills each prompt once
  per group (both of our engines do; so does vLLM's, which verl uses).
- TRL ``GRPOTrainer`` (its best settings on this machine, named in the results): one process, 2 threads (the
  machine's cores), no DeepSpeed (ZeRO-3 partitions weights over processes, which on one CPU only adds
  collectives), ``gradient_checkpointing=True`` (TRL turns it off while generating, so its generation keeps its
  KV cache), one batch of 64 sequences per optimizer step, generation with transformers' ``generate``.

Protocol. ``--rounds`` rounds, each running the three sides one after the other (TRL, ours on, ours off), each
for ``--warmup`` + ``--steps`` steps in a fresh process or trainer; the warm-up steps are dropped, the medians
are over every round's measured steps, so that a change of load spreads over all sides. A step's seconds: TRL's
from the end of one optimizer step to the end of the next (a callback), ours ``time/step_s`` from the run's
``metrics.jsonl`` (the slowest process; start-up, data loading and the final checkpoint are outside both).
Before it prints a ratio the script checks, at every step of every side, the prompt tokens seen (each prompt once
per sample, images included) and the completion tokens generated, and at every measured step a non-zero gradient,
so that no ratio comes from doing less. FLOPs per step for each path come from :func:`ocean_lib.training.metrics.step_flops` on the step's
token counts, gradient checkpointing's recompute included (the work each path computes). With every result go the
machine's cores, torch's CPU kernels and load average; a ratio taken above ``conditions.LOAD_PER_CORE_LIMIT`` per
core is printed and saved as "not a measurement". Results: ``bench/results/<date>-<machine>-scale.json``.

    python -m ocean_lib bench grpo --shape scale [--steps 2] [--warmup 1] [--rounds 2]   (or: make bench-scale)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import conditions
import grpo_step
import torch
from conditions import LoadLog, machine

from ocean_lib.base.config import save_config
from ocean_lib.base.run_dir import RunDir
from ocean_lib.base.schema import RunConfig
from ocean_lib.data import Record, write_records
from ocean_lib.study.pipeline import build_miniature_model
from ocean_lib.training import launch
from ocean_lib.training.batch import encode_prompts
from ocean_lib.training.metrics import step_flops
from ocean_lib.training.models import load_policy
from ocean_lib.training.trainer import prompt_of

REPO = Path(__file__).resolve().parents[1]
PROCESSES = 2
ZERO3 = "params/accelerate/single_node_zero3.yaml"
SIDES = ("trl", "ours", "ours_prompt_once_off")
RUN_TIMEOUT_S = 1800  # a hung collective would wait forever


@dataclass(frozen=True)
class Shape:
    """The work's shape; the default is the real-scale one (smaller ones only check that the script runs)."""

    group: int = 16
    image_size: int = 448
    new_tokens: int = 160

    @property
    def label(self) -> str:
        return "scale shape" if self == Shape() else f"reduced shape {self}, not the scale shape"


def scale_config(
    shape: Shape, model_dir: Path, root: Path, data_file: Path, name: str, total_steps: int, once: bool
) -> RunConfig:
    """Our side's settings: ``grpo_step.run_config`` at this shape, as a launched run on ``data_file``."""
    return grpo_step.run_config(
        model_dir,
        root,
        n=shape.group,
        new_tokens=shape.new_tokens,
        prompts=len(grpo_step.FAMILIES),
        extra=(
            f"data.train_files=[{data_file}]",
            f"logging.run_name={name}",
            f"train.max_steps={total_steps}",
            f"train.epochs={total_steps}",  # one step is one pass over the four prompts
            "train.save_every=0",
            f"train.num_processes={PROCESSES}",
            # each process trains its 2 prompts' rows (32) in one micro-batch, as TRL all 64
            f"train.micro_batch_size={len(grpo_step.FAMILIES) * shape.group // PROCESSES}",
            "model.train_precision=float32",
            "model.gradient_checkpointing=true",
            f"train.prompt_once={str(once).lower()}",
        ),
    )


def our_steps(cfg: RunConfig, params: Path) -> list[dict[str, float]]:
    """Launch one run of ours through the real launcher; return its steps' metrics."""
    save_config(cfg, params)
    topology = launch.Topology(PROCESSES, accelerate_config=ZERO3)
    launch.train(params, topology=topology, timeout_s=RUN_TIMEOUT_S)
    info = json.loads(RunDir(cfg.run_dir).run_info.read_text())
    wanted = {"zero_stage": 3, "gradient_checkpointing": True, "prompt_once": cfg.train.prompt_once}
    if {k: info.get(k) for k in wanted} != wanted:
        raise SystemExit(f"{cfg.logging.run_name} did not run as configured: {info} (wanted {wanted})")
    return [
        {
            "step_s": row["time/step_s"],
            "prompt_tokens": row["tokens/prompt"],
            "completion_tokens": row["tokens/completion"],
            "grad_norm": row["grad/norm"],
            "generate_s": row["time/generate_s"],
            "reference_s": row["time/reference_s"],
            "update_s": row["time/update_s"],
        }
        for row in RunDir(cfg.run_dir).read_metrics()
    ]


def trl_steps(
    cfg: RunConfig, records: list[Record], total_steps: int, out_dir: Path
) -> tuple[list[dict], dict]:
    """Run TRL's trainer (gradient checkpointing on) for ``total_steps``; return its steps (seconds and work) and
    its checked settings."""
    steps, completion_tokens, settings = grpo_step.run_trl(
        cfg, records, total_steps, out_dir, gradient_checkpointing=True
    )
    for step, completion in zip(steps, completion_tokens, strict=True):
        step["completion_tokens"] = completion
        step["prompt_tokens"] = step.pop("input_tokens") - completion
    return steps, settings


def check_same_work(
    name: str, steps: list[dict[str, float]], warmup: int, prompt_tokens: int, completion_tokens: int
) -> None:
    """Every step of one side's run: the step's prompt and completion tokens; every measured step: a gradient.
    (A warm-up step may have none: at step 1 the policy is the reference, so the KL term's gradient is 0, and
    with every group's rewards equal so are the advantages.)"""
    problems = [
        f"step {i}: {s['prompt_tokens']:.0f} prompt and {s['completion_tokens']:.0f} completion tokens"
        f" (wanted {prompt_tokens} and {completion_tokens})"
        for i, s in enumerate(steps, 1)
        if (round(s["prompt_tokens"]), round(s["completion_tokens"])) != (prompt_tokens, completion_tokens)
    ]
    problems += [
        f"step {i}: no gradient" for i, s in enumerate(steps, 1) if i > warmup and not s["grad_norm"] > 0
    ]
    if problems:
        raise SystemExit(f"unequal work in {name}: " + "; ".join(problems))


def flops_per_path(cfg: RunConfig, records: list[Record], processor: Any, config: Any) -> dict[str, float]:
    """FLOPs each path computes per step (gradient checkpointing's recompute included), from the step's tokens.

    TRL prefills and encodes every row's prompt when it generates and runs it in the reference and training
    forwards; ours prefills once per group and, with prompt-once, runs each prompt once per micro-batch (here
    one micro-batch per process holds whole groups)."""
    encoded = encode_prompts(processor, [prompt_of(r, cfg)[0] for r in records])
    n, prompts = cfg.rollout.n, len(records)
    rows = torch.arange(prompts * n)
    step = SimpleNamespace(
        prompt_mask=encoded["attention_mask"].repeat_interleave(n, 0),
        completion_mask=torch.ones(prompts * n, cfg.rollout.max_new_tokens, dtype=torch.long),
        prompt_index=rows // n,
        image_grid_thw=encoded["image_grid_thw"],
        images_per_prompt=[1] * prompts,
    )
    each = torch.ones(prompts, dtype=torch.float64)
    common = {"generated": True, "forward_only": 1, "updates": 1, "vision_trained": True, "recompute": True}
    ours_on = step_flops(config, step, rows, forward_runs=each, update_runs=each, **common)
    ours_off = step_flops(config, step, rows, forward_runs=None, update_runs=None, **common)
    trl = step_flops(
        config, step, rows, forward_runs=None, update_runs=None, generation_repeats_prompts=True, **common
    )
    return {"trl": trl, "ours": ours_on, "ours_prompt_once_off": ours_off}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench grpo --shape scale", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="measured steps per side and round")
    parser.add_argument("--warmup", type=int, default=1, help="discarded steps per side and round")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of the three sides, one after the other"
    )
    parser.add_argument("--group", type=int, default=Shape.group, help="samples per prompt")
    parser.add_argument("--image-size", type=int, default=Shape.image_size, help="picture side, px (x 28)")
    parser.add_argument("--new-tokens", type=int, default=Shape.new_tokens, help="tokens per completion")
    conditions.add_arguments(parser)
    args = parser.parse_args(argv)
    shape = Shape(args.group, args.image_size, args.new_tokens)
    os.chdir(REPO)  # the accelerate files name their DeepSpeed JSON relative to the repository
    torch.set_num_threads(grpo_step.THREADS)
    torch.manual_seed(0)
    started = time.perf_counter()
    total_steps = args.warmup + args.steps

    with tempfile.TemporaryDirectory(prefix="grpo_scale_") as tmp:
        root = Path(tmp)
        model_dir = root / "tiny"
        base = scale_config(shape, model_dir, root / "runs", root / "train.parquet", "x", total_steps, True)
        build_miniature_model(base, corpus_per_level=100)
        records = grpo_step.bench_records(shape.image_size)
        data_file = write_records(records, root / "train.parquet")
        model, processor = load_policy(str(model_dir))
        prompt_tokens, completion_tokens = grpo_step.step_tokens(base, records, processor)
        flops = flops_per_path(base, records, processor, model.config)
        del model

        loads = LoadLog(args.load_limit)
        loads.mark("before")
        steps: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
        settings: dict[str, Any] = {}
        for r in range(1, args.rounds + 1):
            for side in SIDES:
                t0 = time.perf_counter()
                name = f"{side}_{r}"
                once = side != "ours_prompt_once_off"
                cfg = scale_config(shape, model_dir, root / "runs", data_file, name, total_steps, once)
                if side == "trl":
                    side_steps, settings = trl_steps(cfg, records, total_steps, root / name)
                else:
                    side_steps = our_steps(cfg, root / f"{name}.yaml")
                if len(side_steps) != total_steps:
                    raise SystemExit(f"{name} ran {len(side_steps)} steps, not {total_steps}")
                check_same_work(name, side_steps, args.warmup, prompt_tokens, completion_tokens)
                steps[side] += side_steps[args.warmup :]
                loads.mark(f"after {name}")
                measured = [f"{s['step_s']:.1f}" for s in side_steps[args.warmup :]]
                print(
                    f"round {r} {side:>22}: {', '.join(measured)} s/step ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )

    medians = {
        side: grpo_step.spread([s["step_s"] for s in side_steps]) for side, side_steps in steps.items()
    }
    ratio = medians["trl"]["median"] / medians["ours"]["median"]
    once_ratio = medians["ours_prompt_once_off"]["median"] / medians["ours"]["median"]
    import transformers
    import trl

    results = {
        "date": datetime.date.today().isoformat(),
        "command": "python -m ocean_lib bench grpo --shape scale",
        "machine": {"name": grpo_step.machine_name(), **machine()},
        **loads.verdict(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "work": {
            "prompts": len(records),
            **asdict(shape),
            "scale_shape": shape == Shape(),
            "processes_ours": PROCESSES,
            "accelerate_config_ours": ZERO3,
            "trl": "one process, 2 threads, no DeepSpeed, gradient_checkpointing=True, one batch per step",
            "prompt_tokens_per_step": prompt_tokens,
            "completion_tokens_per_step": completion_tokens,
            **settings,
        },
        "step_s": medians,
        "ratio_trl_over_ours": ratio,
        "ratio_prompt_once_off_over_on": once_ratio,
        "flops_per_step": flops,
        "ours_breakdown_median_s": {
            side: {
                k: statistics.median(s[k] for s in steps[side])
                for k in ("generate_s", "reference_s", "update_s")
            }
            for side in SIDES[1:]
        },
        "raw": steps,
        "total_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{results['date']}-{results['machine']['name']}-scale.json"
    path.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\nresults: {path} ({results['total_s']:.0f} s in all)")
    print(
        f"load average (1 min): {loads.samples['before'][0]:.2f} before, highest {results['highest_1min_load']:.2f}"
        f" (limit {results['load_limit']:.1f}) on {os.cpu_count()} cores, torch CPU kernels"
        f" {results['machine']['torch_cpu_capability']}"
    )
    names = {
        "trl": "TRL GRPOTrainer",
        "ours": "ocean_lib",
        "ours_prompt_once_off": "ocean_lib, prompt-once off",
    }
    for side in SIDES:
        t = medians[side]
        print(
            f"{names[side]:>27}: {t['median']:.2f} s/step median (IQR {t['q1']:.2f}-{t['q3']:.2f}, n={t['n']}),"
            f" {flops[side] / 1e12:.3f} TFLOP/step"
        )
    print(f"prompt-once off/on per-step ratio ({shape.label}): {once_ratio:.2f}{loads.label()}")
    print(f"TRL/ours per-step ratio ({shape.label}): {ratio:.2f}{loads.label()}")
