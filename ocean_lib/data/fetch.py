"""Ocean-R1's training data and base model, for users with a network: ``python -m ocean_lib data fetch-training``.

What lands where (the paths ``params/qwen25vl_*.yaml`` read, with the default ``--root data``)::

    <root>/ocean_r1/stage1/*.parquet             minglingfeng/Ocean_R1_visual_data_stage1, split train
    <root>/ocean_r1/stage2/*.parquet             minglingfeng/Ocean_R1_visual_data_stage2, split train
    <root>/ocean_r1/val/cvbench_test/*.parquet   minglingfeng/cvbench_test, split test (validation during training)
    <root>/ocean_r1/val/geoqa_test/*.parquet     minglingfeng/geoqa_test, split test
    <root>/ocean_r1/hub/<owner>__<name>/         the dataset repositories as downloaded; the directories above
                                                 hold links to their parquet files
    Qwen/Qwen2.5-VL-3B-Instruct                  in the Hugging Face cache, where model.name_or_path finds it

Downloads go through ``huggingface_hub.snapshot_download``, which resumes interrupted files, so re-running the
command after a failure continues where it stopped. Without a reachable hub it fails within a few seconds and
prints the same table as a list of manual steps. Images are embedded in the parquet files as bytes.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ocean_lib.base.paths import HUB_FILE_PATTERNS
from ocean_lib.data.records import HUB_PROBE_TIMEOUT_S, DataError, reachable

STAGE_DATA = {
    "1": "minglingfeng/Ocean_R1_visual_data_stage1",
    "2": "minglingfeng/Ocean_R1_visual_data_stage2",
}
VALIDATION_DATA = {"cvbench_test": "minglingfeng/cvbench_test", "geoqa_test": "minglingfeng/geoqa_test"}
BASE_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


@dataclass(frozen=True)
class Download:
    """One hub repository to fetch; datasets also name the split to expose and where its parquet files go."""

    repo_id: str
    repo_type: str  # "dataset" or "model"
    split: str | None = None
    target: Path | None = None  # directory of links to the split's parquet files (datasets only)
    snapshot: Path | None = None  # local copy of the repository (datasets; models go to the HF cache)


def training_downloads(
    root: str | Path, stage: str, models: tuple[str, ...] = (BASE_MODEL,)
) -> list[Download]:
    """What ``fetch-training`` downloads for ``stage`` ("1", "2" or "all"): stage data, validation sets, models."""
    if stage not in ("1", "2", "all"):
        raise ValueError(f"stage must be '1', '2' or 'all', got {stage!r}")
    base = Path(root) / "ocean_r1"

    def dataset(repo_id: str, split: str, target: Path) -> Download:
        return Download(repo_id, "dataset", split, target, base / "hub" / repo_id.replace("/", "__"))

    stages = ["1", "2"] if stage == "all" else [stage]
    plan = [dataset(STAGE_DATA[s], "train", base / f"stage{s}") for s in stages]
    plan += [dataset(repo, "test", base / "val" / name) for name, repo in VALIDATION_DATA.items()]
    plan += [Download(model, "model") for model in models]
    return plan


def link_split(snapshot: Path, split: str, target: Path) -> list[Path]:
    """Make ``target`` a directory of links to the ``split`` parquet files of a downloaded dataset repository.

    A file belongs to the split when its name starts with ``<split>-`` or ``<split>.`` (``push_to_hub``'s
    ``data/train-00000-of-00004.parquet``) or it lies in a directory named ``<split>``. Links are relative,
    named as their files, in name order (``read_records`` reads a directory in that order); links left from an
    earlier download are replaced. Returns the linked files.
    """
    files = sorted(snapshot.rglob("*.parquet"))
    chosen = [
        f
        for f in files
        if f.name.startswith((f"{split}-", f"{split}.")) or split in f.relative_to(snapshot).parts[:-1]
    ]
    if not chosen:
        found = ", ".join(str(f.relative_to(snapshot)) for f in files[:10]) or "no parquet files"
        raise DataError(f"{snapshot}: no parquet file of split {split!r} (found: {found})")
    names = [f.name for f in chosen]
    if len(set(names)) != len(names):
        raise DataError(
            f"{snapshot}: split {split!r} has parquet files with the same name in different folders"
        )
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.parquet"):
        if old.is_symlink():
            old.unlink()
    for file in chosen:
        (target / file.name).symlink_to(Path(_relative(file, target)))
    return chosen


def fetch_training(root: str, stage: str, models: tuple[str, ...] = (BASE_MODEL,)) -> int:
    """Download Ocean-R1's data for ``stage`` and the base model(s); return a process exit code."""
    from huggingface_hub import constants, snapshot_download

    plan = training_downloads(root, stage, models)
    if constants.HF_HUB_OFFLINE or not reachable(constants.ENDPOINT, HUB_PROBE_TIMEOUT_S):
        why = (
            "HF_HUB_OFFLINE is set"
            if constants.HF_HUB_OFFLINE
            else (
                f"the Hugging Face hub ({constants.ENDPOINT}) is not reachable within {HUB_PROBE_TIMEOUT_S:.0f} s"
            )
        )
        print(f"fetch-training: {why}.\n{manual_steps(plan)}", file=sys.stderr)
        return 2

    for item in plan:
        if item.repo_type == "model":
            path = snapshot_download(item.repo_id, allow_patterns=HUB_FILE_PATTERNS)
            print(f"{item.repo_id}: {_size(Path(path))} in the Hugging Face cache ({path})")
            continue
        snapshot_download(
            item.repo_id,
            repo_type="dataset",
            local_dir=item.snapshot,
            allow_patterns=["*.parquet", "*.md", "*.json"],
        )
        linked = link_split(item.snapshot, item.split, item.target)
        print(
            f"{item.repo_id} [{item.split}]: {len(linked)} parquet file(s), {_size(item.snapshot)} -> {item.target}"
        )
    return 0


def manual_steps(plan: list[Download]) -> str:
    """Where to place each download by hand (on a machine with a network: ``hf download``, then copy)."""
    lines = ["Place the files by hand (download them where the hub is reachable, then copy them here):"]
    for item in plan:
        if item.repo_type == "model":
            lines.append(
                f"  - model {item.repo_id}: `hf download {item.repo_id} --local-dir DIR`, copy DIR here and set "
                f"model.name_or_path=DIR (or copy the Hugging Face cache, HF_HOME, and keep the hub id)"
            )
        else:
            lines.append(
                f"  - dataset {item.repo_id}, split {item.split}: its parquet files into {item.target}/ "
                f"(`hf download {item.repo_id} --repo-type dataset --local-dir DIR`, then the files of DIR whose "
                f"names start with '{item.split}')"
            )
    return "\n".join(lines)


def _relative(file: Path, directory: Path) -> str:
    return os.path.relpath(file.resolve(), directory.resolve())


def _size(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return f"{total / 1e9:.2f} GB"
