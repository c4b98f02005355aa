"""The reward rules as pure functions on strings: Ocean-R1's (mode ``ocean_r1``) and ours (mode ``strict``).

Nothing here starts a process or enforces a deadline (``scoring`` does both). Every function is total on any
string. The string rules take (near-)linear time on untrusted text: where Ocean-R1's regular expressions can
backtrack quadratically (operator spacing, answer spans, the format check) they are rewritten with ``str``
methods, and the tests check each rewrite against the original expression. Model output is never evaluated:
boxes are read with ``ast.literal_eval``, numbers with ``float``/``int``, and maths only through math-verify,
whose slow paths run in workers under a deadline (see :func:`symbolic_task`).

Ocean-R1's rules, reproduced (its verl fork, ``custom_reward_fn.py``), including its quirks, because they shape
what GRPO learns:

* **Format** (:func:`format_ok`): exactly one each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>``; the
  text starts with ``<think>…</think>``, optional whitespace, then ``<answer>…</answer>``; anything may follow
  (``<|im_end|>``); a leading space fails. For ``iou`` the answer must also hold ``{`` … ``[int, int, int, int]``
  … ``}``.
* **Accuracy, acc** (:func:`ocean_r1_accuracy`), first success wins:
  1. math-verify parses the **whole** completion and verifies it against the parsed ground truth (so a number
     that appears only inside ``<think>`` can earn full credit);
  2. if LaTeX-only extraction finds something in the ground truth, LaTeX extraction of the completion (boxed
     answers first, anchors required) is verified against it;
  3. string rules (:func:`ocean_string_match`), with partial credit 0.1 for similarity in (0.6, 1)
     (so ``40`` against ``40°`` earns 0.1).
* **Accuracy, iou** (:func:`iou_accuracy`): first ``[int, int, int, int]`` in the **first** answer span, IoU with
  VLM-R1's pixel convention (:func:`iou`) > 0.5.

Mode ``ocean_r1_v1`` is the first recipe's reward (Ocean-R1's TRL-0.14 repository, ``src/r1-v/src/open_r1/reward.py``,
run with ``FORMAT_REWARD_FACTOR=1.0``). It differs from ``ocean_r1`` in exactly these ways:

* **Format** (:func:`v1_format_ok`): a ``re.fullmatch`` of ``<think>.*?</think>\\s*<answer>.*?</answer>`` (DOTALL)
  over the whole completion: it must end with ``</answer>`` (no trailing text) and may repeat tags
  (``<think>a</think><answer>1</answer><answer>2</answer>`` passes). For ``iou`` the answer must hold ``{`` …
  ``[int, int, int, int]`` … ``}``.
* **Accuracy, acc** (:func:`ocean_r1_v1_accuracy`): step 1 (math-verify on the whole completion), then step 3
  without any ``$`` removal; there is no step 2 (LaTeX extraction), and an empty answer is compared like any other.
* **Accuracy, iou**: as ``ocean_r1`` but the ground truth keeps its ``$`` (the original ``eval``-ed it as it was).

Mode ``strict`` differs from ``ocean_r1`` in exactly these ways (format is the same):

* the answer is the **last** ``<answer>`` span only (also for ``iou``); no span → accuracy 0. The whole
  completion, and so ``<think>``, is never searched;
* no partial credit: accuracy is 0 or 1, never 0.1;
* degree marks (``°``, ``^\\circ``, ``\\degree``), ``\\text{}``/``\\mathrm{}`` wrappers, ``$`` and one trailing
  unit (:data:`STRICT_UNITS`, after a number) are removed from both sides before comparing, so ``40`` = ``40°``
  and ``8`` = ``8cm``;
* a multiple-choice ground truth (``A`` or ``(A)``) accepts the letter (``A``, ``(A)``, ``a``, ``A)``), the
  letter with the option text (``(A) left``, ``A. left``) or, when the options are known, the option text alone;
  nothing else (no letter hunting in free text);
* otherwise: case-insensitive string equality, then exact float equality of plain numbers, then math-verify
  equivalence of the two answers with the ground truth passed as math-verify's gold (Ocean-R1 swaps them).
"""

from __future__ import annotations

import ast
import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Literal

from Levenshtein import ratio

from ocean_lib.base.prompts import REWARD_FUNCS

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_OPEN, _CLOSE = "<answer>", "</answer>"

# `\d` and `\s` are Unicode-aware here, as in Ocean-R1's and math-verify's patterns.
_INT_BOX = re.compile(r"\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\]")
_DIGIT = re.compile(r"\d")
_DIGIT_RUN = re.compile(r"\d+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_OPERATOR = re.compile(r"([=+\-*/])")
_WHITESPACE_RUN = re.compile(r"\s+")
_LONE_CAPITAL = re.compile(r"(?<![A-Z])([A-Z])(?![A-Z])")
_NEWLINE_AFTER_SPACE = {ch: re.compile(rf"(?<=\s){ch}") for ch in "\n\r"}
_NEWLINE_AFTER_TEXT = {ch: re.compile(rf"(?<!\s){ch}") for ch in "\n\r"}
_MATH_MARKUP = re.compile(r"[$\\\[]")

# Ocean-R1's evidence words for picking one choice letter among several (upper-cased before matching).
_CHOICE_EVIDENCE = tuple(
    word.upper()
    for word in (
        "answer", "correct", "choose", "select", "right", "think", "believe", "should",
        "答案", "选择", "正确", "是", "对", "认为", "应该", "觉得",
    )
)  # fmt: skip
_CHOICE_PUNCTUATION = "。.!！,，"

MAX_LITERAL_CHARS = 10_000
"""Longer box literals are rejected unparsed (bounds ``ast.literal_eval``'s time and memory)."""


# ----------------------------------------------------------------------------------------------------------------
# Reading a completion
# ----------------------------------------------------------------------------------------------------------------


def answer_spans(text: str) -> list[str]:
    """Raw contents of the ``<answer>…</answer>`` spans, left to right, not stripped.

    A span runs from an ``<answer>`` to the next ``</answer>`` (newlines included); scanning resumes after it,
    so ``<answer>a<answer>b</answer>`` is one span ``a<answer>b``. Same spans as Ocean-R1's non-greedy DOTALL
    ``findall``, found with ``str.find`` in linear time.
    """
    return list(_spans(text))


@functools.lru_cache(
    maxsize=8
)  # the accuracy rules and the think/answer diagnostic of one completion reuse them
def _spans(text: str) -> tuple[str, ...]:
    spans, start = [], 0
    while (open_at := text.find(_OPEN, start)) >= 0:
        close_at = text.find(_CLOSE, open_at + len(_OPEN))
        if close_at < 0:
            break
        spans.append(text[open_at + len(_OPEN) : close_at])
        start = close_at + len(_CLOSE)
    return tuple(spans)


def extract_answer_span(text: str, which: Literal["first", "last"] = "last") -> str | None:
    """The first or last ``<answer>…</answer>`` span of ``text``, stripped; ``None`` when there is none.

    Ocean-R1 reads the **last** span for ``acc`` and the **first** for ``iou`` (as VLM-R1's REC evaluation).
    """
    if which == "first":
        open_at = text.find(_OPEN)
        close_at = text.find(_CLOSE, open_at + len(_OPEN)) if open_at >= 0 else -1
        return text[open_at + len(_OPEN) : close_at].strip() if close_at >= 0 else None
    if which == "last":
        spans = _spans(text)
        return spans[-1].strip() if spans else None
    raise ValueError(f"which must be 'first' or 'last', got {which!r}")


def ground_truth_answer(ground_truth: str) -> str:
    """The ground truth as Ocean-R1 reads it: the text of its first ``<answer>…</answer>`` span that holds no
    newline (its search did not cross newlines), else all of it; stripped. Linear time."""
    open_at = ground_truth.find(_OPEN)
    while open_at >= 0:
        start = open_at + len(_OPEN)
        close_at = ground_truth.find(_CLOSE, start)
        if close_at < 0:
            break
        newline_at = ground_truth.find("\n", start, close_at)
        if newline_at < 0:
            return ground_truth[start:close_at].strip()
        open_at = ground_truth.find(_OPEN, newline_at + 1)  # every <answer> before that newline fails too
    return ground_truth.strip()


def think_answer_disagree(text: str) -> bool:
    """Whether the last number in the ``<think>`` span differs from the last number in the last answer span.

    ``False`` when either span is missing or holds no number. This is the "answer contradicts the reasoning"
    rate of the aha-moment analysis: ``<think>… so 5</think><answer>6</answer>`` disagrees.
    """
    think_open = text.find("<think>")
    think_close = text.find("</think>", think_open + len("<think>")) if think_open >= 0 else -1
    spans = _spans(text)
    if think_close < 0 or not spans:
        return False
    think_numbers = _NUMBER.findall(text, think_open + len("<think>"), think_close)
    answer_numbers = _NUMBER.findall(spans[-1])
    return bool(think_numbers and answer_numbers) and float(think_numbers[-1]) != float(answer_numbers[-1])


# ----------------------------------------------------------------------------------------------------------------
# Format
# ----------------------------------------------------------------------------------------------------------------


def format_ok(text: str, reward_func: str) -> bool:
    """Ocean-R1's format rule for ``reward_func`` (``acc`` or ``iou``; anything else → ``False``).

    Exactly one of each tag in :data:`TAGS`; ``text`` starts with ``<think>`` (no leading whitespace), then
    ``</think>``, optional whitespace, ``<answer>`` and ``</answer>``; trailing text is allowed. For ``iou`` the
    answer must hold a ``{``, later an ``[int, int, int, int]`` (no spaces before commas), later a ``}``:
    ``{"bbox_2d": [1, 2, 3, 4]}`` and ``[{"bbox_2d": [1, 2, 3, 4]}]`` pass, a bare list or float box fails.
    """
    if reward_func not in REWARD_FUNCS or any(text.count(tag) != 1 for tag in TAGS):
        return False
    if not text.startswith("<think>"):
        return False
    after_think = text[text.find("</think>") + len("</think>") :].lstrip()
    close_at = after_think.find(_CLOSE)
    if not after_think.startswith(_OPEN) or close_at < 0:
        return False
    return reward_func == "acc" or _holds_box_object(after_think[len(_OPEN) : close_at])


def v1_format_ok(text: str, reward_func: str) -> bool:
    """The first recipe's format rule for ``reward_func`` (``acc`` or ``iou``; anything else → ``False``).

    ``re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", text, re.DOTALL)``; for ``iou`` the answer
    part is ``.*?\\{.*\\[\\d+,\\s*\\d+,\\s*\\d+,\\s*\\d+\\].*\\}.*?``. Decided in linear time: the text starts with
    ``<think>`` and ends with ``</answer>``, and some ``</think>`` after the first tag is followed by whitespace and
    an ``<answer>`` that ends before the final ``</answer>``; for ``iou`` the text between the earliest such
    ``<answer>`` and the final ``</answer>`` (the longest candidate, holding every shorter one as a suffix) holds
    the box object (:func:`_holds_box_object`).
    """
    if reward_func not in REWARD_FUNCS or not (text.startswith("<think>") and text.endswith(_CLOSE)):
        return False
    last_open = len(text) - len(_CLOSE) - len(_OPEN)  # the latest an <answer> may start
    think_close = text.find("</think>", len("<think>"))
    while think_close >= 0:
        # Whitespace runs after different </think> are disjoint, so the scan is linear.
        at = think_close + len("</think>")
        while at < len(text) and text[at].isspace():
            at += 1
        if at > last_open:
            return False  # a later </think> only ends later
        if text.startswith(_OPEN, at):
            return reward_func == "acc" or _holds_box_object(text[at + len(_OPEN) : last_open + len(_OPEN)])
        think_close = text.find("</think>", think_close + 1)
    return False


def _holds_box_object(answer: str) -> bool:
    """``{`` … ``[int, int, int, int]`` … ``}`` in this order. Box matches cannot overlap, so the leftmost one
    after the first ``{`` is the earliest-ending candidate: checking it alone is exact."""
    brace = answer.find("{")
    box = _INT_BOX.search(answer, brace + 1) if brace >= 0 else None
    return box is not None and answer.find("}", box.end()) >= 0


# ----------------------------------------------------------------------------------------------------------------
# Boxes (reward_func "iou")
# ----------------------------------------------------------------------------------------------------------------


def literal_box(text: str) -> list[float] | None:
    """A ground-truth box from its text, e.g. ``"[12, 30.5, 200, 180]"``, by literal parsing only.

    ``ast.literal_eval`` builds literals and nothing else (no names, calls or attributes), so the text cannot
    run code; texts over :data:`MAX_LITERAL_CHARS` are refused. Returns the numbers of a flat list or tuple of
    at least four real numbers (``bool`` is not a number here), else ``None``. Ocean-R1 ``eval``-ed the text
    and used its first four entries; results agree wherever the text is a literal.
    """
    box = _literal_box_cached(text)
    return None if box is None else list(box)


@functools.lru_cache(maxsize=4096)
def _literal_box_cached(text: str) -> tuple[float, ...] | None:
    """:func:`literal_box`, memoised (a GRPO group shares one ground truth); a tuple, so callers cannot alter it."""
    if len(text) > MAX_LITERAL_CHARS:
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list | tuple) or len(value) < 4:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    return tuple(float(v) for v in value)


def first_int_box(text: str) -> list[int] | None:
    """The first ``[int, int, int, int]`` in ``text`` (``\\[(\\d+),\\s*(\\d+),\\s*(\\d+),\\s*(\\d+)\\]``), else ``None``.

    Floats, negative numbers or a space after ``[`` do not match, as in Ocean-R1 and VLM-R1; ``{"bbox_2d":
    [1, 2, 3, 4]}``, a list of such objects and a bare list all yield ``[1, 2, 3, 4]``. A number too long for
    ``int`` (Python's digit limit) gives ``None``, as Ocean-R1's exception gave reward 0.
    """
    match = _INT_BOX.search(text)
    if match is None:
        return None
    try:
        return [int(group) for group in match.groups()]
    except ValueError:
        return None


def iou(box_a: list[float] | tuple[float, ...], box_b: list[float] | tuple[float, ...]) -> float:
    """Intersection over union of ``[x1, y1, x2, y2]`` boxes with VLM-R1's pixel convention (first four entries).

    The intersection treats boxes as pixel-inclusive on the far corner shifted by one:
    ``ix1 = max(a1, b1)``, ``ix2 = min(a3 - 1, b3 - 1)`` (same for y), and counts
    ``(ix2 - ix1 + 1) * (iy2 - iy1 + 1)`` only when ``ix1 < ix2`` and ``iy1 < iy2`` (boxes sharing a single pixel
    column count as disjoint). The union uses plain areas: ``(a3 - a1)(a4 - a2) + (b3 - b1)(b4 - b2) - inter``.
    A zero union gives 0.0 (Ocean-R1's division error gave reward 0).
    """
    ix1, iy1 = max(box_a[0], box_b[0]), max(box_a[1], box_b[1])
    ix2, iy2 = min(box_a[2] - 1, box_b[2] - 1), min(box_a[3] - 1, box_b[3] - 1)
    inter = (ix2 - ix1 + 1) * (iy2 - iy1 + 1) if ix1 < ix2 and iy1 < iy2 else 0
    union = (
        (box_a[2] - box_a[0]) * (box_a[3] - box_a[1]) + (box_b[2] - box_b[0]) * (box_b[3] - box_b[1]) - inter
    )
    return inter / union if union else 0.0


def iou_accuracy(
    completion: str, ground_truth: str, which: Literal["first", "last"], strip_dollars: bool = True
) -> float:
    """1.0 if the first integer box in the ``which`` answer span has IoU > 0.5 with the ground truth, else 0.0.

    The ground truth is read by :func:`ground_truth_answer`, with every ``$`` removed if ``strip_dollars`` (the
    verl recipe; the first recipe kept them), then :func:`literal_box`. No answer span, no integer box, or an
    unreadable ground truth → 0.0. Ocean-R1 uses ``which="first"``.
    """
    truth_text = ground_truth_answer(ground_truth)
    truth = _literal_box_cached(truth_text.replace("$", "") if strip_dollars else truth_text)
    span = extract_answer_span(completion, which)
    predicted = first_int_box(span) if span is not None else None
    if truth is None or predicted is None:
        return 0.0
    return 1.0 if iou(predicted, truth) > 0.5 else 0.0


# ----------------------------------------------------------------------------------------------------------------
# Ocean-R1's string rules (step 3 of the acc cascade)
# ----------------------------------------------------------------------------------------------------------------


def _tighten_operators(text: str) -> str:
    """Remove whitespace around ``= + - * /`` (Ocean-R1's ``\\s*([=+\\-*/])\\s*`` → ``\\1``), in linear time."""
    parts = _OPERATOR.split(text)  # text, operator, text, operator, …, text
    last = len(parts) - 1
    for k in range(0, len(parts), 2):
        if k > 0:
            parts[k] = parts[k].lstrip()
        if k < last:
            parts[k] = parts[k].rstrip()
    return "".join(parts)


def _clean(text: str) -> str:
    """Ocean-R1's ``clean_text``: last answer span if any; a newline after whitespace is dropped, any other
    becomes a space (``\\n`` then ``\\r``); strip; drop trailing dots; lower-case."""
    spans = _spans(text)
    if spans:
        text = spans[-1]
    for ch in "\n\r":
        text = _NEWLINE_AFTER_TEXT[ch].sub(" ", _NEWLINE_AFTER_SPACE[ch].sub("", text))
    return text.strip().rstrip(".").lower()


def _float_verdict(student: str, truth: str) -> float | None:
    """1.0/0.0 when both (cleaned) answers read as Python floats, equal or not, else ``None``."""
    try:
        return 1.0 if float(student) == float(truth) else 0.0
    except ValueError:
        return None


def choice_letter(text: str) -> str | None:
    """The option letter Ocean-R1 reads from ``text``, or ``None``.

    Upper-case the text, collapse whitespace, collect the capitals with no capital on either side. One → it.
    Several → the one with most evidence, where each occurrence of a letter adds: +1 per evidence word
    (:data:`_CHOICE_EVIDENCE`) within 20 characters, +2 if in the last 30 % of the text, +1 if followed by
    punctuation; ties go to the letter seen first. Reproduced quirk: the position used is the letter's **first
    occurrence anywhere**, even inside a word (``A`` in ``ANSWER``), and stand-alone ``I`` or ``A`` in prose
    count as candidates.
    """
    text = _WHITESPACE_RUN.sub(" ", text.upper())
    letters = _LONE_CAPITAL.findall(text)
    if len(letters) <= 1:
        return letters[0] if letters else None

    def evidence(letter: str) -> int:
        pos = text.find(letter)
        window = text[max(0, pos - 20) : pos + 20]
        near_end = pos > len(text) * 0.7
        punctuated = pos < len(text) - 1 and text[pos + 1] in _CHOICE_PUNCTUATION
        return sum(word in window for word in _CHOICE_EVIDENCE) + 2 * near_end + punctuated

    counts = Counter(letters)  # every occurrence of a letter scores the same, so score = count × evidence
    return max(counts, key=lambda letter: counts[letter] * evidence(letter))


def _partial_credit(similarity: float) -> float:
    """Ocean-R1's bucketing: ≤ 0.6 → 0, strictly between 0.6 and 1 → 0.1, 1 → 1."""
    if similarity <= 0.6:
        return 0.0
    return 0.1 if similarity < 1.0 else 1.0


def ocean_string_match(completion: str, ground_truth: str, strip_dollars: bool = True) -> float:
    """Step 3 of Ocean-R1's acc cascade: 0.0, 0.1 or 1.0 from string rules alone.

    Ground truth: :func:`ground_truth_answer`. Student: the last answer span, else the whole completion; both
    stripped. With ``strip_dollars`` (the verl recipe) an empty one gives 0 (Ocean-R1 indexed ``[0]`` and its
    exception meant 0), one pair of ``$`` around the ground truth is removed, and every ``$`` of a student
    answer that starts and ends with ``$``; the first recipe (``strip_dollars=False``) keeps every ``$`` and
    indexes nothing. Whitespace around ``= + - * /`` is removed. Equal → 1. Otherwise the similarity is:
    if the ground truth has a digit, float equality of the cleaned answers (1 or 0), or when either is not a
    float the Levenshtein ratio of the cleaned answers; else if the ground truth holds a choice letter
    (:func:`choice_letter`), 1 if the student's letter is the same, else 0; else the Levenshtein ratio.
    Then :func:`_partial_credit`.
    """
    truth = ground_truth_answer(ground_truth)
    student = extract_answer_span(completion, "last")
    if student is None:
        student = completion.strip()
    if strip_dollars:
        if not truth or not student:
            return 0.0
        if truth[0] == "$" and truth[-1] == "$":
            truth = truth[1:-1]
        if student[0] == "$" and student[-1] == "$":
            student = student.replace("$", "")
    student, truth = _tighten_operators(student), _tighten_operators(truth)
    if student == truth:
        return 1.0
    numeric = _DIGIT.search(truth) is not None
    if not numeric and (letter := choice_letter(truth)) is not None:
        similarity = 1.0 if choice_letter(student) == letter else 0.0
    else:
        student, truth = _clean(student), _clean(truth)
        similarity = _float_verdict(student, truth) if numeric else None
        if similarity is None:
            similarity = ratio(student, truth)
    return _partial_credit(similarity)


# ----------------------------------------------------------------------------------------------------------------
# math-verify (steps 1-2 of Ocean-R1's cascade; the last step of strict)
# ----------------------------------------------------------------------------------------------------------------
#
# Safety: math-verify's LaTeX path goes through latex2sympy2's ANTLR parser (no eval). Its plain-expression path
# does call sympy's parse_expr (which evals), but only on text its regex admits: digits, dots, whitespace and
# + - * × / ^ ( ) ÷, starting with a digit, so no name, attribute or call can reach it. What such text *can* do
# is take unbounded time (``9**9**9**9``): callers run these functions in a worker process under a deadline.


def _math_verify() -> Any:
    """math-verify, imported on first use (it pulls in sympy; the training process itself never needs it)."""
    import math_verify

    return math_verify


@functools.cache
def _boxed_first_latex() -> list[Any]:
    """Ocean-R1's step-2 extraction: LaTeX only, boxed first, anchors required, light normalisation.

    Ocean-R1 passed ``boxed=True`` and ``equations=True``; with latex2sympy2-extended ≥ 1.10 ``True`` is neither
    ``"all"`` nor ``"last"`` so it acts as ``"none"`` (written so here), and ``equations`` only logs a warning.
    """
    mv = _math_verify()
    from latex2sympy2_extended import NormalizationConfig

    normalization = NormalizationConfig(
        basic_latex=True, units=True, malformed_operators=False, nits=False, boxed="none"
    )
    config = mv.LatexExtractionConfig(
        normalization_config=normalization, boxed_match_priority=0, try_extract_without_anchor=False
    )
    return [config]


def math_verify_finds_nothing(text: str) -> bool:
    """True when math-verify's extraction cannot match anywhere in ``text``, so ``parse`` returns ``[]``.

    Sufficient, not necessary: every LaTeX pattern needs ``$``, ``\\`` or ``[``, and every plain-number or
    expression pattern needs a digit preceded by start of text, whitespace or ``=`` (possibly with ``-``, ``(``,
    ``*``, ``.`` or a currency sign in between). ``<answer>4</answer>`` therefore yields nothing, while
    ``There are 3 cubes`` does. Lets the batch scorer skip math-verify exactly where it cannot change a verdict.
    """
    if _MATH_MARKUP.search(text):
        return False
    for run in _DIGIT_RUN.finditer(text):
        i = run.start() - 1
        while i >= 0 and (text[i] in "-(*." or unicodedata.category(text[i]) == "Sc"):
            i -= 1
        if i < 0 or text[i].isspace() or text[i] == "=":
            return False
    return True


def ocean_gold(ground_truth: str, latex_step: bool = True) -> tuple[list[Any], list[Any]]:
    """math-verify's two readings of the raw ground truth: default ``parse`` (step 1) and LaTeX-only
    ``first_match`` (step 2; ``[]`` without ``latex_step``, which turns step 2 off: the first recipe)."""
    mv = _math_verify()
    if not latex_step:
        return mv.parse(ground_truth), []
    latex_only = [mv.LatexExtractionConfig()]
    return mv.parse(ground_truth), mv.parse(
        ground_truth, extraction_config=latex_only, extraction_mode="first_match"
    )


def ocean_symbolic_match(completion: str, gold: tuple[list[Any], list[Any]]) -> bool:
    """Steps 1-2 of Ocean-R1's acc cascade against :func:`ocean_gold`'s readings.

    Step 1 verifies math-verify's default parse of the **whole** completion; step 2, if the LaTeX reading of
    the ground truth is non-empty, verifies :func:`_boxed_first_latex` extraction of the completion. Like
    Ocean-R1, the completion's parse is passed as math-verify's *gold* argument (math-verify is asymmetric
    for assignments and intervals); default precision and math-verify's own 5 s alarms are kept.
    """
    mv = _math_verify()
    whole, latex = gold
    if whole and mv.verify(mv.parse(completion), whole):
        return True
    if latex:
        answer = mv.parse(completion, extraction_config=_boxed_first_latex(), extraction_mode="first_match")
        return bool(mv.verify(answer, latex))
    return False


def numbers_cannot_match(text: str, gold: list[Any]) -> bool:
    """True only when math-verify's parse of ``text`` provably cannot verify against ``gold`` = ``[number, text]``.

    A cheap, sound stand-in for the sympy work, used by workers before :func:`ocean_symbolic_match` /
    :func:`strict_symbolic_match`. It needs ``text`` without ``$``, ``\\`` or ``[`` (so no LaTeX candidate exists,
    and step 2 finds nothing either) and a ground truth that reads as one plain number. It then enumerates every
    match of math-verify's own plain-expression patterns (a superset of what ``parse`` can pick) and answers
    True only if none is an expression (those evaluate to anything), none has the ground truth's text, and no
    number value (nor its percent reading) lies within 1e-5 (relative) of the ground truth, whereas
    math-verify's equality needs agreement to 6 decimals. Anything unexpected → False (do the real work).
    """
    if _MATH_MARKUP.search(text) or len(gold) != 2 or not isinstance(gold[1], str):
        return False
    patterns = _expr_patterns()
    truth = _exact_number(gold[0])
    if patterns is None or truth is None or abs(truth) > 10**300:  # beyond floats: not worth a shortcut
        return False
    truth_text = gold[1].strip()
    tolerance = Fraction(1, 10**5) * max(1, abs(truth))
    near = float(truth)  # a float pre-check, with slack far above float error, spares most exact comparisons
    for pattern in patterns:
        for match in pattern.finditer(text):
            groups = match.groupdict()
            if groups.get("expr"):
                return False
            integer = next((v for k, v in groups.items() if k.startswith("integer") and v), "")
            decimal = next((v for k, v in groups.items() if k.startswith("decimal") and v), "")
            number_text = (integer.translate(_SEPARATORS).lstrip("0") or "0") + decimal.replace(",", ".")
            if number_text == truth_text:
                return False
            try:
                rough = float(number_text)
            except ValueError:
                return False
            if math.isfinite(rough) and all(
                abs(r - near) > 1e-3 * max(1.0, abs(near)) for r in (rough, rough / 100)
            ):
                continue
            try:
                value = Fraction(number_text)
            except (ValueError, ZeroDivisionError):
                return False
            if abs(value - truth) <= tolerance or abs(value / 100 - truth) <= tolerance:
                return False
    return True


_SEPARATORS = str.maketrans("", "", ", ")


@functools.cache
def _expr_patterns() -> list[re.Pattern[str]] | None:
    """math-verify's own plain-number/expression patterns (``None`` if this math-verify lays them out otherwise)."""
    mv = _math_verify()
    try:
        from math_verify.parser import lazy_expr_regex

        return [pattern for pattern, _ in lazy_expr_regex(mv.ExprExtractionConfig())]
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def _exact_number(value: Any) -> Fraction | None:
    """A sympy Integer/Rational/Float as an exact Fraction; ``None`` for anything else (percent, symbols, …)."""
    import sympy

    if isinstance(value, sympy.Rational):
        return Fraction(int(value.p), int(value.q))
    if isinstance(value, sympy.Float) and value.is_finite:
        try:
            return Fraction(str(value))
        except ValueError:
            return None
    return None


def ocean_r1_accuracy(completion: str, ground_truth: str) -> float:
    """Ocean-R1's acc reward in its own order: steps 1-2 (:func:`ocean_symbolic_match`), then step 3
    (:func:`ocean_string_match`). In-process and without a deadline: main thread only (math-verify uses
    ``signal.alarm``), and a pathological completion can hang it. Training uses ``scoring.score_batch``."""
    if ocean_symbolic_match(completion, ocean_gold(ground_truth)):
        return 1.0
    return ocean_string_match(completion, ground_truth)


def ocean_r1_v1_accuracy(completion: str, ground_truth: str) -> float:
    """The first Ocean-R1 recipe's acc reward (its TRL-based repository, ``open_r1/reward.py``; its evaluation
    scripts count an item right when this is 1): math-verify's default parse of the **whole** completion
    verified against the parsed ground truth (the completion's parse as math-verify's *gold*, as there), else
    :func:`ocean_string_match` without the verl recipe's ``$`` handling. No LaTeX-only second step.
    In-process with math-verify's own 5 s alarms only: run it in a worker under a deadline for untrusted text."""
    mv = _math_verify()
    gold = mv.parse(ground_truth)
    if gold and mv.verify(mv.parse(completion), gold):
        return 1.0
    return ocean_string_match(completion, ground_truth, strip_dollars=False)


# ----------------------------------------------------------------------------------------------------------------
# Strict mode
# ----------------------------------------------------------------------------------------------------------------

STRICT_UNITS = (
    "degrees", "degree", "deg", "cm^2", "cm²", "m^2", "m²", "units", "unit", "cm", "mm", "km", "m",
    "海里", "厘米", "米", "度",
)  # fmt: skip
"""Units that strict mode drops once from the end of an answer when a number (digit, ``}`` or ``)``) precedes."""

_DEGREE_MARKS = ("^{\\circ}", "^\\circ", "\\circ", "\\degree", "°")
_TEXT_COMMAND = re.compile(r"\\(?:text|mathrm|mbox)\{([^{}]*)\}")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_OPTION_LETTER = re.compile(r"\(?([A-Z])\)?")
_LETTER_ALONE = re.compile(r"\(?([A-Za-z])\)?")
_LETTER_WITH_TEXT = re.compile(r"\(?([A-Z])[).:]\s*(.+)")
_OPTION_LINE = re.compile(r"^\s*\(([A-Z])\)\s*(.+?)\s*$", re.MULTILINE)


def parse_options(question: str) -> dict[str, str]:
    """The options listed in a question as lines ``(A) text`` → ``{"A": "text"}`` (CV-Bench's layout)."""
    return {letter: text for letter, text in _OPTION_LINE.findall(question)}


def _fold(text: str) -> str:
    """Whitespace collapsed, trailing dots dropped, case folded: how strict mode compares option texts."""
    return " ".join(text.split()).rstrip(".").casefold()


def strict_form(answer: str) -> str:
    """An answer as strict mode compares it: ``$`` and ``\\text{…}`` wrappers, degree marks and one trailing
    :data:`STRICT_UNITS` unit removed, ``√``/``π`` spelled in LaTeX, whitespace collapsed, trailing dots dropped.
    Case is kept (LaTeX commands are case-sensitive)."""
    text = _TEXT_COMMAND.sub(r"\1", answer.replace("$", ""))
    for mark in _DEGREE_MARKS:
        text = text.replace(mark, "")
    text = text.replace("√", "\\sqrt").replace("π", "\\pi").strip()
    for unit in STRICT_UNITS:
        head = text[: len(text) - len(unit)].rstrip()
        if text[-len(unit) :].lower() == unit and head and (head[-1].isdigit() or head[-1] in "})"):
            text = head
            break
    return " ".join(text.split()).rstrip(".").strip()


def _picks_option(answer: str, letter: str, options: Mapping[str, str] | None) -> bool:
    """Whether a strict answer chooses option ``letter``: ``A``/``(A)``/``a``, ``(A) text``/``A. text`` (text
    checked when the options are known), or the option's text alone when known."""
    answer = " ".join(answer.replace("$", "").split()).rstrip(".")
    option_text = options.get(letter) if options else None
    if alone := _LETTER_ALONE.fullmatch(answer):
        return alone.group(1).upper() == letter
    if with_text := _LETTER_WITH_TEXT.fullmatch(answer):
        return with_text.group(1) == letter and (
            option_text is None or _fold(with_text.group(2)) == _fold(option_text)
        )
    return option_text is not None and _fold(answer) == _fold(option_text)


def strict_decide(answer: str, ground_truth: str, options: Mapping[str, str] | None = None) -> float | None:
    """Strict accuracy of an answer span where string rules decide it (1.0 or 0.0), else ``None`` (math-verify
    must compare :func:`strict_math_text` of both). See the module docstring for the rules."""
    truth_raw = ground_truth_answer(ground_truth)
    truth, said = strict_form(truth_raw), strict_form(answer)
    if not truth or not said:
        return 0.0
    if letter := _OPTION_LETTER.fullmatch(truth):
        return 1.0 if _picks_option(answer, letter.group(1), options) else 0.0
    if _tighten_operators(said).lower() == _tighten_operators(truth).lower():
        return 1.0
    said_number, truth_number = _PLAIN_NUMBER.fullmatch(said), _PLAIN_NUMBER.fullmatch(truth)
    if said_number and truth_number:
        return 1.0 if float(said_number.group()) == float(truth_number.group()) else 0.0
    return None


def strict_math_text(answer: str) -> str:
    """What strict mode hands math-verify: :func:`strict_form`, inside ``$…$`` when it holds LaTeX commands."""
    form = strict_form(answer)
    return f"${form}$" if "\\" in form else form


def strict_gold(ground_truth: str) -> list[Any]:
    """math-verify's default parse of the strict form of the ground truth."""
    return _math_verify().parse(strict_math_text(ground_truth_answer(ground_truth)))


def strict_symbolic_match(math_text: str, gold: list[Any]) -> bool:
    """math-verify equivalence, ground truth as *gold* (the order math-verify documents)."""
    mv = _math_verify()
    return bool(gold) and bool(mv.verify(gold, mv.parse(math_text)))


# ----------------------------------------------------------------------------------------------------------------
# Tasks for worker processes
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _cached_gold(kind: str, ground_truth: str) -> Any:
    """Ground-truth readings, parsed once per worker (a GRPO group shares one ground truth)."""
    if kind == "strict":
        return strict_gold(ground_truth)
    return ocean_gold(ground_truth, latex_step=kind == "ocean_r1")


def symbolic_task(
    kind: Literal["ocean_r1", "ocean_r1_v1", "strict"], text: str, ground_truth: str
) -> tuple[bool, bool]:
    """The math-verify check a verdict still owes: ``(match, ground truth has any math reading)``.

    ``kind="ocean_r1"``: :func:`ocean_symbolic_match` of the whole completion ``text`` (``"ocean_r1_v1"``: its
    step 1 only). ``kind="strict"``:
    :func:`strict_symbolic_match` of ``text`` = :func:`strict_math_text` of the answer span. When the ground
    truth has no reading, no completion can match, and the caller may skip later checks for it.
    """
    try:
        gold = _cached_gold(kind, ground_truth)
        if kind != "strict":
            readable = bool(gold[0] or gold[1])
            if not readable or numbers_cannot_match(text, gold[0]):
                return False, readable
            return ocean_symbolic_match(text, gold), readable
        if not gold or numbers_cannot_match(text, gold):
            return False, bool(gold)
        return strict_symbolic_match(text, gold), True
    except Exception:  # math-verify catches its own errors; anything else must not take a worker down
        return False, True


def prepare_worker() -> None:
    """Set up a worker process: larger memo caches inside math-verify, then each math-verify path run once.

    math-verify memoises its LaTeX and expression parsers, but only for the last 20 strings, and builds every
    extracted number with ``sympy.Number(text)``, which re-parses the text through sympy's ``parse_expr``
    (about 0.5 ms). Reasoning text and the samples of one GRPO group repeat the same numbers, fractions and
    expressions, and sympy objects are immutable, so larger caches (65,536 entries, per worker) return equal
    results faster. Each cache is installed only where math-verify has exactly the function it expects. The
    warm-up calls keep a fresh worker's first real call from paying for imports and pattern compilation
    (about a second) inside its deadline.
    """
    import sympy
    from math_verify import parser

    if parser.Number is sympy.Number:
        parser.Number = functools.lru_cache(maxsize=65536)(sympy.Number)
    for name in ("parse_latex_cached", "parse_expr_cached"):
        cached = getattr(parser, name, None)
        if hasattr(cached, "__wrapped__") and hasattr(cached, "cache_info"):
            setattr(parser, name, functools.lru_cache(maxsize=65536)(cached.__wrapped__))
    symbolic_task("ocean_r1", "<answer>The answer is $\\frac{1}{2}$</answer>", "\\frac{1}{2}")
    symbolic_task("strict", "$\\frac{1}{2}$", "0.5")
    whole_text_task("The answer is 3", "3")


def whole_text_task(text: str, ground_truth: str) -> tuple[bool, str]:
    """R1-V/Ocean-R1's GeoQA check: math-verify's parse of the whole ``text`` verified against the parsed
    ground truth (step 1 of the acc cascade). Returns ``(equal, first parsed value as text or "")``."""
    mv = _math_verify()
    try:
        parsed = mv.parse(text)
        gold = _cached_gold("ocean_r1", ground_truth)[0]
        return bool(gold) and bool(mv.verify(parsed, gold)), (str(parsed[0]) if parsed else "")
    except Exception:
        return False, ""
