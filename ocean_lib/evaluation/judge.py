"""A model judge for the math columns of Ocean-R1's verl table, as VLMEvalKit scores them.

Ocean-R1's verl repository evaluated MathVista, MathVision and MathVerse with VLMEvalKit, where a language model
(GPT-4 there; here any model the user serves behind an OpenAI-compatible ``/chat/completions`` endpoint, e.g.
``vllm serve``, named by ``eval.judge_url`` and ``eval.judge_model``) reads the answer out of a free-form
response. The flow per benchmark, read from VLMEvalKit (``vlmeval/dataset/utils/{mathvista,mathv,mathverse}.py``,
``vlmeval/utils/matching_util.py``, snapshot e8e78f0):

* MathVista, MathVision: first a rule looks for the answer in the response itself (an option letter or text for
  multiple choice; the whole response as a number otherwise); only when it finds none is the judge asked, with
  five in-context examples (:func:`extract_prompt`). The extracted answer is then checked by rule
  (:func:`mathvista_correct`, :func:`mathvision_correct`).
* MathVerse: the judge always extracts (six examples, :func:`mathverse_extract_prompt`), and unless the extract
  equals the standard answer as written, the judge also scores it, replying 0 or 1
  (:func:`mathverse_score_prompt`, :func:`mathverse_judgement`).

A judge call that fails is retried up to 5 times at temperature 0, 0.5, ... 2.0, as VLMEvalKit does; after that
the extract is empty (wrong). The in-context examples below are VLMEvalKit's text, reproduced exactly because
the judge must be asked what VLMEvalKit asked. Departure: VLMEvalKit's MathVision check calls Python's ``eval``
on the answers; model output is untrusted text here, so numbers are compared through a parser of arithmetic
only (:func:`_number`).
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import string
import urllib.error
import urllib.request
from dataclasses import dataclass

from ocean_lib.evaluation.items import Item, Verdict

RETRIES = 5
MAX_TOKENS = 128  # build_judge(max_tokens=128) for the three benchmarks
KINDS = ("mathvista", "mathvision", "mathverse")

# VLMEvalKit vlmeval/dataset/utils/mathvista.py, get_gpt4_ICE and build_mathvista_gpt4_prompt (data, verbatim).
EXTRACT_TASK = (
    "\nPlease read the following example.\nThen extract the answer from the model response and type it at the end "
    "of the prompt.\n\n"
)
MATHVISTA_EXAMPLES = (
    "\nHint: Please answer the question requiring an integer answer and provide the final value,\ne.g., 1, 2, 3, at "
    "the end.\n\nQuestion: Which number is missing?\n\nModel response: The number missing in the sequence is 14.\n\n"
    "Extracted answer: 14\n",
    "\nHint: Please answer the question requiring a floating-point number with one decimal place and provide the "
    "final value,\ne.g., 1.2, 1.3, 1.4, at the end.\n\nQuestion: What is the fraction of females facing the camera?"
    "\n\nModel response: The fraction of females facing the camera is 0.6,\nwhich means that six out of ten females "
    "in the group are facing the camera.\n\nExtracted answer: 0.6\n",
    "\nHint: Please answer the question requiring a floating-point number with two decimal places and provide the "
    "final value,\ne.g., 1.23, 1.34, 1.45, at the end.\n\nQuestion: How much money does Luca need to buy a sour "
    "apple candy and a butter-scotch candy? (Unit: $)\n\nModel response: Luca needs $1.45 to buy a sour apple candy "
    "and a butterscotch candy.\n\nExtracted answer: 1.45\n",
    "\nHint: Please answer the question requiring a Python list as an answer and provide the final list,\ne.g., "
    "[1, 2, 3], [1.2, 1.3, 1.4], at the end.\n\nQuestion: Between which two years does the line graph saw its "
    "maximum peak?\n\nModel response: The line graph saw its maximum peak between 2007 and 2008.\n\nExtracted "
    "answer: [2007, 2008]\n",
    "\nHint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n\n"
    "Question: What fraction of the shape is blue?\n\nChoices: (A) 3/11 (B) 8/11 (C) 6/11 (D) 3/5\n\nModel response: "
    "The correct answer is (B) 8/11.\n\nExtracted answer: B\n",
)
# vlmeval/dataset/utils/mathv.py, get_gpt4_ICE: the same examples with one hint for every free-form answer.
_MATHV_HINT = "Hint: Please answer the question and provide the final answer at the end.\n"
MATHVISION_EXAMPLES = tuple(
    re.sub(r"Hint: Please answer the question requiring .*?at the end\.\n", _MATHV_HINT, example, flags=re.S)
    for example in MATHVISTA_EXAMPLES
)

# vlmeval/dataset/utils/mathverse.py, get_gpt4_extract_ICE / get_gpt4_score_ICE and the two prompt builders.
MATHVERSE_EXTRACT_TASK = (
    "\nI am providing you a response from a model to a math problem, termed 'Model Response'. You should extract "
    "the answer from the response as 'Extracted Answer'. Directly output the extracted answer with no explanation."
    "\n\n\n"
)
MATHVERSE_EXTRACT_EXAMPLES = (
    "\n1.\nModel response: 'Rounded to two decimal places, the perimeter of the sector is approximately:\n\n(-2, 1)'"
    "\nExtracted Answer: (-2, 1)\n",
    "\n2.\nModel response: 'at those points.\n\nTherefore, the correct option that represents the meaning of the "
    "intersection points of the graphs is:\n\nD. They give the solutions to the equation $f(t)=g(t)$.\",'\n"
    "Extracted Answer: D\n",
    "\n3.\nModel response: ' at 1 (there's a closed circle at y = 1), the range in interval notation is "
    "\\((-4, 1]\\).\n\nFinal values:\nDomain: \\((-3, 3]\\)\nRange: \\((-4, 1]\\)'\nExtracted Answer: Domain: "
    "\\((-3, 3]\\)\nRange: \\((-4, 1]\\)\n",
    "\n4.\nModel response: 'As it stands, I cannot provide the correct option letter because there isn't enough "
    "information to solve for 'y'.'\nExtracted Answer: null\n",
    "\n5.\nModel response: 'Given that AB = 17.6 meters, we can now substitute into the equation:\n\nd = 17.6 / "
    "cos(38\u00b0)\n\nTherefore, to one decimal place, the distance d between Ned and Bart is approximately 22.3 "
    "meters.'\nExtracted answer: 22.3\n",
    "\n6.\nModel response:  have all the coefficients for the quadratic function:\n\\( f(x) = ax^2 + bx + c \\)\n"
    "\\( f(x) = -1x^2 - 2x + 1 \\)\n\nTherefore, the equation for the graphed function \\( f \\) is:\n\\( f(x) = "
    "-x^2 - 2x + 1 \\)\"'\nExtracted answer: f(x) = -x^2 - 2x + 1\n",
)
MATHVERSE_SCORE_TASK = (
    "\nBelow are two answers to a math question. Question is [Question], [Standard Answer] is the standard answer "
    "to the question, and [Model_answer] is the answer extracted from a model's output to this question.  Determine "
    "whether these two answers are consistent.\nPlease note that only when the [Model_answer] completely matches the "
    "[Standard Answer] means they are consistent. For non-multiple-choice questions, if the meaning is expressed in "
    "the same way, it is also considered consistent, for example, 0.5m and 50cm.\nIf they are consistent, Judement "
    "is 1; if they are different, Judement is 0.\n\n\n"
)
_CIRCLE = (
    "As shown in the figure, circle O has a radius 1.0, if angle BAC = 60.0, then the length of BC is ()\nChoices:\n"
    "A:2\nB:2\u221a{{3}}\nC:\u221a{{3}}\nD:2\u221a{{2}}"
)
MATHVERSE_SCORE_EXAMPLES = (
    "\n[Question]: Write the set of numbers represented on the number line in interval notation.\n[Standard Answer]: "
    "(-2,1]\n[Model_answer] : Extracted Answer: \\((-2, 1)\\)\nJudgement: 0\n",
    f"\n[Question]: {_CIRCLE}\n[Standard Answer]: C\n[Model_answer] : B:2\u221a{{{{3}}}}\nJudgement: 0\n",
    "\n[Question]: Find the domain and range of the function f using interval notation.\n[Standard Answer]: domain: "
    "[-4, 0) and range: (-3, 1]\n[Model_answer] : Range: \\((-4, 1]\\)\nJudgement: 0\n",
    f"\n[Question]: {_CIRCLE}\n[Standard Answer]: C\n[Model_answer] : null\nJudgement: 0\n",
)


def extract_prompt(examples: tuple[str, ...], question: str, prediction: str) -> str:
    """MathVista's and MathVision's extraction prompt: the task, the examples, the question, the response (the
    ``respone`` typo and the missing newline before ``Extracted answer:`` are VLMEvalKit's)."""
    return (
        EXTRACT_TASK
        + "".join(f"{example}\n" for example in examples)
        + f"{question}\nModel respone: {prediction}Extracted answer:"
    )


def mathverse_extract_prompt(prediction: str) -> str:
    """MathVerse's extraction prompt: the task, six examples, then the response as example 7."""
    demo = MATHVERSE_EXTRACT_TASK + "".join(f"{example}\n\n" for example in MATHVERSE_EXTRACT_EXAMPLES)
    return f"{demo}7.\nModel response: '{prediction}'\nExtracted Answer: "


def mathverse_score_prompt(question: str, answer: str, extract: str) -> str:
    """MathVerse's scoring prompt (its test part indented by four spaces, as VLMEvalKit's f-string writes it)."""
    demo = MATHVERSE_SCORE_TASK + "".join(f"{example}\n\n" for example in MATHVERSE_SCORE_EXAMPLES)
    return (
        f"{demo}\n    [Question]: {question}\n    [Standard Answer]: {answer}\n    [Model_answer] : {extract}\n"
        "    Judgement:"
    )


# ----------------------------------------------------------------------------------------------------------------
# Reading an answer out of text, by rule (VLMEvalKit's can_infer)
# ----------------------------------------------------------------------------------------------------------------

_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def infer_option_letter(text: str, letters: list[str]) -> str | None:
    """An option letter standing alone near the end of ``text`` (VLMEvalKit's can_infer_option): exactly one of
    ``letters`` among the words, within the last five; 'Z' for a refusal; else "answer is X"; else None."""
    if "Failed to obtain answer via API" in text:
        return None
    if any(refusal in text for refusal in _REFUSALS):
        return "Z"
    words = [word.strip() for word in re.sub(r"[.()\[\],:;!*#{}]", " ", text).split()]
    count = sum(letter in words for letter in letters)
    if count == 1:
        for letter in letters:
            if letter in words and words.index(letter) > len(words) - 5:
                return letter
    elif count == 0 and sum(z in words for z in ("Z", "")) == 1:
        return "Z"
    match = _VERBOSE_ANSWER.search(text)
    return match.group(1).upper() if match and match.group(1).upper() in letters else None


def infer_option(text: str, options: list[str]) -> str | None:
    """The option ``text`` names (VLMEvalKit's can_infer): its letter, else the one option whose text it
    contains (case-insensitive; not in a text over twice the options' total length)."""
    letters = list(string.ascii_uppercase[: len(options)])
    letter = infer_option_letter(text, letters)
    if letter:
        return letter
    lower = text.lower()
    if len(lower) > 2 * sum(len(option) for option in options):
        return None
    found = [letter for letter, option in zip(letters, options, strict=True) if option.lower() in lower]
    return found[0] if len(found) == 1 else None


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}  # fmt: skip


def _number(text: str) -> float | None:
    """The value of an arithmetic expression of numbers (``3/4``, ``-2.5``, ``2**3``), else None; never ``eval``."""

    def value(node: ast.AST) -> float:
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent too large")
            return _OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError("not arithmetic")

    try:
        return value(ast.parse(text.strip(), mode="eval").body) if len(text) < 200 else None
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def _latex_number(text: str) -> float | None:
    from latex2sympy2_extended import latex2sympy

    try:
        return float(latex2sympy(text).evalf())
    except Exception:  # latex2sympy raises assorted types on text that is not LaTeX arithmetic
        return None


def answers_equal(answer: str, truth: str) -> bool:
    """VLMEvalKit's MathVision is_equal: the same text (case and outer spaces ignored), or the same number within
    1e-6, read as arithmetic or as LaTeX."""
    answer, truth = str(answer).lower().strip(), str(truth).lower().strip()
    if answer == truth:
        return True
    for read in (_number, _latex_number):
        a, b = read(truth), read(answer)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b) and abs(a - b) < 1e-6:
            return True
    return False


# ----------------------------------------------------------------------------------------------------------------
# Verdicts
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """What VLMEvalKit's checks read of one item: the question as the model saw it (with its choices), the
    answer (MathVista multiple choice: the option's letter), the option texts (empty: free form) and, for
    MathVista, the answer type (``integer``, ``float``, ``text``, ``list``)."""

    question: str
    answer: str
    options: tuple[str, ...] = ()
    answer_type: str = ""


def mathvista_correct(extracted: str, case: Case) -> bool:
    """MathVista's post_check: the option the extract names, or the extract as an integer or a float, equals the
    answer. A text or list answer is never right: VLMEvalKit compares ``str(None)`` with it (kept, as the
    published numbers were scored so)."""
    if case.options:
        return infer_option(extracted, list(case.options)) == case.answer
    try:
        if case.answer_type == "integer":
            return int(extracted) == int(case.answer)
        if case.answer_type == "float":
            return float(extracted) == float(case.answer)
    except ValueError:
        return False
    return str(None) == case.answer


def mathvision_correct(extracted: str, case: Case) -> bool:
    """MathVision's post_check: the option the extract names (False when none, as there) or the extract itself,
    equal to the answer by :func:`answers_equal`."""
    if case.options:
        return answers_equal(str(infer_option(extracted, list(case.options)) or False), case.answer)
    return answers_equal(extracted, case.answer)


def prefetch(kind: str, prediction: str, case: Case) -> str | None:
    """The answer a rule reads from the response itself, so that no judge is asked (MathVista, MathVision): the
    option it names, or, free form, the whole response when it is already right."""
    if case.options:
        return infer_option(prediction, list(case.options))
    correct = mathvista_correct if kind == "mathvista" else mathvision_correct
    return prediction if correct(prediction, case) else None


def mathverse_judgement(reply: str) -> bool | None:
    """The judge's score of a MathVerse answer: '1' right, '0' wrong, anything else unread (asked again)."""
    return {"1": True, "0": False}.get(reply.strip())


# ----------------------------------------------------------------------------------------------------------------
# The judge
# ----------------------------------------------------------------------------------------------------------------


class JudgeError(RuntimeError):
    """The judge endpoint failed or answered something that is not a chat completion."""


@dataclass(frozen=True)
class Judge:
    """A chat model behind an OpenAI-compatible endpoint (``url`` up to ``/v1``)."""

    url: str
    model: str
    timeout_s: float = 120.0

    @property
    def name(self) -> str:
        return f"{self.model} at {self.url}"

    def complete(self, prompt: str, temperature: float) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": temperature,
            "max_tokens": MAX_TOKENS,
        }
        request = urllib.request.Request(
            self.url.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read())
            return str(reply["choices"][0]["message"]["content"])
        except (
            urllib.error.URLError,
            TimeoutError,
            json.JSONDecodeError,
            KeyError,
            IndexError,
            TypeError,
        ) as error:
            raise JudgeError(f"judge {self.name}: {error}") from error

    def ask(self, prompt: str, accept=lambda reply: True) -> str | None:
        """The first reply ``accept`` takes, asking up to :data:`RETRIES` times at temperature 0, 0.5, ...; None
        when every try failed."""
        for attempt in range(RETRIES):
            try:
                reply = self.complete(prompt, temperature=attempt * 0.5)
            except JudgeError:
                continue
            if accept(reply):
                return reply
        return None


def judge_response(kind: str, prediction: str, case: Case, judge: Judge) -> tuple[str, bool]:
    """(extracted answer, correct) of one response, by VLMEvalKit's flow for ``kind`` (``mathvista``,
    ``mathvision``, ``mathverse``)."""
    if kind == "mathverse":
        extract = judge.ask(mathverse_extract_prompt(prediction)) or ""
        if extract.strip() == case.answer.strip():
            return extract, True
        reply = judge.ask(
            mathverse_score_prompt(case.question, case.answer, extract),
            accept=lambda r: mathverse_judgement(r) is not None,
        )
        return extract, bool(reply and mathverse_judgement(reply))
    found = prefetch(kind, prediction, case)
    if found is None:
        examples = MATHVISTA_EXAMPLES if kind == "mathvista" else MATHVISION_EXAMPLES
        found = judge.ask(extract_prompt(examples, case.question, prediction)) or ""
    correct = mathvista_correct if kind == "mathvista" else mathvision_correct
    return found, correct(found, case)


# ----------------------------------------------------------------------------------------------------------------
# In the evaluation: the rule step alone as the registry's scorer, the judge over stored outputs
# ----------------------------------------------------------------------------------------------------------------


def case_of(item: Item) -> Case:
    """The judge's view of an item of a ``*_judge`` benchmark, whose answer field holds it as JSON."""
    fields = json.loads(item.answer)
    return Case(fields["question"], fields["answer"], item.options, fields.get("answer_type", ""))


def score_without_judge(output: str, item: Item, kind: str) -> Verdict:
    """The registry's scorer of a ``*_judge`` benchmark: VLMEvalKit's rule step alone (the answer read from the
    response by rule; MathVerse has none, so nothing is right). A lower bound, not comparable with the published
    numbers; ``eval judge`` scores the stored outputs with the judge."""
    case = case_of(item)
    found = None if kind == "mathverse" else prefetch(kind, output, case)
    if found is None:
        return Verdict("", False)
    correct = mathvista_correct if kind == "mathvista" else mathvision_correct
    return Verdict(found, correct(found, case))
