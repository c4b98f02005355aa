"""Rule-by-rule tests of the rewards: every rule of issue 3, as tables with one comment per case.

Each case states the expected accuracy and format by hand from the rules; the batch scorer (fast paths,
workers) and the plain reference cascade must both give it.
"""

from __future__ import annotations

import json
import time

import pyarrow.parquet as pq
import pytest
from conftest import ANNOTATIONS

from ocean_lib.base.schema import RewardConfig
from ocean_lib.rewards import (
    choice_letter,
    extract_answer_span,
    first_int_box,
    format_ok,
    iou,
    literal_box,
    math_equivalent,
    parse_options,
    reference_accuracy,
    score,
    score_batch,
)

CFG = RewardConfig(num_workers=2, timeout_s=2.0)


def wrap(answer: str, think: str = "Let me look at the image.") -> str:
    """A well-formed completion."""
    return f"<think>{think}</think><answer>{answer}</answer>"


BOX = '{"bbox_2d": [10, 10, 50, 50]}'

# (completion, ground truth, reward_func, mode, accuracy, format)
CASES = [
    # --- format -------------------------------------------------------------------------------------------------
    # the canonical shape
    pytest.param(wrap("3"), "3", "acc", "ocean_r1", 1.0, 1.0, id="format-well-formed"),
    # chat-template end token after the answer is allowed
    pytest.param(wrap("3") + "<|im_end|>", "3", "acc", "ocean_r1", 1.0, 1.0, id="format-trailing-im-end"),
    # whitespace (newlines) between </think> and <answer> is allowed
    pytest.param(
        "<think>a</think>\n\n <answer>3</answer>", "3", "acc", "ocean_r1", 1.0, 1.0, id="format-gap"
    ),
    # a leading space before <think> fails the format
    pytest.param(" " + wrap("3"), "3", "acc", "ocean_r1", 1.0, 0.0, id="format-leading-space"),
    # two answer blocks fail the format; accuracy reads the LAST one
    pytest.param(wrap("4") + "<answer>3</answer>", "3", "acc", "ocean_r1", 1.0, 0.0, id="format-two-answers"),
    # no <think> block
    pytest.param("<answer>3</answer>", "3", "acc", "ocean_r1", 1.0, 0.0, id="format-no-think"),
    # text between </think> and <answer>
    pytest.param(
        "<think>a</think>So:<answer>3</answer>", "3", "acc", "ocean_r1", 1.0, 0.0, id="format-text-gap"
    ),
    # tags in the wrong order
    pytest.param("<answer>3</answer><think>a</think>", "3", "acc", "ocean_r1", 1.0, 0.0, id="format-order"),
    # --- acc, string rules (step 3) -----------------------------------------------------------------------------
    # option letter without parentheses: the choice letter is extracted from both sides
    pytest.param(wrap("A"), "(A)", "acc", "ocean_r1", 1.0, 1.0, id="choice-A-vs-(A)"),
    # option text instead of the letter: no letter in "left" → 0
    pytest.param(wrap("left"), "(A)", "acc", "ocean_r1", 0.0, 1.0, id="choice-left-vs-(A)"),
    # several letters: evidence words and end position pick B ("I" sits at the start)
    pytest.param(wrap("I think the answer is B."), "(B)", "acc", "ocean_r1", 1.0, 1.0, id="choice-evidence"),
    # several letters: the one near the end followed by punctuation wins
    pytest.param(wrap("B is wrong, so C."), "(C)", "acc", "ocean_r1", 1.0, 1.0, id="choice-near-end"),
    # a different letter
    pytest.param(wrap("(B)"), "(A)", "acc", "ocean_r1", 0.0, 1.0, id="choice-wrong-letter"),
    # floats compare as floats
    pytest.param(wrap("6.0"), "6", "acc", "ocean_r1", 1.0, 1.0, id="number-6.0-vs-6"),
    # different numbers → 0, no partial credit
    pytest.param(wrap("7"), "6", "acc", "ocean_r1", 0.0, 1.0, id="number-wrong"),
    # the degree sign makes the ground truth a non-float: Levenshtein 0.8 → partial credit 0.1
    pytest.param(wrap("40"), "40°", "acc", "ocean_r1", 0.1, 1.0, id="number-40-vs-40deg"),
    # a unit with a space: Levenshtein 6/7 → 0.1
    pytest.param(wrap("8 cm"), "8cm", "acc", "ocean_r1", 0.1, 1.0, id="number-unit-space"),
    # one pair of $ around the ground truth is removed
    pytest.param(wrap("ab"), "$ab$", "acc", "ocean_r1", 1.0, 1.0, id="dollar-ground-truth"),
    # all $ of a $-wrapped student answer are removed, then spaces around operators
    pytest.param(wrap("$x + y$"), "x+y", "acc", "ocean_r1", 1.0, 1.0, id="dollar-student"),
    # spaces around = + - * / do not matter (without this rule: Levenshtein 0.71 → 0.1)
    pytest.param(wrap("a+b=c"), "a + b = c", "acc", "ocean_r1", 1.0, 1.0, id="operator-spaces"),
    # text answers: cleaned (case, trailing dot) then Levenshtein ratio 1 → 1
    pytest.param(wrap("Left."), "left", "acc", "ocean_r1", 1.0, 1.0, id="text-cleaned-equal"),
    # Levenshtein ratio 6/7 → partial credit
    pytest.param(wrap("lft"), "left", "acc", "ocean_r1", 0.1, 1.0, id="text-partial"),
    # Levenshtein ratio 2/9 ≤ 0.6 → 0
    pytest.param(wrap("right"), "left", "acc", "ocean_r1", 0.0, 1.0, id="text-different"),
    # an empty answer span gives 0 (Ocean-R1's [0] index raised), not a fall-back to the whole text
    pytest.param(wrap(""), "left", "acc", "ocean_r1", 0.0, 1.0, id="empty-answer-span"),
    # no answer tags: the whole text is the student answer
    pytest.param("3", "3", "acc", "ocean_r1", 1.0, 0.0, id="whole-text"),
    # a ground truth inside <answer> tags is read from them
    pytest.param(wrap("5"), "<answer>5</answer>", "acc", "ocean_r1", 1.0, 1.0, id="ground-truth-tags"),
    # --- acc, math-verify (steps 1-2) ---------------------------------------------------------------------------
    # QUIRK step 1: a correct number only inside <think> earns full credit
    pytest.param(
        wrap("150", "so the answer is 140"), "140", "acc", "ocean_r1", 1.0, 1.0, id="quirk-think-only"
    ),
    # QUIRK step 1: any stray number in <think> can match ("3 cubes" while answering 4)
    pytest.param(wrap("4", "There are 3 cubes"), "3", "acc", "ocean_r1", 1.0, 1.0, id="quirk-stray-number"),
    # step 1: "answer is 140°" in the whole text reads 140
    pytest.param("The answer is 140°", "140°", "acc", "ocean_r1", 1.0, 0.0, id="whole-text-math"),
    # step 1: LaTeX equivalence 1/2 = 0.5 (string rules alone would give 0)
    pytest.param(wrap("$\\frac{1}{2}$"), "0.5", "acc", "ocean_r1", 1.0, 1.0, id="latex-equivalent"),
    # step 2: step 1 reads 1/2 from "final answer is … I hope"; the boxed-first LaTeX pass reads 4/5
    pytest.param(
        wrap("\\boxed{\\frac{4}{5}}", "The final answer is $\\frac{1}{2}$ I hope"),
        "\\frac{4}{5}",
        "acc",
        "ocean_r1",
        1.0,
        1.0,
        id="step2-boxed-first",
    ),
    # QUIRK: math-verify rejects 3/5, but as strings \frac{3}{5} and \frac{4}{5} are 91 % alike → 0.1
    pytest.param(
        wrap("$\\frac{3}{5}$"), "\\frac{4}{5}", "acc", "ocean_r1", 0.1, 1.0, id="latex-wrong-partial"
    ),
    # a wrong answer that nothing credits
    pytest.param(
        wrap("$\\sqrt{2}$", "So 3 + 4."), "\\frac{4}{5}", "acc", "ocean_r1", 0.0, 1.0, id="latex-wrong"
    ),
    # --- iou ----------------------------------------------------------------------------------------------------
    # a box in a JSON object: right box, right format
    pytest.param(wrap(BOX), "[10, 10, 50, 50]", "iou", "ocean_r1", 1.0, 1.0, id="iou-object"),
    # a list of such objects
    pytest.param(wrap(f"[{BOX}]"), "[10, 10, 50, 50]", "iou", "ocean_r1", 1.0, 1.0, id="iou-list-of-objects"),
    # a bare list is read for accuracy but fails the iou format (no {…})
    pytest.param(
        wrap("[10, 10, 50, 50]"), "[10, 10, 50, 50]", "iou", "ocean_r1", 1.0, 0.0, id="iou-bare-list"
    ),
    # float predictions are not boxes: accuracy 0, format 0
    pytest.param(
        wrap('{"bbox_2d": [10.0, 10.0, 50.0, 50.0]}'),
        "[10, 10, 50, 50]",
        "iou",
        "ocean_r1",
        0.0,
        0.0,
        id="iou-floats",
    ),  # fmt: skip
    # a space after "[" is not a box either
    pytest.param(
        wrap('{"bbox_2d": [ 10, 10, 50, 50]}'),
        "[10, 10, 50, 50]",
        "iou",
        "ocean_r1",
        0.0,
        0.0,
        id="iou-space",
    ),  # fmt: skip
    # IoU 0.6 > 0.5 → 1
    pytest.param(
        wrap('{"b": [0, 0, 100, 60]}'), "[0, 0, 100, 100]", "iou", "ocean_r1", 1.0, 1.0, id="iou-0.6"
    ),
    # IoU exactly 0.5 is not > 0.5 → 0
    pytest.param(
        wrap('{"b": [0, 0, 100, 50]}'), "[0, 0, 100, 100]", "iou", "ocean_r1", 0.0, 1.0, id="iou-0.5"
    ),
    # float ground truth with $ and answer tags is read (IoU ≈ 0.95)
    pytest.param(
        wrap(BOX),
        "<answer>$[10.5, 10.5, 50.2, 50.8]$</answer>",
        "iou",
        "ocean_r1",
        1.0,
        1.0,
        id="iou-float-gt",
    ),  # fmt: skip
    # only the FIRST answer span counts for iou (format fails too: two spans)
    pytest.param(
        wrap('{"b": [0, 0, 1, 1]}') + f"<answer>{BOX}</answer>",
        "[10, 10, 50, 50]",
        "iou",
        "ocean_r1",
        0.0,
        0.0,
        id="iou-first-span",
    ),  # fmt: skip
    # no answer span → 0 (no whole-text fall-back for boxes)
    pytest.param(BOX, "[10, 10, 50, 50]", "iou", "ocean_r1", 0.0, 0.0, id="iou-no-span"),
    # a ground truth that is not a literal is never evaluated → 0
    pytest.param(
        wrap(BOX), "__import__('os').getcwd()", "iou", "ocean_r1", 0.0, 1.0, id="iou-gt-not-literal"
    ),
    # --- unknown reward_func ------------------------------------------------------------------------------------
    # neither acc nor iou: accuracy 0 and format 0
    pytest.param(wrap("3"), "3", "ocr", "ocean_r1", 0.0, 0.0, id="unknown-reward-func"),
    # --- strict mode --------------------------------------------------------------------------------------------
    # degree signs are normalised: 40 = 40°
    pytest.param(wrap("40"), "40°", "acc", "strict", 1.0, 1.0, id="strict-degrees"),
    # LaTeX degree notation too
    pytest.param(wrap("$40^{\\circ}$"), "40°", "acc", "strict", 1.0, 1.0, id="strict-latex-degrees"),
    # trailing units are normalised: 8 = 8cm
    pytest.param(wrap("8"), "8cm", "acc", "strict", 1.0, 1.0, id="strict-units"),
    # no partial credit
    pytest.param(wrap("lft"), "left", "acc", "strict", 0.0, 1.0, id="strict-no-partial"),
    # <think> is never searched
    pytest.param(
        wrap("150", "so the answer is 140"), "140", "acc", "strict", 0.0, 1.0, id="strict-think-ignored"
    ),
    # no answer span → 0 (no whole-text fall-back)
    pytest.param("The answer is 3", "3", "acc", "strict", 0.0, 0.0, id="strict-no-span"),
    # the LAST answer span is the answer
    pytest.param(wrap("5") + "<answer>3</answer>", "3", "acc", "strict", 1.0, 0.0, id="strict-last-span"),
    # option letter forms
    pytest.param(wrap("(A)"), "(A)", "acc", "strict", 1.0, 1.0, id="strict-letter"),
    # a wrong letter
    pytest.param(wrap("B"), "(A)", "acc", "strict", 0.0, 1.0, id="strict-wrong-letter"),
    # letter hunting in prose is Ocean-R1's, not ours
    pytest.param(
        wrap("I think the answer is A."), "(A)", "acc", "strict", 0.0, 1.0, id="strict-no-letter-hunting"
    ),
    # plain numbers compare as floats
    pytest.param(wrap("6.0"), "6", "acc", "strict", 1.0, 1.0, id="strict-float"),
    # otherwise math-verify equivalence of the answers: 4/5 = 0.8
    pytest.param(wrap("0.8"), "\\frac{4}{5}", "acc", "strict", 1.0, 1.0, id="strict-math"),
    # GeoQA's √ is read as \sqrt: 2√{2} = 2\sqrt{2}
    pytest.param(wrap("$2\\sqrt{2}$"), "2√{2}海里", "acc", "strict", 1.0, 1.0, id="strict-sqrt-unit"),
    # iou in strict mode reads the LAST span
    pytest.param(
        wrap('{"b": [0, 0, 1, 1]}') + f"<answer>{BOX}</answer>",
        "[10, 10, 50, 50]",
        "iou",
        "strict",
        1.0,
        0.0,
        id="strict-iou-last-span",
    ),  # fmt: skip
    # --- ocean_r1_v1: the first recipe ----------------------------------------------------------------------------
    # the canonical shape, with R1-V's spaced answer tags in the solution
    pytest.param(wrap("3"), "<answer> 3 </answer>", "acc", "ocean_r1_v1", 1.0, 1.0, id="v1-well-formed"),
    # a full match: nothing may follow the last </answer>, not even <|im_end|> or a newline
    pytest.param(wrap("3") + "<|im_end|>", "3", "acc", "ocean_r1_v1", 1.0, 0.0, id="v1-trailing-im-end"),
    pytest.param(wrap("3") + "\n", "3", "acc", "ocean_r1_v1", 1.0, 0.0, id="v1-trailing-newline"),
    # ...but tags may repeat: the lazy spans stretch over the second answer (the verl rule counts tags: 0)
    pytest.param(wrap("4") + "<answer>3</answer>", "3", "acc", "ocean_r1_v1", 1.0, 1.0, id="v1-two-answers"),
    # whitespace between </think> and <answer> is allowed, text is not
    pytest.param("<think>a</think>\n <answer>3</answer>", "3", "acc", "ocean_r1_v1", 1.0, 1.0, id="v1-gap"),
    pytest.param(
        "<think>a</think>So <answer>3</answer>", "3", "acc", "ocean_r1_v1", 1.0, 0.0, id="v1-text-gap"
    ),
    # a later </think> followed by the answer still matches (the first think span stretches)
    pytest.param(
        "<think>a</think> b</think><answer>3</answer>",
        "3",
        "acc",
        "ocean_r1_v1",
        1.0,
        1.0,
        id="v1-late-close",
    ),
    # a leading space fails the full match
    pytest.param(" " + wrap("3"), "3", "acc", "ocean_r1_v1", 1.0, 0.0, id="v1-leading-space"),
    # no LaTeX step: step 1 reads 1/2 from the think text and fails, the string rules compare \boxed{…} with
    # \frac{4}{5} (61 % alike → 0.1); the verl recipe's boxed-first LaTeX pass gives 1 (case step2-boxed-first)
    pytest.param(
        wrap("\\boxed{\\frac{4}{5}}", "The final answer is $\\frac{1}{2}$ I hope"),
        "\\frac{4}{5}",
        "acc",
        "ocean_r1_v1",
        0.1,
        1.0,
        id="v1-no-latex-step",
    ),
    # no $ stripping: "$6$" against "6" is 1 in the verl recipe, here a float comparison fails and the
    # Levenshtein ratio of "$6$" and "6" is 0.5 → 0 ...
    pytest.param(wrap("$6$", "no number"), "6", "acc", "ocean_r1_v1", 1.0, 1.0, id="v1-dollars-math-verify"),
    pytest.param(wrap("$six$", "no"), "$six$", "acc", "ocean_r1_v1", 1.0, 1.0, id="v1-dollars-equal"),
    pytest.param(wrap("$six$", "no"), "six", "acc", "ocean_r1_v1", 0.1, 1.0, id="v1-dollars-kept"),
    pytest.param(wrap("$six$", "no"), "six", "acc", "ocean_r1", 1.0, 1.0, id="verl-dollars-stripped"),
    # an empty answer is compared like any other: against "." both clean to "" and the ratio is 1
    pytest.param(wrap(""), ".", "acc", "ocean_r1_v1", 1.0, 1.0, id="v1-empty-vs-dot"),
    pytest.param(wrap(""), ".", "acc", "ocean_r1", 0.0, 1.0, id="verl-empty-is-zero"),
    # the same choice-letter rule
    pytest.param(wrap("A."), "(A)", "acc", "ocean_r1_v1", 1.0, 1.0, id="v1-letter"),
    # iou: the answer must end the text and hold {…[int, int, int, int]…}
    pytest.param(wrap(BOX), "[10, 10, 50, 50]", "iou", "ocean_r1_v1", 1.0, 1.0, id="v1-iou-object"),
    pytest.param(
        wrap("[10, 10, 50, 50]"), "[10, 10, 50, 50]", "iou", "ocean_r1_v1", 1.0, 0.0, id="v1-iou-bare-list"
    ),
    # a ground truth box in $…$: the original eval-ed it and failed (0); the verl recipe strips the $ (1)
    pytest.param(wrap(BOX), "$[10, 10, 50, 50]$", "iou", "ocean_r1_v1", 0.0, 1.0, id="v1-iou-dollar-truth"),
    pytest.param(wrap(BOX), "$[10, 10, 50, 50]$", "iou", "ocean_r1", 1.0, 1.0, id="verl-iou-dollar-truth"),
]


@pytest.mark.parametrize("completion, ground_truth, reward_func, mode, accuracy, format_score", CASES)
def test_rule_table(completion, ground_truth, reward_func, mode, accuracy, format_score):
    cfg = RewardConfig(mode=mode, num_workers=2, timeout_s=CFG.timeout_s)
    breakdown = score(completion, ground_truth, reward_func, cfg)
    assert (breakdown.accuracy, breakdown.format) == (accuracy, format_score)
    assert not breakdown.timed_out
    assert reference_accuracy(completion, ground_truth, reward_func, mode) == accuracy


def test_batch_matches_one_at_a_time():
    """The whole table as one batch (dedup, fast paths, several workers) equals case-by-case scoring."""
    for mode in ("ocean_r1", "strict"):
        rows = [case.values for case in CASES if case.values[3] == mode]
        cfg = RewardConfig(mode=mode, num_workers=2)
        batch = score_batch([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], cfg)
        assert [(b.accuracy, b.format) for b in batch] == [(r[4], r[5]) for r in rows]


# (answer, options, expected): strict multiple choice against ground truth "(A)"
STRICT_CHOICES = [
    # option text alone, when the options are known
    ("left", {"A": "left", "B": "right"}, 1.0),
    # option text is compared case- and space-insensitively
    ("  Left ", {"A": "left", "B": "right"}, 1.0),
    # letter and text together
    ("(A) left", {"A": "left", "B": "right"}, 1.0),
    # letter and the wrong option's text contradict each other
    ("(A) right", {"A": "left", "B": "right"}, 0.0),
    # another option's text
    ("right", {"A": "left", "B": "right"}, 0.0),
    # lower-case letter
    ("a", None, 1.0),
    # option text without known options cannot be checked
    ("left", None, 0.0),
]


@pytest.mark.parametrize("answer, options, expected", STRICT_CHOICES)
def test_strict_option_text(answer, options, expected):
    cfg = RewardConfig(mode="strict", num_workers=2)
    assert score(wrap(answer), "(A)", "acc", cfg, options=options).accuracy == expected


def test_parse_options_reads_cv_bench_layout():
    question = "Where is the table?\n(A) left\n(B) right"
    assert parse_options(question) == {"A": "left", "B": "right"}


# --------------------------------------------------------------------------------------------------------------
# Breakdown fields
# --------------------------------------------------------------------------------------------------------------


def test_overall_is_accuracy_plus_weighted_format():
    cfg = RewardConfig(format_weight=0.05, num_workers=2)
    breakdown = score(wrap("40"), "40°", "acc", cfg)
    assert breakdown.overall == pytest.approx(0.1 + 0.05 * 1.0)
    assert set(breakdown.to_dict()) == {
        "overall", "accuracy", "format", "answer_extracted", "answer_source",
        "think_answer_disagree", "timed_out", "unknown_reward_func",
    }  # fmt: skip


# (completion, reward_func, mode, answer_extracted, answer_source)
SOURCES = [
    # the last answer span
    (wrap("4") + "<answer> 3 </answer>", "acc", "ocean_r1", "3", "answer_tag"),
    # no span: the whole text, stripped
    ("  The answer is 3 ", "acc", "ocean_r1", "The answer is 3", "whole_text"),
    # nothing at all
    ("   ", "acc", "ocean_r1", None, "none"),
    # iou reads the first span
    (wrap("[1, 2, 3, 4]") + "<answer>x</answer>", "iou", "ocean_r1", "[1, 2, 3, 4]", "answer_tag"),
    # strict without a span has no answer
    ("The answer is 3", "acc", "strict", None, "none"),
    # unknown reward_func
    (wrap("3"), "ocr", "ocean_r1", None, "none"),
]


@pytest.mark.parametrize("completion, reward_func, mode, extracted, source", SOURCES)
def test_answer_extracted_and_source(completion, reward_func, mode, extracted, source):
    breakdown = score(completion, "3", reward_func, RewardConfig(mode=mode, num_workers=2))
    assert (breakdown.answer_extracted, breakdown.answer_source) == (extracted, source)


def test_unknown_reward_func_is_flagged():
    flags = [
        b.unknown_reward_func for b in score_batch([wrap("3")] * 3, ["3"] * 3, ["acc", "iou", "count"], CFG)
    ]
    assert flags == [False, False, True]


# (completion, disagree)
DISAGREEMENTS = [
    # the think text reaches 5, the answer says 6
    (wrap("6", "2 + 3 = 5"), True),
    # same number
    (wrap("5", "2 + 3 = 5"), False),
    # 5.0 and 5 are the same number
    (wrap("5", "so 5.0"), False),
    # no number in the think text
    (wrap("6", "count them"), False),
    # no answer span
    ("<think>so 5</think>6", False),
]


@pytest.mark.parametrize("completion, disagree", DISAGREEMENTS)
def test_think_answer_disagree(completion, disagree):
    assert score(completion, "5", "acc", CFG).think_answer_disagree is disagree


def test_a_hanging_check_times_out_within_the_deadline():
    cfg = RewardConfig(num_workers=2, timeout_s=1.0)
    assert score(wrap("4", "There are 3 cubes"), "3", "acc", cfg).accuracy == 1.0  # a worker is up and warm
    start = time.monotonic()
    breakdown = score(" 9**9**9**9 ", "3", "acc", cfg)  # sympy evaluates a power tower: never finishes
    elapsed = time.monotonic() - start
    assert breakdown.timed_out and breakdown.accuracy == 0.0
    assert elapsed < cfg.timeout_s + 0.75
    # the pool recovers: the next check is answered
    assert score(wrap("4", "There are 3 cubes"), "3", "acc", cfg).accuracy == 1.0


def test_bad_calls_raise_clear_errors():
    with pytest.raises(ValueError, match="ground_truths has 1 entries but completions has 2"):
        score_batch(["a", "b"], ["a"], ["acc", "acc"], CFG)
    with pytest.raises(TypeError, match=r"ground_truths\[0\] must be str, got int"):
        score_batch(["a"], [3], ["acc"], CFG)
    with pytest.raises(ValueError, match="reward.mode"):
        score("a", "a", "acc", RewardConfig(mode="lenient"))


# --------------------------------------------------------------------------------------------------------------
# Helpers the evaluation suite imports
# --------------------------------------------------------------------------------------------------------------


# (box_a, box_b, expected IoU)
IOUS = [
    # identical boxes
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
    # half shifted: intersection 5 × 10 = 50, union 100 + 100 - 50
    ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
    # sharing one pixel column counts as disjoint (ix1 = ix2 = 9)
    ([0, 0, 10, 10], [9, 0, 19, 10], 0.0),
    # disjoint
    ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
    # degenerate boxes: zero union gives 0
    ([5, 5, 5, 5], [5, 5, 5, 5], 0.0),
]


@pytest.mark.parametrize("box_a, box_b, expected", IOUS)
def test_iou_pixel_convention(box_a, box_b, expected):
    assert iou(box_a, box_b) == pytest.approx(expected)


# (text, parsed)
BOXES = [
    # a list of ints
    ("[1, 2, 3, 4]", [1.0, 2.0, 3.0, 4.0]),
    # floats and a tuple
    ("(1.5, 2, 3, 4)", [1.5, 2.0, 3.0, 4.0]),
    # too short
    ("[1, 2, 3]", None),
    # not a flat list of numbers
    ('{"bbox_2d": [1, 2, 3, 4]}', None),
    # booleans are not coordinates
    ("[True, 1, 2, 3]", None),
    # code is not a literal
    ("__import__('os').getcwd()", None),
    # too long to parse
    ("[" + "1, " * 5000 + "1]", None),
]


@pytest.mark.parametrize("text, parsed", BOXES)
def test_parse_box_is_literal_only(text, parsed):
    assert literal_box(text) == parsed


# (text, box)
INT_BOXES = [
    ('{"bbox_2d": [1, 2, 3, 4]}', [1, 2, 3, 4]),
    ('[{"bbox_2d": [5, 6, 7, 8], "label": "cat"}]', [5, 6, 7, 8]),
    ("[1,2,3,4] then [5, 6, 7, 8]", [1, 2, 3, 4]),
    ("[1.5, 2, 3, 4]", None),
    ("[-1, 2, 3, 4]", None),
    ("no box", None),
]


@pytest.mark.parametrize("text, box", INT_BOXES)
def test_first_int_box(text, box):
    assert first_int_box(text) == box


def test_extract_answer_span_first_last_and_missing():
    text = "<answer> a\nb </answer> x <answer>c</answer> <answer>unclosed"
    assert extract_answer_span(text, "first") == "a\nb"
    assert extract_answer_span(text, "last") == "c"
    assert extract_answer_span("<answer>unclosed", "first") is None
    assert extract_answer_span("<answer><answer>x</answer>", "last") == "<answer>x"


def test_format_ok_rejects_unknown_reward_func():
    assert format_ok(wrap("3"), "acc") and not format_ok(wrap("3"), "ocr")


# (text, letter)
LETTERS = [
    ("(A)", "A"),
    ("b", "B"),
    ("left", None),
    # several letters: near the end and followed by punctuation wins
    ("B is wrong, so C.", "C"),
    # QUIRK: B's position is its first occurrence, inside "BECAUSE", so it loses its end-of-text evidence
    # and the tie goes to C, seen first
    ("C because B.", "C"),
]


@pytest.mark.parametrize("text, letter", LETTERS)
def test_choice_letter(text, letter):
    assert choice_letter(text) == letter


def test_math_equivalent_reads_the_whole_output():
    assert math_equivalent("140°", "<think>x</think>The answer is 140°") == (True, "140")
    # a number glued to a tag is not extracted by math-verify
    assert math_equivalent("8", "<think>x</think><answer>8</answer>")[0] is False


# --------------------------------------------------------------------------------------------------------------
# Every real benchmark ground truth scores 1.0 against a well-formed completion that holds it
# --------------------------------------------------------------------------------------------------------------


def _real_ground_truths() -> list[str]:
    if not ANNOTATIONS.is_dir():
        pytest.skip(f"benchmark annotations not found at {ANNOTATIONS} (../shared is optional)")
    truths = []
    for name in (
        "super_clevr_test_5k.jsonl",
        "superclevr_test200_counting_problems.jsonl",
        "geoqa_test_prompts.jsonl",
    ):
        with open(ANNOTATIONS / name, encoding="utf-8") as f:
            truths += [str(json.loads(line)["ground_truth"]) for line in f if line.strip()]
    for name in ("geoqa_test.parquet", "cvbench_test.parquet"):
        truths += [
            row["ground_truth"]
            for row in pq.read_table(ANNOTATIONS / name).column("reward_model").to_pylist()
        ]
    return truths


@pytest.mark.parametrize("mode", ["ocean_r1", "ocean_r1_v1", "strict"])
def test_every_real_ground_truth_scores_one(mode):
    truths = _real_ground_truths()
    assert len(truths) == 5000 + 200 + 754 + 740 + 2638
    breakdowns = score_batch(
        [wrap(t) for t in truths], truths, ["acc"] * len(truths), RewardConfig(mode=mode)
    )
    failures = [
        (t, b.accuracy, b.format)
        for t, b in zip(truths, breakdowns, strict=True)
        if (b.accuracy, b.format) != (1, 1)
    ]
    assert not failures, failures[:5]
