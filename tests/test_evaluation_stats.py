"""Bootstrap intervals and paired tests: the numbers every claim of the study rests on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ocean_lib.base.io import append_jsonl
from ocean_lib.evaluation.stats import (
    bootstrap_accuracy,
    compare_predictions,
    mcnemar_exact,
    paired_comparison,
)


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        (0, 0, 1.0),  # no discordant pair: no evidence either way
        (0, 5, 2 / 32),  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
        (1, 9, 2 * (1 + 10) / 1024),  # 2 * (C(10,0) + C(10,1)) / 2^10
        (9, 1, 2 * (1 + 10) / 1024),  # symmetric in the two models
        (5, 5, 1.0),  # balanced: capped at 1
    ],
)
def test_mcnemar_exact_matches_the_binomial_tail(only_a, only_b, expected):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected)


def test_mcnemar_exact_stays_finite_for_thousands_of_items():
    p = mcnemar_exact(600, 720)  # 2^1320 overflows a float; integer arithmetic must not
    assert 0 < p < 0.01


def test_bootstrap_interval_brackets_the_accuracy_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    small = rng.random(100) < 0.6
    large = rng.random(4000) < 0.6
    a, b = bootstrap_accuracy([small], 2000), bootstrap_accuracy([large], 2000)
    assert a.value == pytest.approx(small.mean())
    assert a.low < a.value < a.high and b.low < b.value < b.high
    # Width ~ 2 * 1.96 * sqrt(p(1-p)/n): about 0.19 at n=100, 0.03 at n=4000.
    assert a.high - a.low == pytest.approx(2 * 1.96 * math.sqrt(0.24 / 100), rel=0.2)
    assert b.high - b.low == pytest.approx(2 * 1.96 * math.sqrt(0.24 / 4000), rel=0.2)


def test_bootstrap_is_seeded():
    data = [[True, False, True, True, False] * 20]
    assert bootstrap_accuracy(data, seed=3) == bootstrap_accuracy(data, seed=3)
    assert bootstrap_accuracy(data, seed=3) != bootstrap_accuracy(data, seed=4)


def test_stratified_bootstrap_averages_group_accuracies_not_items():
    # A small perfect split and a large failed one: the table's average is 0.5, the pooled accuracy ~0.09.
    interval = bootstrap_accuracy([[True] * 10, [False] * 100])
    assert interval.value == pytest.approx(0.5)
    assert interval.low == pytest.approx(0.5) and interval.high == pytest.approx(
        0.5
    )  # no within-group variance


def test_bootstrap_of_nothing_is_nan():
    assert math.isnan(bootstrap_accuracy([[]]).value)


def test_paired_comparison_counts_discordant_items_and_brackets_the_difference():
    rng = np.random.default_rng(0)
    a = rng.random(1000) < 0.5
    b = a.copy()
    flip = rng.choice(1000, 80, replace=False)
    b[flip[:70]] = True  # B fixes up to 70 items...
    b[flip[70:]] = False  # ...and breaks up to 10
    result = paired_comparison(a, b)
    assert result.only_b == int((~a[flip[:70]]).sum())
    assert result.only_a == int(a[flip[70:]].sum())
    assert result.delta.value == pytest.approx(b.mean() - a.mean())
    assert 0 < result.delta.low < result.delta.value < result.delta.high
    assert result.p_mcnemar < 1e-4


def test_paired_comparison_refuses_unpaired_inputs():
    with pytest.raises(ValueError, match="same items"):
        paired_comparison([True, False], [True])


def test_compare_predictions_pairs_by_item_id(tmp_path):
    append_jsonl(tmp_path / "a.jsonl", [{"id": "x", "correct": True}, {"id": "y", "correct": False}])
    append_jsonl(tmp_path / "b.jsonl", [{"id": "y", "correct": True}, {"id": "x", "correct": True}])
    result = compare_predictions(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert (result.n, result.only_a, result.only_b) == (2, 0, 1)
    append_jsonl(tmp_path / "c.jsonl", [{"id": "x", "correct": True}, {"id": "z", "correct": True}])
    with pytest.raises(ValueError, match="different items.*'y'.*'z'"):
        compare_predictions(tmp_path / "a.jsonl", tmp_path / "c.jsonl")


def test_cluster_bootstrap_widens_the_interval_when_items_of_an_image_agree():
    # 400 images with 5 questions each, answered all right or all wrong per image: the items are 400 independent
    # draws, not 2,000, so resampling images must give a wider interval (about sqrt(5) wider) at the same value.
    rng = np.random.default_rng(0)
    per_image = rng.random(400) < 0.6
    correct = np.repeat(per_image, 5)
    images = np.repeat(np.arange(400), 5)
    items = bootstrap_accuracy([correct], 2000, seed=0)
    clustered = bootstrap_accuracy([correct], 2000, seed=0, clusters=[images])
    assert clustered.value == items.value == pytest.approx(correct.mean())
    ratio = (clustered.high - clustered.low) / (items.high - items.low)
    assert 1.8 < ratio < 2.7


def test_cluster_bootstrap_with_one_item_per_cluster_is_the_item_bootstrap_in_distribution():
    rng = np.random.default_rng(3)
    correct = rng.random(3000) < 0.3
    items = bootstrap_accuracy([correct], 3000, seed=1)
    singletons = bootstrap_accuracy([correct], 3000, seed=2, clusters=[list(range(3000))])
    assert singletons.high - singletons.low == pytest.approx(items.high - items.low, rel=0.1)
    with pytest.raises(ValueError, match="one label per item"):
        bootstrap_accuracy([correct], 10, clusters=[[0, 1]])
