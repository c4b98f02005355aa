"""The benchmarks of the result table: where each one's files live, how its rows become prompts, how an output is
scored, and its generation budget. One registry, :data:`BENCHMARKS`; the runner knows nothing benchmark-specific.

Scoring follows the evaluation scripts Ocean-R1 inherits from R1-V and VLM-R1 (greedy decoding, image before
text, default system turn), so our numbers sit beside the published ones:

* counting (SuperCLEVR): the integer standing alone in ``<answer> N </answer>`` (first such span), exact match;
* GeoQA: math-verify's parse of the **whole** output verified against the parsed ground truth;
* RefCOCO/+/g: the first ``[int, int, int, int]`` in the first answer span (else ``[0, 0, 0, 0]``),
  correct if IoU > 0.5 (the reward's IoU);
* CV-Bench: the first answer span (else the whole output) equal to the option letter, ``(X)``, their
  lower-case forms, or the option text (as is or lower-case);
* MathVista, MathVerse, MathVision, OlympiadBench, MMMU: Ocean-R1 scored these with VLMEvalKit and a model
  judge; we score them by rule from the answer span (option letter or option text for multiple choice,
  math-verify equivalence otherwise), so these numbers are **not** directly comparable to judge-based ones.

The miniature benchmarks are the held-out splits of the procedural task families, scored by the rule of their
real counterpart.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from ocean_lib import prompts
from ocean_lib.config import DataConfig, RewardConfig
from ocean_lib.data.images import ImageRef, parse_box
from ocean_lib.data.records import Record, read_records
from ocean_lib.rewards import extract_answer_span, first_int_box, iou, math_equivalent, parse_options, score


class BenchmarkDataError(ValueError):
    """An annotation file that does not hold what its benchmark's published layout promises."""


# ----------------------------------------------------------------------------------------------------------------
# Items
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One evaluation question.

    ``prompt`` is the full user turn (one leading ``<image>`` marker per image, then question and instruction);
    ``answer`` the ground truth as text (a JSON box for grounding; the option letter for multiple choice);
    ``options`` the option texts in letter order (empty for free-form questions, and where a benchmark writes
    its options only inside the question); ``subset`` the group accuracies are broken down by (CV-Bench task,
    RefCOCO split, MMMU subject, ...).
    """

    id: str
    prompt: str
    answer: str
    images: tuple[ImageRef, ...] = ()
    subset: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """What the scorer read from an output, and whether it is right."""

    extracted: str
    correct: bool


# ----------------------------------------------------------------------------------------------------------------
# Scoring rules (pure functions of the output and the item)
# ----------------------------------------------------------------------------------------------------------------

_LONE_INTEGER_ANSWER = re.compile(r"<answer>\s*(\d+)\s*</answer>")


def score_counting(output: str, item: Item) -> Verdict:
    """SuperCLEVR (R1-V): the first ``<answer>`` span holding only an integer; exact integer match.

    ``<answer>3</answer>`` reads 3; ``<answer>3 objects</answer>`` reads nothing and is wrong.
    """
    match = _LONE_INTEGER_ANSWER.search(output)
    if match is None:
        return Verdict("", False)
    return Verdict(match.group(1), int(match.group(1)) == int(item.answer))


def score_whole_output_math(output: str, item: Item) -> Verdict:
    """GeoQA (R1-V): math-verify parses the **whole** output and verifies it against the parsed ground truth.

    This keeps math-verify's quirks, as Ocean-R1's GeoQA numbers do: a number glued to a tag
    (``<answer>8</answer>``) is not extracted, while ``The answer is 140°`` is.
    """
    equal, extracted = math_equivalent(item.answer, output)
    return Verdict(extracted, equal)


def score_box(output: str, item: Item) -> Verdict:
    """RefCOCO/+/g (VLM-R1): first integer box in the first answer span, else [0,0,0,0]; correct if IoU > 0.5."""
    span = extract_answer_span(output, "first") or ""
    predicted = first_int_box(span) or [0, 0, 0, 0]
    return Verdict(json.dumps(predicted), iou(predicted, parse_box(item.answer)) > 0.5)


def option_forms(letter: str, text: str) -> set[str]:
    """The answers CV-Bench's scorer accepts for option ``letter`` with option ``text``."""
    return {text, text.lower(), letter, letter.lower(), f"({letter})", f"({letter.lower()})"}


def score_option_exact(output: str, item: Item) -> Verdict:
    """CV-Bench: first answer span (else the whole output), stripped, equal to one of :func:`option_forms`."""
    span = extract_answer_span(output, "first")
    answer = (output if span is None else span).strip()
    letter = item.answer.strip().strip("()")
    position = prompts.OPTION_LETTERS.find(letter)
    text = item.options[position] if 0 <= position < len(item.options) else letter
    return Verdict(answer, answer in option_forms(letter, text))


# Math and general sets are scored by the reward's strict mode (math-verify bounded by its timeout, default 2 s).
STRICT_RULES = RewardConfig(mode="strict")


def score_math_answer(output: str, item: Item) -> Verdict:
    """MathVista, MathVerse, MathVision, OlympiadBench, MMMU, by rule: the reward's strict mode on the last
    answer span (no span: wrong). A letter answer accepts ``B``, ``(B)``, ``b``, ``(B) text``, ``B. text`` or
    the option's text; anything else must equal the answer as a string, as a number, or under math-verify."""
    options = dict(zip(prompts.OPTION_LETTERS, item.options, strict=False)) if item.options else None
    result = score(output, item.answer, "acc", STRICT_RULES, options)
    return Verdict(result.answer_extracted or "", result.accuracy == 1.0)


Scorer = Callable[[str, Item], Verdict]


# ----------------------------------------------------------------------------------------------------------------
# Reading annotation files
# ----------------------------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl``, ``.json`` (a list, or a mapping of id to row) or ``.parquet`` file."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise BenchmarkDataError(f"{path}: line {number} is not valid JSON: {error}") from error
        return rows
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise BenchmarkDataError(f"{path}: not valid JSON: {error}") from error
        if isinstance(data, dict):
            return list(data.values())
        if isinstance(data, list):
            return data
        raise BenchmarkDataError(
            f"{path}: expected a JSON array or object of rows, got {type(data).__name__}"
        )
    raise BenchmarkDataError(
        f"{path}: unsupported annotation format {path.suffix!r} (jsonl, json or parquet)"
    )


def field_of(
    row: dict[str, Any], name: str, path: Path, index: int, kind: type | tuple[type, ...] = object
) -> Any:
    """``row[name]``, or an error naming the file, the row and the field."""
    if not isinstance(row, dict):
        raise BenchmarkDataError(f"{path}: row {index} is a {type(row).__name__}, not an object")
    if name not in row or row[name] is None:
        raise BenchmarkDataError(f"{path}: row {index} has no field {name!r} (fields: {sorted(row)})")
    value = row[name]
    if not isinstance(value, kind):
        raise BenchmarkDataError(f"{path}: row {index} field {name!r} is {value!r}, expected {kind}")
    return value


def resolve_image(reference: str, root: Path) -> str | None:
    """The file an annotation's image reference names, looked up under ``root``.

    Annotations write image paths for the machine they were made on (``./images/x.png``, a bare file name, or
    an absolute path such as ``/data_train2/.../Geo170K/images/test/0.png``). An absolute path that exists is
    used as is; otherwise the reference's trailing components are tried under ``root``, longest first
    (``root/Geo170K/images/test/0.png``, ``root/images/test/0.png``, ... , ``root/0.png``).
    """
    path = Path(reference)
    if path.is_absolute() and path.is_file():
        return str(path)
    parts = [part for part in path.parts if part not in (path.anchor, ".", "")]
    for start in range(len(parts)):
        candidate = root.joinpath(*parts[start:])
        if candidate.is_file():
            return str(candidate)
    return None


def image_ref(value: Any, root: Path, where: str) -> ImageRef:
    """An image given as a path string or as a ``{bytes, path}`` struct (Hugging Face's Image feature)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return ImageRef(bytes=value["bytes"], source=str(value.get("path") or "<embedded bytes>"))
        value = value.get("path")
    if not isinstance(value, str) or not value:
        raise BenchmarkDataError(f"{where}: image is {value!r}, expected a path or embedded bytes")
    return ImageRef(path=resolve_image(value, root), source=value)


def _where(path: Path, index: int, name: str) -> str:
    return f"{path}: row {index} field {name!r}"


# ----------------------------------------------------------------------------------------------------------------
# Loaders: (annotation files, image root) -> items
# ----------------------------------------------------------------------------------------------------------------


def load_question_jsonl(files: list[Path], image_root: Path) -> list[Item]:
    """R1-V's evaluation files (SuperCLEVR, GeoQA): rows ``{image_path, question, ground_truth}``."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            image = field_of(row, "image_path", path, index, str)
            question = field_of(row, "question", path, index, str)
            truth = field_of(row, "ground_truth", path, index, (str, int, float))
            items.append(
                Item(
                    id=str(index) if len(files) == 1 else f"{path.stem}/{index}",
                    prompt=prompts.user_text(question, "acc", 1, style="eval"),
                    answer=str(truth),
                    images=(image_ref(image, image_root, _where(path, index, "image_path")),),
                )
            )
    return items


def cvbench_task(question: str) -> str:
    """CV-Bench's task of a question, from the fixed wording of its four templates.

    The training-format parquet drops the ``task`` field; the templates are unambiguous (counts on the 2,638-row
    test set: Count 788, Relation 650, Depth 600, Distance 600).
    """
    if question.startswith("How many"):
        return "Count"
    if question.startswith("Considering the relative positions"):
        return "Relation"
    if question.startswith("Which object is closer to the camera"):
        return "Depth"
    if question.startswith("Estimate the real-world distances"):
        return "Distance"
    return "other"


def load_training_parquet(
    files: list[Path], image_root: Path, subset_of: Callable[[Record], str] = lambda record: ""
) -> list[Item]:
    """Ocean-R1's training-format parquet (``geoqa_test.parquet``, ``cvbench_test.parquet``, the miniature's
    test splits), read and validated by :func:`ocean_lib.data.records.read_records`: the stored user turn is
    the prompt, ``reward_model.ground_truth`` the answer; images are embedded bytes or paths resolved under
    ``image_root``; options are the question's ``(A) …`` lines."""
    items = []
    for path in files:
        for record in read_records(path, DataConfig(), check_images=False):
            images = tuple(
                image
                if image.bytes is not None
                else ImageRef(path=resolve_image(image.path or "", image_root), source=image.path or "")
                for image in record.images
            )
            item_id = str(record.index) if len(files) == 1 else f"{path.stem}/{record.index}"
            options = tuple(parse_options(record.question).values())
            items.append(
                Item(item_id, record.content, record.ground_truth, images, subset_of(record), options)
            )
    return items


def load_rec_json(files: list[Path], image_root: Path) -> list[Item]:
    """VLM-R1's RefCOCO/+/g files: a JSON array of ``{image, problem, solution, normalized_solution, height,
    width, ...}``; ``image`` is relative to the COCO train2014 directory, ``solution`` a pixel box."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            box = field_of(row, "solution", path, index, list)
            try:
                parse_box(json.dumps(box))
            except (TypeError, ValueError) as error:
                raise BenchmarkDataError(
                    f"{_where(path, index, 'solution')} is not a box: {error}"
                ) from error
            items.append(
                Item(
                    id=f"{path.stem}/{index}",
                    prompt=prompts.user_text(
                        field_of(row, "problem", path, index, str), "iou", 1, style="eval"
                    ),
                    answer=json.dumps(box),
                    images=(
                        image_ref(
                            field_of(row, "image", path, index, str), image_root, _where(path, index, "image")
                        ),
                    ),
                    subset=path.stem,
                )
            )
    return items


def load_cvbench(files: list[Path], image_root: Path) -> list[Item]:
    """CV-Bench in its own layout (``test_2d.parquet``/``test_3d.parquet`` or ``test.jsonl``): ``prompt``
    (question with its ``(A) …`` options), ``image`` (embedded) or ``filename``, ``answer`` like ``(A)``,
    ``choices``, ``task``, ``idx``."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            image = row.get("image") or field_of(row, "filename", path, index, str)
            answer = field_of(row, "answer", path, index, str)
            choices = tuple(str(c) for c in field_of(row, "choices", path, index, list))
            if answer.strip("()") not in prompts.OPTION_LETTERS[: len(choices)]:
                raise BenchmarkDataError(
                    f"{_where(path, index, 'answer')} is {answer!r}, not one of the options"
                )
            items.append(
                Item(
                    id=f"{row.get('type', path.stem)}/{row.get('idx', index)}",
                    prompt=prompts.user_text(
                        field_of(row, "prompt", path, index, str), "acc", 1, style="eval"
                    ),
                    answer=answer,
                    images=(image_ref(image, image_root, _where(path, index, "image")),),
                    subset=field_of(row, "task", path, index, str),
                    options=choices,
                )
            )
    return items


def _images_of(
    row: dict[str, Any], names: list[str], root: Path, path: Path, index: int
) -> tuple[ImageRef, ...]:
    return tuple(image_ref(row[name], root, _where(path, index, name)) for name in names if row.get(name))


def _choice_item(
    *, id: str, question: str, options: list[str], answer: str, images: tuple[ImageRef, ...], subset: str
) -> Item:
    """An item of a math/general set: lettered options when it has them, a free-form answer otherwise."""
    text = prompts.with_options(question, options) if options else question
    return Item(
        id=id,
        prompt=prompts.user_text(text, "acc", len(images), style="eval"),
        answer=answer,
        images=images,
        subset=subset,
        options=tuple(options),
    )


def load_mathvista(files: list[Path], image_root: Path) -> list[Item]:
    """MathVista (testmini): ``pid``, ``question``, ``choices`` (None for free-form), ``answer`` (the option
    text for multiple choice), ``question_type``, ``decoded_image`` (embedded) or ``image`` (path),
    ``metadata.task``."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            options = [str(c) for c in row.get("choices") or []]
            answer = str(field_of(row, "answer", path, index))
            if row.get("question_type") == "multi_choice":
                if answer not in options:
                    raise BenchmarkDataError(
                        f"{_where(path, index, 'answer')} {answer!r} is not among {options}"
                    )
                answer = prompts.OPTION_LETTERS[options.index(answer)]
            else:
                options = []
            image_field = "decoded_image" if row.get("decoded_image") else "image"
            items.append(
                _choice_item(
                    id=str(row.get("pid", index)),
                    question=field_of(row, "question", path, index, str),
                    options=options,
                    answer=answer,
                    images=_images_of(row, [image_field], image_root, path, index),
                    subset=str((row.get("metadata") or {}).get("task", "")),
                )
            )
    return items


def load_mathverse(files: list[Path], image_root: Path) -> list[Item]:
    """MathVerse (testmini): ``sample_index``, ``problem_version``, ``question`` (options written inside it),
    ``image`` (absent in the text-only version), ``answer`` (a letter for ``multi-choice``), ``question_type``."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            images = _images_of(row, ["image"], image_root, path, index)
            question = field_of(row, "question", path, index, str)
            items.append(
                Item(
                    id=str(row.get("sample_index", index)),
                    prompt=prompts.user_text(question, "acc", len(images), style="eval"),
                    answer=str(field_of(row, "answer", path, index)).strip(),
                    images=images,
                    subset=str(row.get("problem_version", "")),
                )
            )
    return items


def load_mathvision(files: list[Path], image_root: Path) -> list[Item]:
    """MathVision: ``id``, ``question``, ``options`` (empty for free-form), ``answer`` (a letter when there are
    options), ``decoded_image`` (embedded) or ``image`` (path), ``subject``."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            image_field = "decoded_image" if row.get("decoded_image") else "image"
            items.append(
                _choice_item(
                    id=str(row.get("id", index)),
                    question=field_of(row, "question", path, index, str),
                    options=[str(o) for o in row.get("options") or []],
                    answer=str(field_of(row, "answer", path, index)).strip(),
                    images=_images_of(row, [image_field], image_root, path, index),
                    subset=str(row.get("subject", "")),
                )
            )
    return items


def load_olympiadbench(files: list[Path], image_root: Path) -> list[Item]:
    """OlympiadBench (one parquet per configuration, e.g. ``OE_MM_maths_en_COMP``): ``id``, ``context``,
    ``question``, ``final_answer`` (a list; the first is scored), ``image_1`` … ``image_5``."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            finals = field_of(row, "final_answer", path, index, list)
            if not finals:
                raise BenchmarkDataError(f"{_where(path, index, 'final_answer')} is empty")
            question = field_of(row, "question", path, index, str)
            if row.get("context"):
                question = f"{row['context']}\n{question}"
            items.append(
                _choice_item(
                    id=f"{path.stem}/{row.get('id', index)}",
                    question=question,
                    options=[],
                    answer=str(finals[0]).strip().strip("$"),
                    images=_images_of(row, [f"image_{k}" for k in range(1, 6)], image_root, path, index),
                    subset=path.stem,
                )
            )
    return items


def load_mmmu(files: list[Path], image_root: Path) -> list[Item]:
    """MMMU (validation, one parquet per subject): ``id`` (``validation_<Subject>_<n>``), ``question`` with
    ``<image N>`` references, ``options`` (a Python-literal list), ``answer`` (a letter for multiple choice),
    ``question_type``, ``image_1`` … ``image_7``. All images go before the text, in number order; the
    ``<image N>`` references stay in the text."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            raw_options = row.get("options") or "[]"
            try:
                options = ast.literal_eval(raw_options) if isinstance(raw_options, str) else list(raw_options)
            except (ValueError, SyntaxError) as error:
                raise BenchmarkDataError(
                    f"{_where(path, index, 'options')} is not a list literal: {error}"
                ) from error
            item_id = str(field_of(row, "id", path, index, str))
            multiple_choice = row.get("question_type", "multiple-choice") == "multiple-choice" and bool(
                options
            )
            items.append(
                _choice_item(
                    id=item_id,
                    question=field_of(row, "question", path, index, str),
                    options=[str(o) for o in options] if multiple_choice else [],
                    answer=str(field_of(row, "answer", path, index)).strip(),
                    images=_images_of(row, [f"image_{k}" for k in range(1, 8)], image_root, path, index),
                    subset=item_id.split("_", 1)[-1].rsplit("_", 1)[0],
                )
            )
    return items


# ----------------------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------------------

Home = Literal["benchmarks", "synthetic"]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its files (glob patterns under its home directory), how they load, how outputs score.

    ``home`` is ``eval.data_root`` for real benchmarks and ``data.synthetic.output_dir`` for the miniature.
    ``reward_func`` selects the format check (``acc``: think/answer tags; ``iou``: also a JSON box).
    """

    name: str
    title: str
    files: tuple[str, ...]
    image_root: str
    load: Callable[[list[Path], Path], list[Item]]
    score: Scorer
    reward_func: str
    max_new_tokens: int
    home: Home = "benchmarks"
    note: str = ""

    def annotation_files(self, home_dir: Path) -> list[Path]:
        """The files the patterns match under ``home_dir``, sorted; an error if there are none."""
        found = sorted({path for pattern in self.files for path in home_dir.glob(pattern) if path.is_file()})
        if not found:
            raise FileNotFoundError(
                f"benchmark {self.name!r}: no annotation file matching {' or '.join(self.files)} under "
                f"{home_dir.resolve()}. "
                + (
                    "Build it with `python -m ocean_lib data build`."
                    if self.home == "synthetic"
                    else "See `python -m ocean_lib data fetch-benchmarks --help` for where to get it."
                )
            )
        return found

    def load_items(self, home_dir: str | Path) -> list[Item]:
        """All items of the benchmark, ids checked unique."""
        home_dir = Path(home_dir)
        items = self.load(self.annotation_files(home_dir), home_dir / self.image_root)
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise BenchmarkDataError(f"benchmark {self.name!r}: item id {item.id!r} occurs twice")
            seen.add(item.id)
        return items


RULE_BASED_NOTE = (
    "rule-based scoring; Ocean-R1 used VLMEvalKit with a model judge, so not directly comparable"
)

MINIATURE_FAMILIES = {  # family -> (real counterpart's scorer, its reward_func, its budget)
    "counting": (score_counting, "acc", 256),
    "geometry": (score_whole_output_math, "acc", 1024),
    "grounding": (score_box, "iou", 512),
    "spatial": (score_option_exact, "acc", 1024),
}


def _registry() -> dict[str, Benchmark]:
    # Fields in order: name, title, annotation file patterns, image root (both relative to the home directory).
    counting = partial(
        Benchmark, load=load_question_jsonl, score=score_counting, reward_func="acc", max_new_tokens=256
    )
    geoqa = partial(Benchmark, score=score_whole_output_math, reward_func="acc", max_new_tokens=1024)
    rec = partial(Benchmark, load=load_rec_json, score=score_box, reward_func="iou", max_new_tokens=512)
    cvbench = partial(Benchmark, score=score_option_exact, reward_func="acc", max_new_tokens=1024)
    math = partial(
        Benchmark, score=score_math_answer, reward_func="acc", max_new_tokens=2048, note=RULE_BASED_NOTE
    )
    cvbench_task_of = partial(load_training_parquet, subset_of=lambda record: cvbench_task(record.question))
    benchmarks = [
        counting("superclevr", "SuperCLEVR counting (5k)", ("superclevr/super_clevr_test_5k.jsonl",), "superclevr/images"),
        counting("superclevr200", "SuperCLEVR counting (R1-V 200)", ("superclevr/superclevr_test200_counting_problems.jsonl",), "superclevr"),
        geoqa("geoqa", "GeoQA (754)", ("geoqa/geoqa_test_prompts.jsonl",), "geoqa", load=load_question_jsonl),
        geoqa("geoqa_parquet", "GeoQA (740, training format)", ("geoqa/geoqa_test.parquet",), "geoqa", load=load_training_parquet),
        rec("refcoco", "RefCOCO val", ("rec/**/refcoco_val.json",), "coco/train2014"),
        rec("refcocop", "RefCOCO+ val", ("rec/**/refcocop_val.json",), "coco/train2014"),
        rec("refcocog", "RefCOCOg val", ("rec/**/refcocog_val.json",), "coco/train2014"),
        cvbench("cvbench", "CV-Bench", ("cvbench/test_2d.parquet", "cvbench/test_3d.parquet", "cvbench/test.jsonl"), "cvbench", load=load_cvbench),
        cvbench("cvbench_parquet", "CV-Bench (training format)", ("cvbench/cvbench_test.parquet",), "cvbench", load=cvbench_task_of),
        math("mathvista", "MathVista testmini", ("mathvista/**/testmini-*.parquet", "mathvista/testmini.json"), "mathvista", load=load_mathvista),
        math("mathverse", "MathVerse testmini", ("mathverse/**/testmini-*.parquet",), "mathverse", load=load_mathverse),
        math("mathvision", "MathVision", ("mathvision/**/test-*.parquet",), "mathvision", load=load_mathvision),
        math("olympiadbench", "OlympiadBench", ("olympiadbench/**/*.parquet",), "olympiadbench", load=load_olympiadbench),
        math("mmmu", "MMMU validation", ("mmmu/**/validation-*.parquet",), "mmmu", load=load_mmmu),
    ]  # fmt: skip
    for family, (scorer, reward_func, budget) in MINIATURE_FAMILIES.items():
        for suffix, form in (("", "image"), ("_text", "text-only")):
            benchmarks.append(
                Benchmark(f"mini_{family}{suffix}", f"miniature {family} ({form})", (f"test{suffix}/{family}.parquet",),
                          ".", load_training_parquet, scorer, reward_func, budget, home="synthetic")
            )  # fmt: skip
    return {b.name: b for b in benchmarks}


BENCHMARKS: dict[str, Benchmark] = _registry()

# The RefCOCO splits the result table averages into one column.
REC_SPLITS = ("refcoco", "refcocop", "refcocog")


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark called ``name``; an error listing the valid names otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None
