"""Throughput of the batch reward API against the plain one-call-at-a-time cascade.

A seeded mix of procedurally generated completions (counting, geometry, multiple choice, grounding and
garbage; right and wrong answers; glued, spaced, LaTeX, boxed and prose answers; broken formats) is scored in
mode ``ocean_r1`` twice. Garbage is what a policy degenerates into (truncation, repetition loops, word salad,
tag soup) plus uniform symbol soup, which is the costliest input for math-verify on either side.

* baseline: for each completion in turn, ``format_ok`` and ``reference_accuracy`` (Ocean-R1's cascade in its
  own order, math-verify in-process, the ground truth parsed on every call, as Ocean-R1's reward function does);
* ``score_batch`` on the whole list (string rules first, math-verify only where it can change a verdict,
  deduplicated, in worker processes under the per-call deadline). Its workers persist for a whole training
  run and their parse caches fill with the numbers and LaTeX that keep recurring, so before timing they score
  ``--warm`` completions of another seed (no completion shared): 5,000 is what one of 8 ranks scores in about
  10 steps of Ocean-R1's recipe (256 prompts × 16 samples per step). ``--warm 0`` measures cold workers.

Verdicts (accuracy, format) must be identical; the last line printed is the speed-up. The two sides run in
alternating rounds over slices of the mix, so that both see the same load on a shared machine. CPU seconds
(this process and its workers) are printed too: when other sessions keep every core busy, Linux gives each
session one share however many processes it runs, so the workers add no parallelism and the wall-clock
speed-up falls to the CPU-work ratio; on idle cores the workers also run in parallel.

    python bench/rewards.py [--n 10000] [--rounds 5] [--seed 0] [--warm 5000] [--workers 0]
    (or: python -m ocean_lib bench rewards)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import time
from collections import Counter
from pathlib import Path

from ocean_lib.base.schema import RewardConfig
from ocean_lib.rewards import format_ok, reference_accuracy, score_batch

COLOURS = ("red", "blue", "green", "yellow", "purple", "grey")
SHAPES = ("cube", "sphere", "cylinder", "car", "bicycle", "bus")
RELATIONS = ("left", "right", "above", "below", "closer", "farther")
GARBAGE = "abcdefghijklmnopqrstuvwxyzABCD 0123456789 .,;:!?()[]{}<>/=+-*$\\\n°√"


def think_text(rng: random.Random, numbers: list[str]) -> str:
    """A few reasoning sentences that mention some of ``numbers``."""
    sentences = [
        f"There are {rng.randint(0, 9)} {rng.choice(COLOURS)} {rng.choice(SHAPES)}s in the image.",
        "Let me count the objects one by one.",
        "Wait, let me re-check the small ones at the back.",
        f"The {rng.choice(SHAPES)} is to the {rng.choice(RELATIONS)} of the {rng.choice(SHAPES)}.",
        "Comparing the two boxes, the first one is closer to the camera.",
    ]
    sentences += [f"So the result should be {n}." for n in numbers]
    rng.shuffle(sentences)
    return " ".join(sentences[: rng.randint(1, 4)])


def counting(rng: random.Random) -> tuple[str, str, str]:
    truth = rng.randint(0, 10)
    said = truth if rng.random() < 0.5 else max(0, truth + rng.choice((-2, -1, 1, 2, 3)))
    answer = rng.choice(
        (
            f"{said}",
            f" {said} ",
            f"{said} objects",
            f"{said}.0",
            f"\\boxed{{{said}}}",
            f"The answer is {said}.",
        )
    )
    hints = rng.sample([str(truth), str(said), str(rng.randint(0, 12))], k=rng.randint(0, 2))
    return f"<think>{think_text(rng, hints)}</think><answer>{answer}</answer>", str(truth), "acc"


def geometry(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(1, 9), rng.randint(2, 9)
    degrees = rng.choice(range(20, 160, 5))
    truth, right, wrong = rng.choice(
        (
            (f"{degrees}°", rng.choice((f"{degrees}°", f"{degrees}", f"${degrees}^{{\\circ}}$")), f"{degrees + 10}°"),
            (f"\\frac{{{a}}}{{{b}}}", rng.choice((f"\\frac{{{a}}}{{{b}}}", f"${a}/{b}$", f"{a / b:.4g}")), f"\\frac{{{b}}}{{{a + b}}}"),
            (f"{a}cm", rng.choice((f"{a}cm", f"{a} cm", f"{a}")), f"{a + 1}cm"),
            (f"{a}√{{3}}", f"{a}√{{3}}", f"{a + 1}√{{3}}"),
        )
    )  # fmt: skip
    answer = right if rng.random() < 0.5 else wrong
    hints = [f"{degrees} - {a} = {degrees - a}"] if rng.random() < 0.5 else []
    return f"<think>{think_text(rng, hints)}</think><answer>{answer}</answer>", truth, "acc"


def choice(rng: random.Random) -> tuple[str, str, str]:
    letters = "ABCD"[: rng.randint(2, 4)]
    truth = rng.choice(letters)
    said = truth if rng.random() < 0.5 else rng.choice(letters)
    answer = rng.choice(
        (said, f"({said})", f"The answer is {said}.", f"I think {said} is correct", rng.choice(RELATIONS))
    )
    return f"<think>{think_text(rng, [])}</think><answer>{answer}</answer>", f"({truth})", "acc"


def grounding(rng: random.Random) -> tuple[str, str, str]:
    x1, y1 = rng.randint(0, 400), rng.randint(0, 400)
    x2, y2 = x1 + rng.randint(10, 200), y1 + rng.randint(10, 200)
    truth = f"[{x1}, {y1}, {x2}, {y2}]" if rng.random() < 0.8 else f"[{x1}.5, {y1}.0, {x2}.25, {y2}.0]"
    jitter = rng.choice((0, 2, 10, 60))
    box = [v + rng.randint(-jitter, jitter) for v in (x1, y1, x2, y2)]
    listed = ", ".join(str(v) for v in box)
    answer = rng.choice(
        (
            f'{{"bbox_2d": [{listed}], "label": "{rng.choice(SHAPES)}"}}',
            f'[{{"bbox_2d": [{listed}]}}]',
            f"[{listed}]",
            f'{{"bbox_2d": [{", ".join(f"{v}.0" for v in box)}]}}',
        )
    )
    return f"<think>{think_text(rng, [])}</think><answer>{answer}</answer>", truth, "iou"


def garbage(rng: random.Random) -> tuple[str, str, str]:
    """Degenerate output, five kinds alike: truncated, a repetition loop, word salad, tag soup, symbol soup."""
    completion, truth, func = rng.choice((counting, geometry, choice, grounding))(rng)
    words = f"{think_text(rng, [])} {completion}".split()
    kind = rng.randrange(5)
    if kind == 0:
        text = completion[: rng.randrange(len(completion))]
    elif kind == 1:
        text = (
            "<think>"
            + " ".join(words[:3])
            + " "
            + " ".join(rng.choice(words) for _ in range(3)) * rng.randint(5, 40)
        )
    elif kind == 2:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
    elif kind == 3:
        text = "".join(
            rng.choice(("<think>", "</think>", "<answer>", "</answer>", " ", rng.choice(words)))
            for _ in range(12)
        )
    else:
        text = "".join(rng.choice(GARBAGE) for _ in range(rng.randint(0, 300)))
    return text, truth, func


FAMILIES = {counting: 0.3, geometry: 0.15, choice: 0.25, grounding: 0.2, garbage: 0.1}


def perturb_format(rng: random.Random, completion: str) -> str:
    """Some completions break the format the ways models do."""
    roll = rng.random()
    if roll < 0.03:
        return " " + completion
    if roll < 0.06:
        return completion + "<answer>4</answer>"
    if roll < 0.10:
        return completion.replace("<think>", "").replace("</think>", "")
    if roll < 0.20:
        return completion + "<|im_end|>"
    return completion


def make_mix(n: int, seed: int) -> tuple[list[str], list[str], list[str], Counter]:
    rng = random.Random(seed)
    families = rng.choices(list(FAMILIES), weights=list(FAMILIES.values()), k=n)
    completions, truths, funcs = [], [], []
    for family in families:
        completion, truth, func = family(rng)
        completions.append(perturb_format(rng, completion))
        truths.append(truth)
        funcs.append(func)
    return completions, truths, funcs, Counter(f.__name__ for f in families)


def cpu_seconds() -> float:
    """CPU time of this process and its live children (the scoring workers); Linux /proc, else this process."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def one_at_a_time(completions: list[str], truths: list[str], funcs: list[str]) -> list[tuple[float, float]]:
    """The baseline: Ocean-R1's cascade, one completion after the other, in this process."""
    return [
        (reference_accuracy(c, g, f), 1.0 if format_ok(c, f) else 0.0)
        for c, g, f in zip(completions, truths, funcs, strict=True)
    ]


def batched(
    completions: list[str], truths: list[str], funcs: list[str], cfg: RewardConfig
) -> list[tuple[float, float]]:
    breakdowns = score_batch(completions, truths, funcs, cfg)
    assert not any(b.timed_out for b in breakdowns), (
        "a check timed out: the comparison would not be like for like"
    )
    return [(b.accuracy, b.format) for b in breakdowns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="completions in the mix")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (slices of the mix)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warm", type=int, default=5000, help="completions (another seed) scored before timing"
    )
    parser.add_argument("--workers", type=int, default=0, help="scoring processes (0 = from the CPU count)")
    args = parser.parse_args()
    cfg = RewardConfig(mode="ocean_r1", num_workers=args.workers)
    completions, truths, funcs, mix = make_mix(args.n, args.seed)
    print(f"{args.n} completions: " + ", ".join(f"{name} {count}" for name, count in sorted(mix.items())))
    print(
        f"distinct completions: {len(set(completions))}; scoring workers: {args.workers or 'from CPU count'}"
    )

    # Warm-up, not timed: imports, compiled patterns, and workers that have served earlier steps, as in a
    # training run (their caches hold numbers and LaTeX seen before). Another seed: no completion is shared.
    warm = make_mix(args.warm, args.seed + 1)[:3]
    batched(*warm, cfg)
    one_at_a_time(*(part[:200] for part in warm))

    scorers = {"one at a time": one_at_a_time, "score_batch": functools.partial(batched, cfg=cfg)}
    seconds = dict.fromkeys(scorers, 0.0)
    cpu = dict.fromkeys(scorers, 0.0)
    verdicts: dict[str, list[tuple[float, float]]] = {name: [] for name in scorers}
    bounds = [round(i * args.n / args.rounds) for i in range(args.rounds + 1)]
    for r, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        order = list(scorers) if r % 2 == 0 else list(scorers)[::-1]
        for name in order:
            start, start_cpu = time.perf_counter(), cpu_seconds()
            verdicts[name] += scorers[name](completions[lo:hi], truths[lo:hi], funcs[lo:hi])
            seconds[name] += time.perf_counter() - start
            cpu[name] += cpu_seconds() - start_cpu

    baseline, batch = verdicts["one at a time"], verdicts["score_batch"]
    mismatches = [i for i, (a, b) in enumerate(zip(baseline, batch, strict=True)) if a != b]
    assert not mismatches, (
        f"{len(mismatches)} verdicts differ: {[(completions[i], truths[i]) for i in mismatches[:3]]}"
    )
    print(f"accuracy histogram: {dict(sorted(Counter(a for a, _ in batch).items()))}")
    for name, took in seconds.items():
        print(
            f"{name:>14}: {took:7.2f} s  {args.n / took:9.0f} completions/s  ({cpu[name]:.2f} CPU s incl. workers)"
        )
    print(
        f"identical verdicts on all {args.n}; speed-up: {seconds['one at a time'] / seconds['score_batch']:.1f}x"
    )


if __name__ == "__main__":
    main()
