"""Length-bucketed micro-batches (``train.micro_batch_tokens``) against consecutive ones, side by side.

The work: one GRPO batch's forward and backward, as the trainer's update runs it (``forward.completion_logprobs``
per micro-batch, a token-mean loss with the batch's global token count, gradients accumulated). The batch: the
miniature's tiny Qwen2.5-VL (default shape, built here), 8 procedural prompts with their pictures, 8 completions
each (64 sequences), completion lengths drawn once from a long tail like a rollout's (log-normal, median
``--median`` tokens, clipped to ``--max-len``: most answers short, a few running to the limit). The consecutive
side runs 8 sequences a micro-batch (``train.micro_batch_size``); the bucketed side packs at most ``--tokens``
padded tokens, however many sequences that is (``forward.pack_micro_batches`` without groups: the length buckets
that ``train.prompt_once=false`` packs; under prompt-once the trainer packs groups, ``bench/packing.py``). Before timing,
the script checks that both sides produce the same gradient (any partition does: the normalisers are global).

Two settings, because the trade-off differs: with gradient checkpointing (the real-scale recipe) every
micro-batch runs the plain forward and bucketing only removes padding; without it (the miniature), consecutive
micro-batches hold whole groups and run each prompt once (``forward._logits_running_prompts_once``), which
bucketing, mixing groups, gives up. The sides alternate round by round so that they see the same machine load;
the last line printed is the speed-up with checkpointing. Results, with the machine's cores, torch's CPU kernels
and the load average before, at every round and after, go to ``bench/results/<date>-<machine>-micro-batches.json``;
ratios taken above ``conditions.LOAD_PER_CORE_LIMIT`` per core are printed and saved as "not a measurement".

    python bench/micro_batches.py [--rounds 5] [--tokens 1024] [--median 48] [--max-len 512] [--load-limit 2.0]
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

import conditions
import numpy as np
import torch
from conditions import LoadLog, machine

from ocean_lib.base.config import load_config
from ocean_lib.base.prompts import Prompt
from ocean_lib.data import synthetic
from ocean_lib.study.pipeline import build_miniature_model
from ocean_lib.training.batch import RolloutBatch, encode_prompts
from ocean_lib.training.forward import completion_logprobs, pack_micro_batches
from ocean_lib.training.models import load_policy, vision_special_token_ids
from ocean_lib.training.trainer import prompt_of

PROMPTS, GROUP, MICRO = 8, 8, 8


def make_batch(processor, cfg, median: int, max_len: int, seed: int = 0) -> RolloutBatch:
    """8 prompts × 8 completions of random tokens with long-tailed lengths (the loss does not care what they say)."""
    families = cfg.data.synthetic.families  # the four tasks (the scene family is a pre-training experiment)
    records = [
        synthetic.task_record(synthetic.sample_task(family, (11, i)), i)
        for i, family in enumerate(families * (PROMPTS // len(families)))
    ]
    prompts: list[Prompt] = [prompt_of(r, cfg)[0] for r in records]
    inputs = encode_prompts(processor, prompts)
    rng = np.random.default_rng(seed)
    rows = PROMPTS * GROUP
    lengths = np.clip(np.round(rng.lognormal(np.log(median), 1.0, rows)), 8, max_len).astype(int)
    special = set(processor.tokenizer.all_special_ids) | set(vision_special_token_ids(processor))
    ordinary = np.array([i for i in range(len(processor.tokenizer)) if i not in special])
    completion_ids = torch.from_numpy(rng.choice(ordinary, (rows, int(lengths.max()))))
    completion_mask = (torch.arange(completion_ids.shape[1]) < torch.from_numpy(lengths)[:, None]).long()
    repeat = lambda t: t.repeat_interleave(GROUP, 0)  # noqa: E731 - one row per completion
    return RolloutBatch(
        prompt_ids=repeat(inputs["input_ids"]),
        prompt_mask=repeat(inputs["attention_mask"]),
        prompt_token_types=repeat(inputs["mm_token_type_ids"]),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=torch.zeros(completion_ids.shape),
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"],
        images_per_prompt=[len(p.images) for p in prompts],
        n=GROUP,
        texts=[""] * rows,
        finished=[True] * rows,
    )


def micro_batches(batch: RolloutBatch, tokens: int) -> list[list[int]]:
    # Each row costed with its whole prompt (no groups): the length buckets this bench was written to time.
    prompts, completions = batch.prompt_mask.sum(-1).tolist(), batch.completion_mask.sum(-1).tolist()
    return pack_micro_batches(prompts, completions, MICRO, tokens)


def padded_fraction(batch: RolloutBatch, chunks: list[list[int]]) -> float:
    """Share of the computed (row, position) slots that are padding (prompt columns trimmed as the trainer does)."""
    real = computed = 0
    for chunk in chunks:
        rows = torch.tensor(chunk)
        prompt = batch.prompt_mask[rows]
        first = int((prompt.sum(0) > 0).nonzero()[0])
        width = prompt.shape[1] - first + int(batch.completion_mask[rows].sum(1).max())
        computed += len(chunk) * width
        real += int(prompt.sum() + batch.completion_mask[rows].sum())
    return 1 - real / computed


def forward_backward(model, batch: RolloutBatch, chunks: list[list[int]]) -> float:
    """One batch's update work: per micro-batch log-probs, token-mean loss over the whole batch, backward."""
    model.zero_grad(set_to_none=True)
    total = float(batch.completion_mask.sum())
    start = time.perf_counter()
    for chunk in chunks:
        logp, _, mask = completion_logprobs(model, model, batch, torch.tensor(chunk), temperature=1.0)
        (-(logp * mask).sum() / total).backward()
    return time.perf_counter() - start


def gradients(model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating measured rounds per setting")
    parser.add_argument(
        "--tokens", type=int, default=1024, help="the bucketed side's train.micro_batch_tokens"
    )
    parser.add_argument("--median", type=int, default=48, help="median completion length, tokens")
    parser.add_argument("--max-len", type=int, default=512, help="longest completion, tokens")
    conditions.add_arguments(parser)
    args = parser.parse_args()
    if "OMP_WAIT_POLICY" not in os.environ:  # see bench/grpo_step.py: spinning OpenMP threads on shared cores
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    torch.set_num_threads(2)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="micro_batch_bench_") as tmp:
        cfg = load_config(
            None, ["data.min_pixels=3136", "data.max_pixels=200704", f"model.name_or_path={tmp}/tiny"]
        )
        model, processor = load_policy(str(build_miniature_model(cfg, corpus_per_level=100)))
        batch = make_batch(processor, cfg, args.median, args.max_len)
        sides = {"consecutive": micro_batches(batch, 0), "bucketed": micro_batches(batch, args.tokens)}
        lengths = batch.completion_mask.sum(1)
        print(
            f"{len(lengths)} completions, lengths median {int(lengths.median())}, max {int(lengths.max())}; "
            f"micro-batches: consecutive {len(sides['consecutive'])}, bucketed {len(sides['bucketed'])} "
            f"({MICRO} sequences; ≤ {args.tokens} padded tokens)"
        )
        for name, chunks in sides.items():
            print(f"{name:>12}: {padded_fraction(batch, chunks):.0%} of computed token slots are padding")

        speedups, settings = {}, {}
        loads = LoadLog(args.load_limit)
        loads.mark("before")
        for checkpointing in (True, False):
            if checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_disable()
            model.train()
            grads = {}
            for name, chunks in sides.items():  # warm-up, and the same gradient on both sides
                forward_backward(model, batch, chunks)
                grads[name] = gradients(model)
            worst = max(
                float((a - b).abs().max() / (a.abs().max() + 1e-12))
                for a, b in zip(grads["consecutive"], grads["bucketed"], strict=True)
            )
            assert worst < 1e-4, f"the two sides' gradients differ (worst relative difference {worst:.2e})"
            seconds: dict[str, list[float]] = {name: [] for name in sides}
            for r in range(args.rounds):
                for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                    seconds[name].append(forward_backward(model, batch, sides[name]))
                loads.mark(f"{'with' if checkpointing else 'without'} checkpointing, after round {r + 1}")
            medians = {name: statistics.median(values) for name, values in seconds.items()}
            speedups[checkpointing] = medians["consecutive"] / medians["bucketed"]
            settings["with_checkpointing" if checkpointing else "without_checkpointing"] = {
                "seconds": seconds,
                "median_s": medians,
                "ratio_consecutive_over_bucketed": speedups[checkpointing],
                "worst_relative_gradient_difference": worst,
            }
            label = "with gradient checkpointing" if checkpointing else "without (prompts run once per group)"
            print(
                f"{label}: consecutive {medians['consecutive']:.2f} s, bucketed {medians['bucketed']:.2f} s "
                f"per batch (median of {args.rounds}; gradients agree to {worst:.1e})"
            )
        results = {
            "date": datetime.date.today().isoformat(),
            "command": "python -m ocean_lib bench micro-batches " + " ".join(sys.argv[1:]),
            "machine": {"name": platform.node().split(".")[0] or "machine", **machine()},
            **loads.verdict(),
            "work": {
                "prompts": PROMPTS,
                "group": GROUP,
                "consecutive_sequences_per_micro_batch": MICRO,
                "micro_batch_tokens": args.tokens,
                "completion_lengths": lengths.tolist(),
                "micro_batches": {name: len(chunks) for name, chunks in sides.items()},
                "padding_fraction": {name: padded_fraction(batch, chunks) for name, chunks in sides.items()},
            },
            **settings,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{results['date']}-{results['machine']['name']}-micro-batches.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(
            f"results: {path}; load average (1 min) highest {results['highest_1min_load']:.2f}"
            f" (limit {results['load_limit']:.1f}) on {os.cpu_count()} cores,"
            f" torch CPU kernels {results['machine']['torch_cpu_capability']}"
        )
        flag = loads.label()
        print(f"without checkpointing, consecutive / bucketed: {speedups[False]:.2f}x{flag}")
        print(f"with gradient checkpointing, consecutive / bucketed: {speedups[True]:.2f}x{flag}")


if __name__ == "__main__":
    main()
