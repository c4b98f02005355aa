"""The result table of the study: rows are models, columns are benchmarks, cells are accuracy ± 95% CI.

It reads the ``summary.json`` files the evaluation writes and renders Markdown (for the README and the
notebooks) and CSV (for anything else). Ocean-R1's published 3B numbers are added as reference rows in the
columns that measure the same thing; they carry no interval because none was published.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocean_lib.base.io import atomic_write_text

# Column headers of the published table, keyed by our benchmark names. The published base model's RefCOCO
# number most likely comes from VLM-R1's baseline script (plain prompt, first box anywhere; Ocean-R1's own REC
# script reads a base model's box only inside answer tags), so it gets its own column.
PUBLISHED_COLUMNS: dict[str, str] = {
    "superclevr": "SuperCLEVR",
    "geoqa": "GEOQA",
    "refcoco_avg": "RefCOCO/+/g avg",
    "refcoco_plain_avg": "RefCOCO/+/g avg (plain prompt)",
    "mathvision": "MathVision",
    "mathverse": "MathVerse",
    "olympiadbench": "OlympiadBench",
    "mmmu": "MMMU",
}

# The first Ocean-R1 repository's README, Qwen2.5-VL-3B rows (accuracy, percent), all produced by its own
# src/eval scripts; the benchmarks' protocols reproduce them (see ocean_lib.evaluation.benchmarks).
PUBLISHED_ROWS: dict[str, dict[str, float]] = {
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
}  # fmt: skip


def protocol_of(column: str) -> str:
    """The protocol a benchmark column (or a RefCOCO average) reproduces, from the registry; "" if unknown."""
    from ocean_lib.evaluation.benchmarks import BENCHMARKS, REC_AVERAGES

    name = REC_AVERAGES[column][0] if column in REC_AVERAGES else column
    return BENCHMARKS[name].protocol if name in BENCHMARKS else ""


@dataclass(frozen=True)
class Cell:
    """An accuracy in percent, with its 95% interval when measured (None for published numbers)."""

    value: float
    low: float | None = None
    high: float | None = None

    def text(self) -> str:
        if self.low is None or self.high is None or math.isnan(self.low):
            return f"{self.value:.1f}"
        return f"{self.value:.1f} ± {(self.high - self.low) / 2:.1f}"


@dataclass(frozen=True)
class Row:
    label: str
    cells: dict[str, Cell]
    reference: bool = False


@dataclass(frozen=True)
class ResultsTable:
    """Rows of models over benchmark columns; ``headers`` maps a column key to the header shown, ``protocols``
    to the reference protocol its numbers reproduce."""

    columns: list[str]
    headers: dict[str, str]
    rows: list[Row]
    protocols: dict[str, str] = field(default_factory=dict)

    def markdown(self) -> str:
        """A Markdown table; cells read ``value ± half-width of the 95% CI``, published rows in italics; then one
        line per column naming its protocol."""
        lines = [
            "| Model | " + " | ".join(self.headers[c] for c in self.columns) + " |",
            "|---|" + "---:|" * len(self.columns),
        ]
        for row in self.rows:
            cells = [row.cells[c].text() if c in row.cells else "–" for c in self.columns]
            label = f"*{row.label}*" if row.reference else row.label
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        named = [c for c in self.columns if self.protocols.get(c)]
        if named:
            lines += [
                "",
                "Protocols: " + "; ".join(f"{self.headers[c]}: {self.protocols[c]}" for c in named) + ".",
            ]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """One line per model and benchmark: accuracy and CI bounds in percent (empty where not measured), and
        the column's protocol."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["model", "benchmark", "accuracy", "ci_low", "ci_high", "reference", "protocol"])
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
    reference: bool = True,
) -> ResultsTable:
    """Build the result table.

    ``models`` maps a row label (e.g. "GRPO-vis") to that model's evaluation summary (dict, ``summary.json`` or
    its directory). ``columns`` are benchmark names (``refcoco_avg`` for the RefCOCO/+/g average); by default
    the published table's columns that some model has, then any others in the order first seen. With
    ``reference``, Ocean-R1's published rows are appended when at least one column matches theirs.
    """
    summaries = {label: load_summary(source)["benchmarks"] for label, source in models.items()}
    if columns is None:
        seen = [name for benchmarks in summaries.values() for name in benchmarks]
        columns = [c for c in PUBLISHED_COLUMNS if c in seen]
        columns += [c for c in dict.fromkeys(seen) if c not in columns]
    rows = []
    for label, benchmarks in summaries.items():
        cells = {}
        for column in columns:
            entry = benchmarks.get(column)
            if entry and entry.get("n"):
                low, high = entry["ci95"]
                cells[column] = Cell(100 * entry["accuracy"], 100 * low, 100 * high)
        rows.append(Row(label, cells))
    if reference and any(c in PUBLISHED_COLUMNS for c in columns):
        for label, published in PUBLISHED_ROWS.items():
            rows.append(
                Row(label, {c: Cell(published[c]) for c in columns if c in published}, reference=True)
            )
    first_titles, protocols = {}, {}
    for benchmarks in summaries.values():
        for name, entry in benchmarks.items():
            first_titles.setdefault(name, entry.get("title", name))
            if entry.get("protocol"):
                protocols.setdefault(name, entry["protocol"])
    headers = {c: PUBLISHED_COLUMNS.get(c, first_titles.get(c, c)) for c in columns}
    protocols = {c: protocols.get(c) or protocol_of(c) for c in columns}
    return ResultsTable(list(columns), headers, rows, {c: p for c, p in protocols.items() if p})
