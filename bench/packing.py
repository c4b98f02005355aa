"""What the token budget's packing computes at the 3B shape, on simulated lengths: a simulation, not a timing.

One process's share of a 3B step (``params/qwen25vl_3b_stage1.yaml``: 256 prompts × 16 samples on 8 processes,
so 32 groups of 16; ``train.micro_batch_tokens`` 32768, ``train.micro_batch_size`` 8), with made-up but
plausible lengths: prompts uniform in 500-900 tokens (most of them image tokens), completions log-normal around
``--median`` tokens, clipped to 1-4096. Three packings of the same rows (``forward.pack_micro_batches``):
consecutive micro-batches of 8 (no budget), length buckets (each row costed with its whole prompt, as under
``train.prompt_once=false``) and the prompt-once packing (whole groups bin-packed, each distinct prompt counted
once). For each, per process and training pass: micro-batches, prompts run (each distinct prompt once per
micro-batch, as the prompt-once forward runs them), tokens the prompt-once forward computes (each micro-batch's
prompts padded to its longest prompt, its rows' completions to its longest completion), how many of those are
padding, and the costliest micro-batch. Averages over ``--seeds`` draws.

    python bench/packing.py [--seeds 10] [--median 330] [--sigma 0.6] [--tokens 32768]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from ocean_lib.training.forward import micro_batch_cost, pack_micro_batches

GROUPS, GROUP, MICRO = 32, 16, 8


def simulate(seed: int, median: int, sigma: float, tokens: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    prompt_of_group = rng.integers(500, 901, GROUPS)
    groups = [g for g in range(GROUPS) for _ in range(GROUP)]
    prompts = [int(prompt_of_group[g]) for g in groups]
    completions = (
        np.clip(np.round(rng.lognormal(np.log(median), sigma, len(groups))), 1, 4096).astype(int).tolist()
    )
    packings = {
        "consecutive (8 rows)": pack_micro_batches(prompts, completions, MICRO),
        "length buckets": pack_micro_batches(prompts, completions, MICRO, tokens),
        "prompt-once packing": pack_micro_batches(prompts, completions, MICRO, tokens, groups),
    }
    out = {}
    for name, chunks in packings.items():
        computed = sum(micro_batch_cost(prompts, completions, c, groups) for c in chunks)
        real = sum(
            sum(prompts[g] for g in {groups[p]: p for p in c}) + sum(completions[p] for p in c)
            for c in chunks
        )
        out[name] = {
            "micro-batches": len(chunks),
            "prompts run": sum(len({groups[p] for p in c}) for c in chunks),
            "tokens computed": computed,
            "padding": 1 - real / computed,
            "costliest micro-batch": max(micro_batch_cost(prompts, completions, c, groups) for c in chunks),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="simulated steps to average over")
    parser.add_argument("--median", type=int, default=330, help="median completion length, tokens")
    parser.add_argument("--sigma", type=float, default=0.6, help="log-normal sigma of the completion lengths")
    parser.add_argument("--tokens", type=int, default=32768, help="train.micro_batch_tokens")
    args = parser.parse_args()
    runs = [simulate(seed, args.median, args.sigma, args.tokens) for seed in range(args.seeds)]
    print(
        f"simulated lengths, not a timing: {GROUPS} groups of {GROUP} per process, budget {args.tokens} tokens"
    )
    print(f"{'':22}{'micro-batches':>14}{'prompts run':>13}{'tokens':>10}{'padding':>9}{'costliest':>11}")
    for name in runs[0]:
        mean = {key: statistics.mean(run[name][key] for run in runs) for key in runs[0][name]}
        print(
            f"{name:22}{mean['micro-batches']:14.1f}{mean['prompts run']:13.1f}{mean['tokens computed']:10.0f}"
            f"{mean['padding']:9.1%}{mean['costliest micro-batch']:11.0f}"
        )


if __name__ == "__main__":
    main()
