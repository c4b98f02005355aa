"""Evaluate a checkpoint on registered benchmarks: greedy generation, rule scoring, resumable JSON-lines outputs.

For a model called ``<model-name>`` the runner writes, under ``eval.output_dir``::

    <model-name>/<benchmark>.jsonl          one line per item: id, subset, prompt, output, extracted, answer,
                                            correct, format_ok, n_tokens, truncated, timed_out, image,
                                            input_fp, score_fp, written
    <model-name>/<benchmark>.settings.json  the settings the outputs were generated with (written with the first)
    <model-name>/<benchmark>.ids.json       the items the latest summary covers, in order
    <model-name>/summary.json               per benchmark: accuracy with bootstrap 95% CI, n, per-subset accuracy,
                                            format-compliance rate, mean output length, truncation rate, settings,
                                            the protocol it reproduces

Lines are appended one batch at a time with fsync, so a crash loses at most the batch in flight. For every item
the **latest** line (``written``) stands. A rerun reuses a line only while it is fresh: ``input_fp`` hashes what
the model was asked (prompt and images), ``score_fp`` what its output was scored against (ground truth, options,
subset, and the scoring code: the scorer, the rule modules' source, math-verify's version). An item whose input
changed is generated again; one whose ground truth or scorer changed is re-scored from its stored output, without
the model. Outputs produced with other generation settings (model weights, budget, dtype, image limits, ...) are
refused. :func:`rescore` re-scores stored outputs on demand, also ones another harness wrote as
``{"id", "output"}`` lines. Scoring runs in the reward workers, each output under ``reward.timeout_s``.

Before any generation (before the model is even loaded) every image the pending items need is opened once; a
missing or unreadable image stops the run with the count, the first paths and the directory searched.

Sharding: ``shard=(k, n)`` evaluates items ``k, k+n, k+2n, ...`` into ``<benchmark>.shard-k-of-n.jsonl``; the
summary merges all shards. The command line takes ``k, n`` from accelerate's process index and count, so
``accelerate launch --num_processes 8 -m ocean_lib eval ...`` spreads a benchmark over 8 GPUs.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import importlib.metadata
import inspect
import io
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ocean_lib.base import prompts
from ocean_lib.base.config import to_dict
from ocean_lib.base.io import DirectoryLock, append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from ocean_lib.base.schema import RunConfig
from ocean_lib.data.images import ImageError, prepare_images, rescale_box_truth
from ocean_lib.evaluation import judge, scorers
from ocean_lib.evaluation.benchmarks import (
    BENCHMARKS,
    REC_AVERAGES,
    Benchmark,
    BenchmarkDataError,
    Item,
    get_benchmark,
)
from ocean_lib.evaluation.items import Verdict
from ocean_lib.evaluation.stats import bootstrap_accuracy
from ocean_lib.rewards import format_ok, rules
from ocean_lib.rewards.scoring import run_bounded

MISSING_SHOWN = 5  # paths listed in a missing-image error


class MissingImagesError(FileNotFoundError):
    """Images a run needs are missing or unreadable; raised before anything is generated."""


class SettingsMismatchError(RuntimeError):
    """An output file holds results produced with other settings than the current run's."""


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints: when a stored line still answers, and still scores, the current item
# ----------------------------------------------------------------------------------------------------------------


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:16]


def image_key(item: Item) -> str:
    """Which picture(s) an item shows: the image sources, or a hash of embedded bytes (the bootstrap's cluster)."""
    return _digest(
        [
            hashlib.blake2b(ref.bytes, digest_size=8).hexdigest() if ref.bytes is not None else ref.source
            for ref in item.images
        ]
    )


def input_fingerprint(item: Item) -> str:
    """What the model is asked: the user turn and the images."""
    return _digest(item.prompt, image_key(item))


@functools.cache
def scorer_fingerprint(benchmark_name: str) -> str:
    """The scoring code of a benchmark: its scorer's name and bound arguments, the source of the scorer and rule
    modules, and math-verify's version. Any edit there re-scores stored outputs (cheap, no model)."""
    score = get_benchmark(benchmark_name).score
    bound = score if isinstance(score, functools.partial) else None
    function = bound.func if bound is not None else score
    name = f"{function.__module__}.{function.__qualname__}"
    arguments = [] if bound is None else [repr(bound.args), sorted(bound.keywords.items())]
    sources = [inspect.getsource(module) for module in (scorers, rules)]
    return _digest(name, arguments, sources, importlib.metadata.version("math-verify"))


def score_fingerprint(item: Item, benchmark: Benchmark) -> str:
    """What an output is scored against: ground truth, options, subset and the scoring code."""
    return _digest(item.answer, list(item.options), item.subset, scorer_fingerprint(benchmark.name))


# ----------------------------------------------------------------------------------------------------------------
# Planning: which items, which files, which settings
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """One benchmark's work in this run: every selected item (all shards), this shard's items to generate, and
    this shard's stored outputs to score again (item, stored line)."""

    benchmark: Benchmark
    items: list[Item]
    pending: list[Item]
    rescore: list[tuple[Item, dict[str, Any]]]
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


def benchmarks_with_outputs(directory: Path) -> list[str]:
    """The registered benchmarks that have a results file in ``directory``."""
    return [name for name in BENCHMARKS if result_files(directory, name)]


def drop_torn_tail(path: Path) -> None:
    """Cut a partial last line (a crash mid-append) so that the next append starts on a line boundary."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)


def latest_rows(directory: Path, name: str) -> dict[str, dict[str, Any]]:
    """For each item id, its latest line over all result files (largest ``written``; lines without one, as
    another harness writes them, count as oldest, the last of them in file order)."""
    latest: dict[str, dict[str, Any]] = {}
    for path in result_files(directory, name):
        for row in read_jsonl(path):
            if not isinstance(row, dict) or "id" not in row:
                raise BenchmarkDataError(f"{path}: a line without an 'id' field: {str(row)[:80]}")
            kept = latest.get(str(row["id"]))
            if kept is None or row.get("written", 0) >= kept.get("written", 0):
                latest[str(row["id"])] = row
    return latest


def answers_item(row: dict[str, Any], item: Item) -> bool:
    """Whether a stored line's output answers the item as it is now (lines older than fingerprints: same prompt)."""
    if "input_fp" in row:
        return row["input_fp"] == input_fingerprint(item)
    return row.get("prompt") == item.prompt and "output" in row


def generation_budget(benchmark: Benchmark, cfg: RunConfig, cap: int | None) -> int:
    """The benchmark's max_new_tokens, capped by ``rollout.max_new_tokens`` and by ``cap`` when given."""
    return min(benchmark.max_new_tokens, cfg.rollout.max_new_tokens, *([cap] if cap else []))


def pixel_limits(benchmark: Benchmark, cfg: RunConfig) -> tuple[int, int]:
    """The benchmark's image limits (min, max pixels); the run's ``data`` limits where it names none."""
    low = cfg.data.min_pixels if benchmark.min_pixels is None else benchmark.min_pixels
    high = cfg.data.max_pixels if benchmark.max_pixels is None else benchmark.max_pixels
    return low, high


def run_settings(
    benchmark: Benchmark, model_path: str | Path, cfg: RunConfig, cap: int | None
) -> dict[str, Any]:
    """Everything that changes what the model is asked or how it answers; resumed outputs must match it."""
    min_pixels, max_pixels = pixel_limits(benchmark, cfg)
    return {
        "benchmark": benchmark.name,
        "model": str(model_path),  # for the reader; not compared: a moved study keeps its answers
        "weights": weights_fingerprint(model_path),
        "max_new_tokens": generation_budget(benchmark, cfg, cap),
        "decoding": "greedy",
        "backend": cfg.rollout.backend,
        "dtype": cfg.model.inference_dtype,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "repetition_penalty": "generation_config"
        if benchmark.repetition_penalty is None
        else benchmark.repetition_penalty,
        "protocol": benchmark.protocol,
    }


def weights_fingerprint(model_path: str | Path) -> str:
    """The SHA-256 of a local checkpoint's weight files (names and bytes): a model retrained in place gets a new
    fingerprint, so its old answers are not reused, and a copied or moved study keeps its answers. A hub id
    gives "" (its revision is fixed)."""
    path = Path(model_path)
    if not path.is_dir():
        return ""
    digest = hashlib.sha256()
    for file in sorted(p for pattern in ("*.safetensors", "*.bin") for p in path.glob(pattern)):
        stat = file.stat()
        digest.update(f"{file.name}:{_file_digest(file.resolve(), stat.st_size, stat.st_mtime_ns)};".encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """One file's SHA-256, read once per process while its size and modification time stand (a 7B checkpoint
    is 16 GB: every benchmark of an evaluation asks for it)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


UNCOMPARED_SETTINGS = ("model",)  # where the weights were read from: the fingerprint says what they are


def check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Check the settings against those recorded beside a results file (nothing recorded: nothing to check)."""
    if not path.exists():
        return
    recorded = json.loads(path.read_text(encoding="utf-8"))
    differing = {
        key: (recorded.get(key), value)
        for key, value in settings.items()
        if recorded.get(key) != value and key not in UNCOMPARED_SETTINGS
    }
    if differing:
        changes = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in differing.items())
        raise SettingsMismatchError(
            f"{path.parent} holds {settings['benchmark']} results made with other settings ({changes}). "
            "Use another output directory or model name, or delete those files to start over."
        )


def check_images(plans: Sequence[Plan]) -> None:
    """Open every image the run needs (pending items; re-scored grounding items, whose truth follows the image
    size); raise :class:`MissingImagesError` if any is missing or broken."""
    problems: list[str] = []
    for plan in plans:
        needed = plan.pending + [item for item, _ in plan.rescore if plan.benchmark.reward_func == "iou"]
        bad, total = [], 0
        for item in needed:
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


def benchmark_home(benchmark: Benchmark, cfg: RunConfig) -> Path:
    """The directory a benchmark's items are read from: eval.data_root, or the miniature's data directory."""
    return Path(cfg.eval.data_root if benchmark.home == "benchmarks" else cfg.data.synthetic.output_dir)


def plan_benchmarks(
    model_path: str | Path,
    names: Sequence[str],
    cfg: RunConfig,
    output_dir: Path,
    cap: int | None,
    max_items: int,
    shard: tuple[int, int],
) -> list[Plan]:
    """Load every benchmark's items, select this run's, and sort this shard's into fresh (nothing to do), to
    re-score (stored output, stale ground truth or scorer) and pending (no output answering the item as it is)."""
    plans = []
    for name in names:
        benchmark = get_benchmark(name)
        home = benchmark_home(benchmark, cfg)
        items = benchmark.load_items(home)
        items = items[:max_items] if max_items > 0 else items
        output = shard_output(output_dir, name, shard)
        drop_torn_tail(output)
        stored = latest_rows(output_dir, name)
        pending, rescore = [], []
        for item in items[shard[0] :: shard[1]]:
            row = stored.get(item.id)
            if row is None or not answers_item(row, item):
                pending.append(item)
            elif row.get("score_fp") != score_fingerprint(item, benchmark):
                rescore.append((item, row))
        plans.append(
            Plan(
                benchmark=benchmark,
                items=items,
                pending=pending,
                rescore=rescore,
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
    """The model input for an item, its images at the benchmark's limits, and the item as scored: a grounding
    truth follows its resized image, and for ``box_frame="model_input"`` the processor's grid."""
    min_pixels, max_pixels = pixel_limits(benchmark, cfg)
    images, answer = prepare_images(
        item.images,
        item.answer,
        box_truth=benchmark.reward_func == "iou",
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    scored = dataclasses.replace(item, answer=answer)
    if benchmark.box_frame == "model_input" and images:
        scored = model_frame_truth(scored, images[0].size, benchmark, cfg)
    return prompts.Prompt(content=item.prompt, images=images), scored


def model_frame_truth(item: Item, image_size: tuple[int, int], benchmark: Benchmark, cfg: RunConfig) -> Item:
    """The truth box mapped from the image into the processor's grid (its sides rounded to multiples of 28
    within the benchmark's limits), the frame the model's box is written in."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    min_pixels, max_pixels = pixel_limits(benchmark, cfg)
    height, width = smart_resize(image_size[1], image_size[0], 28, min_pixels, max_pixels)
    if (width, height) == image_size:
        return item
    return dataclasses.replace(item, answer=rescale_box_truth(item.answer, image_size, (width, height)))


def score_outputs(
    benchmark: Benchmark, outputs: Sequence[str], items: Sequence[Item], cfg: RunConfig
) -> list[tuple[Verdict, bool]]:
    """``(verdict, timed_out)`` per output, each scored by the benchmark's rule in the reward workers under
    ``reward.timeout_s`` (an overrun is wrong, with ``timed_out``)."""
    calls = [
        (benchmark.score, (output, dataclasses.replace(item, images=())))
        for output, item in zip(outputs, items, strict=True)
    ]
    results = run_bounded(calls, cfg.reward.timeout_s, cfg.reward.num_workers)
    return [(Verdict("", False), True) if r is None else (r, False) for r in results]


def result_row(
    item: Item,
    scored: Item,
    benchmark: Benchmark,
    output: str,
    verdict: Verdict,
    timed_out: bool,
    generation: dict[str, Any],
) -> dict[str, Any]:
    """One line of a results file: the item (``scored`` holds the truth as scored), the output, the verdict,
    the generation facts (``n_tokens``, ``truncated``) and the fingerprints."""
    return {
        "id": item.id,
        "subset": item.subset,
        "prompt": item.prompt,
        "output": output,
        "extracted": verdict.extracted,
        "answer": scored.answer,
        "correct": verdict.correct,
        "format_ok": bool(format_ok(output, benchmark.reward_func)),
        **generation,
        "timed_out": timed_out,
        "image": image_key(item),
        "input_fp": generation.get("input_fp", input_fingerprint(item)),
        "score_fp": score_fingerprint(item, benchmark),
        "written": time.time_ns(),
    }


def decoding_of(engine: Any, benchmark: Benchmark) -> dict[str, Any]:
    """Stop tokens and repetition penalty as ``model.generate`` would use them in the reference scripts: the
    checkpoint's ``generation_config`` (Qwen2.5-VL-Instruct: stop at ``<|im_end|>`` and ``<|endoftext|>``,
    repetition penalty 1.05), the penalty overridden where the benchmark's reference set one (VLMEvalKit: 1.0).
    ``<|im_end|>`` always stops."""
    generation = engine.model.generation_config
    eos = generation.eos_token_id
    stops = [engine.eos_id, *([] if eos is None else [eos] if isinstance(eos, int) else eos)]
    penalty = benchmark.repetition_penalty
    if penalty is None:
        penalty = generation.repetition_penalty or 1.0
    return {"stop_token_ids": list(dict.fromkeys(stops)), "repetition_penalty": float(penalty)}


def evaluate_plan(engine: Any, plan: Plan, cfg: RunConfig, progress: bool) -> None:
    """Generate greedily for the plan's pending items, batch by batch, appending scored lines as they finish.

    An item the engine refuses (vLLM raises ``ValueError`` on a prompt over its context length or image limit;
    a question whose text holds a literal ``<image>`` has more markers than images) is retried alone, then
    reported and recorded in ``<benchmark>.skipped.jsonl`` by its id: the rest of the evaluation goes on, and a
    rerun tries it again."""
    benchmark, budget = plan.benchmark, plan.settings["max_new_tokens"]
    batch_size, decoding = evaluation_batch_size(cfg), decoding_of(engine, benchmark)
    settings = plan.output.parent / f"{benchmark.name}.settings.json"
    if plan.pending and not settings.exists():  # recorded with the first answers, never without any
        atomic_write_json(settings, plan.settings)
    with tqdm(total=len(plan.pending), desc=benchmark.name, unit="item", disable=not progress) as bar:
        for start in range(0, len(plan.pending), batch_size):
            chunk = plan.pending[start : start + batch_size]
            try:
                rows = answer(engine, chunk, benchmark, cfg, budget, decoding)
            except ValueError as error:
                if len(chunk) > 1:  # which item? each alone
                    rows = [
                        row
                        for item in chunk
                        for row in answer_or_skip(engine, item, plan, cfg, budget, decoding)
                    ]
                else:
                    rows = []
                    skip(plan, chunk[0], error)
            append_jsonl(plan.output, rows)
            bar.update(len(chunk))


def answer(
    engine: Any,
    items: list[Item],
    benchmark: Benchmark,
    cfg: RunConfig,
    budget: int,
    decoding: dict[str, Any],
) -> list[dict[str, Any]]:
    """Generate and score one batch of items: their result lines."""
    prepared = [prepare(item, benchmark, cfg) for item in items]
    batch = engine.generate(
        [prompt for prompt, _ in prepared], n=1, greedy=True, max_new_tokens=budget, **decoding
    )
    verdicts = score_outputs(benchmark, batch.texts, [scored for _, scored in prepared], cfg)
    return [
        result_row(
            item,
            scored,
            benchmark,
            text,
            verdict,
            timed_out,
            {"n_tokens": int(length), "truncated": not finished},
        )
        for item, (_, scored), text, length, finished, (verdict, timed_out) in zip(
            items, prepared, batch.texts, batch.completion_lengths, batch.finished, verdicts, strict=True
        )
    ]


def answer_or_skip(
    engine: Any, item: Item, plan: Plan, cfg: RunConfig, budget: int, decoding: dict[str, Any]
) -> list[dict[str, Any]]:
    """One item alone: its line, or none when the engine refuses it (reported and recorded)."""
    try:
        return answer(engine, [item], plan.benchmark, cfg, budget, decoding)
    except ValueError as error:
        skip(plan, item, error)
        return []


def skip(plan: Plan, item: Item, error: BaseException) -> None:
    """Report an item that cannot be run, by benchmark and id, and record it beside the shard's results."""
    reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    print(
        f"{plan.benchmark.name}: item {item.id} skipped, it cannot be run: {reason}",
        file=sys.stderr,
        flush=True,
    )
    append_jsonl(skipped_file(plan.output), [{"id": item.id, "reason": reason, "written": time.time_ns()}])


def skipped_file(output: Path) -> Path:
    """``<benchmark>[.shard-k-of-n].skipped.jsonl`` beside the results file ``output``."""
    return output.with_name(output.name.removesuffix(".jsonl") + ".skipped.jsonl")


def skipped_items(directory: Path, name: str, answered: set[str]) -> dict[str, str]:
    """Items of benchmark ``name`` some shard could not run and that no line answers yet: id -> reason."""
    skipped: dict[str, str] = {}
    for path in sorted(directory.glob(f"{name}*.skipped.jsonl")):
        if re.fullmatch(rf"{re.escape(name)}(\.shard-\d+-of-\d+)?\.skipped\.jsonl", path.name):
            skipped.update({str(row["id"]): row["reason"] for row in read_jsonl(path)})
    return {key: reason for key, reason in skipped.items() if key not in answered}


def evaluation_batch_size(cfg: RunConfig) -> int:
    """Prompts per generate call: vLLM schedules a large batch itself (continuous batching: a finished sequence
    frees its slot at once), the HF engine decodes a batch until its longest answer ends."""
    return cfg.eval.vllm_batch_size if cfg.rollout.backend == "vllm" else cfg.eval.batch_size


def rescore_rows(plan: Plan, cfg: RunConfig) -> None:
    """Score the plan's stored outputs again against their items as they are now; append the new lines."""
    if not plan.rescore:
        return
    benchmark = plan.benchmark
    scored = [
        prepare(item, benchmark, cfg)[1] if benchmark.reward_func == "iou" else item
        for item, _ in plan.rescore
    ]
    outputs = [str(row["output"]) for _, row in plan.rescore]
    verdicts = score_outputs(benchmark, outputs, scored, cfg)
    rows = [
        result_row(
            item,
            truth,
            benchmark,
            output,
            verdict,
            timed_out,
            {
                "n_tokens": row.get("n_tokens"),
                "truncated": row.get("truncated"),
                "input_fp": row.get("input_fp", input_fingerprint(item)),
            },
        )
        for (item, row), truth, output, (verdict, timed_out) in zip(
            plan.rescore, scored, outputs, verdicts, strict=True
        )
    ]
    append_jsonl(plan.output, rows)


# ----------------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------------


def rows_for(directory: Path, name: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The latest result line of benchmark ``name`` for each of the given item ids, in item order (missing ids
    left out)."""
    latest = latest_rows(directory, name)
    return [latest[i] for i in ids if i in latest]


def _mean(values: list[Any]) -> float:
    known = [float(v) for v in values if v is not None]
    return sum(known) / len(known) if known else float("nan")


def clusters_of(rows: list[dict[str, Any]], cfg: RunConfig) -> list[str] | None:
    """The bootstrap's resampling units: None for items, each line's image key for ``bootstrap_unit: image``."""
    if cfg.eval.bootstrap_unit == "item":
        return None
    return [str(row.get("image", row["id"])) for row in rows]


def summarize(rows: list[dict[str, Any]], n_items: int, cfg: RunConfig) -> dict[str, Any]:
    """Accuracy with its bootstrap 95% CI, per-subset accuracies, format compliance and output length."""
    correct = [bool(row["correct"]) for row in rows]
    clusters = clusters_of(rows, cfg)
    interval = bootstrap_accuracy(
        [correct],
        cfg.eval.bootstrap_samples,
        cfg.eval.seed,
        clusters=None if clusters is None else [clusters],
    )
    subsets: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        if row.get("subset"):
            subsets[row["subset"]].append(bool(row["correct"]))
    n = len(rows)
    judges = {row.get("judge") for row in rows}
    judge = (
        {"judge": judges.pop()} if len(judges) == 1 and None not in judges else {}
    )  # eval judge, every line
    return {
        **judge,
        "accuracy": interval.value,
        "ci95": [interval.low, interval.high],
        "bootstrap_unit": cfg.eval.bootstrap_unit,
        "n": n,
        "complete": n == n_items,
        "per_subset": {
            name: {"accuracy": sum(values) / len(values), "n": len(values)}
            for name, values in sorted(subsets.items())
        },
        "format_rate": _mean([bool(row.get("format_ok")) for row in rows]),
        "mean_output_tokens": _mean([row.get("n_tokens") for row in rows]),
        "truncated_rate": _mean([row.get("truncated") for row in rows]),
    }


def group_average(directory: Path, names: Sequence[str], cfg: RunConfig) -> dict[str, Any] | None:
    """The mean of several benchmarks' accuracies (the table's RefCOCO/+/g column, or the miniature's visual
    average), with a stratified bootstrap CI that resamples each benchmark's items (or images) within itself.

    Uses the items each benchmark's latest summary covers; None if one of them has not been summarised.
    """
    if not all((directory / f"{name}.ids.json").exists() for name in names):
        return None
    rows = {name: rows_for(directory, name, item_ids(directory, name)) for name in names}
    groups = [[bool(row["correct"]) for row in rows[name]] for name in names]
    clusters = [clusters_of(rows[name], cfg) for name in names]
    interval = bootstrap_accuracy(
        groups,
        cfg.eval.bootstrap_samples,
        cfg.eval.seed,
        clusters=None if cfg.eval.bootstrap_unit == "item" else clusters,  # type: ignore[arg-type]
    )
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
        rows = rows_for(directory, name, ids)
        entry = summarize(rows, len(ids), cfg)
        entry["skipped"] = skipped_items(directory, name, {str(row["id"]) for row in rows})
        entry.update(
            title=plan.benchmark.title,
            n_items=len(ids),
            settings=plan.settings,
            protocol=plan.benchmark.protocol,
            note=plan.benchmark.note,
        )
        summary["benchmarks"][name] = entry
    for key, splits in REC_AVERAGES.items():
        average = group_average(directory, splits, cfg)
        if average is not None:
            protocol = get_benchmark(splits[0]).protocol
            summary["benchmarks"][key] = {**average, "title": "RefCOCO/+/g average", "protocol": protocol}
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
    any_shard: Callable[[bool], bool] = bool,
) -> dict[str, Any]:
    """Evaluate ``model_path`` (checkpoint directory or hub id) on ``benchmarks`` and return ``summary.json``.

    Defaults come from ``cfg.eval`` (benchmarks, data_root, batch_size, max_items, output_dir). Each benchmark
    generates at most its own max_new_tokens, capped by ``cfg.rollout.max_new_tokens`` and by
    ``max_new_tokens_cap`` (the miniature uses small caps). Fresh stored outputs are kept, stale verdicts are
    re-scored without the model, and the model is loaded only if something is left to generate: by this shard,
    or, through ``any_shard`` (this shard's answer -> every shard's), by any shard. Sharded over processes that
    share a torch.distributed world, creating a vLLM engine is a collective (``external_launcher``): every
    process must create it or none, so :func:`evaluate` passes a function that asks them all.
    """
    cfg = cfg or RunConfig()
    names = list(benchmarks or cfg.eval.benchmarks)
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {shard}: expected (index, count) with 0 <= index < count")
    directory = Path(cfg.eval.output_dir) / (model_name or model_name_of(model_path))
    limit = cfg.eval.max_items if max_items is None else max_items
    # One writer per output: two runs appending to one file would each write every item.
    with DirectoryLock(directory, "evaluation", f".shard-{shard[0]}-of-{shard[1]}" if shard[1] > 1 else ""):
        plans = plan_benchmarks(model_path, names, cfg, directory, max_new_tokens_cap, limit, shard)
        for plan in plans:
            check_settings(directory / f"{plan.benchmark.name}.settings.json", plan.settings)
        check_images(plans)
        for plan in plans:
            rescore_rows(plan, cfg)
        show = cfg.logging.progress if progress is None else progress
        if any_shard(any(plan.pending for plan in plans)):
            pending = sum(len(plan.pending) for plan in plans)
            print(
                f"evaluation shard {shard[0]} of {shard[1]}: loading {model_path} ({pending} items to generate)"
            )
            engine = load_engine(model_path, cfg, plans)
            for plan in plans:
                evaluate_plan(engine, plan, cfg, show)
        return write_summary(directory, model_path, plans, cfg)


def rescore(directory: str | Path, benchmarks: Sequence[str], cfg: RunConfig | None = None) -> dict[str, Any]:
    """Score the stored outputs in ``directory`` again with the current items and scorers, without a model, and
    return the updated ``summary.json``.

    Reads every ``<benchmark>.jsonl`` (and shard file) there: this runner's lines, or lines another harness
    wrote with at least ``id`` (the registry's item id) and ``output``. Each item's latest output is scored
    again, whatever its fingerprints say, and a new line is appended; items without an output count as missing
    (``complete: false``). Images are opened only for grounding truths that follow the image size.
    """
    cfg = cfg or RunConfig()
    directory = Path(directory)
    plans = []
    for name in benchmarks:
        benchmark = get_benchmark(name)
        home = benchmark_home(benchmark, cfg)
        items = benchmark.load_items(home)
        stored = latest_rows(directory, name)
        with_output = [(item, stored[item.id]) for item in items if "output" in stored.get(item.id, {})]
        if not with_output:  # refused before anything is written: scoring nothing would still write a summary
            found = (
                f"its {len(stored)} ids (such as {next(iter(stored))!r})" if stored else "no lines with an id"
            )
            raise BenchmarkDataError(
                f"{directory / f'{name}.jsonl'}: no output to score: {found} match none of {name}'s "
                f"{len(items)} items (such as {items[0].id if items else 'none'!r}); nothing was written"
            )
        settings_path = directory / f"{name}.settings.json"
        settings = (
            json.loads(settings_path.read_text(encoding="utf-8"))
            if settings_path.exists()
            else {"benchmark": name, "source": "outputs rescored without their generation settings"}
        )
        for path in result_files(directory, name):
            drop_torn_tail(path)
        plans.append(
            Plan(
                benchmark,
                items,
                [],
                with_output,
                home / benchmark.image_root,
                directory / f"{name}.jsonl",
                settings,
            )
        )
    check_images(plans)
    for plan in plans:
        rescore_rows(plan, cfg)
    return write_summary(directory, str(directory), plans, cfg)


def judge_outputs(directory: str | Path, names: list[str], cfg: RunConfig) -> dict[str, Any]:
    """Score the stored outputs of the ``*_judge`` benchmarks ``names`` in ``directory`` with the judge of
    ``eval.judge_url`` / ``eval.judge_model``: each judged line is appended (the latest line of an item wins),
    carrying ``judge``, and each summary entry is computed again (it names the judge when every line was
    judged by it). Returns the summary."""
    e = cfg.eval
    if not e.judge_url or not e.judge_model:
        raise ValueError(
            "eval judge needs eval.judge_url and eval.judge_model (an OpenAI-compatible endpoint)"
        )
    judge_model, directory = judge.Judge(e.judge_url, e.judge_model, e.judge_timeout_s), Path(directory)
    path = directory / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8"))
    for name in names:
        kind = name.removesuffix("_judge")
        if kind not in judge.KINDS or not name.endswith("_judge"):
            raise ValueError(
                f"{name}: not a judge benchmark ({', '.join(k + '_judge' for k in judge.KINDS)})"
            )
        benchmark = get_benchmark(name)
        items = {item.id: item for item in benchmark.load_items(benchmark_home(benchmark, cfg))}
        judged = []
        for item_id, row in latest_rows(directory, name).items():
            if item_id in items and "output" in row:
                case = judge.case_of(items[item_id])
                extracted, correct = judge.judge_response(kind, row["output"], case, judge_model)
                judged.append(
                    {
                        **row,
                        "extracted": extracted,
                        "correct": correct,
                        "judge": judge_model.name,
                        "written": time.time_ns(),
                    }
                )
        append_jsonl(directory / f"{name}.jsonl", judged)
        ids = item_ids(directory, name)
        summary["benchmarks"][name].update(summarize(rows_for(directory, name, ids), len(ids), cfg))
    atomic_write_json(path, summary)
    return summary


def load_engine(model_path: str | Path, cfg: RunConfig, plans: Sequence[Plan] = ()) -> Any:
    """The policy, on this process's device, behind the configured rollout engine. The processor's image limits
    span every benchmark's (each image is fitted to its own benchmark's limits before it reaches the processor).

    With vLLM, which loads the weights itself, the policy is its structure and configs only (no copy on the GPU
    beside vLLM), and the engine takes as many images per prompt as the run's items hold (vLLM refuses a prompt
    over its ``limit_mm_per_prompt``; MMMU items have up to 7). Every shard computes the same limit: the items
    are those of all shards."""
    import torch

    from ocean_lib.training.models import load_policy
    from ocean_lib.training.rollout import make_engine

    limits = [pixel_limits(plan.benchmark, cfg) for plan in plans] or [
        (cfg.data.min_pixels, cfg.data.max_pixels)
    ]
    vllm = cfg.rollout.backend == "vllm"
    model, processor = load_policy(
        str(model_path),
        dtype=cfg.model.inference_dtype,
        attn_implementation=cfg.model.attn_implementation,
        min_pixels=min(low for low, _ in limits),
        max_pixels=max(high for _, high in limits),
        weights=not vllm,
    )
    if torch.cuda.is_available() and not vllm:
        from accelerate import PartialState

        model.to(PartialState().device)
    return make_engine(
        model,
        processor,
        cfg.rollout,
        dtype=cfg.model.inference_dtype,
        max_images_per_prompt=most_images(plans),
    )


def most_images(plans: Sequence[Plan]) -> int:
    """The most images one of the run's items holds (at least 1): vLLM's ``limit_mm_per_prompt``."""
    return max([1, *(len(item.images) for plan in plans for item in plan.items)])


def export_vlmevalkit(jsonl: str | Path, destination: str | Path) -> Path:
    """Write a results file as a VLMEvalKit-style prediction table (TSV: index, question, answer, prediction,
    category), so that VLMEvalKit users can re-score our outputs with their judge.

    ``question`` is the user turn without image markers and its template's text (:func:`prompts.eval_question`);
    ``prediction`` is the full output.
    The ``index`` values are our item ids, so join on the question when merging with VLMEvalKit's own TSV.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["index", "question", "answer", "prediction", "category"])
    for row in read_jsonl(jsonl):
        question = prompts.eval_question(row["prompt"])
        writer.writerow([row["id"], question, row["answer"], row["output"], row.get("subset", "")])
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
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    # On a machine without GPUs accelerate counts one process unless asked for CPU (gloo), as the trainer does.
    state = PartialState(cpu=not torch.cuda.is_available())
    options = dict(model_name=model_name, max_items=max_items, max_new_tokens_cap=max_new_tokens_cap)
    summary = run(
        model_path,
        names,
        cfg,
        shard=(state.process_index, state.num_processes),
        progress=cfg.logging.progress and state.is_local_main_process,
        # a shard with nothing to generate still joins the engine's creation (collective under vLLM)
        any_shard=(lambda mine: any(gather_object([mine]))) if state.num_processes > 1 else bool,
        **options,
    )
    if state.num_processes > 1:  # every shard is written: the main process summarises them together
        state.wait_for_everyone()
        if state.is_main_process:
            summary = run(model_path, names, cfg, progress=False, **options)
    return summary if state.is_main_process else None
