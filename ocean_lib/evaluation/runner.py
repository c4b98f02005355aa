"""Evaluate a checkpoint on registered benchmarks: greedy generation, rule scoring, resumable JSON-lines outputs.

For a model called ``<model-name>`` the runner writes, under ``eval.output_dir``::

    <model-name>/<benchmark>.jsonl          one line per item: id, subset, prompt, output, extracted, answer,
                                            correct, format_ok, n_tokens, truncated
    <model-name>/<benchmark>.settings.json  the settings the lines were produced with
    <model-name>/<benchmark>.ids.json       the items the latest summary covers, in order
    <model-name>/summary.json               per benchmark: accuracy with bootstrap 95% CI, n, per-subset accuracy,
                                            format-compliance rate, mean output length, truncation rate, settings

Lines are appended one batch at a time with fsync, so a crash loses at most the batch in flight; a rerun skips
every item already written and refuses to mix outputs produced with different settings. Before any generation
(before the model is even loaded) every image the pending items need is opened once; a missing or unreadable
image stops the run with the count, the first paths and the directory searched.

Sharding: ``shard=(k, n)`` evaluates items ``k, k+n, k+2n, ...`` into ``<benchmark>.shard-k-of-n.jsonl``; the
summary merges all shards. The command line takes ``k, n`` from accelerate's process index and count, so
``accelerate launch --num_processes 8 -m ocean_lib eval ...`` spreads a benchmark over 8 GPUs.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ocean_lib import prompts
from ocean_lib.config import RunConfig, to_dict
from ocean_lib.data.images import ImageError, prepare_images
from ocean_lib.evaluation.benchmarks import REC_SPLITS, Benchmark, Item, get_benchmark
from ocean_lib.evaluation.stats import bootstrap_accuracy
from ocean_lib.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from ocean_lib.rewards import format_ok

MISSING_SHOWN = 5  # paths listed in a missing-image error


class MissingImagesError(FileNotFoundError):
    """Images a run needs are missing or unreadable; raised before anything is generated."""


class SettingsMismatchError(RuntimeError):
    """An output file holds results produced with other settings than the current run's."""


# ----------------------------------------------------------------------------------------------------------------
# Planning: which items, which files, which settings
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """One benchmark's work in this run: every selected item (all shards) and this shard's pending items."""

    benchmark: Benchmark
    items: list[Item]
    pending: list[Item]
    image_root: Path
    output: Path
    settings: dict[str, Any]


def model_name_of(model_path: str | Path) -> str:
    """The output directory name for a checkpoint: its directory name, prefixed by the run's name when the
    directory is a generic one (``final``, ``step_50``, ``checkpoint-100``); for hub ids the part after ``/``."""
    path = Path(str(model_path).rstrip("/"))
    if re.fullmatch(r"final|step_\d+|checkpoint-\d+", path.name) and path.parent.name:
        parent = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return f"{parent.name}_{path.name}"
    return path.name


def shard_output(directory: Path, name: str, shard: tuple[int, int]) -> Path:
    index, count = shard
    return directory / (f"{name}.jsonl" if count == 1 else f"{name}.shard-{index}-of-{count}.jsonl")


def result_files(directory: Path, name: str) -> list[Path]:
    """Every file holding results of benchmark ``name`` (the unsharded file and any shard files)."""
    return sorted(
        p
        for p in directory.glob(f"{name}*.jsonl")
        if re.fullmatch(rf"{re.escape(name)}(\.shard-\d+-of-\d+)?\.jsonl", p.name)
    )


def drop_torn_tail(path: Path) -> None:
    """Cut a partial last line (a crash mid-append) so that the next append starts on a line boundary."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)


def done_ids(directory: Path, name: str) -> set[str]:
    return {row["id"] for path in result_files(directory, name) for row in read_jsonl(path)}


def generation_budget(benchmark: Benchmark, cfg: RunConfig, cap: int | None) -> int:
    """The benchmark's max_new_tokens, capped by ``rollout.max_new_tokens`` and by ``cap`` when given."""
    return min(benchmark.max_new_tokens, cfg.rollout.max_new_tokens, *([cap] if cap else []))


def run_settings(
    benchmark: Benchmark, model_path: str | Path, cfg: RunConfig, cap: int | None
) -> dict[str, Any]:
    """Everything that changes what the model is asked or how it answers; resumed outputs must match it."""
    return {
        "benchmark": benchmark.name,
        "model": str(Path(model_path).resolve()) if Path(model_path).exists() else str(model_path),
        "weights": weights_fingerprint(model_path),
        "max_new_tokens": generation_budget(benchmark, cfg, cap),
        "decoding": "greedy",
        "backend": cfg.rollout.backend,
        "dtype": cfg.model.dtype,
        "min_pixels": cfg.data.min_pixels,
        "max_pixels": cfg.data.max_pixels,
        "scoring": benchmark.score.__name__,
    }


def weights_fingerprint(model_path: str | Path) -> str:
    """Name, size and modification time of a local checkpoint's weight files, hashed: a model retrained in
    place gets a new fingerprint, so its old answers are not reused. A hub id gives "" (its revision is fixed)."""
    path = Path(model_path)
    if not path.is_dir():
        return ""
    files = sorted(p for pattern in ("*.safetensors", "*.bin") for p in path.glob(pattern))
    listing = "".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns};" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Record the settings beside a results file, or check them against the recorded ones."""
    if not path.exists():
        atomic_write_json(path, settings)
        return
    recorded = json.loads(path.read_text(encoding="utf-8"))
    differing = {
        key: (recorded.get(key), value) for key, value in settings.items() if recorded.get(key) != value
    }
    if differing:
        changes = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in differing.items())
        raise SettingsMismatchError(
            f"{path.parent} holds {settings['benchmark']} results made with other settings ({changes}). "
            "Use another output directory or model name, or delete those files to start over."
        )


def check_images(plans: Sequence[Plan]) -> None:
    """Open every image the pending items need; raise :class:`MissingImagesError` if any is missing or broken."""
    problems: list[str] = []
    for plan in plans:
        bad, total = [], 0
        for item in plan.pending:
            for image in item.images:
                total += 1
                if not image.found:
                    bad.append(f"{image.source} (not found)")
                    continue
                try:
                    image.open()
                except ImageError as error:
                    bad.append(f"{image.path or image.source} (unreadable: {error})")
        if bad:
            shown = "\n    ".join(bad[:MISSING_SHOWN])
            problems.append(
                f"{plan.benchmark.name}: {len(bad)} of {total} images missing or unreadable; searched under "
                f"{plan.image_root.resolve()} (each path, then its trailing components). First:\n    {shown}"
            )
    if problems:
        raise MissingImagesError(
            "cannot evaluate, images are missing (nothing was generated):\n  "
            + "\n  ".join(problems)
            + "\nSee `python -m ocean_lib data fetch-benchmarks --help` for where each benchmark's images come from."
        )


def plan_benchmarks(
    model_path: str | Path,
    names: Sequence[str],
    cfg: RunConfig,
    output_dir: Path,
    cap: int | None,
    max_items: int,
    shard: tuple[int, int],
) -> list[Plan]:
    """Load every benchmark's items, select this run's, and find which are still to do."""
    plans = []
    for name in names:
        benchmark = get_benchmark(name)
        home = Path(cfg.eval.data_root if benchmark.home == "benchmarks" else cfg.data.synthetic.output_dir)
        items = benchmark.load_items(home)
        items = items[:max_items] if max_items > 0 else items
        output = shard_output(output_dir, name, shard)
        drop_torn_tail(output)
        finished = done_ids(output_dir, name)
        mine = items[shard[0] :: shard[1]]
        plans.append(
            Plan(
                benchmark=benchmark,
                items=items,
                pending=[item for item in mine if item.id not in finished],
                image_root=home / benchmark.image_root,
                output=output,
                settings=run_settings(benchmark, model_path, cfg, cap),
            )
        )
    return plans


# ----------------------------------------------------------------------------------------------------------------
# Generating and scoring
# ----------------------------------------------------------------------------------------------------------------


def prepare(item: Item, benchmark: Benchmark, cfg: RunConfig) -> tuple[prompts.Prompt, Item]:
    """The model input for an item, and the item as scored (a grounding box follows its resized image)."""
    images, answer = prepare_images(
        item.images,
        item.answer,
        box_truth=benchmark.reward_func == "iou",
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
    )
    return prompts.Prompt(content=item.prompt, images=images), dataclasses.replace(item, answer=answer)


def evaluate_plan(engine: Any, plan: Plan, cfg: RunConfig, progress: bool) -> None:
    """Generate greedily for the plan's pending items, batch by batch, appending scored lines as they finish."""
    benchmark, budget = plan.benchmark, plan.settings["max_new_tokens"]
    batch_size = cfg.eval.batch_size
    with tqdm(total=len(plan.pending), desc=benchmark.name, unit="item", disable=not progress) as bar:
        for start in range(0, len(plan.pending), batch_size):
            prepared = [prepare(item, benchmark, cfg) for item in plan.pending[start : start + batch_size]]
            batch = engine.generate([p for p, _ in prepared], n=1, greedy=True, max_new_tokens=budget)
            rows = []
            for (_, item), text, length, finished in zip(
                prepared, batch.texts, batch.completion_lengths, batch.finished, strict=True
            ):
                verdict = benchmark.score(text, item)
                rows.append(
                    {
                        "id": item.id,
                        "subset": item.subset,
                        "prompt": item.prompt,
                        "output": text,
                        "extracted": verdict.extracted,
                        "answer": item.answer,
                        "correct": verdict.correct,
                        "format_ok": bool(format_ok(text, benchmark.reward_func)),
                        "n_tokens": int(length),
                        "truncated": not finished,
                    }
                )
            append_jsonl(plan.output, rows)
            bar.update(len(rows))


# ----------------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------------


def rows_for(directory: Path, name: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The result lines of benchmark ``name`` for the given item ids, in item order (missing ids left out)."""
    by_id = {row["id"]: row for path in result_files(directory, name) for row in read_jsonl(path)}
    return [by_id[i] for i in ids if i in by_id]


def summarize(rows: list[dict[str, Any]], n_items: int, cfg: RunConfig) -> dict[str, Any]:
    """Accuracy with its bootstrap 95% CI, per-subset accuracies, format compliance and output length."""
    correct = [bool(row["correct"]) for row in rows]
    interval = bootstrap_accuracy([correct], cfg.eval.bootstrap_samples, cfg.eval.seed)
    subsets: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        if row.get("subset"):
            subsets[row["subset"]].append(bool(row["correct"]))
    n = len(rows)
    return {
        "accuracy": interval.value,
        "ci95": [interval.low, interval.high],
        "n": n,
        "complete": n == n_items,
        "per_subset": {
            name: {"accuracy": sum(values) / len(values), "n": len(values)}
            for name, values in sorted(subsets.items())
        },
        "format_rate": sum(bool(row["format_ok"]) for row in rows) / n if n else float("nan"),
        "mean_output_tokens": sum(row["n_tokens"] for row in rows) / n if n else float("nan"),
        "truncated_rate": sum(bool(row["truncated"]) for row in rows) / n if n else float("nan"),
    }


def group_average(directory: Path, names: Sequence[str], cfg: RunConfig) -> dict[str, Any] | None:
    """The mean of several benchmarks' accuracies (the table's RefCOCO/+/g column, or the miniature's visual
    average), with a stratified bootstrap CI that resamples each benchmark's items within itself.

    Uses the items each benchmark's latest summary covers; None if one of them has not been summarised.
    """
    if not all((directory / f"{name}.ids.json").exists() for name in names):
        return None
    rows = {name: rows_for(directory, name, item_ids(directory, name)) for name in names}
    groups = [[bool(row["correct"]) for row in rows[name]] for name in names]
    interval = bootstrap_accuracy(groups, cfg.eval.bootstrap_samples, cfg.eval.seed)
    return {
        "accuracy": interval.value,
        "ci95": [interval.low, interval.high],
        "n": sum(len(group) for group in groups),
        "complete": all(len(rows[name]) == len(item_ids(directory, name)) for name in names),
        "of": list(names),
    }


def item_ids(directory: Path, name: str) -> list[str]:
    """The ids of the items the benchmark's latest summary covers, in order (``<benchmark>.ids.json``)."""
    return json.loads((directory / f"{name}.ids.json").read_text(encoding="utf-8"))


def write_summary(
    directory: Path, model_path: str | Path, plans: Sequence[Plan], cfg: RunConfig
) -> dict[str, Any]:
    """Update ``summary.json`` with this run's benchmarks (entries of other benchmarks are kept)."""
    path = directory / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"benchmarks": {}}
    summary["model"] = str(model_path)
    for plan in plans:
        name = plan.benchmark.name
        ids = [item.id for item in plan.items]
        atomic_write_json(directory / f"{name}.ids.json", ids)
        entry = summarize(rows_for(directory, name, ids), len(ids), cfg)
        entry.update(
            title=plan.benchmark.title, n_items=len(ids), settings=plan.settings, note=plan.benchmark.note
        )
        summary["benchmarks"][name] = entry
    average = group_average(directory, REC_SPLITS, cfg)
    if average is not None:
        summary["benchmarks"]["refcoco_avg"] = {**average, "title": "RefCOCO/+/g average"}
    summary["eval_config"] = to_dict(cfg.eval)
    atomic_write_json(path, summary)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# The entry points
# ----------------------------------------------------------------------------------------------------------------


def run(
    model_path: str | Path,
    benchmarks: Sequence[str] | None = None,
    cfg: RunConfig | None = None,
    max_new_tokens_cap: int | None = None,
    *,
    model_name: str | None = None,
    max_items: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_path`` (checkpoint directory or hub id) on ``benchmarks`` and return ``summary.json``.

    Defaults come from ``cfg.eval`` (benchmarks, data_root, batch_size, max_items, output_dir). Each benchmark
    generates at most its own max_new_tokens, capped by ``cfg.rollout.max_new_tokens`` and by
    ``max_new_tokens_cap`` (the miniature uses small caps). Items already in the output files are skipped; the
    model is loaded only if something is left to generate.
    """
    cfg = cfg or RunConfig()
    names = list(benchmarks or cfg.eval.benchmarks)
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {shard}: expected (index, count) with 0 <= index < count")
    directory = Path(cfg.eval.output_dir) / (model_name or model_name_of(model_path))
    limit = cfg.eval.max_items if max_items is None else max_items
    plans = plan_benchmarks(model_path, names, cfg, directory, max_new_tokens_cap, limit, shard)
    for plan in plans:
        check_settings(directory / f"{plan.benchmark.name}.settings.json", plan.settings)
    check_images(plans)
    show = cfg.logging.progress if progress is None else progress
    if any(plan.pending for plan in plans):
        engine = load_engine(model_path, cfg)
        for plan in plans:
            evaluate_plan(engine, plan, cfg, show)
    return write_summary(directory, model_path, plans, cfg)


def load_engine(model_path: str | Path, cfg: RunConfig) -> Any:
    """The policy, on this process's device, behind the configured rollout engine."""
    import torch

    from ocean_lib.models import load_policy
    from ocean_lib.rollout import make_engine

    model, processor = load_policy(
        str(model_path),
        dtype=cfg.model.dtype,
        attn_implementation=cfg.model.attn_implementation,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
    )
    if torch.cuda.is_available():
        from accelerate import PartialState

        model.to(PartialState().device)
    return make_engine(model, processor, cfg.rollout)


def export_vlmevalkit(jsonl: str | Path, destination: str | Path) -> Path:
    """Write a results file as a VLMEvalKit-style prediction table (TSV: index, question, answer, prediction,
    category), so that VLMEvalKit users can re-score our outputs with their judge.

    ``question`` is the user turn without image markers and instruction; ``prediction`` is the full output.
    The ``index`` values are our item ids, so join on the question when merging with VLMEvalKit's own TSV.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["index", "question", "answer", "prediction", "category"])
    for row in read_jsonl(jsonl):
        _, text = prompts.split_image_markers(row["prompt"])
        for instruction in prompts.INSTRUCTIONS.values():
            text = text.removesuffix(instruction).rstrip()
        writer.writerow([row["id"], text, row["answer"], row["output"], row.get("subset", "")])
    atomic_write_text(destination, buffer.getvalue())
    return Path(destination)


def evaluate(
    model_path: str | Path,
    names: Sequence[str] | None,
    cfg: RunConfig,
    *,
    model_name: str | None = None,
    max_items: int | None = None,
    max_new_tokens_cap: int | None = None,
) -> dict[str, Any] | None:
    """:func:`run`, sharded over accelerate's processes (``accelerate launch -m ocean_lib eval`` spreads the items).

    Returns the summary of all shards on the main process, None on the others.
    """
    from accelerate import PartialState

    state = PartialState()
    options = dict(model_name=model_name, max_items=max_items, max_new_tokens_cap=max_new_tokens_cap)
    summary = run(
        model_path,
        names,
        cfg,
        shard=(state.process_index, state.num_processes),
        progress=cfg.logging.progress and state.is_local_main_process,
        **options,
    )
    if state.num_processes > 1:  # every shard is written: the main process summarises them together
        state.wait_for_everyone()
        if state.is_main_process:
            summary = run(model_path, names, cfg, progress=False, **options)
    return summary if state.is_main_process else None
