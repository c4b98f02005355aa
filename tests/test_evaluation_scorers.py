"""The scoring rules, benchmark by benchmark, as tables of our own cases. Each case states the rule of the
reference script it pins (the first Ocean-R1 repository's ``src/eval`` scripts, the later repository's CV-Bench
script, VLM-R1's baseline REC script, VLMEvalKit's OCRBench rule); ``python -m ocean_lib verdicts`` measures the
same scorers against the published per-item verdicts."""

from __future__ import annotations

import json
import random
import re

import pytest

from ocean_lib.evaluation.benchmarks import BENCHMARKS, Item
from ocean_lib.evaluation.scorers import (
    first_single_line_answer,
    score_box,
    score_box_anywhere,
    score_counting,
    score_first_recipe,
    score_ocrbench,
    score_option_math_verify,
    score_strict_answer,
    score_whole_output_math,
)
from ocean_lib.rewards import rules

THINK = "<think>I look at the picture.</think>"


def item(answer: str, **fields) -> Item:
    return Item(id="0", prompt="", answer=answer, **fields)


def ans(text: str) -> str:
    """A well-formed output answering ``text``."""
    return f"{THINK}<answer>{text}</answer>"


def test_each_benchmark_uses_the_rule_of_its_protocol():
    expected = {
        "superclevr": score_counting,
        "geoqa": score_whole_output_math,
        "refcoco": score_box,
        "refcoco_plain": score_box_anywhere,
        "cvbench": score_option_math_verify,
        "cvbench_parquet": score_option_math_verify,
        "mathvision": score_first_recipe,
        "mathverse": score_first_recipe,
        "olympiadbench": score_first_recipe,
        "mmmu": score_first_recipe,
        "mmmu_strict": score_strict_answer,
        "ocrbench": score_ocrbench,
    }
    assert {name: BENCHMARKS[name].score for name in expected} == expected


# ----------------------------------------------------------------------------------------------------------------
# SuperCLEVR: re.search(r"<answer>\s*(\d+)\s*</answer>"), int equality
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "truth", "correct", "rule"),
    [
        (ans("3"), "3", True, "the integer in the answer span equals the truth"),
        (ans("3 objects"), "3", False, "the integer must stand alone in the span"),
        (ans(" 3\n"), "3", True, "whitespace (newlines too) around it is allowed"),
        (ans("4"), "3", False, "another integer is wrong"),
        (ans("3.0"), "3", False, "a decimal is not an integer"),
        ("3", "3", False, "no answer tags: nothing is read"),
        ("<think>3</think><answer>three</answer>", "3", False, "a number only in <think> does not count"),
        ("<answer>three</answer><answer>3</answer>", "3", True, "the first span that holds a lone integer"),
        (ans("007"), "7", True, "compared as integers"),
    ],
)
def test_superclevr_rule(output, truth, correct, rule):
    assert score_counting(output, item(truth)).correct is correct, rule


# ----------------------------------------------------------------------------------------------------------------
# GeoQA: verify(parse(whole output), parse(truth))
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "correct", "rule"),
    [
        ("The answer is 140°", True, "math-verify reads the whole output"),
        (ans(" 140° "), True, "a number with spaces inside the span is extracted"),
        (ans(" $140^{\\circ}$ "), True, "LaTeX degrees equal the plain truth"),
        (ans(" 140 "), True, "the degree sign is optional"),
        (ans("140°"), False, "quirk kept: a number glued to a tag is not extracted"),
        (
            "<think>The angle is 140°.</think><answer>40</answer>",
            True,
            "quirk kept: a number in <think> counts",
        ),
        (ans(" 40° "), False, "another number is wrong"),
        ("I cannot tell.", False, "nothing to extract"),
    ],
)
def test_geoqa_rule(output, correct, rule):
    assert score_whole_output_math(output, item("140°")).correct is correct, rule


# ----------------------------------------------------------------------------------------------------------------
# RefCOCO/+/g: Ocean-R1's (VLM-R1 r1) and VLM-R1's baseline
# ----------------------------------------------------------------------------------------------------------------

BOX = json.dumps([10, 10, 50, 50])


@pytest.mark.parametrize(
    ("output", "correct", "rule"),
    [
        (
            '<answer>{"bbox_2d": [10, 10, 50, 50], "label": "cat"}</answer>',
            True,
            "a box inside a JSON object",
        ),
        ("<answer>[12, 11, 52, 49]</answer>", True, "IoU about 0.86 > 0.5"),
        ("<answer>[10.5, 10.0, 50.2, 50.1]</answer>", False, "float coordinates are not read: [0,0,0,0]"),
        ("<answer>[30, 10, 70, 50]</answer>", False, "shifted by half: IoU about 0.34"),
        ("<think>[10, 10, 50, 50]</think><answer>none</answer>", False, "only the answer span is read"),
        ("<answer>[10, 10, 50, 50]</answer><answer>[0, 0, 1, 1]</answer>", True, "the first span"),
        ("<answer>[0, 0, 1, 1]</answer><answer>[10, 10, 50, 50]</answer>", False, "not the last span"),
        ("[10, 10, 50, 50]", False, "no answer span: nothing"),
        ("<answer>\n[10,10,50,50]\n</answer>", True, "the span may cross lines (DOTALL)"),
    ],
)
def test_rec_rule(output, correct, rule):
    assert score_box(f"{THINK}{output}", item(BOX)).correct is correct, rule


def test_rec_rule_reports_the_zero_box_when_nothing_is_read():
    assert json.loads(score_box("<answer>[1.5, 2, 3, 4]</answer>", item(BOX)).extracted) == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("output", "correct", "rule"),
    [
        ('```json\n[{"bbox_2d": [10, 10, 50, 50], "label": "cat"}]\n```', True, "no tags needed"),
        ("[10.5, 10.0, 50.2, 50.1]", True, "floats are read"),
        ("[ 12 , 11 , 52 , 49 ]", True, "spaces inside the brackets are allowed"),
        ("[30, 10, 70, 50] or [10, 10, 50, 50]", False, "the first box anywhere"),
        ("<think>[10, 10, 50, 50]</think><answer>none</answer>", True, "even inside <think>"),
        ("no box", False, "nothing read: [0, 0, 0, 0]"),
        ("[-5, 10, 50, 50]", True, "a sign is allowed (IoU about 0.89)"),
    ],
)
def test_rec_plain_rule(output, correct, rule):
    assert score_box_anywhere(output, item(BOX)).correct is correct, rule


# ----------------------------------------------------------------------------------------------------------------
# CV-Bench: first single-line span (else the whole output), math-verify with string extraction, six gold forms
# ----------------------------------------------------------------------------------------------------------------

CVBENCH_ITEM = item("(A)", options=("left", "right"))
COUNT_ITEM = item("(C)", options=("2", "0", "1", "3"))


@pytest.mark.parametrize(
    ("output", "truth_item", "correct", "rule"),
    [
        (ans("A"), CVBENCH_ITEM, True, "the letter"),
        (ans("(a)"), CVBENCH_ITEM, True, "its lower-case parenthesised form"),
        (ans("left"), CVBENCH_ITEM, True, "the option text"),
        (ans("(A) left"), CVBENCH_ITEM, True, "letter and text: the string extraction finds the letter"),
        (ans("A. left"), CVBENCH_ITEM, True, "letter, dot, text"),
        (ans("The answer is A"), CVBENCH_ITEM, True, "a letter after 'answer' is extracted"),
        (ans("B"), CVBENCH_ITEM, False, "another letter"),
        (ans("right"), CVBENCH_ITEM, False, "another option's text"),
        (ans("\nA\n"), CVBENCH_ITEM, True, "whitespace and newlines around a one-line span are fine"),
        (f"{THINK}<answer>B\nthe left one is A</answer>", CVBENCH_ITEM, True,
         "a span over two lines is not read: the whole output is, and its last letter A is extracted"),
        (f"{THINK}<answer></answer> B", CVBENCH_ITEM, False, "an empty span: the whole output, which says B"),
        (f"{THINK}<answer>B</answer><answer>A</answer>", CVBENCH_ITEM, False, "the first span"),
        ("A", CVBENCH_ITEM, True, "no span: the whole output"),
        (ans("1"), COUNT_ITEM, True, "a count: the option text as a number"),
        (ans("(C) 1"), COUNT_ITEM, True, "a count with its letter"),
        (ans("2"), COUNT_ITEM, False, "another count"),
    ],
)  # fmt: skip
def test_cvbench_rule(output, truth_item, correct, rule):
    assert score_option_math_verify(output, truth_item).correct is correct, rule


def test_first_single_line_answer_reads_what_ocean_r1s_regex_reads():
    # Ocean-R1's CV-Bench script: re.search(r"<answer>\s*(.*?)\s*</answer>", output), no DOTALL.
    pattern = re.compile(r"<answer>\s*(.*?)\s*</answer>")
    pieces = ["<answer>", "</answer>", "\n", " ", "A", "left", "\t", "<think>", "x\ny"]
    generator = random.Random(0)
    for _ in range(5000):
        text = "".join(generator.choice(pieces) for _ in range(generator.randrange(0, 9)))
        match = pattern.search(text)
        assert first_single_line_answer(text) == (match.group(1) if match else None), repr(text)


# ----------------------------------------------------------------------------------------------------------------
# MathVision, MathVerse, OlympiadBench, MMMU: the first repository's default_accuracy_reward == 1
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "truth", "correct", "rule"),
    [
        ("<think>2 + 3 = 5</think><answer>5</answer>", "5", True,
         "math-verify on the whole output (here the 5 after '=' in <think>)"),
        (ans("The value is $\\frac{1}{2}$"), "0.5", True, "math-verify equivalence"),
        (ans("12"), "12", True, "the last span equals the truth"),
        (ans("12.0"), "12", True, "numbers compared as floats"),
        (ans("13"), "12", False, "another number"),
        (ans("(B) 4"), "B", True, "a choice truth: the student's choice letter is B"),
        (ans("B"), "B", True, "the bare letter"),
        (ans("Because"), "B", False, "a word holds no lone capital letter"),
        (ans("C"), "B", False, "another letter"),
        (ans("Paris"), "paris", True, "text truths: equal after cleaning (lower-case) has ratio 1"),
        (ans("Pari"), "Paris", False, "partial credit 0.1 (ratio in (0.6, 1)) counts as wrong"),
        (ans("2"), "$2$", False, "no $ stripping in this recipe (the verl recipe's rule would say right)"),
        (f"{ans('7')}<answer>12</answer>", "12", True, "the last span"),
        ("The answer is 12.", "12", True, "no span: math-verify still reads the whole output"),
        (ans("x = 3"), "x=3", True, "spaces around = + - * / are removed"),
    ],
)  # fmt: skip
def test_first_recipe_math_rule(output, truth, correct, rule):
    assert score_first_recipe(output, item(truth)).correct is correct, rule


def test_first_recipe_rule_differs_from_the_verl_recipe_only_where_dollars_or_latex_matter():
    assert rules.ocean_r1_v1_accuracy(ans("2"), "$2$") == 0.0
    assert rules.ocean_r1_accuracy(ans("2"), "$2$") == 1.0
    assert rules.ocean_r1_v1_accuracy(ans("Pari"), "Paris") == 0.1  # the training reward keeps partial credit
    assert rules.ocean_r1_v1_accuracy(ans("B"), "B") == rules.ocean_r1_accuracy(ans("B"), "B") == 1.0


MC_ITEM = item("B", options=("3", "4", "5"))


@pytest.mark.parametrize(
    ("output", "truth_item", "correct", "rule"),
    [
        ("<answer>B</answer>", MC_ITEM, True, "the letter"),
        ("<answer>(B) 4</answer>", MC_ITEM, True, "a leading letter with its option's text"),
        ("<answer>4</answer>", MC_ITEM, True, "the option text picks the option"),
        ("<answer>b</answer>", MC_ITEM, True, "lower-case letter"),
        ("<answer>B. 5</answer>", MC_ITEM, False, "a letter with another option's text"),
        ("<answer>Because</answer>", MC_ITEM, False, "a word is not the letter B"),
        ("<answer>0.5</answer>", item("\\frac{1}{2}"), True, "math-verify equivalence of the spans"),
        ("<answer>12 cm</answer>", item("12"), True, "one trailing unit is dropped"),
        ("<answer>40</answer>", item("40°"), True, "degree marks are dropped"),
        ("The result is 12.", item("12"), False, "no answer span: wrong"),
    ],
)
def test_strict_variant_rule(output, truth_item, correct, rule):
    assert score_strict_answer(f"{THINK}{output}", truth_item).correct is correct, rule


# ----------------------------------------------------------------------------------------------------------------
# OCRBench: VLMEvalKit's substring rule on the whole output
# ----------------------------------------------------------------------------------------------------------------

FORMULA = "Handwritten Mathematical Expression Recognition"


@pytest.mark.parametrize(
    ("output", "answers", "category", "correct", "rule"),
    [
        ("The word is centre.", ["CENTRE"], "Regular Text Recognition", True, "case-insensitive substring"),
        ("enemy", ["FRIEND"], "Irregular Text Recognition", False, "not contained"),
        ("<think>maybe STOP</think><answer>GO</answer>", ["stop"], "Scene Text-centric VQA", True,
         "the whole output is searched, <think> included"),
        ("the total\nis 12 34", ["is 12 34"], "Doc-oriented VQA", True, "newlines become spaces"),
        ("x ^ { 2 }\n+ 1", ["x^{2}+1"], FORMULA, True, "formulas: every space removed on both sides"),
        ("X^{2}+1", ["x^{2}+1"], FORMULA, False, "formulas keep case"),
        ("it says: Exit", ["entrance", "exit"], "Regular Text Recognition", True, "any accepted answer"),
    ],
)  # fmt: skip
def test_ocrbench_rule(output, answers, category, correct, rule):
    truth = item(json.dumps(answers), subset=category)
    assert score_ocrbench(output, truth).correct is correct, rule
