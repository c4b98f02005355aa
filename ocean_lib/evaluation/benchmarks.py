"""The benchmarks of the result table: where each one's files live, how its rows become prompts, how an output is
scored, its generation budget, image limits and decoding. One registry, :data:`BENCHMARKS`; the runner knows
nothing benchmark-specific.

Each benchmark reproduces one reference protocol, named in its ``protocol`` field, the results table and the
README: the script's prompt (text and where the images go), dataset split, ground-truth form, token budget,
image limits and scoring rule (:mod:`ocean_lib.evaluation.scorers`). Published rows compare only with
benchmarks run by the protocol that produced them:

* the first Ocean-R1 repository (TRL-based, ``src/eval/``) produced the published 3B table: SuperCLEVR, GeoQA,
  RefCOCO/+/g, MathVision (test), MathVerse (``xyliu6/mathverse_4k``), OlympiadBench (``test_en``), MMMU
  (validation), all greedy, images at the processor's default limits (3,136 to 12,845,056 pixels);
* the later, verl-based Ocean-R1 repository, whose table the verl recipe is compared with: SuperCLEVR and GeoQA
  asked with R1-V's think instruction (``superclevr_verl``, ``geoqa_verl``), CV-Bench
  (``eval/test_qwen2d5vl_cvbench.py``), and through VLMEvalKit OCRBench and the math columns scored by a model
  judge (``*_judge``, :mod:`ocean_lib.evaluation.judge`);
* both repositories' REC script: ``refcoco*`` (its base-model branch, the bare question: ``*_bare``);
* VLM-R1's baseline REC script: the ``*_plain`` RefCOCO variants, for base models (the published base 75.3
  most likely comes from it: Ocean-R1's own REC script asks a base model the bare question, then reads a box
  only inside answer tags);
* VLMEvalKit: OCRBench (its rule; its Qwen2.5-VL limits).

Variants ending in ``_strict`` keep a reference's prompt and data but score with the reward's strict mode
(ours). The miniature benchmarks are the held-out splits of the procedural task families, scored by the rule of
their real counterpart.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from ocean_lib.base import prompts
from ocean_lib.base.schema import DataConfig
from ocean_lib.data.images import ImageRef, parse_box
from ocean_lib.data.records import Record, read_records
from ocean_lib.evaluation.items import Item, Scorer
from ocean_lib.evaluation.judge import score_without_judge
from ocean_lib.evaluation.scorers import (
    literal_list,
    score_box,
    score_box_anywhere,
    score_counting,
    score_first_recipe,
    score_ocrbench,
    score_option_math_verify,
    score_strict_answer,
    score_whole_output_math,
)
from ocean_lib.rewards import parse_options


class BenchmarkDataError(ValueError):
    """An annotation file that does not hold what its benchmark's published layout promises."""


# ----------------------------------------------------------------------------------------------------------------
# Items
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Reading annotation files
# ----------------------------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl``, ``.json`` (a list, or a mapping of id to row), ``.parquet`` or ``.tsv`` (a header
    line, tab-separated, as VLMEvalKit ships its benchmarks) file."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".tsv":
        csv.field_size_limit(sys.maxsize)  # VLMEvalKit's TSVs hold base64 images far over the default limit
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle, delimiter="\t"))
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
        f"{path}: unsupported annotation format {path.suffix!r} (jsonl, json, parquet or tsv)"
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
    """An image given as a path string, as a ``{bytes, path}`` struct (Hugging Face's Image feature) or as raw
    bytes."""
    if isinstance(value, bytes):
        return ImageRef(bytes=value, source="<embedded bytes>")
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


def _item_id(path: Path, files: list[Path], key: Any) -> str:
    """An item's id: its key in the file, prefixed by the file's stem when a benchmark reads several files."""
    return str(key) if len(files) == 1 else f"{path.stem}/{key}"


def load_question_jsonl(files: list[Path], image_root: Path, template: str = "think") -> list[Item]:
    """R1-V's and Ocean-R1's evaluation files (SuperCLEVR, GeoQA): rows ``{image_path, question, ground_truth}``;
    the prompt is :data:`~ocean_lib.base.prompts.EVAL_TEMPLATES` ``[template]``, the image first."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            image = field_of(row, "image_path", path, index, str)
            question = field_of(row, "question", path, index, str)
            truth = field_of(row, "ground_truth", path, index, (str, int, float))
            items.append(
                Item(
                    id=_item_id(path, files, index),
                    prompt=prompts.eval_turn(question, template, 1),
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
    files: list[Path],
    image_root: Path,
    subset_of: Callable[[Record], str] = lambda record: "",
    template: str | None = None,
) -> list[Item]:
    """Ocean-R1's training-format parquet (``geoqa_test.parquet``, ``cvbench_test.parquet``, the miniature's
    test splits), read and validated by :func:`ocean_lib.data.records.read_records`. The prompt is the stored
    user turn, or with ``template`` the question (``extra_info.question``) in that evaluation template, images
    first; ``reward_model.ground_truth`` is the answer; images are embedded bytes or paths resolved under
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
            prompt = (
                record.content
                if template is None
                else prompts.eval_turn(record.question, template, len(images))
            )
            options = tuple(parse_options(record.question).values())
            items.append(
                Item(
                    _item_id(path, files, record.index),
                    prompt,
                    record.ground_truth,
                    images,
                    subset_of(record),
                    options,
                )
            )
    return items


def load_rec_json(
    files: list[Path], image_root: Path, template: str = "grounding", sample: int = 0, seed: int = 42
) -> list[Item]:
    """VLM-R1's RefCOCO/+/g files: a JSON array of ``{image, problem, solution, normalized_solution, height,
    width, ...}``; ``image`` is relative to the COCO train2014 directory, ``solution`` a pixel box.

    With ``sample`` > 0, the rows are shuffled as ``random.seed(seed); random.shuffle(rows)`` shuffles them and
    the first ``sample`` are kept (VLM-R1's baseline script: 2,000 per split, seed 42). Ids keep the row's
    position in the file."""
    items = []
    for path in files:
        rows = list(enumerate(read_rows(path)))
        if sample > 0:
            random.Random(seed).shuffle(rows)
            rows = rows[:sample]
        for index, row in rows:
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
                    prompt=prompts.eval_turn(field_of(row, "problem", path, index, str), template, 1),
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
    ``choices``, ``task``, ``idx``. The prompt is Ocean-R1's: ``prompt``, a space, R1-V's instruction."""
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
                    prompt=prompts.eval_turn(field_of(row, "prompt", path, index, str), "think", 1),
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


def load_mathvista(files: list[Path], image_root: Path) -> list[Item]:
    """MathVista (testmini; no reference script): ``pid``, ``question``, ``choices`` (None for free-form),
    ``answer`` (the option text for multiple choice), ``question_type``, ``decoded_image`` (embedded) or ``image``
    (path), ``metadata.task``. Options as ``(A) …`` lines, R1-V's instruction, the image first."""
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
            question = field_of(row, "question", path, index, str)
            image_field = "decoded_image" if row.get("decoded_image") else "image"
            images = _images_of(row, [image_field], image_root, path, index)
            text = prompts.with_options(question, options) if options else question
            items.append(
                Item(
                    id=str(row.get("pid", index)),
                    prompt=prompts.eval_turn(text, "think", len(images)),
                    answer=answer,
                    images=images,
                    subset=str((row.get("metadata") or {}).get("task", "")),
                    options=tuple(options),
                )
            )
    return items


def load_mathverse(files: list[Path], image_root: Path) -> list[Item]:
    """MathVerse as the first Ocean-R1 repository read it (``xyliu6/mathverse_4k`` or
    ``xyliu6/mathverse_vision_dominant``: ``problem`` with its choices written inside, ``solution``, ``image``),
    or in AI4Math's testmini layout (``sample_index``, ``question``, ``answer``, ``image``, ``problem_version``).
    Its prompt: the boxed-answer system text, the problem, its instruction; the image first."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            images = _images_of(row, ["image"], image_root, path, index)
            ocean_layout = "problem" in row
            question = field_of(row, "problem" if ocean_layout else "question", path, index, str)
            answer = field_of(row, "solution" if ocean_layout else "answer", path, index)
            items.append(
                Item(
                    id=_item_id(path, files, row.get("sample_index", index)),
                    prompt=prompts.eval_turn(question, "v1_mathverse", len(images)),
                    answer=str(answer),
                    images=images,
                    subset=str(row.get("problem_version", "")),
                )
            )
    return items


def load_mathvision(files: list[Path], image_root: Path) -> list[Item]:
    """MathVision (``MathLLMs/MathVision``): ``id``, ``question``, ``options``, ``answer``, ``decoded_image``
    (embedded) or ``image`` (path), ``subject``. As the first Ocean-R1 repository asks it: the options are
    listed as ``(A) …`` lines only when they are not just the letters ``A``–``E``; the question, a newline, the
    option lines, in its template; the image first; the answer as given."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            options = [str(o) for o in row.get("options") or []]
            if "".join(options) == "ABCDE":
                options = []
            question = field_of(row, "question", path, index, str)
            lines = "".join(
                f"({letter}) {text}\n" for letter, text in zip(prompts.OPTION_LETTERS, options, strict=False)
            )
            image_field = "decoded_image" if row.get("decoded_image") else "image"
            images = _images_of(row, [image_field], image_root, path, index)
            items.append(
                Item(
                    id=str(row.get("id", index)),
                    prompt=prompts.eval_turn(f"{question}\n{lines}", "v1_mathvision", len(images)),
                    answer=str(field_of(row, "answer", path, index)),
                    images=images,
                    subset=str(row.get("subject", "")),
                    options=tuple(options),
                )
            )
    return items


def load_olympiadbench(files: list[Path], image_root: Path) -> list[Item]:
    """OlympiadBench as the first Ocean-R1 repository read it (``lmms-lab/OlympiadBench``, split ``test_en``):
    ``question_id``, ``context``, ``question``, ``final_answer`` (a list; rows without one are skipped, as
    there), ``images`` (a list), ``subfield``. The context, a blank line, the question, its instruction; the
    images **after** the text; the ground truth is the final answers joined by commas, as written."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            finals = row.get("final_answer")
            if not finals:
                continue
            if not isinstance(finals, list):
                raise BenchmarkDataError(
                    f"{_where(path, index, 'final_answer')} is {finals!r}, expected a list"
                )
            question = field_of(row, "question", path, index, str)
            if row.get("context"):
                question = f"{row['context']}\n\n{question}"
            images = tuple(
                image_ref(image, image_root, _where(path, index, "images"))
                for image in row.get("images") or []
            )
            items.append(
                Item(
                    id=_item_id(path, files, row.get("question_id", index)),
                    prompt=prompts.eval_turn(question, "v1_olympiadbench", len(images), images_first=False),
                    answer=",".join(str(final) for final in finals),
                    images=images,
                    subset=str(row.get("subfield") or ""),
                )
            )
    return items


MMMU_LETTERS = "ABCDEFG"
"""The option letters the first Ocean-R1 repository's MMMU script writes (it zips them with the options)."""


def load_mmmu(files: list[Path], image_root: Path) -> list[Item]:
    """MMMU (validation, one parquet per subject): ``id`` (``validation_<Subject>_<n>``), ``question`` with
    ``<image N>`` references, ``options`` (a Python-literal list), ``answer``, ``image_1`` … ``image_7``. As the
    first Ocean-R1 repository asks it: the question, then ``Choices:`` and one ``A. text`` line per option when
    there are options (whatever the question type), in its template with its system text; the images **after**
    the text, in number order; the answer as given."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            raw_options = row.get("options") or "[]"
            options = literal_list(raw_options) if isinstance(raw_options, str) else list(raw_options)
            if options is None:
                raise BenchmarkDataError(
                    f"{_where(path, index, 'options')} is not a list literal: {raw_options!r}"
                )
            item_id = str(field_of(row, "id", path, index, str))
            question = field_of(row, "question", path, index, str)
            if options:
                lettered = zip(
                    MMMU_LETTERS, options, strict=False
                )  # an 8th or 9th option goes unlisted there
                choices = "\n".join(f"{letter}. {text}" for letter, text in lettered)
                question = f"{question}\nChoices: {choices}"
            images = _images_of(row, [f"image_{k}" for k in range(1, 8)], image_root, path, index)
            items.append(
                Item(
                    id=item_id,
                    prompt=prompts.eval_turn(question, "v1_mmmu", len(images), images_first=False),
                    answer=str(field_of(row, "answer", path, index)),
                    images=images,
                    subset=item_id.split("_", 1)[-1].rsplit("_", 1)[0],
                    options=tuple(str(o) for o in options),
                )
            )
    return items


def load_ocrbench(files: list[Path], image_root: Path) -> list[Item]:
    """OCRBench as VLMEvalKit ships it (``OCRBench.tsv``: ``index``, ``image`` in base64, ``question``,
    ``answer`` as a Python-literal list, ``category``) or as the Hugging Face parquet (``question``, ``answer``
    list, ``question_type``, ``image``). VLMEvalKit's prompt for Qwen2.5-VL: the question alone, image first.
    The accepted answers are stored as a JSON list."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            raw = field_of(row, "answer", path, index)
            answers = literal_list(raw) if isinstance(raw, str) else list(raw)
            if not answers:
                raise BenchmarkDataError(
                    f"{_where(path, index, 'answer')} is {raw!r}, expected a list of answers"
                )
            image = field_of(row, "image", path, index)
            if isinstance(image, str) and path.suffix == ".tsv":
                try:
                    image = base64.b64decode(image, validate=True)
                except binascii.Error as error:
                    raise BenchmarkDataError(
                        f"{_where(path, index, 'image')} is not base64: {error}"
                    ) from error
            items.append(
                Item(
                    id=str(row.get("index", index)),
                    prompt=prompts.eval_turn(field_of(row, "question", path, index, str), "question", 1),
                    answer=json.dumps([str(answer) for answer in answers]),
                    images=(image_ref(image, image_root, _where(path, index, "image")),),
                    subset=str(row.get("category") or row.get("question_type") or ""),
                )
            )
    return items


def load_vlmevalkit_math(files: list[Path], image_root: Path, kind: str) -> list[Item]:
    """MathVista, MathVision or MathVerse as VLMEvalKit ships them (``MathVista_MINI.tsv``, ``MathVision.tsv``,
    ``MathVerse_MINIV.tsv``: ``index``, ``image`` in base64, ``question``, ``answer``, ``choices`` as a Python list
    literal, MathVista's ``question_type``/``answer_type``/``answer_option``, MathVerse's ``question_for_eval``).
    The prompt is VLMEvalKit's for Qwen2.5-VL (``use_custom_prompt=False``): the question alone, image first. The
    answer field holds what the judge's checks read (:func:`ocean_lib.evaluation.judge.case_of`) as JSON."""
    items = []
    for path in files:
        for index, row in enumerate(read_rows(path)):
            question = field_of(row, "question", path, index, str)
            raw = row.get("choices") or "[]"
            choices = literal_list(raw) if isinstance(raw, str) and raw != "nan" else list(raw or [])
            if choices is None:
                raise BenchmarkDataError(f"{_where(path, index, 'choices')} is not a list literal: {raw!r}")
            answer = str(field_of(row, "answer", path, index))
            if kind == "mathvista":
                multi = row.get("question_type") == "multi_choice"
                answer = str(field_of(row, "answer_option", path, index)) if multi else answer
                choices = choices if multi else []
            case = {
                "question": str(row.get("question_for_eval") or question),
                "answer": answer,
                "answer_type": str(row.get("answer_type") or ""),
            }
            image = field_of(row, "image", path, index, str)
            try:
                image_bytes = base64.b64decode(image, validate=True)
            except binascii.Error as error:
                raise BenchmarkDataError(f"{_where(path, index, 'image')} is not base64: {error}") from error
            items.append(
                Item(
                    id=str(row.get("index", index)),
                    prompt=prompts.eval_turn(question, "question", 1),
                    answer=json.dumps(case, ensure_ascii=False),
                    images=(ImageRef(bytes=image_bytes, source=f"{path.name}:{index}"),),
                    subset=str(row.get("task") or row.get("category") or row.get("problem_version") or ""),
                    options=tuple(str(c) for c in choices),
                )
            )
    return items


# ----------------------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------------------

Home = Literal["benchmarks", "synthetic"]

# The image limits of Qwen2.5-VL's processor and of qwen_vl_utils, which every Ocean-R1 evaluation script used
# (min 4·28², max 16384·28²); VLMEvalKit's Qwen2.5-VL configuration raises the minimum to 1280·28² (10·10·28² for
# OCRBench).
QWEN_MIN_PIXELS = 4 * 28 * 28
QWEN_MAX_PIXELS = 16384 * 28 * 28
OCRBENCH_MIN_PIXELS = 10 * 10 * 28 * 28
VLMEVALKIT_MIN_PIXELS = 1280 * 28 * 28


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its files (glob patterns under its home directory), how they load, how outputs score,
    and how the model is run on it.

    ``home`` is ``eval.data_root`` for real benchmarks and ``data.synthetic.output_dir`` for the miniature.
    ``reward_func`` selects the format check (``acc``: think/answer tags; ``iou``: also a JSON box).
    ``protocol`` names the reference whose numbers this benchmark reproduces. ``min_pixels``/``max_pixels`` bound
    each image's pixel count (None: the run's ``data.*_pixels``, for the miniature). ``repetition_penalty``:
    None applies the checkpoint's ``generation_config`` value, as ``model.generate`` did in Ocean-R1's scripts;
    a number overrides it (VLMEvalKit passes 1.0). ``box_frame``: the frame a grounding truth is scored in,
    the (resized) image's, or the model input's (the processor's grid, VLM-R1's baseline).
    """

    name: str
    title: str
    files: tuple[str, ...]
    image_root: str
    load: Callable[[list[Path], Path], list[Item]]
    score: Scorer
    reward_func: str
    max_new_tokens: int
    protocol: str
    home: Home = "benchmarks"
    note: str = ""
    min_pixels: int | None = QWEN_MIN_PIXELS
    max_pixels: int | None = QWEN_MAX_PIXELS
    repetition_penalty: float | None = None
    box_frame: Literal["image", "model_input"] = "image"

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


# Protocols, as the results table and the README name them.
V1 = "Ocean-R1 v1 (first repo, src/eval/{script})"
PROTOCOLS = {
    "superclevr": V1.format(script="test_qwen2d5vl_counting_superclevr_5k.py"),
    "geoqa": V1.format(script="test_qwen2d5vl_geoqa.py"),
    "rec": V1.format(script="test_qwen2d5vl_rec.py, from VLM-R1's test_rec_r1.py"),
    "rec_plain": "VLM-R1 baseline (src/eval/test_rec_baseline.py)",
    "mathvision": V1.format(script="test_qwen2d5vl_mathvision_multigpu.py"),
    "mathverse": V1.format(script="test_qwen2d5vl_mathverse_multigpu.py"),
    "olympiadbench": V1.format(script="test_qwen2d5vl_olympiadbench_multigpu.py"),
    "mmmu": V1.format(script="test_qwen2d5vl_mmmu.py"),
    "superclevr_verl": "Ocean-R1 verl (eval/test_qwen2d5vl_counting_superclevr_5k.py)",
    "geoqa_verl": "Ocean-R1 verl (eval/test_qwen2d5vl_geoqa.py)",
    "rec_bare": "Ocean-R1 REC script's base-model branch (is_baseline: the bare question, box read in <answer>)",
    "cvbench": "Ocean-R1 verl (eval/test_qwen2d5vl_cvbench.py)",
    "r1v": "R1-V (src/eval, test200 prompt)",
    "ocrbench": "VLMEvalKit (OCRBench.evaluate, Qwen2.5-VL config)",
    "strict": "ours: reward strict mode (a reference's prompt and data)",
    "mathvista": "ours: reward strict mode (Ocean-R1 used VLMEvalKit with a GPT judge: not comparable)",
    "verl_parquet": "Ocean-R1 verl validation parquet, scored by the GeoQA rule",
    "judge": "VLMEvalKit ({dataset}, Qwen2.5-VL config), a model judge extracting the answer (eval judge; "
    "before it, the rule step alone)",
    "miniature": "miniature (its real counterpart's rule)",
}

MINIATURE_FAMILIES = {  # family -> (real counterpart's scorer, its reward_func, its budget)
    "counting": (score_counting, "acc", 256),
    "geometry": (score_whole_output_math, "acc", 1024),
    "grounding": (score_box, "iou", 512),
    "spatial": (score_option_math_verify, "acc", 1024),
}


def _registry() -> dict[str, Benchmark]:
    # Fields in order: name, title, annotation file patterns, image root (both relative to the home directory).
    counting = partial(Benchmark, score=score_counting, reward_func="acc", max_new_tokens=256)
    geoqa = partial(Benchmark, score=score_whole_output_math, reward_func="acc", max_new_tokens=1024)
    rec = partial(
        Benchmark,
        score=score_box,
        reward_func="iou",
        max_new_tokens=512,
        protocol=PROTOCOLS["rec"],
        load=load_rec_json,
    )
    rec_plain = partial(
        Benchmark,
        score=score_box_anywhere,
        reward_func="iou",
        max_new_tokens=256,
        protocol=PROTOCOLS["rec_plain"],
        box_frame="model_input",
        load=partial(load_rec_json, template="grounding_plain", sample=2000, seed=42),
    )
    # The REC script as written for a base model (is_baseline): the bare question, a box read only inside
    # <answer> tags; a model that never writes them scores 0, so the published base 75.3 cannot come from it.
    rec_bare = partial(rec, protocol=PROTOCOLS["rec_bare"], load=partial(load_rec_json, template="question"))
    cvbench = partial(
        Benchmark,
        score=score_option_math_verify,
        reward_func="acc",
        max_new_tokens=1024,
        protocol=PROTOCOLS["cvbench"],
    )
    first = partial(Benchmark, score=score_first_recipe, reward_func="acc")
    strict = partial(Benchmark, score=score_strict_answer, reward_func="acc", protocol=PROTOCOLS["strict"])
    cvbench_task_of = partial(
        load_training_parquet, subset_of=lambda record: cvbench_task(record.question), template="think"
    )
    mathvision_test, mathvision_testmini = (
        ("mathvision/**/test-*.parquet",),
        ("mathvision/**/testmini-*.parquet",),
    )
    mathverse_4k, mathverse_vd = ("mathverse/**/*.parquet",), ("mathverse_vision_dominant/**/*.parquet",)
    olympiad, mmmu = ("olympiadbench/**/test_en-*.parquet",), ("mmmu/**/validation-*.parquet",)
    benchmarks = [
        counting("superclevr", "SuperCLEVR counting (5k)", ("superclevr/super_clevr_test_5k.jsonl",), "superclevr/images",
                 load=partial(load_question_jsonl, template="v1_superclevr"), protocol=PROTOCOLS["superclevr"]),
        counting("superclevr200", "SuperCLEVR counting (R1-V 200)", ("superclevr/superclevr_test200_counting_problems.jsonl",), "superclevr",
                 load=load_question_jsonl, protocol=PROTOCOLS["r1v"]),
        geoqa("geoqa", "GeoQA (754)", ("geoqa/geoqa_test_prompts.jsonl",), "geoqa",
              load=partial(load_question_jsonl, template="v1_geoqa"), protocol=PROTOCOLS["geoqa"]),
        counting("superclevr_verl", "SuperCLEVR counting (5k), verl-repo prompt", ("superclevr/super_clevr_test_5k.jsonl",), "superclevr/images",
                 load=partial(load_question_jsonl, template="think"), protocol=PROTOCOLS["superclevr_verl"]),
        geoqa("geoqa_verl", "GeoQA (754), verl-repo prompt", ("geoqa/geoqa_test_prompts.jsonl",), "geoqa",
              load=partial(load_question_jsonl, template="think"), protocol=PROTOCOLS["geoqa_verl"]),
        geoqa("geoqa_parquet", "GeoQA (740, training format)", ("geoqa/geoqa_test.parquet",), "geoqa",
              load=load_training_parquet, protocol=PROTOCOLS["verl_parquet"]),
        rec("refcoco", "RefCOCO val", ("rec/**/refcoco_val.json",), "coco/train2014"),
        rec("refcocop", "RefCOCO+ val", ("rec/**/refcocop_val.json",), "coco/train2014"),
        rec("refcocog", "RefCOCOg val", ("rec/**/refcocog_val.json",), "coco/train2014"),
        rec_plain("refcoco_plain", "RefCOCO val (plain prompt, 2,000)", ("rec/**/refcoco_val.json",), "coco/train2014"),
        rec_plain("refcocop_plain", "RefCOCO+ val (plain prompt, 2,000)", ("rec/**/refcocop_val.json",), "coco/train2014"),
        rec_plain("refcocog_plain", "RefCOCOg val (plain prompt, 2,000)", ("rec/**/refcocog_val.json",), "coco/train2014"),
        rec_bare("refcoco_bare", "RefCOCO val (bare question)", ("rec/**/refcoco_val.json",), "coco/train2014"),
        rec_bare("refcocop_bare", "RefCOCO+ val (bare question)", ("rec/**/refcocop_val.json",), "coco/train2014"),
        rec_bare("refcocog_bare", "RefCOCOg val (bare question)", ("rec/**/refcocog_val.json",), "coco/train2014"),
        cvbench("cvbench", "CV-Bench", ("cvbench/test_2d.parquet", "cvbench/test_3d.parquet", "cvbench/test.jsonl"), "cvbench", load=load_cvbench),
        cvbench("cvbench_parquet", "CV-Bench (training format)", ("cvbench/cvbench_test.parquet",), "cvbench", load=cvbench_task_of),
        strict("mathvista", "MathVista testmini", ("mathvista/**/testmini-*.parquet", "mathvista/testmini.json"), "mathvista",
               load=load_mathvista, max_new_tokens=2048, protocol=PROTOCOLS["mathvista"]),
        first("mathvision", "MathVision (test)", mathvision_test, "mathvision", load=load_mathvision, max_new_tokens=4096, protocol=PROTOCOLS["mathvision"]),
        first("mathvision_testmini", "MathVision (testmini)", mathvision_testmini, "mathvision", load=load_mathvision, max_new_tokens=4096, protocol=PROTOCOLS["mathvision"]),
        first("mathverse", "MathVerse (testmini, 3,940: mathverse_4k)", mathverse_4k, "mathverse", load=load_mathverse, max_new_tokens=2048, protocol=PROTOCOLS["mathverse"]),
        first("mathverse_vision_dominant", "MathVerse (vision-dominant, 788)", mathverse_vd, "mathverse_vision_dominant", load=load_mathverse, max_new_tokens=2048, protocol=PROTOCOLS["mathverse"]),
        first("olympiadbench", "OlympiadBench (test_en)", olympiad, "olympiadbench", load=load_olympiadbench, max_new_tokens=4096, protocol=PROTOCOLS["olympiadbench"]),
        first("mmmu", "MMMU validation", mmmu, "mmmu", load=load_mmmu, max_new_tokens=4096, protocol=PROTOCOLS["mmmu"]),
        strict("mathvision_strict", "MathVision (test), strict", mathvision_test, "mathvision", load=load_mathvision, max_new_tokens=4096),
        strict("mathverse_strict", "MathVerse (mathverse_4k), strict", mathverse_4k, "mathverse", load=load_mathverse, max_new_tokens=2048),
        strict("olympiadbench_strict", "OlympiadBench (test_en), strict", olympiad, "olympiadbench", load=load_olympiadbench, max_new_tokens=4096),
        strict("mmmu_strict", "MMMU validation, strict", mmmu, "mmmu", load=load_mmmu, max_new_tokens=4096),
        *(
            Benchmark(f"{kind}_judge", f"{title} (VLMEvalKit, judge)", (f"{kind}/{tsv}",), kind,
                      partial(load_vlmevalkit_math, kind=kind), partial(score_without_judge, kind=kind), "acc", 2048,
                      PROTOCOLS["judge"].format(dataset=dataset), min_pixels=VLMEVALKIT_MIN_PIXELS,
                      repetition_penalty=1.0)
            for kind, title, tsv, dataset in (
                ("mathvista", "MathVista testmini", "MathVista_MINI.tsv", "MathVista_MINI"),
                ("mathvision", "MathVision (test)", "MathVision.tsv", "MathVision"),
                ("mathverse", "MathVerse testmini", "MathVerse_MINIV.tsv", "MathVerse_MINI"),
            )
        ),
        Benchmark("ocrbench", "OCRBench", ("ocrbench/OCRBench.tsv", "ocrbench/**/test-*.parquet"), "ocrbench", load_ocrbench,
                  score_ocrbench, "acc", 2048, PROTOCOLS["ocrbench"], min_pixels=OCRBENCH_MIN_PIXELS, repetition_penalty=1.0,
                  note="VLMEvalKit's rule on the whole output; Ocean-R1's own prompt for it is unpublished: the question alone"),
    ]  # fmt: skip
    for family, (scorer, reward_func, budget) in MINIATURE_FAMILIES.items():
        for suffix, form in (("", "image"), ("_text", "text-only")):
            benchmarks.append(
                Benchmark(f"mini_{family}{suffix}", f"miniature {family} ({form})", (f"test{suffix}/{family}.parquet",),
                          ".", load_training_parquet, scorer, reward_func, budget, PROTOCOLS["miniature"],
                          home="synthetic", min_pixels=None, max_pixels=None)
            )  # fmt: skip
    return {b.name: b for b in benchmarks}


BENCHMARKS: dict[str, Benchmark] = _registry()

# The RefCOCO splits the result table averages into one column, by Ocean-R1's protocol and by VLM-R1's baseline.
REC_SPLITS = ("refcoco", "refcocop", "refcocog")
REC_PLAIN_SPLITS = ("refcoco_plain", "refcocop_plain", "refcocog_plain")
REC_BARE_SPLITS = ("refcoco_bare", "refcocop_bare", "refcocog_bare")
REC_AVERAGES = {
    "refcoco_avg": REC_SPLITS,
    "refcoco_plain_avg": REC_PLAIN_SPLITS,
    "refcoco_bare_avg": REC_BARE_SPLITS,
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark called ``name``; an error listing the valid names otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None
