"""Training records in Ocean-R1's parquet schema (the verl RL-dataset format), read, checked and written.

One row of Ocean-R1's training (and converted benchmark) parquet files::

    data_source   str                                   e.g. "geoqa_test"
    prompt        [{role: "user", content: str}]        "<image> " * n_images + question + "\\n" + instruction
    images        [{bytes: binary | null, path: str | null}]
    ability       str                                   Ocean-R1 writes "math" everywhere
    reward_model  {ground_truth: str, style: "rule"}
    extra_info    {answer: str, image_paths: [str], index: int, question: str, reward_func: "acc" | "iou",
                   reasoning: str (optional, ours)}

Ocean-R1's first recipe (its TRL-0.14 repository) read a Hugging Face dataset of another layout, one row per prompt::

    problem       str                the question (image rows) or the whole text problem (text-only rows)
    solution      str                the ground truth, e.g. "<answer> 3 </answer>"
    image         {bytes, path}      null on text-only rows (a datasets Image feature)
    has_image     bool               which prompt the row gets (prompts.v1_user_text); optional: whether the
                                     dataset has an image column (the text-only data set has none)
    reward_func   "acc" | "iou"

:func:`read_records` recognises it by its ``problem`` and ``solution`` columns and builds the user turn with
``data.prompt_template`` (:func:`record_from_v1_row`); ``data_source`` is the row's own column if it has one, else
the source's name.

``extra_info.reasoning`` is the one field Ocean-R1's files do not have: our procedural tasks store a short
worked reasoning there, and a supervised warm-start imitates ``prompts.reference_completion(reasoning,
answer)``. Files without it read as ``reasoning=None`` and are written back without the field.

Sources :func:`read_records` accepts: a ``.parquet`` file, a directory of ``.parquet`` files (read in name
order), a Hugging Face ``datasets`` directory written by ``save_to_disk``, or a hub id (``owner/name``;
needs network).
Relative image paths are opened relative to the working directory, as Ocean-R1's loader does.

Every row is validated on load; a bad row raises :class:`DataError` naming file, row and field, or, with
``on_bad_row: skip``, is left out, counted in the returned :class:`LoadReport` and logged. Nothing is dropped
without being counted.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ocean_lib.base.io import atomic_write_bytes
from ocean_lib.base.prompts import (
    IMAGE_MARKER,
    REWARD_FUNCS,
    reference_completion,
    user_text,
    v1_user_text,
)
from ocean_lib.base.schema import DataConfig
from ocean_lib.data.images import ImageError, ImageRef, parse_box, prepare_images

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class DataError(ValueError):
    """A record source that cannot be used as it is; the message names file, row and field."""


# ----------------------------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Record:
    """One training or evaluation prompt with its rule-checkable ground truth (one parquet row)."""

    data_source: str
    content: str  # the single user turn, "<image> " markers first
    images: list[ImageRef]
    ground_truth: str
    reward_func: str  # "acc" (answer match) or "iou" (box overlap)
    question: str
    answer: str
    index: int
    ability: str = ""
    image_paths: list[str] = field(default_factory=list)
    reasoning: str | None = None  # ours, for the supervised warm-start; None in Ocean-R1's files

    @classmethod
    def from_question(
        cls,
        *,
        data_source: str,
        question: str,
        answer: str,
        reward_func: str,
        index: int,
        images: list[ImageRef] | None = None,
        ability: str = "",
        reasoning: str | None = None,
        ground_truth: str | None = None,
    ) -> Record:
        """A record whose user turn is built by ``prompts.user_text`` (Ocean-R1's training form).

        ``ground_truth`` defaults to ``answer``; grounding records differ: the reward's truth is a bare box
        list while the answer a model should write is the JSON object the instruction asks for.
        """
        images = images or []
        return cls(
            data_source=data_source,
            content=user_text(question, reward_func, len(images)),
            images=images,
            ground_truth=answer if ground_truth is None else ground_truth,
            reward_func=reward_func,
            question=question,
            answer=answer,
            index=index,
            ability=ability,
            image_paths=[image.path for image in images if image.path],
            reasoning=reasoning,
        )

    @property
    def completion(self) -> str | None:
        """The completion a supervised warm-start imitates, if the record carries a worked reasoning."""
        return None if self.reasoning is None else reference_completion(self.reasoning, self.answer)

    def to_row(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "answer": self.answer,
            "image_paths": list(self.image_paths),
            "index": self.index,
            "question": self.question,
            "reward_func": self.reward_func,
        }
        if self.reasoning is not None:
            extra["reasoning"] = self.reasoning
        return {
            "data_source": self.data_source,
            "prompt": [{"content": self.content, "role": "user"}],
            "images": [{"bytes": image.bytes, "path": image.path} for image in self.images],
            "ability": self.ability,
            "reward_model": {"ground_truth": self.ground_truth, "style": "rule"},
            "extra_info": extra,
        }


class _BadField(Exception):
    def __init__(self, field_name: str, reason: str, kind: str = "malformed"):
        super().__init__(f"{field_name}: {reason}")
        self.field, self.reason, self.kind = field_name, reason, kind


def record_from_row(row: dict[str, Any], row_index: int) -> Record:
    """Parse one parquet row; raise ``_BadField`` naming the first field that breaks the schema.

    Required: ``data_source``, ``prompt`` (exactly one user turn), ``reward_model.ground_truth`` (a non-empty
    string), ``extra_info.reward_func``. Defaults for fields other verl files may lack: ``images`` [],
    ``ability`` "", ``extra_info.index`` the row index, ``answer`` the ground truth, ``question`` the user
    text without markers, ``image_paths`` the images' paths.
    """

    def need(value: Any, name: str, kind: type | tuple[type, ...]) -> Any:
        if not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise _BadField(name, f"expected {expected}, got {type(value).__name__} {value!r:.80}")
        return value

    data_source = need(row.get("data_source"), "data_source", str)
    prompt = need(row.get("prompt"), "prompt", (list, tuple))
    if len(prompt) != 1:
        raise _BadField("prompt", f"expected exactly one user turn, got {len(prompt)} messages")
    turn = need(prompt[0], "prompt[0]", dict)
    if turn.get("role") != "user":
        raise _BadField("prompt[0].role", f"expected 'user', got {turn.get('role')!r}")
    content = need(turn.get("content"), "prompt[0].content", str)

    images = []
    for i, image in enumerate(need(row.get("images") or [], "images", (list, tuple))):
        image = need(image, f"images[{i}]", dict)
        data, path = image.get("bytes"), image.get("path")
        if not data and not path:
            raise _BadField(f"images[{i}]", "has neither bytes nor path")
        images.append(ImageRef(bytes=bytes(data) if data else None, path=path or None))

    reward_model = need(row.get("reward_model"), "reward_model", dict)
    ground_truth = need(reward_model.get("ground_truth"), "reward_model.ground_truth", str)
    if not ground_truth.strip():
        raise _BadField("reward_model.ground_truth", "is empty")
    if reward_model.get("style", "rule") != "rule":
        raise _BadField("reward_model.style", f"expected 'rule', got {reward_model.get('style')!r}")

    extra = need(row.get("extra_info"), "extra_info", dict)
    reward_func = need(extra.get("reward_func"), "extra_info.reward_func", str)
    if reward_func not in REWARD_FUNCS:
        raise _BadField("extra_info.reward_func", f"unknown {reward_func!r}; expected one of {REWARD_FUNCS}")
    index = extra.get("index")
    reasoning = extra.get("reasoning")
    return Record(
        data_source=data_source,
        content=content,
        images=images,
        ground_truth=ground_truth,
        reward_func=reward_func,
        question=need(extra.get("question") or _question_of(content), "extra_info.question", str),
        answer=need(extra.get("answer") or ground_truth, "extra_info.answer", str),
        index=row_index if index is None else need(index, "extra_info.index", int),
        ability=need(row.get("ability") or "", "ability", str),
        image_paths=list(extra.get("image_paths") or [image.path for image in images if image.path]),
        reasoning=None if reasoning is None else need(reasoning, "extra_info.reasoning", str),
    )


V1_COLUMNS = ("problem", "solution")
"""Columns that mark a source in the first recipe's layout (module docstring)."""

_ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>")  # no DOTALL: the rewards' ground-truth reading


def record_from_v1_row(row: dict[str, Any], row_index: int, source_name: str, template: str) -> Record:
    """Parse one row of the first recipe's layout; raise ``_BadField`` naming the first field that breaks it.

    ``template``: ``ocean_r1_v1`` builds the user turn as the first recipe did (:func:`prompts.v1_user_text`),
    ``ocean_r1`` as the verl recipe's parquet writes it (:func:`prompts.user_text`). A row whose ``has_image``
    disagrees with its ``image`` is bad: the first recipe's processor and vLLM would have failed on it.
    """
    problem = row.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        raise _BadField("problem", f"expected a non-empty string, got {problem!r:.80}")
    solution = row.get("solution")
    if not isinstance(solution, str) or not solution.strip():
        raise _BadField("solution", f"expected a non-empty string, got {solution!r:.80}")
    reward_func = row.get("reward_func")
    if reward_func not in REWARD_FUNCS:
        raise _BadField("reward_func", f"unknown {reward_func!r}; expected one of {REWARD_FUNCS}")
    image = row.get("image")
    has_image = row.get("has_image", "image" in row)  # without the column: as the dataset has images or not
    if not isinstance(has_image, bool):
        raise _BadField("has_image", f"expected true or false, got {has_image!r:.80}")
    images = []
    if image is not None:
        if not isinstance(image, dict) or not (image.get("bytes") or image.get("path")):
            raise _BadField("image", f"expected an image (bytes or path), got {image!r:.80}")
        images.append(
            ImageRef(bytes=bytes(image["bytes"]) if image.get("bytes") else None, path=image.get("path"))
        )
    if has_image != bool(images):
        raise _BadField("has_image", f"is {has_image} but the row has {len(images)} image(s)")
    if template == "ocean_r1_v1":
        content = v1_user_text(problem, reward_func, has_image)
    else:
        content = user_text(problem, reward_func, len(images))
    span = _ANSWER_SPAN.search(solution)
    data_source = row.get("data_source")
    return Record(
        data_source=data_source if isinstance(data_source, str) and data_source else source_name,
        content=content,
        images=images,
        ground_truth=solution,
        reward_func=reward_func,
        question=problem,
        answer=(span.group(1) if span else solution).strip(),
        index=row_index,
        image_paths=[image.path for image in images if image.path],
    )


def _question_of(content: str) -> str:
    """The question part of a user turn: markers removed, the instruction line dropped."""
    text = re.sub(r"<image>\s?", "", content).strip()
    return text.rsplit("\n", 1)[0] if "\n" in text else text


# ----------------------------------------------------------------------------------------------------------------
# Validation and the load report
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadRow:
    """One row that was not loaded: where, which field, why, and a kind to count by."""

    file: str
    row: int
    field: str
    reason: str
    kind: str  # "malformed", "missing_image", "corrupt_image" or "overlong_prompt"

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}, field {self.field}: {self.reason}"


@dataclass
class LoadReport:
    """What a read did: rows seen, rows loaded, and every bad row."""

    source: str
    rows: int = 0
    loaded: int = 0
    images_checked: bool = True
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.bad_rows)

    @property
    def bad_by_kind(self) -> dict[str, int]:
        return dict(Counter(bad.kind for bad in self.bad_rows))

    @property
    def missing_images(self) -> list[str]:
        """Paths of images that were not found, in row order."""
        return [
            bad.reason.removeprefix("file not found: ")
            for bad in self.bad_rows
            if bad.kind == "missing_image"
        ]

    def summary(self, first: int = 3) -> str:
        checked = "" if self.images_checked else " (images not checked)"
        text = f"{self.source}: {self.rows} rows, {self.loaded} loaded, {self.skipped} bad{checked}"
        if self.bad_rows:
            kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.bad_by_kind.items()))
            examples = "\n  ".join(str(bad) for bad in self.bad_rows[:first])
            text += f" ({kinds}); first:\n  {examples}"
        return text


class Records(list[Record]):
    """The records a read returned, with its :class:`LoadReport` as ``.report``."""

    def __init__(self, records: list[Record], report: LoadReport):
        super().__init__(records)
        self.report = report


def validate_record(record: Record, cfg: DataConfig, check_images: bool = True) -> None:
    """Raise ``_BadField`` if the record cannot be trained on.

    Checks: one ``<image>`` marker per image and at most ``cfg.max_images_per_prompt`` images; an ``iou``
    record has at most one image (its box is in that image's pixels) and a parseable box; with
    ``check_images``, every image exists and decodes (:meth:`ImageRef.check`).
    """
    markers, n_images = record.content.count(IMAGE_MARKER), len(record.images)
    if markers != n_images:
        raise _BadField(
            "prompt[0].content", f"has {markers} {IMAGE_MARKER} markers but the row has {n_images} images"
        )
    if n_images > cfg.max_images_per_prompt:
        raise _BadField(
            "images", f"{n_images} images > data.max_images_per_prompt={cfg.max_images_per_prompt}"
        )
    if record.reward_func == "iou":
        if n_images > 1:
            raise _BadField("images", f"an iou row needs at most one image (its box's frame), got {n_images}")
        span = _ANSWER_SPAN.search(record.ground_truth)  # the reward reads the box from <answer> tags if any
        try:
            parse_box(span.group(1).strip() if span else record.ground_truth, allow_object=False)
        except ValueError as error:
            raise _BadField("reward_model.ground_truth", str(error)) from None
    if check_images:
        for i, image in enumerate(record.images):
            _check_image(image, f"images[{i}]")


def _check_image(image: ImageRef, name: str) -> None:
    if image.bytes is None and not os.path.isfile(image.path or ""):
        raise _BadField(f"{name}.path", f"file not found: {image.path}", kind="missing_image")
    which = f"{name}.bytes" if image.bytes is not None else f"{name}.path"
    try:
        image.check()
    except ImageError as error:
        raise _BadField(
            which, f"not a decodable image: {error.__cause__ or error}", kind="corrupt_image"
        ) from None


# ----------------------------------------------------------------------------------------------------------------
# Reading and writing
# ----------------------------------------------------------------------------------------------------------------


def read_records(
    source: str | Path, cfg: DataConfig, check_images: bool = True, split: str = "train"
) -> Records:
    """Read and validate records from a parquet file or directory, a ``save_to_disk`` directory, or a hub id.

    A bad row raises :class:`DataError` naming file, row and field (and how many other rows are bad), unless
    ``cfg.on_bad_row == "skip"``: then it is left out, counted in ``result.report`` and logged as a warning.
    ``check_images=False`` skips opening images (fast, for annotation-only use); ``split`` picks the split of
    a hub dataset.
    """
    tables = _read_tables(str(source), split)
    report = LoadReport(source=str(source), images_checked=check_images)
    records: list[Record] = []
    for file, table in tables:
        v1_layout = all(column in table.column_names for column in V1_COLUMNS)
        for row_index, row in enumerate(table.to_pylist()):
            report.rows += 1
            try:
                if v1_layout:
                    record = record_from_v1_row(row, row_index, _source_name(file), cfg.prompt_template)
                else:
                    record = record_from_row(row, row_index)
                validate_record(record, cfg, check_images)
            except _BadField as bad:
                report.bad_rows.append(BadRow(file, row_index, bad.field, bad.reason, bad.kind))
                continue
            records.append(record)
    report.loaded = len(records)
    if report.bad_rows and cfg.on_bad_row == "error":
        first, others = report.bad_rows[0], report.skipped - 1
        more = f"\n({others} more bad rows: {report.summary()})" if others else ""
        raise DataError(
            f"{first}{more}\nTo skip bad rows and count them instead: --set data.on_bad_row=skip "
            "(or data.on_bad_row: skip in the params file)."
        )
    if report.bad_rows:
        log.warning("skipped bad rows: %s", report.summary())
    return Records(records, report)


def verl_prompt_tokens(record: Record, tokenizer: Any) -> int:
    """The record's prompt length as verl's ``filter_overlong_prompts`` counts it (Ocean-R1): the tokenizer's
    chat template (generation prompt included) over the stored user turn, each image the literal ``<image>``
    text, not its visual tokens."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": record.content}], add_generation_prompt=True, tokenize=False
    )
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def drop_overlong_prompts(records: Records, tokenizer: Any, max_tokens: int) -> Records:
    """The records whose :func:`verl_prompt_tokens` is at most ``max_tokens``; each one left out is counted in the
    report as a bad row of kind ``overlong_prompt`` (verl dropped them silently) and logged."""
    kept, report = [], dataclasses.replace(records.report, bad_rows=list(records.report.bad_rows))
    for record in records:
        length = verl_prompt_tokens(record, tokenizer)
        if length <= max_tokens:
            kept.append(record)
            continue
        reason = f"{length} tokens > data.max_prompt_tokens={max_tokens}"
        report.bad_rows.append(BadRow(record.data_source, record.index, "prompt", reason, "overlong_prompt"))
    report.loaded = len(kept)  # before the summary below: it said "16 loaded, 16 bad" when all were dropped
    if len(kept) < len(records):
        log.warning(
            "left out %d of %d prompts over data.max_prompt_tokens=%d (data.overlong_prompts: drop; raise the "
            "limit, or truncate_left to keep them): %s",
            len(records) - len(kept),
            len(records),
            max_tokens,
            report.summary(),
        )
    return Records(kept, report)


def _source_name(file: str) -> str:
    """A data_source for rows that name none: the file's or directory's name without suffix."""
    return Path(file.split(" (hub")[0]).stem or file


def _read_tables(source: str, split: str) -> list[tuple[str, pa.Table]]:
    path = Path(source)
    if path.is_file():
        return [(source, _read_parquet(path))]
    if path.is_dir():
        if any(
            (path / marker).is_file() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")
        ):
            return [(source, _read_saved_dataset(path))]
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise DataError(
                f"{source}: directory has no .parquet files and is not a datasets save_to_disk directory"
            )
        return [(str(file), _read_parquet(file)) for file in files]
    check_source(source)
    return [(f"{source} (hub, split {split})", _read_hub(source, split))]


def count_rows(source: str, split: str = "train") -> int:
    """Rows of a training source before any is dropped or skipped: from the parquet footers when the source is
    local parquet (no image is read), otherwise by reading it (a saved dataset, a hub id)."""
    path = Path(source)
    files = [path] if path.is_file() else sorted(path.glob("*.parquet")) if path.is_dir() else []
    if files and all(file.suffix == ".parquet" for file in files):
        try:
            return sum(pq.ParquetFile(file).metadata.num_rows for file in files)
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{source}: not a readable parquet file: {error}") from error
    return sum(table.num_rows for _, table in _read_tables(source, split))


def check_source(source: str) -> None:
    """Raise :class:`DataError` when ``source`` is neither a file or directory nor a hub id (the launcher's check
    before it starts a training process)."""
    if not Path(source).exists() and (source.endswith(".parquet") or not _HUB_ID.match(source)):
        raise DataError(f"{source}: no such file or directory")


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable parquet file: {error}") from error


def _read_saved_dataset(path: Path) -> pa.Table:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises assorted types for a broken directory
        raise DataError(f"{path}: not a readable datasets directory: {error}") from error
    if isinstance(dataset, datasets.DatasetDict):
        raise DataError(
            f"{path}: holds splits {list(dataset)}; pass one split's directory, e.g. {path / 'train'}"
        )
    return dataset.with_format("arrow")[:]


def _read_hub(hub_id: str, split: str) -> pa.Table:
    """Load a hub dataset; without network fail within HUB_PROBE_TIMEOUT_S instead of retrying for minutes."""
    import datasets
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE and not reachable(constants.ENDPOINT, HUB_PROBE_TIMEOUT_S):
        raise DataError(
            f"{hub_id}: not a local path, and the Hugging Face hub ({constants.ENDPOINT}) is not reachable "
            f"within {HUB_PROBE_TIMEOUT_S:.0f} s. Hub ids need network (or HF_HUB_OFFLINE=1 with a cached "
            "copy); otherwise pass a parquet file or a save_to_disk directory."
        )
    try:
        dataset = datasets.load_dataset(hub_id, split=split)
    except Exception as error:  # network, auth, missing dataset or split: all are "cannot read this source"
        raise DataError(f"{hub_id}: could not load split {split!r} from the hub: {error}") from error
    return dataset.with_format("arrow")[:]


def reachable(url: str, timeout_s: float) -> bool:
    """Whether a TCP connection to the URL's host opens in time (DNS included, hence the thread)."""
    import socket

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def records_table(records: list[Record]) -> pa.Table:
    """The records as an arrow table with Ocean-R1's column types (``reasoning`` if any record has it)."""
    extra_fields = [
        pa.field("answer", pa.string()),
        pa.field("image_paths", pa.list_(pa.string())),
        pa.field("index", pa.int64()),
        pa.field("question", pa.string()),
        pa.field("reward_func", pa.string()),
    ]
    if any(record.reasoning is not None for record in records):
        extra_fields.append(pa.field("reasoning", pa.string()))
    schema = pa.schema(
        [
            pa.field("data_source", pa.string()),
            pa.field("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
            pa.field("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
            pa.field("ability", pa.string()),
            pa.field("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
            pa.field("extra_info", pa.struct(extra_fields)),
        ]
    )
    return pa.Table.from_pylist([record.to_row() for record in records], schema=schema)


def write_records(records: list[Record], path: str | Path) -> Path:
    """Write records as one parquet file, atomically (readers never see a half-written file)."""
    buffer = io.BytesIO()
    pq.write_table(records_table(records), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# Images as model input
# ----------------------------------------------------------------------------------------------------------------


def load_images(record: Record, cfg: DataConfig) -> list[Image.Image]:
    """The record's images as RGB, resized by :func:`fit_pixels` within [cfg.min_pixels, cfg.max_pixels]."""
    return load_example(record, cfg)[0]


def load_example(record: Record, cfg: DataConfig) -> tuple[list[Image.Image], str]:
    """The record's images as model input and its ground truth in their pixels (:func:`prepare_images`);
    without ``cfg.pre_resize`` the images are not resized here (the processor alone will)."""
    try:
        return prepare_images(
            record.images,
            record.ground_truth,
            box_truth=record.reward_func == "iou",
            min_pixels=cfg.min_pixels if cfg.pre_resize else 0,
            max_pixels=cfg.max_pixels if cfg.pre_resize else sys.maxsize,
        )
    except ImageError as error:
        raise DataError(f"{record.data_source} index {record.index}, field {error}") from error
