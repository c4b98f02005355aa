"""Property tests of the rewards on untrusted text: never raise, never overrun the deadline by more than a small
margin, never run model output; and the fast pieces agree with their plain definitions."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocean_lib.base.schema import RewardConfig
from ocean_lib.rewards import (
    choice_letter,
    literal_box,
    math_equivalent,
    reference_accuracy,
    rules,
    score,
    score_batch,
)

FAST = RewardConfig(num_workers=2, timeout_s=0.5)
MARGIN_S = 0.75  # killing a worker and reading the others' pipes, on a loaded 2-core machine
PATIENT = RewardConfig(num_workers=2, timeout_s=30.0)  # for comparisons that must not time out under load
MODES_FUNCS = [(mode, func) for mode in ("ocean_r1", "ocean_r1_v1", "strict") for func in ("acc", "iou")]

FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", " ", "\n", "  ", ".", ",", "=", " = ", " + ", "-", "/",
    "3", "40", "0.5", "-2", "1,000", "6.0", "°", "cm", "$", "\\frac{1}{2}", "\\frac{4}{5}", "\\boxed{", "{", "}",
    "(A)", "A", "B.", "(b)", "left", "I think", " answer is ", "final answer is ", " I hope", "x",
    "[10, 10, 50, 50]", "[10,10,50,50]", "[10.5, 10, 50, 50]", '{"bbox_2d": ', "[", "]",
]  # fmt: skip
GROUND_TRUTHS = [
    "3",
    "40°",
    "(A)",
    "(B)",
    "left",
    "\\frac{1}{2}",
    "0.5",
    "6",
    "8cm",
    "$x$",
    "[10, 10, 50, 50]",
    "",
]
structured = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join)
tagged_text = st.one_of(
    structured, st.text(max_size=200), st.tuples(structured, st.text(max_size=40)).map("".join)
)


def _valid(breakdown, fmt_weight: float) -> bool:
    return (
        breakdown.accuracy in (0.0, 0.1, 1.0)
        and breakdown.format in (0.0, 1.0)
        and breakdown.overall == pytest.approx(breakdown.accuracy + fmt_weight * breakdown.format)
        and breakdown.answer_source in ("answer_tag", "whole_text", "none")
    )


# --------------------------------------------------------------------------------------------------------------
# The linear-time rewrites equal their regular-expression definitions (Ocean-R1's patterns, from the issue)
# --------------------------------------------------------------------------------------------------------------


def _format_by_regex(text: str, reward_func: str) -> bool:
    if any(text.count(tag) != 1 for tag in rules.TAGS):
        return False
    answer = r".*?\{.*\[\d+,\s*\d+,\s*\d+,\s*\d+\].*\}.*?" if reward_func == "iou" else r".*?"
    return re.match(rf"<think>.*?</think>\s*<answer>{answer}</answer>", text, re.DOTALL) is not None


def _v1_format_by_regex(text: str, reward_func: str) -> bool:
    """The first recipe's rule as written there: a full match, tags may repeat."""
    answer = r".*?\{.*\[\d+,\s*\d+,\s*\d+,\s*\d+\].*\}.*?" if reward_func == "iou" else r".*?"
    return re.fullmatch(rf"<think>.*?</think>\s*<answer>{answer}</answer>", text, re.DOTALL) is not None


def _choice_by_definition(text: str) -> str | None:
    """Every occurrence scored separately, as the rule is stated."""
    text = re.sub(r"\s+", " ", text.upper())
    letters = re.findall(r"(?<![A-Z])([A-Z])(?![A-Z])", text)
    if len(letters) <= 1:
        return letters[0] if letters else None
    scores = dict.fromkeys(letters, 0)
    for letter in letters:
        pos = text.find(letter)
        window = text[max(0, pos - 20) : pos + 20]
        scores[letter] += sum(word in window for word in rules._CHOICE_EVIDENCE)
        scores[letter] += 2 if pos > len(text) * 0.7 else 0
        scores[letter] += 1 if pos < len(text) - 1 and text[pos + 1] in "。.!！,，" else 0
    return max(scores.items(), key=lambda item: item[1])[0]


@settings(max_examples=400, deadline=None)
@given(tagged_text)
def test_linear_rewrites_match_regex_definitions(text):
    assert rules.answer_spans(text) == re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    gt_match = re.search(r"<answer>(.*?)</answer>", text)
    assert rules.ground_truth_answer(text) == (gt_match.group(1) if gt_match else text).strip()
    assert rules._tighten_operators(text) == re.sub(r"\s*([=+\-*/])\s*", r"\1", text)
    for reward_func in ("acc", "iou"):
        assert rules.format_ok(text, reward_func) == _format_by_regex(text, reward_func)
        assert rules.v1_format_ok(text, reward_func) == _v1_format_by_regex(text, reward_func)
    assert choice_letter(text) == _choice_by_definition(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="<>/thinkanswer {}[]0123456789, .", max_size=80))
def test_format_rewrite_on_tag_soup(text):
    for reward_func in ("acc", "iou"):
        assert rules.format_ok(text, reward_func) == _format_by_regex(text, reward_func)
        assert rules.v1_format_ok(text, reward_func) == _v1_format_by_regex(text, reward_func)


# --------------------------------------------------------------------------------------------------------------
# The batch scorer (fast paths, deduplication, workers) agrees with the plain cascade
# --------------------------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured, st.sampled_from(GROUND_TRUTHS), st.sampled_from(MODES_FUNCS))
def test_score_agrees_with_reference_cascade(completion, ground_truth, mode_func):
    mode, reward_func = mode_func
    cfg = RewardConfig(mode=mode, num_workers=2, timeout_s=PATIENT.timeout_s)
    breakdown = score(completion, ground_truth, reward_func, cfg)
    assert not breakdown.timed_out
    assert breakdown.accuracy == reference_accuracy(completion, ground_truth, reward_func, mode)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(structured, st.sampled_from(GROUND_TRUTHS)), min_size=1, max_size=40))
def test_batch_equals_single_calls(pairs):
    completions, truths = [c for c, _ in pairs], [g for _, g in pairs]
    batch = score_batch(completions, truths, ["acc"] * len(pairs), PATIENT)
    assert batch == [score(c, g, "acc", PATIENT) for c, g in pairs]


# --------------------------------------------------------------------------------------------------------------
# Arbitrary and adversarial strings: no exception, bounded time
# --------------------------------------------------------------------------------------------------------------


def _timed_score(completion: str, ground_truth: str, mode: str, reward_func: str):
    cfg = RewardConfig(mode=mode, num_workers=FAST.num_workers, timeout_s=FAST.timeout_s)
    score(
        "<think>There are 3 cubes</think><answer>4</answer>", "3", "acc", cfg
    )  # needs math-verify: a worker is up
    start = time.monotonic()
    breakdown = score(completion, ground_truth, reward_func, cfg)
    return breakdown, time.monotonic() - start


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tagged_text, st.one_of(st.sampled_from(GROUND_TRUTHS), st.text(max_size=60)), st.sampled_from(MODES_FUNCS)
)
def test_arbitrary_strings_never_raise(completion, ground_truth, mode_func):
    mode, reward_func = mode_func
    breakdown, elapsed = _timed_score(completion, ground_truth, mode, reward_func)
    assert _valid(breakdown, FAST.format_weight)
    assert elapsed < FAST.timeout_s + MARGIN_S


ADVERSARIAL = {
    "nested-parentheses": "(" * 10_000 + "1" + ")" * 10_000,
    "nested-brackets": "[" * 10_000 + "1, 2, 3, 4" + "]" * 10_000,
    "nested-braces-box": "<think></think><answer>"
    + "{" * 10_000
    + "[1, 2, 3, 4]"
    + "}" * 10_000
    + "</answer>",
    "100kB-digits": "7" * 100_000,
    "20k-numbers": " ".join(["12"] * 20_000),  # math-verify's parse alone takes ~5 s
    "power-tower": " 9**9**9**9 ",  # sympy never finishes evaluating it
    "unbalanced-latex": "\\frac{" * 3000,
    "deep-latex": "$" + "\\sqrt{" * 2000 + "2" + "}" * 2000 + "$",  # ~8 s in math-verify
    "unclosed-boxed": "\\boxed{" * 3000,
    "unclosed-answers": "<answer>" * 20_000,
    "whitespace-around-operator": "<think>a</think><answer>"
    + " " * 100_000
    + "="
    + " " * 100_000
    + "</answer>",
    "many-letters": "<think>a</think><answer>" + "A B " * 25_000 + "</answer>",
    "code": "<think>__import__('os').system('true')</think><answer>eval('1+1')</answer>",
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
@pytest.mark.parametrize("mode, reward_func", MODES_FUNCS)
def test_adversarial_completion_is_bounded(text, mode, reward_func):
    breakdown, elapsed = _timed_score(text, "3", mode, reward_func)
    assert _valid(breakdown, FAST.format_weight)
    assert elapsed < FAST.timeout_s + MARGIN_S


@pytest.mark.parametrize(
    "name", ["nested-parentheses", "nested-brackets", "100kB-digits", "unclosed-answers"]
)
def test_adversarial_ground_truth_is_bounded(name):
    for mode, reward_func in MODES_FUNCS:
        breakdown, elapsed = _timed_score(
            "<think>a</think><answer>3</answer>", ADVERSARIAL[name], mode, reward_func
        )
        assert _valid(breakdown, FAST.format_weight)
        assert elapsed < FAST.timeout_s + MARGIN_S


# --------------------------------------------------------------------------------------------------------------
# Model output is never executed
# --------------------------------------------------------------------------------------------------------------


def test_model_output_never_runs(tmp_path):
    marker = tmp_path / "ran"
    call = f"__import__('os').system('touch {marker}')"
    payloads = [
        call,
        f"<think>{call}</think><answer>{call}</answer>",
        f"<think>x</think><answer>${call}$</answer>",
        f"The final answer is \\boxed{{{call}}}",
        f"<answer>1 + {call}</answer>",
        f"<answer>[{call}, 1, 2, 3]</answer>",
        f'<answer>{{"bbox_2d": {call}}}</answer>',
        "<answer>().__class__.__bases__[0].__subclasses__()</answer>",
        f'exec("{call}")',
    ]
    for payload in payloads:
        for mode, reward_func in MODES_FUNCS:
            cfg = RewardConfig(mode=mode, num_workers=2)
            score(payload, payload, reward_func, cfg)  # as completion and as ground truth
            score(payload, "[1, 2, 3, 4]" if reward_func == "iou" else "3", reward_func, cfg)
            reference_accuracy(payload, payload, reward_func, mode)
        math_equivalent(payload, payload)
        literal_box(payload)
        literal_box(rules.ground_truth_answer(payload).replace("$", ""))
    assert not marker.exists()
