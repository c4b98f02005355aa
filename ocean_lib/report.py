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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocean_lib.io import atomic_write_text

# Column headers of the published table, keyed by our benchmark names.
PUBLISHED_COLUMNS: dict[str, str] = {
    "superclevr": "SuperCLEVR",
    "geoqa": "GEOQA",
    "refcoco_avg": "RefCOCO/+/g avg",
    "mathvision": "MathVision",
    "mathverse": "MathVerse",
    "olympiadbench": "OlympiadBench",
    "mmmu": "MMMU",
}

# Ocean-R1's README, Qwen2.5-VL-3B rows, in PUBLISHED_COLUMNS order (accuracy, percent).
PUBLISHED_ROWS: dict[str, tuple[float, ...]] = {
    "Qwen2.5-VL-3B-Instruct (published)": (64.1, 37.0, 75.3, 14.4, 27.6, 14.6, 40.5),
    "Ocean-R1 GRPO-text 3B (published)": (66.1, 38.7, 2.4, 17.4, 31.5, 14.8, 43.4),
    "Ocean-R1 GRPO-vis 3B (published)": (93.4, 54.2, 86.1, 19.1, 40.0, 15.5, 47.9),
}


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
    """Rows of models over benchmark columns; ``headers`` maps a column key to the header shown."""

    columns: list[str]
    headers: dict[str, str]
    rows: list[Row]

    def markdown(self) -> str:
        """A Markdown table; cells read ``value ± half-width of the 95% CI``, published rows in italics."""
        lines = [
            "| Model | " + " | ".join(self.headers[c] for c in self.columns) + " |",
            "|---|" + "---:|" * len(self.columns),
        ]
        for row in self.rows:
            cells = [row.cells[c].text() if c in row.cells else "–" for c in self.columns]
            label = f"*{row.label}*" if row.reference else row.label
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """One line per model and benchmark: accuracy and CI bounds in percent (empty where not measured)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["model", "benchmark", "accuracy", "ci_low", "ci_high", "reference"])
        for row in self.rows:
            for column in self.columns:
                if column in row.cells:
                    cell = row.cells[column]
                    bounds = ["" if b is None else f"{b:.2f}" for b in (cell.low, cell.high)]
                    writer.writerow([row.label, column, f"{cell.value:.2f}", *bounds, int(row.reference)])
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
        for label, values in PUBLISHED_ROWS.items():
            published = dict(zip(PUBLISHED_COLUMNS, values, strict=True))
            rows.append(
                Row(label, {c: Cell(published[c]) for c in columns if c in published}, reference=True)
            )
    first_titles = {}
    for benchmarks in summaries.values():
        for name, entry in benchmarks.items():
            first_titles.setdefault(name, entry.get("title", name))
    headers = {c: PUBLISHED_COLUMNS.get(c, first_titles.get(c, c)) for c in columns}
    return ResultsTable(list(columns), headers, rows)
