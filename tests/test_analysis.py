"""Run-directory tables and the aha-moment analytics, on jsonl files written by the run directory's own writer."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from ocean_lib.base.run_dir import RunDir
from ocean_lib.study.analysis import (
    MAX_SCAN_CHARS,
    REFLECTION_LEXICON,
    find_reflections,
    load_metrics,
    load_rollouts,
    reflection_counts_per_step,
    reflection_over_training,
    response_length_per_step,
    rollouts_frame,
    smooth,
    split_completion,
    think_answer_disagreement_rate_per_step,
)


def rollout(step: int, completion: str, *, length: int = 10, finished: bool = True, disagree=False, **extra):
    reward = {
        "overall": 1.1,
        "accuracy": 1.0,
        "format": 1.0,
        "answer_extracted": "3",
        "answer_source": "answer_tag",
        "think_answer_disagree": disagree,
        "timed_out": False,
        "unknown_reward_func": False,
    }
    return {
        "step": step,
        "prompt_id": f"geometry:{step}",
        "data_source": "geometry",
        "reward_func": "acc",
        "image": None,
        "prompt": "What is x?",
        "ground_truth": "3",
        "completion": completion,
        "reward": reward,
        "advantage": 0.5,
        "length": length,
        "finished": finished,
        **extra,
    }


def names(text: str) -> list[str]:
    return [name for name, _, _ in find_reflections(text)]


# ---------------------------------------------------------------------------------------------------------------
# The lexicon
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wait, the angle is 40.", ["wait"]),
        ("WAIT. That is not it", ["wait"]),  # case-insensitive
        ("Let me re-check the count.", ["re-check"]),
        ("Rechecking: 3 red cubes.", ["re-check"]),
        ("Let me verify: 3 + 4 = 7", ["let me verify"]),
        ("let's check the options", ["let me verify"]),
        ("Let us confirm this.", ["let me verify"]),
        ("Let me double-check.", ["double-check"]),  # not also "let me check": "double" sits between
        ("double check the box", ["double-check"]),
        ("We should re-evaluate the angle", ["re-evaluate"]),
        ("Reconsidering the options", ["re-evaluate"]),
        ("rethink this", ["re-evaluate"]),
        ("However, this leads to an error.", ["however ... error"]),
        ("however the count 3 is wrong", ["however ... error"]),
        ("On second thought, it is B.", ["on second thought"]),
        ("I made a mistake above", ["I made a mistake"]),
        ("i was wrong", ["I made a mistake"]),
        ("That's wrong, so", ["that's wrong"]),
        ("this is not correct", ["that's wrong"]),
        ("Let me try again.", ["let me try again"]),
        # two patterns over the same words are both counted (documented)
        ("However, I made a mistake.", ["however ... error", "I made a mistake"]),
        ("Wait, wait. Wait.", ["wait", "wait", "wait"]),
        ("Let me\nverify", ["let me verify"]),  # a line break between the words still counts
    ],
)
def test_lexicon_positives(text, expected):
    assert names(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "awaiting the result",  # word boundaries: "wait" inside a word does not count
        "the waiter and the await keyword",
        "waiting for 3 objects",  # another word, not the interjection
        "it was prechecked",
        "checked, verified, confirmed",  # the verbs alone are not a reflection
        "I thought about the second angle",
        "However, the angle is 40. The error bars are small.",  # "error" in the next sentence
        "However, " + "x" * 100 + " error",  # further than 80 characters away
        "Let me compute the area.",
        "this is right",
    ],
)
def test_lexicon_negatives(text):
    assert names(text) == []


def test_every_lexicon_entry_is_exercised_by_a_positive_case():
    positives = (
        "Wait re-check let me verify double-check re-evaluate. However this is an error. "
        "On second thought I made a mistake. That's wrong. Let me try again."
    )
    assert set(names(positives)) == set(REFLECTION_LEXICON)


def test_find_reflections_spans_point_at_the_phrase():
    text = "<think>3 red. Wait, one is orange. Let me re-check.</think>"
    spans = find_reflections(text)
    assert [(n, text[s:e]) for n, s, e in spans] == [("wait", "Wait"), ("re-check", "re-check")]


def test_find_reflections_scans_only_the_capped_prefix():
    text = "x" * MAX_SCAN_CHARS + " wait"
    assert find_reflections(text) == []
    assert names(text[-2000:]) == ["wait"]
    assert names("wait " + "x" * 50) == ["wait"]
    assert find_reflections("abc wait", max_chars=3) == []


@pytest.mark.parametrize(
    "adversarial",
    [
        "however " * 200_000,  # every start of the bounded "however ... error" window, none closing
        "however" + " x" * 500_000,
        "let " * 300_000,
        "re-" * 400_000,
        "I made a " * 150_000,
    ],
)
def test_find_reflections_time_is_bounded_on_adversarial_text(adversarial):
    start = time.perf_counter()
    find_reflections(adversarial)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------------------------
# split_completion
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think> 3 + 4 = 7 </think> <answer>7</answer>", ("3 + 4 = 7", "7", "")),
        (
            "<think>a</think><answer>1</answer><answer>2</answer>",
            ("a", "2", "<answer>1</answer>"),
        ),  # last answer
        ("Sure! <think>a</think><answer>1</answer><|im_end|>", ("a", "1", "Sure!\n<|im_end|>")),
        (
            "<think>maybe <answer>5</answer> no</think><answer>6</answer>",
            ("maybe <answer>5</answer> no", "6", ""),
        ),
        ("<think>cut at max_new_tokens", ("cut at max_new_tokens", "", "")),
        ("<think>t</think><answer>unclosed", ("t", "unclosed", "")),
        ("the answer is 7", ("", "", "the answer is 7")),
        ("<answer>7</answer>", ("", "7", "")),
        ("", ("", "", "")),
    ],
)
def test_split_completion(text, expected):
    assert split_completion(text) == expected


def test_split_completion_is_linear_on_adversarial_text():
    start = time.perf_counter()
    think, answer, _ = split_completion("<think><answer>" * 300_000)
    assert time.perf_counter() - start < 1.0
    assert think.startswith("<answer>") and answer == ""


# ---------------------------------------------------------------------------------------------------------------
# Reading a run directory
# ---------------------------------------------------------------------------------------------------------------


def test_load_metrics_sorts_steps_keeps_sparse_keys_and_skips_a_torn_last_line(tmp_path):
    run = RunDir(tmp_path / "run")
    for step in (2, 1, 3):
        row = {"step": step, "reward/overall": step / 10}
        if step == 2:
            row["val/accuracy"] = 0.5
        run.log_metrics(row)
    with open(run.metrics, "a") as handle:
        handle.write('{"step": 4, "reward/ov')  # a training process mid-append
    metrics = load_metrics(run)
    assert list(metrics.index) == [1, 2, 3]
    assert metrics["reward/overall"].tolist() == [0.1, 0.2, 0.3]
    assert math.isnan(metrics.loc[1, "val/accuracy"]) and metrics.loc[2, "val/accuracy"] == 0.5
    assert load_metrics(str(run.path)).equals(metrics)


def test_load_metrics_errors_name_the_file_and_row(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl in run directory"):
        load_metrics(tmp_path)
    run = RunDir(tmp_path)
    run.log_metrics({"step": 1})
    run.log_metrics({"epoch": 0})
    with pytest.raises(ValueError, match=r"metrics.jsonl: row 2, field 'step'"):
        load_metrics(run)


def test_load_rollouts_flattens_the_reward_and_fills_defaults(tmp_path):
    run = RunDir(tmp_path)
    minimal = {
        "step": 2,
        "data_source": "counting",
        "completion": "x",
        "advantage": -1.0,
        "length": 3,
        "reward": {"overall": 0.0, "accuracy": 0.0, "format": 0.0},
    }
    run.log_rollouts([rollout(1, "<think>a</think><answer>3</answer>", disagree=True), minimal])
    table = load_rollouts(run)
    assert len(table) == 2
    assert table.columns[0] == "step"
    assert table["reward/overall"].tolist() == [1.1, 0.0]
    # diagnostics missing from a row are NaN in its reward columns, not an error
    assert table["reward/think_answer_disagree"].tolist()[0] is True
    assert math.isnan(table.loc[1, "reward/think_answer_disagree"])
    assert table.loc[1, "finished"] and table.loc[1, "image"] is None and table.loc[1, "prompt"] == ""
    assert "reward" not in table.columns


def test_load_rollouts_errors_name_file_row_and_field(tmp_path):
    run = RunDir(tmp_path)
    broken = rollout(1, "x")
    del broken["advantage"]
    run.log_rollouts([rollout(1, "x"), broken])
    with pytest.raises(ValueError, match=r"rollouts.jsonl: row 2 has no field 'advantage'"):
        load_rollouts(run)
    run.rollouts.unlink()
    run.log_rollouts([{**rollout(1, "x"), "reward": 1.0}])
    with pytest.raises(ValueError, match=r"rollouts.jsonl: row 1, field 'reward'"):
        load_rollouts(run)


def test_an_empty_rollouts_file_gives_an_empty_table_the_analytics_accept(tmp_path):
    (tmp_path / "rollouts.jsonl").write_text("")
    table = load_rollouts(tmp_path)
    assert table.empty and "reward/overall" in table.columns
    assert reflection_counts_per_step(table).empty
    assert response_length_per_step(table).empty
    assert think_answer_disagreement_rate_per_step(table).empty


# ---------------------------------------------------------------------------------------------------------------
# Per-step analytics, checked by hand
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def rollouts(tmp_path) -> pd.DataFrame:
    run = RunDir(tmp_path)
    run.log_rollouts(
        [
            rollout(1, "<think>Wait, wait. 3 red.</think><answer>3</answer>", length=10, disagree=True),
            rollout(1, "<think>Let me verify: 3.</think><answer>4</answer>", length=20, disagree=False),
            rollout(1, "<think>3 red</think><answer>3</answer>", length=30, finished=False, disagree=None),
            rollout(1, "awaiting the answer", length=40, disagree=True),
        ]
    )
    run.log_rollouts(
        [
            rollout(2, "However, this is an error. I made a mistake.", length=5, disagree=None),
            rollout(2, "<answer>2</answer>", length=7, disagree=None),
        ]
    )
    return load_rollouts(run)


def test_reflection_counts_per_step(rollouts):
    counts = reflection_counts_per_step(rollouts)
    assert list(counts.index) == [1, 2]
    # step 1: "Wait, wait" (2 x wait) and "Let me verify" reflect; "awaiting" does not
    assert counts.loc[1, ["n", "reflective", "reflective_fraction"]].tolist() == [4, 2, 0.5]
    assert counts.loc[1, "wait"] == 2 and counts.loc[1, "let me verify"] == 1
    # step 2: one completion with two patterns, one with none
    assert counts.loc[2, ["n", "reflective", "reflective_fraction"]].tolist() == [2, 1, 0.5]
    assert counts.loc[2, "however ... error"] == 1 and counts.loc[2, "I made a mistake"] == 1
    assert counts.loc[2, "wait"] == 0
    assert set(REFLECTION_LEXICON) <= set(counts.columns)


def test_reflection_over_training_rates_and_accuracies_by_window_of_steps():
    """Steps 1-4 in two windows: early, half the completions reflect and are right; late, none reflect and
    one of four others is right. Groups are (step, prompt): the interval resamples whole groups."""
    rows = []
    for step in (1, 2, 3, 4):
        for k in range(4):
            reflect = step <= 2 and k < 2
            text = (
                "<think>Wait, that's wrong. 3.</think><answer>3</answer>" if reflect else "<answer>3</answer>"
            )
            row = rollout(step, text, prompt_id=f"p{k % 2}")
            row["reward"] = {**row["reward"], "accuracy": float(reflect or (step > 2 and k == 0))}
            rows.append(row)
    table = reflection_over_training(rollouts_frame(rows), windows=2)
    assert table["steps"].tolist() == ["1-2", "3-4"]
    assert table["n"].tolist() == [8, 8] and table["reflective"].tolist() == [4, 0]
    assert table["rate"].tolist() == [0.5, 0.0]
    assert table.loc[0, "accuracy_reflective"] == 1.0 and table.loc[0, "accuracy_other"] == 0.0
    assert math.isnan(table.loc[1, "accuracy_reflective"]) and table.loc[1, "accuracy_other"] == 0.25
    # every group of window 1 holds one reflective and one other completion: the rate cannot vary
    assert table.loc[0, "rate_low"] == table.loc[0, "rate_high"] == 0.5
    assert table.loc[1, "accuracy_other_low"] <= 0.25 <= table.loc[1, "accuracy_other_high"]
    with pytest.raises(ValueError, match="no rollouts"):
        reflection_over_training(rollouts_frame([]))


def test_response_length_per_step(rollouts):
    lengths = response_length_per_step(rollouts)
    step1 = lengths.loc[1]
    # 10, 20, 30, 40: mean 25, median 25, q10 = 10 + 0.3 * 10 = 13, q90 = 30 + 0.7 * 10 = 37
    assert step1[["n", "mean", "median", "max"]].tolist() == [4, 25, 25, 40]
    assert step1["q10"] == pytest.approx(13) and step1["q90"] == pytest.approx(37)
    assert step1["unfinished_fraction"] == 0.25
    assert lengths.loc[2, "mean"] == 6 and lengths.loc[2, "unfinished_fraction"] == 0.0


def test_think_answer_disagreement_rate_per_step(rollouts):
    rates = think_answer_disagreement_rate_per_step(rollouts)
    # step 1: True, False, None (not checkable), True -> 2 of 3 checked
    assert rates.loc[1, ["n", "checked", "disagree"]].tolist() == [4, 3, 2]
    assert rates.loc[1, "rate"] == pytest.approx(2 / 3)
    # step 2: nothing checkable -> no rate rather than 0
    assert rates.loc[2, ["n", "checked", "disagree"]].tolist() == [2, 0, 0]
    assert math.isnan(rates.loc[2, "rate"])


def test_disagreement_rate_leaves_out_box_answers(tmp_path):
    run = RunDir(tmp_path)
    run.log_rollouts([rollout(1, "a", disagree=True), rollout(1, "b", disagree=True, reward_func="iou")])
    rates = think_answer_disagreement_rate_per_step(load_rollouts(run))
    assert rates.loc[1, ["n", "checked", "disagree", "rate"]].tolist() == [2, 1, 1, 1.0]


def test_disagreement_rate_without_the_diagnostic_is_unknown(rollouts):
    rates = think_answer_disagreement_rate_per_step(rollouts.drop(columns="reward/think_answer_disagree"))
    assert rates["checked"].tolist() == [0, 0] and rates["rate"].isna().all()


def test_smooth():
    assert smooth([1.0, 5.0, 2.0], 0.0).tolist() == [1.0, 5.0, 2.0]
    # m1 = 0.5 -> 0.5 / 0.5 = 1; m2 = 0.25 + 1.5 = 1.75 -> 1.75 / 0.75
    assert smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, 1.75 / 0.75])
    assert smooth([4.0] * 50, 0.9) == pytest.approx(np.full(50, 4.0))  # bias correction: no pull towards 0
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        smooth([1.0], 1.0)
