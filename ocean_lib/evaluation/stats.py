"""Uncertainty of benchmark accuracies: bootstrap intervals, and paired tests for two models on the same items.

An accuracy on a few hundred items moves by several points between equally good models, so every number we
report carries a 95% interval, and a claim "B beats A" is tested on the *same* items (paired), which removes the
item-difficulty variance an unpaired comparison would carry.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ocean_lib.base.io import read_jsonl


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval (fractions in [0, 1])."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PairedComparison:
    """Model B minus model A on the same items.

    ``delta`` is acc_B - acc_A with its paired-bootstrap interval; ``only_a`` / ``only_b`` count the items only
    one model got right (the discordant pairs McNemar's test uses); ``p_mcnemar`` is the exact two-sided p-value.
    """

    n: int
    accuracy_a: float
    accuracy_b: float
    delta: Interval
    only_a: int
    only_b: int
    p_mcnemar: float


def bootstrap_accuracy(
    groups: Sequence[Sequence[bool]],
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters: Sequence[Sequence[Hashable]] | None = None,
) -> Interval:
    r"""Mean of the groups' accuracies with a stratified percentile-bootstrap interval.

    With one group this is the plain accuracy :math:`\bar c = \frac1n\sum_i c_i`. With ``K`` groups (the three
    RefCOCO splits) it is :math:`\frac1K\sum_k \bar c_k`, and each resample redraws every group from itself with
    replacement, so the interval reflects each split's own size. The interval is the
    ``(1-level)/2`` and ``(1+level)/2`` quantiles of ``samples`` resampled statistics.

    ``clusters`` (one label per item, per group) resamples whole clusters instead of items: items that share
    an image (SuperCLEVR asks about 2 questions per scene, RefCOCO about 7 expressions per picture) are not
    independent, and treating them as such makes the interval too narrow. A resample draws the group's
    :math:`m` clusters with replacement and its accuracy is :math:`\sum_j C_j / \sum_j n_j` over the drawn
    clusters (correct count :math:`C_j`, size :math:`n_j`). The point estimate is unchanged.
    """
    arrays = [np.asarray(group, dtype=float) for group in groups]
    if not arrays or any(len(a) == 0 for a in arrays):
        return Interval(math.nan, math.nan, math.nan)
    if clusters is not None and [len(c) for c in clusters] != [len(a) for a in arrays]:
        raise ValueError("clusters must give one label per item of each group")
    rng = np.random.default_rng(seed)
    value = float(np.mean([a.mean() for a in arrays]))
    resampled = np.zeros(samples)
    for k, array in enumerate(arrays):
        if clusters is None:
            picks = rng.integers(0, len(array), size=(samples, len(array)))
            resampled += array[picks].mean(axis=1)
            continue
        _, label = np.unique(np.asarray([str(c) for c in clusters[k]]), return_inverse=True)
        correct = np.bincount(label, weights=array)  # per cluster
        size = np.bincount(label).astype(float)
        picks = rng.integers(0, len(size), size=(samples, len(size)))
        resampled += correct[picks].sum(axis=1) / size[picks].sum(axis=1)
    resampled /= len(arrays)
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return Interval(value, float(low), float(high))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    r"""Exact two-sided McNemar p-value from the discordant counts.

    Under H0 (both models equally good) each discordant item favours B with probability 1/2, so with
    :math:`m = b + c` discordant items :math:`p = \min\!\big(1,\ 2\sum_{k=0}^{\min(b,c)} \binom{m}{k} 2^{-m}\big)`.
    Integer arithmetic keeps it exact for any m.
    """
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**m)


def paired_comparison(
    correct_a: Sequence[bool],
    correct_b: Sequence[bool],
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedComparison:
    """Compare two models scored on the same items in the same order (see :class:`PairedComparison`).

    The bootstrap redraws *items* (both models' verdicts together), so the interval of the difference keeps
    the pairing.
    """
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same items: got {len(a)} and {len(b)} verdicts")
    if len(a) == 0:
        raise ValueError("paired comparison of zero items")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(samples, len(a)))
    deltas = b[picks].mean(axis=1) - a[picks].mean(axis=1)
    low, high = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    only_a = int(((a == 1) & (b == 0)).sum())
    only_b = int(((a == 0) & (b == 1)).sum())
    return PairedComparison(
        n=len(a),
        accuracy_a=float(a.mean()),
        accuracy_b=float(b.mean()),
        delta=Interval(float(b.mean() - a.mean()), float(low), float(high)),
        only_a=only_a,
        only_b=only_b,
        p_mcnemar=mcnemar_exact(only_a, only_b),
    )


def compare_predictions(
    jsonl_a: str | Path, jsonl_b: str | Path, samples: int = 1000, seed: int = 0
) -> PairedComparison:
    """Paired comparison of two evaluation files (``outputs/eval/<model>/<benchmark>.jsonl``) matched by item id.

    Both files must hold exactly the same items; otherwise the comparison would not be paired, so it is an
    error that names a few of the ids only one side has.
    """
    verdicts_a = {row["id"]: bool(row["correct"]) for row in read_jsonl(jsonl_a)}
    verdicts_b = {row["id"]: bool(row["correct"]) for row in read_jsonl(jsonl_b)}
    if verdicts_a.keys() != verdicts_b.keys():
        only_in_a = sorted(verdicts_a.keys() - verdicts_b.keys())
        only_in_b = sorted(verdicts_b.keys() - verdicts_a.keys())
        raise ValueError(
            f"{jsonl_a} and {jsonl_b} hold different items: {len(only_in_a)} only in the first "
            f"(e.g. {only_in_a[:3]}), {len(only_in_b)} only in the second (e.g. {only_in_b[:3]})"
        )
    ids = sorted(verdicts_a)
    return paired_comparison([verdicts_a[i] for i in ids], [verdicts_b[i] for i in ids], samples, seed)
