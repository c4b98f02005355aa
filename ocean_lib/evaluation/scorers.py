"""How each benchmark decides whether an output is right: pure functions ``(output, item) -> Verdict``.

Every scorer reproduces one reference script's rule, named in its docstring, quirks included, because a
reproduction is compared with numbers those scripts produced. They run in-process (math-verify with its own
alarms) and are meant to be called through :func:`ocean_lib.evaluation.runner.score_outputs`, which runs them in
the reward workers under a per-call deadline (model output is untrusted: never evaluated, time bounded).

The references:

* the first Ocean-R1 repository (TRL-based; ``src/eval/test_qwen2d5vl_*.py``), which produced the published
  table (SuperCLEVR, GeoQA, RefCOCO/+/g, MathVision, MathVerse, OlympiadBench, MMMU);
* the later, verl-based Ocean-R1 repository (``eval/test_qwen2d5vl_cvbench.py``) for CV-Bench;
* VLM-R1's ``test_rec_baseline.py`` for base models on RefCOCO (plain prompt, first box anywhere);
* VLMEvalKit's ``OCRBench.evaluate`` for OCRBench.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from ocean_lib.base import prompts
from ocean_lib.evaluation.items import Item, Verdict
from ocean_lib.rewards import rules
from ocean_lib.rewards.scoring import reference_accuracy

# ----------------------------------------------------------------------------------------------------------------
# Counting, geometry, grounding
# ----------------------------------------------------------------------------------------------------------------

_LONE_INTEGER_ANSWER = re.compile(r"<answer>\s*(\d+)\s*</answer>")


def score_counting(output: str, item: Item) -> Verdict:
    """SuperCLEVR (R1-V, Ocean-R1): the first ``<answer>`` span holding only an integer; exact integer match.

    ``<answer>3</answer>`` reads 3; ``<answer>3 objects</answer>`` reads nothing and is wrong.
    """
    match = _LONE_INTEGER_ANSWER.search(output)
    if match is None:
        return Verdict("", False)
    return Verdict(match.group(1), int(match.group(1)) == int(item.answer))


def score_whole_output_math(output: str, item: Item) -> Verdict:
    """GeoQA (R1-V, Ocean-R1): math-verify parses the **whole** output and verifies it against the parsed
    ground truth (the output's parse as math-verify's *gold* argument, as there).

    This keeps math-verify's quirks, as Ocean-R1's GeoQA numbers do: a number glued to a tag
    (``<answer>8</answer>``) is not extracted, while ``The answer is 140°`` is.
    """
    equal, extracted = rules.whole_text_task(output, item.answer)
    return Verdict(extracted, equal)


def _truth_box(item: Item) -> list[float]:
    value = json.loads(item.answer)
    return value.get("bbox_2d") if isinstance(value, dict) else value


def score_box(output: str, item: Item) -> Verdict:
    """RefCOCO/+/g (VLM-R1's ``test_rec_r1.py``, Ocean-R1): the first ``[int, int, int, int]`` in the first answer
    span (else ``[0, 0, 0, 0]``), correct if IoU > 0.5 (VLM-R1's pixel convention, :func:`rules.iou`)."""
    span = rules.extract_answer_span(output, "first") or ""
    predicted = rules.first_int_box(span) or [0, 0, 0, 0]
    return Verdict(json.dumps(predicted), rules.iou(predicted, _truth_box(item)) > 0.5)


# Any four numbers in brackets: optional spaces, a sign, decimals (VLM-R1's baseline pattern, read without eval).
_ANY_BOX = re.compile(r"\[\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*\]")


def score_box_anywhere(output: str, item: Item) -> Verdict:
    """RefCOCO/+/g for base models (VLM-R1's ``test_rec_baseline.py``): the first box of four numbers anywhere in
    the output (floats, signs and spaces allowed; no answer tags needed), else ``[0, 0, 0, 0]``; IoU > 0.5.

    The ground truth is in the model's input frame (the runner maps it there), where VLM-R1 maps the predicted
    box back to the image's; only the one-pixel convention of the IoU can tell the two apart.
    """
    match = _ANY_BOX.search(output)
    predicted = [float(group) for group in match.groups()] if match else [0.0, 0.0, 0.0, 0.0]
    return Verdict(json.dumps(predicted), rules.iou(predicted, _truth_box(item)) > 0.5)


# ----------------------------------------------------------------------------------------------------------------
# Multiple choice: CV-Bench
# ----------------------------------------------------------------------------------------------------------------

CVBENCH_LETTERS = "ABCDEF"


def first_single_line_answer(output: str) -> str | None:
    """The first answer span the way ``re.search(r"<answer>\\s*(.*?)\\s*</answer>", output)`` reads it: ``.``
    does not cross a newline while ``\\s*`` does, so a span counts only if its stripped text holds no newline;
    the stripped text is returned (``None`` when no span qualifies). Linear time (``str.find``), same result:
    for each ``<answer>`` from the left only the first ``</answer>`` after it can match (a longer span keeps the
    newline), and a failed ``<answer>`` gives way to the next one, even inside its own span."""
    open_at = output.find("<answer>")
    while open_at >= 0:
        start = open_at + len("<answer>")
        close_at = output.find("</answer>", start)
        if close_at < 0:
            return None
        span = output[start:close_at].strip()
        if "\n" not in span:
            return span
        open_at = output.find("<answer>", start)
    return None


def cvbench_gold_forms(letter: str, text: str) -> list[str]:
    """The six answers Ocean-R1's CV-Bench script accepts for option ``letter`` with text ``text``."""
    return [text.lower(), text, letter, letter.lower(), f"({letter.lower()})", f"({letter})"]


def score_option_math_verify(output: str, item: Item) -> Verdict:
    """CV-Bench (Ocean-R1's ``eval/test_qwen2d5vl_cvbench.py``): the first single-line answer span
    (:func:`first_single_line_answer`; none or empty: the whole output) is parsed by math-verify with LaTeX,
    expression and string extraction (the strings ``A``–``F``, ``a``–``f``, ``(A)``–``(F)``, ``(a)``–``(f)`` and
    the option texts) and verified against :func:`cvbench_gold_forms`. math-verify compares strings only with
    strings, stripped, so the verdict is: some extracted string equals one of the six forms. ``(A) left``,
    ``A. left`` and ``The answer is A`` are right; a span over two lines is not read, the whole output is.
    """
    import math_verify as mv  # imported on use: it pulls in sympy

    span = first_single_line_answer(output)
    response = span if span else output
    letter = item.answer.strip().strip("()")
    position = CVBENCH_LETTERS.find(letter)
    text = item.options[position] if 0 <= position < len(item.options) else letter
    letters = tuple(CVBENCH_LETTERS)
    strings = (
        letters
        + tuple(x.lower() for x in letters)
        + tuple(f"({x.lower()})" for x in letters)
        + tuple(f"({x})" for x in letters)
        + tuple(item.options)
    )
    extraction = [
        mv.LatexExtractionConfig(),
        mv.ExprExtractionConfig(),
        mv.StringExtractionConfig(strings=strings),
    ]
    parsed = mv.parse(response, extraction_config=extraction)
    correct = bool(mv.verify(cvbench_gold_forms(letter, text), parsed))
    return Verdict(response.strip()[: rules.MAX_LITERAL_CHARS], correct)


# ----------------------------------------------------------------------------------------------------------------
# Math and general benchmarks
# ----------------------------------------------------------------------------------------------------------------


def _answer_or_output(output: str) -> str:
    span = rules.extract_answer_span(output, "last")
    return (output.strip() if span is None else span)[: rules.MAX_LITERAL_CHARS]


def score_first_recipe(output: str, item: Item) -> Verdict:
    """MathVision, MathVerse, OlympiadBench, MMMU (the first Ocean-R1 repository's ``default_accuracy_reward`` in
    ``src/eval/utils.py``): right when :func:`ocean_lib.rewards.rules.ocean_r1_v1_accuracy` is 1, that is when
    math-verify's parse of the whole output verifies, or the last answer span (else the whole output) equals the
    ground truth as a string, as a number, or as the same choice letter. Its evaluation drops the training
    reward's 0.1 partial credit, so "right" is exactly "reward 1"."""
    return Verdict(_answer_or_output(output), rules.ocean_r1_v1_accuracy(output, item.answer) == 1.0)


def score_strict_answer(output: str, item: Item) -> Verdict:
    """The ``*_strict`` variants (ours, not a reference's): the reward's strict mode on the last answer span (no
    span: wrong). A letter answer accepts ``B``, ``(B)``, ``b``, ``(B) text``, ``B. text`` or the option's text;
    anything else must equal the answer as a string, as a number, or under math-verify."""
    options = dict(zip(prompts.OPTION_LETTERS, item.options, strict=False)) if item.options else None
    span = rules.extract_answer_span(output, "last")
    correct = reference_accuracy(output, item.answer, "acc", "strict", options) == 1.0
    return Verdict(span or "", correct)


# ----------------------------------------------------------------------------------------------------------------
# OCRBench
# ----------------------------------------------------------------------------------------------------------------

OCRBENCH_FORMULA_CATEGORY = "Handwritten Mathematical Expression Recognition"


def ocrbench_answers(item: Item) -> list[str]:
    """The accepted answers of an OCRBench item: ``item.answer`` holds them as a JSON list."""
    value: Any = json.loads(item.answer)
    return [str(answer) for answer in value] if isinstance(value, list) else [str(value)]


def score_ocrbench(output: str, item: Item) -> Verdict:
    """OCRBench (VLMEvalKit's ``OCRBench.evaluate``): right when one accepted answer is a substring of the
    **whole** output. Handwritten formulas: both sides stripped, newlines to spaces, then every space removed;
    every other category: both lower-cased, stripped, newlines to spaces."""
    formula = item.subset == OCRBENCH_FORMULA_CATEGORY

    def normal(text: str) -> str:
        if formula:
            return text.strip().replace("\n", " ").replace(" ", "")
        return text.lower().strip().replace("\n", " ")

    said = normal(output)
    return Verdict(
        said[: rules.MAX_LITERAL_CHARS], any(normal(answer) in said for answer in ocrbench_answers(item))
    )


def literal_list(text: str) -> list[Any] | None:
    """A Python list literal (as OCRBench's TSV and MMMU's options store them), read without evaluating code."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return list(value) if isinstance(value, list | tuple) else None
