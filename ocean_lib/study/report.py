"""The result table of the study: rows are models, columns are benchmarks, cells are accuracy ± 95% CI.

It reads the ``summary.json`` files the evaluation writes and renders Markdown (for the README and the
notebooks) and CSV (for anything else). Ocean-R1's published 3B numbers are added as reference rows in the
columns that measure the same thing; they carry no interval because none was published.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocean_lib.base.io import atomic_write_text

# How comparable a cell is with the published table's number in its column (a mark in Markdown, a word in CSV).
SAME = "same protocol"
INFERRED = "inferred protocol"
NOT_COMPARABLE = "not comparable"
MARKS = {SAME: "=", INFERRED: "≈", NOT_COMPARABLE: "≠"}
LEGEND = {
    SAME: "the benchmark runs the reference script's prompt, data, budget and rule",
    INFERRED: "the script or data behind the published number is our inference (its logs are not published)",
    NOT_COMPARABLE: "scored another way than the published number (a model judge that is not configured)",
}


@dataclass(frozen=True)
class PublishedColumn:
    """A column of a published table: its header there, how comparable our benchmark of the same key is with
    it, why; ``judge``: the published numbers were scored by a model judge (VLMEvalKit), so a measured cell is
    comparable only when its summary says a judge scored it."""

    header: str
    comparability: str
    why: str
    judge: bool = False


@dataclass(frozen=True)
class PublishedTable:
    """One of Ocean-R1's published tables: where it is, the recipe and checkpoints behind its rows, the protocol
    of its numbers, its columns keyed by the benchmark (or RefCOCO average) that reproduces each, its rows, and
    the cells whose comparability differs from their column's: (row, column) -> (comparability, why)."""

    name: str
    source: str
    recipe: str
    checkpoints: str
    protocol: str
    columns: dict[str, PublishedColumn]
    rows: dict[str, dict[str, float]]
    cell_comparability: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    def comparability(self, row: str, column: str) -> str:
        return self.cell_comparability.get((row, column), (self.columns[column].comparability, ""))[0]


_REC_BASE = (
    "the base model's 75.3 most likely comes from VLM-R1's baseline script (plain prompt, first box anywhere); "
    "Ocean-R1's REC script asks a base model the bare question and reads a box only inside answer tags "
    "(refcoco_bare_avg), which a base model does not write"
)

# The first Ocean-R1 repository's README (Evaluation), Qwen2.5-VL-3B rows (accuracy, percent), produced by its
# src/eval scripts with extracted matching; the benchmarks' protocols reproduce them (ocean_lib.evaluation.benchmarks).
V1_TABLE = PublishedTable(
    name="v1",
    source="github.com/fengzi258/Ocean-R1, README.md, Evaluation",
    recipe="the first recipe, TRL 0.14 GRPO: params/qwen25vl_3b_v1.yaml (GRPO-vis), params/qwen25vl_3b_v1_text.yaml (GRPO-text)",
    checkpoints="intermediate checkpoints, by the published logs' names: GRPO-vis checkpoint-8500 of the 139k visual "
    "run, GRPO-text checkpoint-6250 of the 44k text run (docs/real_scale.md: what our params plan)",
    protocol="src/eval scripts, greedy, extracted matching (rule-based, no judge)",
    columns={
        "superclevr": PublishedColumn("SuperCLEVR", SAME, "published per-item logs re-scored: every verdict agrees"),
        "geoqa": PublishedColumn("GEOQA", SAME, "published per-item logs re-scored: every verdict agrees"),
        "refcoco_avg": PublishedColumn("RefCOCO/+/g avg", SAME, "the REC script as written (no logs published)"),
        "refcoco_plain_avg": PublishedColumn("RefCOCO/+/g avg (plain prompt)", INFERRED, _REC_BASE),
        "mathvision": PublishedColumn("MathVision", INFERRED, "the test split (run_ckpt.sh), whose logs are not published"),
        "mathverse": PublishedColumn("MathVerse", INFERRED, "xyliu6/mathverse_4k, inferred: no published log matches"),
        "olympiadbench": PublishedColumn("OlympiadBench", SAME, "the script as written (its one log is truncated)"),
        "mmmu": PublishedColumn("MMMU", SAME, "published per-item logs re-scored: every verdict agrees"),
    },
    rows={
        "Qwen2.5-VL-3B-Instruct (published)": {
            "superclevr": 64.1, "geoqa": 37.0, "refcoco_plain_avg": 75.3, "mathvision": 14.4, "mathverse": 27.6,
            "olympiadbench": 14.6, "mmmu": 40.5,
        },
        "Ocean-R1 GRPO-text 3B (published)": {
            "superclevr": 66.1, "geoqa": 38.7, "refcoco_avg": 2.4, "mathvision": 17.4, "mathverse": 31.5,
            "olympiadbench": 14.8, "mmmu": 43.4,
        },
        "Ocean-R1 GRPO-vis 3B (published)": {
            "superclevr": 93.4, "geoqa": 54.2, "refcoco_avg": 86.1, "mathvision": 19.1, "mathverse": 40.0,
            "olympiadbench": 15.5, "mmmu": 47.9,
        },
    },
    cell_comparability={
        ("Ocean-R1 GRPO-text 3B (published)", "mmmu"): (
            INFERRED, "43.4 matches no text-run log (checkpoint-6100: 44.0; the v1 text run's checkpoint-1600: 43.6); "
            "it equals the visual run's checkpoint-6200 (43.44)",
        ),
    },
)  # fmt: skip

_VLMEVALKIT = (
    "VLMEvalKit, a model judge extracting the answer (GPT-4 there: another judge may read differently)"
)

# The verl-based Ocean-R1 repository's README (Our Findings): its eval/ scripts for SuperCLEVR, GeoQA, RefCOCO and
# CV-Bench, VLMEvalKit for OCRBench and the math columns.
VERL_TABLE = PublishedTable(
    name="verl",
    source="github.com/VLM-RL/Ocean-R1, README.md, Our Findings",
    recipe="the verl recipe, two stages: params/qwen25vl_{3b,7b}_stage1.yaml then _stage2.yaml",
    checkpoints="the released models (minglingfeng/Ocean_R1_3B_Instruct, _7B_Instruct, the eval scripts' "
    "MODEL_PATH_list): stage 2's weights; which step the release is, is not published",
    protocol="eval/ scripts (greedy, rule-based) and VLMEvalKit (OCRBench rule; math columns: a model judge)",
    columns={
        "superclevr_verl": PublishedColumn("SuperCLEVR", SAME, "eval/test_qwen2d5vl_counting_superclevr_5k.py as written"),
        "geoqa_verl": PublishedColumn("GEOQA", SAME, "eval/test_qwen2d5vl_geoqa.py as written"),
        "refcoco_avg": PublishedColumn("RefCOCO/+/g AVG", SAME, "eval/test_qwen2d5vl_rec.py (VLM-R1's test_rec_r1.py)"),
        "refcoco_plain_avg": PublishedColumn("RefCOCO/+/g AVG (plain prompt)", INFERRED, _REC_BASE),
        "cvbench": PublishedColumn("CVBench", SAME, "its scoring lines agree with ours on 10,552 outputs"),
        "ocrbench": PublishedColumn("OCR Bench", INFERRED, "VLMEvalKit's rule; Ocean-R1's prompt for it is unpublished"),
        "mathvision_judge": PublishedColumn("MathVision", INFERRED, _VLMEVALKIT + "; split unpublished: full test", judge=True),
        "mathvista_judge": PublishedColumn("MathVista", INFERRED, _VLMEVALKIT + "; split unpublished: testmini", judge=True),
        "mathverse_judge": PublishedColumn(
            "MathVerse", INFERRED, _VLMEVALKIT + " and scoring it; split unpublished: MathVerse_MINI", judge=True
        ),
    },
    rows={
        "Qwen2.5-VL-3B-Instruct (published)": {
            "superclevr_verl": 64.1, "geoqa_verl": 38.9, "refcoco_plain_avg": 75.3, "cvbench": 66.5, "ocrbench": 74.6,
            "mathvision_judge": 21.2, "mathvista_judge": 62.3, "mathverse_judge": 35.4,
        },
        "Ocean-R1-3B-Instruct (published)": {
            "superclevr_verl": 87.3, "geoqa_verl": 56.4, "refcoco_avg": 85.5, "cvbench": 75.8, "ocrbench": 84.5,
            "mathvision_judge": 23.9, "mathvista_judge": 67.2, "mathverse_judge": 38.6,
        },
        "Qwen2.5-VL-7B-Instruct (published)": {
            "superclevr_verl": 72.0, "geoqa_verl": 47.5, "refcoco_plain_avg": 85.1, "cvbench": 74.5, "ocrbench": 82.3,
            "mathvision_judge": 25.1, "mathvista_judge": 68.2, "mathverse_judge": 47.9,
        },
        "Ocean-R1-7B-Instruct (published)": {
            "superclevr_verl": 94.6, "geoqa_verl": 69.7, "refcoco_avg": 86.8, "cvbench": 81.0, "ocrbench": 87.9,
            "mathvision_judge": 27.8, "mathvista_judge": 72.6, "mathverse_judge": 49.3,
        },
    },
)  # fmt: skip

PUBLISHED_TABLES: dict[str, PublishedTable] = {"v1": V1_TABLE, "verl": VERL_TABLE}
"""Ocean-R1's two published tables, by the value of ``eval.published_table`` that selects one."""


def protocol_of(column: str) -> str:
    """The protocol a benchmark column (or a RefCOCO average) reproduces, from the registry; "" if unknown."""
    from ocean_lib.evaluation.benchmarks import BENCHMARKS, REC_AVERAGES

    name = REC_AVERAGES[column][0] if column in REC_AVERAGES else column
    return BENCHMARKS[name].protocol if name in BENCHMARKS else ""


@dataclass(frozen=True)
class Cell:
    """An accuracy in percent, with its 95% interval when measured (None for published numbers), and how
    comparable it is with the published table's number in its column ("" where the column has none)."""

    value: float
    low: float | None = None
    high: float | None = None
    comparability: str = ""

    def text(self) -> str:
        if self.low is None or self.high is None or math.isnan(self.low):
            text = f"{self.value:.1f}"
        else:
            text = f"{self.value:.1f} ± {(self.high - self.low) / 2:.1f}"
        return f"{text} {MARKS[self.comparability]}" if self.comparability else text


@dataclass(frozen=True)
class Row:
    label: str
    cells: dict[str, Cell]
    reference: bool = False


@dataclass(frozen=True)
class ResultsTable:
    """Rows of models over benchmark columns; ``headers`` maps a column key to the header shown, ``protocols``
    to the reference protocol its numbers reproduce; ``published``: the published table set beside them."""

    columns: list[str]
    headers: dict[str, str]
    rows: list[Row]
    protocols: dict[str, str] = field(default_factory=dict)
    published: PublishedTable | None = None

    def markdown(self) -> str:
        """A Markdown table; cells read ``value ± half-width of the 95% CI`` and a comparability mark where a
        published table is beside them, published rows in italics; then the published table's source, recipe and
        checkpoints, the marks' legend with each column's reason, and one line per column naming its protocol."""
        lines = [
            "| Model | " + " | ".join(self.headers[c] for c in self.columns) + " |",
            "|---|" + "---:|" * len(self.columns),
        ]
        for row in self.rows:
            cells = [row.cells[c].text() if c in row.cells else "–" for c in self.columns]
            label = f"*{row.label}*" if row.reference else row.label
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        table = self.published
        if table is not None and any(c in table.columns for c in self.columns):
            lines += [
                "",
                f"Published rows: {table.source}; recipe: {table.recipe}; checkpoints: {table.checkpoints}; "
                f"protocol: {table.protocol}.",
                "",
                "Comparability: " + "; ".join(f"{MARKS[k]} {k}: {v}" for k, v in LEGEND.items()) + ".",
            ]
            lines += [
                f"- {self.headers[c]}: {column_comparability(table, c, self.rows)}, {table.columns[c].why}"
                for c in self.columns
                if c in table.columns
            ]
            lines += [
                f"- {self.headers[c]}, {row.label}: {table.cell_comparability[(row.label, c)][1]}"
                for row in self.rows
                for c in self.columns
                if (row.label, c) in table.cell_comparability
            ]
        named = [c for c in self.columns if self.protocols.get(c)]
        if named:
            lines += [
                "",
                "Protocols: " + "; ".join(f"{self.headers[c]}: {self.protocols[c]}" for c in named) + ".",
            ]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """One line per model and benchmark: accuracy and CI bounds in percent (empty where not measured), the
        column's protocol, and how comparable the cell is with the published number in its column."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = [
            "model",
            "benchmark",
            "accuracy",
            "ci_low",
            "ci_high",
            "reference",
            "protocol",
            "comparability",
        ]
        writer.writerow(header)
        for row in self.rows:
            for column in self.columns:
                if column in row.cells:
                    cell = row.cells[column]
                    bounds = ["" if b is None else f"{b:.2f}" for b in (cell.low, cell.high)]
                    writer.writerow(
                        [
                            row.label,
                            column,
                            f"{cell.value:.2f}",
                            *bounds,
                            int(row.reference),
                            self.protocols.get(column, ""),
                            cell.comparability,
                        ]
                    )
        return buffer.getvalue()

    def write(self, stem: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.md`` and ``<stem>.csv`` atomically; return their paths."""
        stem = Path(stem)
        markdown, table = stem.with_suffix(".md"), stem.with_suffix(".csv")
        atomic_write_text(markdown, self.markdown())
        atomic_write_text(table, self.csv())
        return markdown, table


def column_comparability(table: PublishedTable, column: str, rows: Sequence[Row]) -> str:
    """A column's comparability: its published table's, except that a judge column none of whose measured
    cells was judge-scored is not comparable."""
    judged = any(
        not row.reference and column in row.cells and row.cells[column].comparability != NOT_COMPARABLE
        for row in rows
    )
    if table.columns[column].judge and not judged:
        return NOT_COMPARABLE
    return table.columns[column].comparability


def load_summary(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A summary given as a dict, a ``summary.json`` path, or the model's evaluation directory."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    path = path / "summary.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation summary at {path}; run `python -m ocean_lib eval` first")
    return json.loads(path.read_text(encoding="utf-8"))


def results_table(
    models: Mapping[str, str | Path | Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    published: str = "v1",
) -> ResultsTable:
    """Build the result table.

    ``models`` maps a row label (e.g. "GRPO-vis") to that model's evaluation summary (dict, ``summary.json`` or
    its directory). ``columns`` are benchmark names (``refcoco_avg`` for the RefCOCO/+/g average); by default
    the published table's columns that some model has, then any others in the order first seen.
    ``published`` names the published table set beside them (:data:`PUBLISHED_TABLES`, ``eval.published_table``;
    "none": no published rows): its rows are appended when at least one column is one of its columns, and every
    cell of such a column says how comparable it is (:class:`PublishedTable`). A measured cell of a judge column
    is comparable only when its summary entry names the judge that scored it.
    """
    table = None if published == "none" else PUBLISHED_TABLES[published]
    summaries = {label: load_summary(source)["benchmarks"] for label, source in models.items()}
    if columns is None:
        seen = [name for benchmarks in summaries.values() for name in benchmarks]
        columns = [c for c in (table.columns if table else ()) if c in seen]
        columns += [c for c in dict.fromkeys(seen) if c not in columns]
    beside = table is not None and any(c in table.columns for c in columns)
    rows = []
    for label, benchmarks in summaries.items():
        cells = {}
        for column in columns:
            entry = benchmarks.get(column)
            if entry and entry.get("n"):
                low, high = entry["ci95"]
                comparability = ""
                if beside and column in table.columns:
                    judged = entry.get("judge") or not table.columns[column].judge
                    comparability = table.columns[column].comparability if judged else NOT_COMPARABLE
                cells[column] = Cell(100 * entry["accuracy"], 100 * low, 100 * high, comparability)
        rows.append(Row(label, cells))
    if beside:
        for label, numbers in table.rows.items():
            cells = {
                c: Cell(numbers[c], comparability=table.comparability(label, c))
                for c in columns
                if c in numbers
            }
            rows.append(Row(label, cells, reference=True))
        # A judge column nobody measured with a judge is not comparable in any of its cells, published ones too.
        for column in [c for c in columns if c in table.columns and table.columns[c].judge]:
            if column_comparability(table, column, rows) == NOT_COMPARABLE:
                rows = [
                    dataclasses.replace(
                        row,
                        cells={
                            **row.cells,
                            column: dataclasses.replace(row.cells[column], comparability=NOT_COMPARABLE),
                        },
                    )
                    if column in row.cells
                    else row
                    for row in rows
                ]
    first_titles, protocols = {}, {}
    for benchmarks in summaries.values():
        for name, entry in benchmarks.items():
            first_titles.setdefault(name, entry.get("title", name))
            if entry.get("protocol"):
                protocols.setdefault(name, entry["protocol"])
    headers = {
        c: table.columns[c].header if beside and c in table.columns else first_titles.get(c, c)
        for c in columns
    }
    protocols = {c: protocols.get(c) or protocol_of(c) for c in columns}
    return ResultsTable(
        list(columns), headers, rows, {c: p for c, p in protocols.items() if p}, table if beside else None
    )
