"""Do our loaders and scorers give the verdicts Ocean-R1 published? Re-score its per-item evaluation logs.

The first Ocean-R1 repository publishes, in ``src/eval/logs/eval/``, one JSON file per model and benchmark:
``{"accuracy", "results": [...]}`` with every item's fields (images removed), the model's full output and the
verdict of its own script. This script reads those files from a directory given on the command line (nothing
of them is kept in this repository), writes each log's items back in the layout our registry reads (the
benchmark's own annotation format, under a scratch data root) and its outputs as ``{"id", "output"}`` lines,
re-scores them with :func:`ocean_lib.evaluation.rescore` exactly as a user's stored outputs would be (the
registry's loader, the benchmark's scorer, the reward workers and their deadline), and compares every item's
verdict with the published one.

Published verdicts: ``is_correct`` where the log has it; the SuperCLEVR logs have none, and their script's
verdict is ``extracted_answer is not None and extracted_answer == ground_truth``.

    python -m ocean_lib verdicts --logs DIR [--work DIR] [--only PREFIX,...] [--timeout 5]

Prints one line per log (items, published accuracy, ours, verdicts that agree, the first disagreements) and
one line per benchmark, and writes ``<work>/published_verdicts.json``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ocean_lib.base.config import load_config
from ocean_lib.base.io import read_jsonl
from ocean_lib.base.schema import RunConfig
from ocean_lib.evaluation import rescore

# Log file name prefix -> our benchmark (the registry name whose protocol produced the log).
LOG_BENCHMARKS = {
    "counting_superclevr_5k_": "superclevr",
    "counting_results_superclevr_5k_": "superclevr",
    "superclevr_test200_counting_": "superclevr200",
    "geoqa_grpo_": "geoqa",
    "mmmu_validation_": "mmmu",
    "MathLLMs_MathVision_testmini_": "mathvision_testmini",
    "mathvision_testmini_": "mathvision_testmini",
    "xyliu6_mathverse_vision_dominant_train_": "mathverse_vision_dominant",
}


def benchmark_of(log: Path) -> str | None:
    return next((name for prefix, name in LOG_BENCHMARKS.items() if log.name.startswith(prefix)), None)


def published_verdict(benchmark: str, result: dict[str, Any]) -> bool:
    if "is_correct" in result:
        value = result["is_correct"]
        return value if isinstance(value, bool) else str(value) == "True"
    extracted = result.get("extracted_answer")  # the counting scripts store none
    return extracted is not None and extracted == result["question"]["ground_truth"]


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_annotations(benchmark: str, results: list[dict[str, Any]], root: Path) -> None:
    """The log's items in the benchmark's own annotation layout, where the registry looks for it."""
    if benchmark in ("superclevr", "superclevr200", "geoqa"):
        name = {
            "superclevr": "superclevr/super_clevr_test_5k.jsonl",
            "superclevr200": "superclevr/superclevr_test200_counting_problems.jsonl",
            "geoqa": "geoqa/geoqa_test_prompts.jsonl",
        }[benchmark]
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(json.dumps(r["question"]) + "\n" for r in results), encoding="utf-8")
    elif benchmark == "mmmu":  # one parquet per subject; the script had appended "\nChoices: ..." to question
        by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for item_id, r in zip(item_ids(benchmark, results), results, strict=True):
            options = r.get("options") or "[]"
            question = r["question"].split("\nChoices: ")[0] if ast.literal_eval(options) else r["question"]
            row = {"id": item_id, "options": options, "answer": r["ground_truth"], "question": question}
            row.update({f"image_{k}": None for k in range(1, 8)})
            by_subject[item_id.split("_", 1)[1].rsplit("_", 1)[0]].append(row)
        for subject, rows in by_subject.items():
            write_parquet(root / "mmmu" / subject / "validation-00000-of-00001.parquet", rows)
    elif benchmark == "mathvision_testmini":
        rows = []
        for item_id, r in zip(item_ids(benchmark, results), results, strict=True):
            options = r.get("options") or []
            rows.append(
                {
                    "id": item_id,
                    "question": r["question"],
                    "options": options if isinstance(options, list) else ast.literal_eval(options),
                    "answer": str(r["ground_truth"]),
                    "image": r.get("image"),
                    "subject": r.get("subject", ""),
                }
            )
        write_parquet(root / "mathvision/data/testmini-00000-of-00001.parquet", rows)
    elif benchmark == "mathverse_vision_dominant":
        rows = [{"problem": r["problem"], "solution": r["solution"], "image": None} for r in results]
        write_parquet(root / "mathverse_vision_dominant/data/train-00000-of-00001.parquet", rows)
    else:
        raise ValueError(f"no layout for {benchmark}")


def item_ids(benchmark: str, results: list[dict[str, Any]]) -> list[str]:
    """The registry's id of each log entry, in log order (logs of older script versions kept no ``id``: their
    position stands in)."""
    if benchmark == "mmmu":
        return [str(r.get("id") or f"validation_Unknown_{index}") for index, r in enumerate(results)]
    if benchmark == "mathvision_testmini":
        return [str(r.get("id") or index) for index, r in enumerate(results)]
    return [str(index) for index in range(len(results))]


def script_version(benchmark: str, log: Path, results: list[dict[str, Any]]) -> str:
    """``current`` for logs in the format the repository's script writes, ``older`` for earlier versions of it
    (other file naming, fewer fields), whose scoring may have differed."""
    if benchmark == "mathvision_testmini" and not log.name.startswith("MathLLMs_"):
        return "older"
    if benchmark == "mmmu" and "id" not in results[0]:
        return "older"
    return "current"


def measure(log: Path, benchmark: str, work: Path, cfg: RunConfig) -> dict[str, Any]:
    data = json.loads(log.read_text(encoding="utf-8"))
    results = data["results"]
    root, outputs = work / log.stem / "data", work / log.stem / "outputs"
    write_annotations(benchmark, results, root)
    ids = item_ids(benchmark, results)
    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / f"{benchmark}.jsonl").write_text(
        "".join(
            json.dumps({"id": i, "output": r["model_output"]}) + "\n"
            for i, r in zip(ids, results, strict=True)
        ),
        encoding="utf-8",
    )
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, data_root=str(root)))
    start = time.monotonic()
    summary = rescore(outputs, [benchmark], cfg)
    ours = {row["id"]: row for row in read_jsonl(outputs / f"{benchmark}.jsonl") if "correct" in row}
    published = [published_verdict(benchmark, r) for r in results]
    verdicts = [bool(ours[i]["correct"]) for i in ids]
    differing = [(i, p, v) for i, p, v in zip(ids, published, verdicts, strict=True) if p != v]
    return {
        "log": log.name,
        "benchmark": benchmark,
        "script": script_version(benchmark, log, results),
        "items": len(results),
        "published_accuracy": float(data["accuracy"]) / (100 if float(data["accuracy"]) > 1 else 1),
        "published_verdicts_accuracy": sum(published) / len(published),
        "our_accuracy": summary["benchmarks"][benchmark]["accuracy"],
        "agree": len(results) - len(differing),
        "agreement": 1 - len(differing) / len(results),
        "timed_out": sum(bool(ours[i].get("timed_out")) for i in ids),
        "differing": [
            {"id": i, "published": p, "ours": v, "output_tail": results[ids.index(i)]["model_output"][-160:]}
            for i, p, v in differing[:5]
        ],
        "seconds": round(time.monotonic() - start, 1),
    }


def main(args: argparse.Namespace) -> int:
    """Measure every log under ``args.logs``; print a line per log and per benchmark; write the JSON report."""
    work = Path(args.work or tempfile.mkdtemp(prefix="published_verdicts_"))
    logs = sorted(p for p in Path(args.logs).glob("*.json") if benchmark_of(p))
    if args.only:
        logs = [p for p in logs if any(p.name.startswith(prefix) for prefix in args.only.split(","))]
    cfg = load_config(None, [f"reward.timeout_s={args.timeout}", "logging.progress=false"])
    measured = []
    for log in logs:
        try:
            entry = measure(log, benchmark_of(log), work, cfg)
        except (json.JSONDecodeError, KeyError) as error:  # a truncated or foreign file: say so, go on
            print(f"{log.name}: skipped ({type(error).__name__}: {str(error)[:80]})", file=sys.stderr)
            continue
        measured.append(entry)
        print(
            f"{entry['benchmark']:26s} {entry['items']:5d} items  published {100 * entry['published_accuracy']:6.2f}"
            f"  ours {100 * entry['our_accuracy']:6.2f}  agree {100 * entry['agreement']:6.2f}%"
            f"  ({entry['items'] - entry['agree']} differ, {entry['timed_out']} timed out)  {entry['script']:7s}  {log.name[:90]}",
            flush=True,
        )
    per_benchmark: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(f"{entry['benchmark']} ({entry['script']} script)" for entry in measured):
        entries = [e for e in measured if f"{e['benchmark']} ({e['script']} script)" == name]
        items, agree = sum(e["items"] for e in entries), sum(e["agree"] for e in entries)
        per_benchmark[name] = {
            "logs": len(entries),
            "items": items,
            "agreement": agree / items,
            "lowest_log_agreement": min(e["agreement"] for e in entries),
        }
        print(
            f"{name}: {len(entries)} logs, {items} items, agreement {100 * agree / items:.2f}% "
            f"(lowest log {100 * per_benchmark[name]['lowest_log_agreement']:.2f}%)"
        )
    report = work / "published_verdicts.json"
    report.write_text(
        json.dumps({"per_benchmark": per_benchmark, "logs": measured}, indent=2), encoding="utf-8"
    )
    print(f"written: {report}")
    return 0
