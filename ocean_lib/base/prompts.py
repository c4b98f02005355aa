"""Every prompt and instruction of the project, defined once.

Training records, evaluation and the rollout browser all build their text here, so a prompt cannot drift
between the three (nano-aha-moment kept four diverging copies of its prompt).

Ocean-R1's training parquet stores one user turn whose content is ``"<image> " * n_images + question + "\\n" +
instruction`` (:func:`user_text`). Evaluation asks each benchmark the way its reference script did
(:data:`EVAL_TEMPLATES`, :func:`eval_turn`): R1-V and VLM-R1 join question and instruction with a space, the
first Ocean-R1 repository has its own instructions and system texts, and puts some benchmarks' images last.

Ocean-R1's first recipe (its TRL-0.14 repository) built training prompts from a dataset's ``problem`` column: an
image row is the image, then ``problem + "\\n" +`` :data:`V1_INSTRUCTIONS` (no system turn of its own, so the chat
template's default); a text-only row is the raw problem after :data:`R1_SYSTEM_PROMPT`. :func:`v1_user_text`
writes that user turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

IMAGE_MARKER = "<image>"

# The instruction of R1-V / Ocean-R1 for every `acc` task (counting, math, multiple choice).
THINK_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE in <answer> </answer> tags."
)

# The instruction of VLM-R1's referring-expression grounding (`iou` tasks).
GROUNDING_INSTRUCTION = (
    "First output the thinking process in <think> </think> tags and then output the final answer in "
    "<answer> </answer> tags. Output the final answer in JSON format."
)

INSTRUCTIONS: dict[str, str] = {"acc": THINK_INSTRUCTION, "iou": GROUNDING_INSTRUCTION}
REWARD_FUNCS = tuple(INSTRUCTIONS)

# R1's system prompt, which the first recipe puts before its text-only rows (SYSTEM_PROMPT of its grpo.py).
R1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think><answer> answer here </answer>"
)
"""The reward functions a record may name (``extra_info.reward_func``); each has its instruction above."""


@dataclass
class Prompt:
    """One model input: the user text with ``<image>`` markers, its images in marker order, and how to render it.

    ``system``: the system turn's text ("" keeps the chat template's default). ``keep_whitespace``: see
    :func:`chat_messages`.
    """

    content: str
    images: list[Image.Image] = field(default_factory=list)
    system: str = ""
    keep_whitespace: bool = False


def instruction_for(reward_func: str) -> str:
    """The instruction that follows a question scored by ``reward_func`` (``acc`` or ``iou``)."""
    try:
        return INSTRUCTIONS[reward_func]
    except KeyError:
        raise ValueError(
            f"unknown reward_func {reward_func!r}; expected one of {sorted(INSTRUCTIONS)}"
        ) from None


def user_text(question: str, reward_func: str, n_images: int) -> str:
    """The user turn of a training record: ``n_images`` leading ``<image>`` markers, the question, a newline,
    the instruction (Ocean-R1's parquet form)."""
    markers = f"{IMAGE_MARKER} " * n_images
    return f"{markers}{question}\n{instruction_for(reward_func)}"


def v1_user_text(problem: str, reward_func: str, has_image: bool) -> str:
    """The user turn of a row of the first recipe's dataset: ``"<image>" + problem + "\\n" + instruction`` for an
    image row (the image part directly before the text, as its chat messages were), the raw problem otherwise."""
    if not has_image:
        return problem
    try:
        instruction = V1_INSTRUCTIONS[reward_func]
    except KeyError:
        raise ValueError(
            f"unknown reward_func {reward_func!r}; expected one of {sorted(V1_INSTRUCTIONS)}"
        ) from None
    return f"{IMAGE_MARKER}{problem}\n{instruction}"


def split_image_markers(content: str) -> tuple[int, str]:
    """Count the ``<image>`` markers of a user turn and return (count, text without them)."""
    count = content.count(IMAGE_MARKER)
    return count, re.sub(r"<image>\s?", "", content).strip()


def chat_messages(content: str, system: str = "", keep_whitespace: bool = False) -> list[dict[str, Any]]:
    """Turn a user turn into chat-template messages, one image slot per ``<image>`` marker, in place.

    Leading markers put the images before the text (Ocean-R1's training data and most evaluation scripts);
    markers after the text put them after it (the first Ocean-R1 repository's MMMU and OlympiadBench scripts).
    Each text piece is stripped and empty ones are dropped, unless ``keep_whitespace``: then the text is kept
    exactly, so ``"<image> Q"`` renders ``<|vision_end|> Q`` as verl's in-place substitution does (Ocean-R1).
    ``system`` non-empty adds that system turn; otherwise the chat template adds its default one.
    """
    parts: list[dict[str, Any]] = []
    for piece in re.split(f"({re.escape(IMAGE_MARKER)})", content):
        if piece == IMAGE_MARKER:
            parts.append({"type": "image"})
        elif text := piece if keep_whitespace else piece.strip():
            parts.append({"type": "text", "text": text})
    if not any(part["type"] == "text" for part in parts):
        parts.append({"type": "text", "text": ""})
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": parts}]


def reference_completion(reasoning: str, answer: str) -> str:
    """The completion a supervised warm-start imitates: Ocean-R1's output format with a worked reasoning."""
    return f"<think>{reasoning}</think><answer>{answer}</answer>"


# ----------------------------------------------------------------------------------------------------------------
# The evaluation prompts of the reference scripts, verbatim: a reproduction must ask what the original asked.
# ----------------------------------------------------------------------------------------------------------------

# The first Ocean-R1 repository (src/eval/test_qwen2d5vl_*.py), which produced the published table.
NUMBER_ANSWER_INSTRUCTION = (
    "Output the thinking process in <think> </think> and final answer (number) in <answer> </answer> tags."
)

# The first recipe's training instructions after an image row's problem (QUESTION_TEMPLATE and IOU_QUESTION_TEMPLATE
# of its grpo.py); its grounding instruction is VLM-R1's, the verl recipe's too.
V1_INSTRUCTIONS: dict[str, str] = {"acc": NUMBER_ANSWER_INSTRUCTION, "iou": GROUNDING_INSTRUCTION}

BOXED_SYSTEM_PROMPT = (
    'Please solve the problem step by step and put your answer in one "\\boxed{}". '
    'If it is a multiple choice question, only one letter is allowed in the "\\boxed{}".\n'
)
MMMU_SYSTEM_PROMPT = (
    "Please solve the problem step by step and then answer it. If it is a multiple choice question, "
    "only provide the correct option letter, e.g., A, B, C, D, at the end.\n"
)

EVAL_TEMPLATES: dict[str, str] = {
    # R1-V's evaluation form (and the later, verl-based Ocean-R1's SuperCLEVR, GeoQA and CV-Bench scripts).
    "think": "{question} " + THINK_INSTRUCTION,
    # VLM-R1's test_rec_r1.py (Ocean-R1's REC script).
    "grounding": "{question} " + GROUNDING_INSTRUCTION,
    # VLM-R1's test_rec_baseline.py, for models not trained to think.
    "grounding_plain": "{question} Please provide the bounding box coordinate in JSON format.",
    # The first Ocean-R1 repository, one per script.
    "v1_superclevr": (
        "{question} First output the thinking process in <think> </think> and final answer (number) in "
        "<answer> </answer> tags."
    ),
    "v1_geoqa": "{question} " + NUMBER_ANSWER_INSTRUCTION,
    "v1_mathverse": BOXED_SYSTEM_PROMPT + "{question}\n" + NUMBER_ANSWER_INSTRUCTION,
    "v1_mathvision": BOXED_SYSTEM_PROMPT + "Question: {question}\n" + NUMBER_ANSWER_INSTRUCTION,
    "v1_olympiadbench": "{question}\n" + NUMBER_ANSWER_INSTRUCTION,
    "v1_mmmu": MMMU_SYSTEM_PROMPT + "Question: {question}\n" + NUMBER_ANSWER_INSTRUCTION,
    # VLMEvalKit's default for VQA sets with Qwen2.5-VL (use_custom_prompt=False): the question alone.
    "question": "{question}",
}


def eval_question(content: str) -> str:
    """The question inside an evaluation user turn: markers removed, the longest matching template's text
    around ``{question}`` stripped (the turn itself when no template matches)."""
    _, text = split_image_markers(content)
    for template in sorted(EVAL_TEMPLATES.values(), key=len, reverse=True):
        head, tail = template.split("{question}")
        if text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail):
            return text[len(head) : len(text) - len(tail)].strip()
    return text


def eval_turn(question: str, template: str, n_images: int, images_first: bool = True) -> str:
    """A benchmark's user turn: :data:`EVAL_TEMPLATES` ``[template]`` filled with ``question``, with ``n_images``
    ``<image>`` markers before the text (``images_first``) or after it."""
    text = EVAL_TEMPLATES[template].replace("{question}", question)
    if images_first:
        return f"{IMAGE_MARKER} " * n_images + text
    return text + IMAGE_MARKER * n_images


# Option letters of multiple-choice questions, in order.
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# One option of a multiple-choice question, as CV-Bench's prompts (and so Ocean-R1's parquet) write it.
OPTION_LINE = "({letter}) {text}"


def with_options(question: str, options: list[str]) -> str:
    """The question followed by its options, one per line: ``(A) first``, ``(B) second``, ...

    Used for benchmarks that ship options apart from the question (MathVista, MathVision, MMMU), so that every
    multiple-choice question reaches the model in CV-Bench's layout.
    """
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"{len(options)} options; at most {len(OPTION_LETTERS)} can be lettered")
    lines = [
        OPTION_LINE.format(letter=letter, text=text)
        for letter, text in zip(OPTION_LETTERS, options, strict=False)
    ]
    return "\n".join([question, *lines])
