"""Seconds per GRPO step: ocean_lib's trainer against TRL's ``GRPOTrainer`` on the same work, side by side.

The work (both sides): the miniature's tiny Qwen2.5-VL (built here once, loaded twice from the same
directory), the same four procedural prompts (one per task family, 112-px pictures), 8 samples each, exactly
64 new tokens per sample (EOS is blocked until then), temperature 1.0, fp32, CPU with 2 threads, the reward
``ocean_lib.rewards.score_batch`` (wrapped as a TRL reward function), a frozen reference model with KL
coefficient 0.04 (k3 estimator), PPO clip 0.2, one forward/backward over the 32 sequences and one AdamW step
per batch, no entropy bonus. Loss aggregation: TRL's ``loss_type="dapo"`` is ``sum(mask * l) / N_tok`` with
``N_tok`` the batch's completion tokens, which is exactly our ``token-mean`` (Ocean-R1's mode). (TRL's
``"bnpo"`` is the same only when the batch is one micro-batch; TRL's ``"grpo"`` is our
``seq-mean-token-mean`` under the same condition.)

Protocol. TRL drives the loop (``trainer.train()``); a callback runs one of our steps after each TRL
optimizer step, so the two sides alternate and see the same machine load. TRL's step time is the wall-clock
from the end of our step to the end of TRL's next step (data loading, generation, scoring, reference, loss,
backward, optimizer and TRL's bookkeeping; TRL logs only after the last step); ours is one ``grpo_step`` call
(the same pieces). The first ``--warmup`` steps of each side are discarded. The script refuses to report a
ratio unless both sides use the same loss and sampling settings and, at every step, saw the same number of
prompt tokens, generated the same number of completion tokens and took a non-zero gradient (with all rewards
equal the advantages are 0, but the KL term still trains), so the ratio cannot come from doing less.
Then a scaling table times our step alone over max new tokens 32-256 (8 samples) and group sizes 4-16
(64 tokens), the six settings stepping in turn. Results go to ``bench/results/<date>-<machine>.json``; the last
line printed is the ratio. With every result go the machine's cores, torch's CPU kernels and the load average
before, at every step and after; a ratio taken above ``conditions.LOAD_PER_CORE_LIMIT`` per core is printed and
saved as "not a measurement" (bench/conditions.py).

Threads. The script runs with ``OMP_WAIT_POLICY=PASSIVE`` (it restarts itself to set it): on a machine whose
cores other jobs share, OpenMP's default spin-waiting makes 2-thread matmuls up to 100x slower whenever one
thread is descheduled, which would measure the scheduler, not the code.

    python bench/grpo_step.py [--steps 10] [--warmup 2] [--scaling-steps 3] [--load-limit 2.0]
    (or: python -m ocean_lib bench grpo, or: make bench)

``--shape scale`` runs ``bench/grpo_scale.py`` instead: the real-scale shape (group 16, image prompts longer than
the completions, gradient checkpointing, ours on 2 processes under ZeRO-3), with its own options.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import conditions
import torch
from conditions import LoadLog, machine

from ocean_lib.base.config import load_config
from ocean_lib.base.prompts import split_image_markers
from ocean_lib.base.run_dir import RunDir
from ocean_lib.base.schema import RunConfig
from ocean_lib.data import Record, synthetic
from ocean_lib.rewards import score_batch
from ocean_lib.study.pipeline import build_miniature_model
from ocean_lib.training.batch import encode_prompts
from ocean_lib.training.models import load_policy, vision_special_token_ids
from ocean_lib.training.run_state import build_state
from ocean_lib.training.trainer import grpo_step, prompt_of

THREADS = 2
PROMPTS = 4
GROUP = 8
NEW_TOKENS = 64
KL_COEF = 0.04
CLIP = 0.2
LR = 1e-5
FAMILIES = ("counting", "geometry", "grounding", "spatial")
# Our loss aggregation -> the TRL loss_type that computes the same number (see the module docstring).
TRL_LOSS_TYPE = {"token-mean": "dapo"}
LOSS_AGG = "token-mean"
SCALING_TOKENS = (32, 64, 128, 256)
SCALING_GROUPS = (4, 8, 16)
BREAKDOWN = ("generate_s", "reference_s", "forward_backward_s", "optimizer_s", "reward_s")


# ----------------------------------------------------------------------------------------------------------------
# The shared work: model, prompts, settings
# ----------------------------------------------------------------------------------------------------------------


def run_config(
    model_dir: Path,
    run_root: Path,
    n: int = GROUP,
    new_tokens: int = NEW_TOKENS,
    prompts: int = PROMPTS,
    extra: tuple[str, ...] = (),
) -> RunConfig:
    """Our side's settings for this work (the TRL side is built from the same numbers); ``extra``: more
    overrides (the scale shape's)."""
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            f"rollout.n={n}",
            "rollout.temperature=1.0",
            f"rollout.max_new_tokens={new_tokens}",
            f"rollout.min_new_tokens={new_tokens}",
            f"algorithm.kl_coef={KL_COEF}",
            "algorithm.kl_estimator=k3",
            f"algorithm.clip_low={CLIP}",
            f"algorithm.clip_high={CLIP}",
            f"algorithm.loss_agg={LOSS_AGG}",
            "algorithm.entropy_coef=0.0",
            "algorithm.adv_eps=1e-4",  # TRL's
            "algorithm.updates_per_batch=1",
            f"train.prompts_per_step={prompts}",
            f"train.micro_batch_size={prompts * n}",  # one forward/backward per batch, as TRL's one batch
            f"train.lr={LR}",
            "train.weight_decay=0.0",  # transformers.Trainer's default
            "train.grad_clip=1.0",
            f"logging.output_dir={run_root}",
            "logging.progress=false",
            *extra,
        ],
    )


def bench_records(image_size: int = 112) -> list[Record]:
    """One procedural task per family, with its picture: the four prompts of every step, on both sides."""
    return [
        synthetic.task_record(synthetic.sample_task(f, (7, i), image_size=image_size), i)
        for i, f in enumerate(FAMILIES)
    ]


# ----------------------------------------------------------------------------------------------------------------
# Our side
# ----------------------------------------------------------------------------------------------------------------


class OurSide:
    """ocean_lib's trainer state, stepped with ``grpo_step`` exactly as ``trainer.train`` does."""

    def __init__(self, cfg: RunConfig, records: list[Record]):
        from accelerate import Accelerator

        self.cfg, self.records = cfg, records
        # Built as trainer.train builds it (policy, frozen reference, AdamW, rollout engine); grpo_step saves each
        # prompt's thumbnail in the run directory.
        self.state = build_state(cfg, Accelerator(cpu=True), RunDir(Path(cfg.run_dir)))
        # The trainer times generation, reward, reference and the whole update; split the optimizer step out.
        self.optimizer_s = 0.0
        self.state.optimizer.optimizer.register_step_pre_hook(lambda *_: self._mark())
        self.state.optimizer.optimizer.register_step_post_hook(lambda *_: self._lap())
        self.steps: list[dict[str, float]] = []

    def _mark(self) -> None:
        self._t0 = time.perf_counter()

    def _lap(self) -> None:
        self.optimizer_s = time.perf_counter() - self._t0

    def step(self) -> dict[str, float]:
        """One GRPO step; returns its wall-clock, the trainer's timers and the work done."""
        number = len(self.steps) + 1
        seeds = [1000 * number + i for i in range(len(self.records))]
        t0 = time.perf_counter()
        tally, rows = grpo_step(self.state, self.records, number, seeds)
        seconds = time.perf_counter() - t0
        metrics = tally.reduce(self.state.accelerator)
        record = {
            "step_s": seconds,
            "generate_s": metrics["time/generate_s"],
            "reward_s": metrics["time/reward_s"],
            "reference_s": metrics["time/reference_s"],
            "forward_backward_s": metrics["time/update_s"] - self.optimizer_s,
            "optimizer_s": self.optimizer_s,
            "completion_tokens": sum(r["length"] for r in rows),
            "sequences": len(rows),
            "grad_norm": metrics["grad/norm"],
        }
        self.steps.append(record)
        return record


# ----------------------------------------------------------------------------------------------------------------
# TRL's side
# ----------------------------------------------------------------------------------------------------------------


def trl_dataset(records: list[Record], cfg: RunConfig):
    """The same prompts in TRL's multimodal format: a conversational prompt and an ``image`` column."""
    from datasets import Dataset

    rows = []
    for record in records:
        prompt, truth = prompt_of(record, cfg)
        _, text = split_image_markers(prompt.content)
        rows.append(
            {
                "prompt": [{"role": "user", "content": text}],
                "image": prompt.images[0],
                "truth": truth,
                "reward_func": record.reward_func,
            }
        )
    return Dataset.from_list(rows)


class TrlReward:
    """``score_batch`` as a TRL reward function; it also counts the completion tokens TRL generated."""

    __name__ = "ocean_lib_score_batch"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.tokens: list[int] = []

    def __call__(self, prompts, completions, completion_ids, truth, reward_func, **_: Any) -> list[float]:
        self.tokens.append(sum(len(ids) for ids in completion_ids))
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [s.overall for s in score_batch(texts, truth, reward_func, self.cfg.reward)]


def trl_trainer(
    cfg: RunConfig,
    records: list[Record],
    total_steps: int,
    out_dir: Path,
    callback: Any,
    gradient_checkpointing: bool = False,
):
    """TRL's GRPOTrainer configured from our settings, on its own copy of the same weights."""
    from trl import GRPOConfig, GRPOTrainer

    model, processor = load_policy(cfg.model.name_or_path)
    args = GRPOConfig(
        output_dir=str(out_dir),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=gradient_checkpointing,
        report_to="none",
        per_device_train_batch_size=cfg.train.prompts_per_step * cfg.rollout.n,
        gradient_accumulation_steps=1,
        num_generations=cfg.rollout.n,
        max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        # Same stopping rule as ours: EOS blocked before min_new_tokens; vision tokens never sampled.
        generation_kwargs={
            "min_new_tokens": cfg.rollout.min_new_tokens,
            "suppress_tokens": vision_special_token_ids(processor),
        },
        loss_type=TRL_LOSS_TYPE[cfg.algorithm.loss_agg],
        beta=cfg.algorithm.kl_coef,
        epsilon=cfg.algorithm.clip_low,
        epsilon_high=cfg.algorithm.clip_high,
        num_iterations=cfg.algorithm.updates_per_batch,
        entropy_coef=cfg.algorithm.entropy_coef,
        learning_rate=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.grad_clip,
        lr_scheduler_type="constant",
        max_steps=total_steps,
        logging_steps=total_steps,  # TRL logs once, at the end: no logging inside the measured steps
        save_strategy="no",
        seed=cfg.train.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    reward = TrlReward(cfg)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=trl_dataset(records, cfg),
        processing_class=processor,
        callbacks=[callback],
    )
    return trainer, reward


def check_same_settings(trainer: Any, cfg: RunConfig) -> dict[str, Any]:
    """Both sides' loss and sampling settings, asserted equal; returns them for the results file."""
    alg, roll = cfg.algorithm, cfg.rollout
    pairs = {
        "kl_coef": (trainer.beta, alg.kl_coef),
        "kl_estimator": ("k3", alg.kl_estimator),  # TRL's only estimator: exp(d) - d - 1
        "clip_low": (trainer.epsilon_low, alg.clip_low),
        "clip_high": (trainer.epsilon_high, alg.clip_high),
        "loss_agg": (trainer.loss_type, TRL_LOSS_TYPE[alg.loss_agg]),
        "updates_per_batch": (trainer.num_iterations, alg.updates_per_batch),
        "group_size": (trainer.num_generations, roll.n),
        "max_new_tokens": (trainer.max_completion_length, roll.max_new_tokens),
        "min_new_tokens": (trainer.generation_config.min_new_tokens, roll.min_new_tokens),
        "temperature": (trainer.temperature, roll.temperature),
        "suppressed_tokens": (  # ours: rollout.HFRolloutEngine masks exactly the vision tokens
            sorted(trainer.generation_config.suppress_tokens),
            sorted(vision_special_token_ids(trainer.processing_class)),
        ),
        "top_p": (trainer.top_p, roll.top_p),
        "entropy_coef": (trainer.args.entropy_coef, alg.entropy_coef),
        "lr": (trainer.args.learning_rate, cfg.train.lr),
        "grad_clip": (trainer.args.max_grad_norm, cfg.train.grad_clip),
        "sequences_per_optimizer_step": (
            trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps,
            cfg.train.prompts_per_step * roll.n,
        ),
    }
    different = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if different:
        raise SystemExit(f"the two sides are not configured alike: {different} (TRL, ours)")
    if trainer.args.top_k not in (0, None) or roll.top_k != 0:
        raise SystemExit(f"top-k must be off on both sides: TRL {trainer.args.top_k}, ours {roll.top_k}")
    return {
        **{k: v[1] for k, v in pairs.items()},
        "loss_agg": alg.loss_agg,
        "trl_loss_type": trainer.loss_type,
        "trl_optimizer": getattr(trainer.args.optim, "value", trainer.args.optim),
    }


def step_tokens(cfg: RunConfig, records: list[Record], processor: Any) -> tuple[int, int]:
    """The prompt tokens (each prompt once per sample, images included) and completion tokens (every sample
    exactly ``max_new_tokens``) of one step on ``records``: what each side must have seen."""
    prompts = [prompt_of(r, cfg)[0] for r in records]
    n = cfg.rollout.n
    prompt_tokens = n * int(encode_prompts(processor, prompts)["attention_mask"].sum())
    return prompt_tokens, len(records) * n * cfg.rollout.max_new_tokens


def check_same_work(
    cfg: RunConfig,
    records: list[Record],
    ours: OurSide,
    trl_completion_tokens: list[int],
    trl_input_tokens: list[int],
    trl_grad_norms: list[float],
) -> dict[str, int]:
    """Every step of both sides: the same prompt and completion token counts, and a backward that ran."""
    prompt_tokens, completion_tokens = step_tokens(cfg, records, ours.state.processor)
    ours_completion = [s["completion_tokens"] for s in ours.steps]
    problems = []
    if set(ours_completion) != {completion_tokens} or set(trl_completion_tokens) != {completion_tokens}:
        problems.append(f"completion tokens per step: TRL {trl_completion_tokens}, ours {ours_completion}")
    if set(trl_input_tokens) != {prompt_tokens + completion_tokens}:
        problems.append(
            f"prompt + completion tokens per step: TRL {trl_input_tokens}, ours {prompt_tokens} + ..."
        )
    # Rewards may all be equal (zero advantages), but the KL term still gives every step a gradient.
    if not all(g > 0 for g in trl_grad_norms) or not all(s["grad_norm"] > 0 for s in ours.steps):
        problems.append(
            f"a step without gradient: TRL {trl_grad_norms}, ours {[s['grad_norm'] for s in ours.steps]}"
        )
    if problems:
        raise SystemExit("unequal work: " + "; ".join(problems))
    return {"prompt_tokens_per_step": prompt_tokens, "completion_tokens_per_step": completion_tokens}


# ----------------------------------------------------------------------------------------------------------------
# Alternation and summaries
# ----------------------------------------------------------------------------------------------------------------


def run_trl(
    cfg: RunConfig,
    records: list[Record],
    total_steps: int,
    out_dir: Path,
    between: Any = None,
    gradient_checkpointing: bool = False,
) -> tuple[list[dict[str, float]], list[int], dict[str, Any]]:
    """Train TRL's side for ``total_steps``; return each step's seconds, input tokens (prompt + completion, as TRL
    counts them) and gradient norm (of the tied embedding, just before the optimizer step), the completion tokens
    the reward saw per step, and the settings checked equal to ours. ``between()`` runs after each step, outside
    its time (the side-by-side bench steps ours there)."""
    from transformers import TrainerCallback

    steps: list[dict[str, float]] = []

    class StepLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.resumed, self.tokens_seen = time.perf_counter(), 0

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grad_norm = float(model.get_input_embeddings().weight.grad.norm())

        def on_step_end(self, args, state, control, **kwargs):
            tokens = state.num_input_tokens_seen - self.tokens_seen
            steps.append(
                {
                    "step_s": time.perf_counter() - self.resumed,
                    "input_tokens": tokens,
                    "grad_norm": self.grad_norm,
                }
            )
            self.tokens_seen = state.num_input_tokens_seen
            if between is not None:
                between()
            self.resumed = time.perf_counter()

    trainer, reward = trl_trainer(cfg, records, total_steps, out_dir, StepLog(), gradient_checkpointing)
    settings = check_same_settings(trainer, cfg)
    if torch.get_num_threads() != THREADS:
        raise SystemExit(f"TRL's trainer changed torch's thread count to {torch.get_num_threads()}")
    trainer.train()
    return steps, reward.tokens, settings


def alternate(
    cfg: RunConfig, records: list[Record], steps: int, warmup: int, out_dir: Path, loads: LoadLog
) -> dict[str, Any]:
    """TRL's steps interleaved with ours; returns both sides' step records and the settings checked."""
    ours = OurSide(cfg, records)

    def our_step() -> None:
        ours.step()
        loads.mark(f"after step {len(ours.steps)}")

    trl, completion_tokens, settings = run_trl(cfg, records, warmup + steps, out_dir, between=our_step)
    work = check_same_work(
        cfg,
        records,
        ours,
        completion_tokens,
        [s["input_tokens"] for s in trl],
        [s["grad_norm"] for s in trl],
    )
    return {
        "settings": settings,
        "work": work,
        "trl_step_s": [s["step_s"] for s in trl][warmup:],
        "ours": ours.steps[warmup:],
    }


def spread(values: list[float]) -> dict[str, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3, "min": min(values), "max": max(values), "n": len(values)}


def scaling(model_dir: Path, run_root: Path, records: list[Record], steps: int) -> list[dict[str, Any]]:
    """Our median seconds per step over max new tokens (group 8) and group sizes (64 tokens).

    The points take their steps in turn (round-robin), so that a change of machine load spreads over all of
    them instead of distorting one.
    """
    grid = [(GROUP, t) for t in SCALING_TOKENS] + [(g, NEW_TOKENS) for g in SCALING_GROUPS if g != GROUP]
    sides = [OurSide(run_config(model_dir, run_root, n, new_tokens), records) for n, new_tokens in grid]
    for _ in range(1 + steps):  # the first round warms up
        for side in sides:
            side.step()
    rows = []
    for (n, new_tokens), side in zip(grid, sides, strict=True):
        measured = side.steps[1:]
        row = {"group_size": n, "max_new_tokens": new_tokens}
        row |= {key: statistics.median(s[key] for s in measured) for key in ("step_s", *BREAKDOWN)}
        rows.append(row)
        print(
            f"  n={n:2d}  new tokens={new_tokens:3d}  {row['step_s']:6.2f} s/step"
            f"  (generate {row['generate_s']:.2f} s)",
            flush=True,
        )
    return rows


def growth(rows: list[dict[str, Any]], vary: str, fixed: str, value: int) -> list[dict[str, Any]]:
    """Seconds-per-step growth factor for each doubling of ``vary`` with ``fixed`` held at ``value``."""
    line = sorted((r for r in rows if r[fixed] == value), key=lambda r: r[vary])
    return [
        {vary: f"{a[vary]}->{b[vary]}", "factor": b["step_s"] / a["step_s"]}
        for a, b in zip(line, line[1:], strict=False)
    ]


def machine_name() -> str:
    return platform.node().split(".")[0] or "machine"


def summarise(side_by_side: dict[str, Any], table: list[dict[str, Any]], loads: LoadLog) -> dict[str, Any]:
    """The results file's content: medians and spreads, our breakdown, the scaling table, the machine."""
    import transformers
    import trl

    ours = side_by_side["ours"]
    trl_s, our_s = spread(side_by_side["trl_step_s"]), spread([s["step_s"] for s in ours])
    return {
        "date": datetime.date.today().isoformat(),
        "command": "python -m ocean_lib bench grpo",
        "machine": {"name": machine_name(), **machine()},
        **loads.verdict(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "work": {"prompts": PROMPTS, **side_by_side["settings"], **side_by_side["work"]},
        "trl_step_s": trl_s,
        "ours_step_s": our_s,
        "ratio_trl_over_ours": trl_s["median"] / our_s["median"],
        "ours_breakdown_median_s": {key: statistics.median(s[key] for s in ours) for key in BREAKDOWN},
        "raw": {"trl_step_s": side_by_side["trl_step_s"], "ours": ours},
        "scaling": {
            "rows": table,
            "per_token_doubling": growth(table, "max_new_tokens", "group_size", GROUP),
            "per_group_doubling": growth(table, "group_size", "max_new_tokens", NEW_TOKENS),
        },
    }


def main() -> None:
    shape = argparse.ArgumentParser(add_help=False)
    shape.add_argument("--shape", choices=("mini", "scale"), default="mini")
    chosen, rest = shape.parse_known_args()
    if "OMP_WAIT_POLICY" not in os.environ:
        # OpenMP's spinning barrier needs every thread on a core; on a shared machine one descheduled thread
        # stalls the others for a whole time slice (a 100x slowdown of small matmuls, measured). Sleeping
        # waits cost both sides the same few microseconds. libgomp reads this once, at load: restart.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    if chosen.shape == "scale":
        import grpo_scale

        grpo_scale.main(rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shape",
        choices=("mini", "scale"),
        default="mini",
        help="mini: the miniature's step (this script); scale: the real-scale shape (bench/grpo_scale.py, its own "
        "options: --shape scale --help)",
    )
    parser.add_argument("--steps", type=int, default=10, help="measured steps per side (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="discarded steps per side")
    parser.add_argument(
        "--scaling-steps", type=int, default=3, help="measured steps per scaling point (0: no scaling table)"
    )
    conditions.add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="grpo_bench_") as tmp:
        root = Path(tmp)
        cfg = run_config(root / "tiny", root / "runs")
        model_dir = build_miniature_model(
            cfg, corpus_per_level=100
        )  # the default shape, at model.name_or_path
        records = bench_records()
        loads = LoadLog(args.load_limit)
        loads.mark("before")
        print(
            f"TRL and ocean_lib alternating: {args.warmup} warm-up + {args.steps} measured steps each",
            flush=True,
        )
        side_by_side = alternate(cfg, records, args.steps, args.warmup, root / "trl", loads)
        loads.mark("after side by side")
        table = []
        if args.scaling_steps > 0:
            print("scaling (ocean_lib alone)", flush=True)
            table = scaling(model_dir, root / "runs", records, args.scaling_steps)
            loads.mark("after scaling")

    results = {**summarise(side_by_side, table, loads), "total_s": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{results['date']}-{machine_name()}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")

    trl_s, our_s = results["trl_step_s"], results["ours_step_s"]
    print(f"\nresults: {path} ({results['total_s']:.0f} s in all)")
    print(
        f"load average (1 min): {loads.samples['before'][0]:.2f} before, highest {results['highest_1min_load']:.2f}"
        f" (limit {results['load_limit']:.1f}) on {os.cpu_count()} cores, torch CPU kernels"
        f" {results['machine']['torch_cpu_capability']}"
    )
    for name, t in (("TRL GRPOTrainer", trl_s), ("ocean_lib", our_s)):
        print(f"{name:>16}: {t['median']:.2f} s/step median (IQR {t['q1']:.2f}-{t['q3']:.2f}, n={t['n']})")
    parts = results["ours_breakdown_median_s"]
    print(
        "ocean_lib median breakdown: "
        + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in parts.items())
    )
    print(f"ratio TRL / ocean_lib: {results['ratio_trl_over_ours']:.2f}x{loads.label()}")


if __name__ == "__main__":
    main()
