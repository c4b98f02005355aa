"""fetch-training: the download plan, the split links the params files read, and the offline failure."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from ocean_lib.base.config import load_config
from ocean_lib.base.schema import DataConfig
from ocean_lib.data import DataError, read_records, write_records
from ocean_lib.data.fetch import fetch_training, link_split, training_downloads
from ocean_lib.data.synthetic import sample_task, task_record

REPO = Path(__file__).resolve().parents[1]


def test_plan_covers_the_stage_data_validation_sets_and_base_model():
    plan = training_downloads("data", "1")
    assert [(d.repo_id, d.repo_type, d.split) for d in plan] == [
        ("minglingfeng/Ocean_R1_visual_data_stage1", "dataset", "train"),
        ("minglingfeng/cvbench_test", "dataset", "test"),
        ("minglingfeng/geoqa_test", "dataset", "test"),
        ("Qwen/Qwen2.5-VL-3B-Instruct", "model", None),
    ]
    assert [d.repo_id for d in training_downloads("data", "all")][:2] == [
        "minglingfeng/Ocean_R1_visual_data_stage1",
        "minglingfeng/Ocean_R1_visual_data_stage2",
    ]
    with pytest.raises(ValueError, match="stage must be"):
        training_downloads("data", "3")


def test_the_params_files_read_exactly_where_fetch_training_writes():
    targets = {str(d.target) for d in training_downloads("data", "all") if d.target is not None}
    for stage in (1, 2):
        cfg = load_config(REPO / "params" / f"qwen25vl_3b_stage{stage}.yaml")
        assert set(cfg.data.train_files) | set(cfg.data.val_files) <= targets
        assert cfg.model.name_or_path in (
            "Qwen/Qwen2.5-VL-3B-Instruct",
            "outputs/runs/qwen25vl_3b_stage1/final",
        )


def test_split_files_are_linked_into_a_directory_read_records_reads(tmp_path):
    snapshot = tmp_path / "hub" / "owner__data"
    records = [task_record(sample_task("counting", seed), seed) for seed in range(4)]
    write_records(records[:2], snapshot / "data" / "train-00000-of-00002.parquet")
    write_records(records[2:3], snapshot / "data" / "train-00001-of-00002.parquet")
    write_records(records[3:], snapshot / "data" / "test-00000-of-00001.parquet")
    target = tmp_path / "ocean_r1" / "stage1"
    (target).mkdir(parents=True)
    (target / "stale.parquet").symlink_to(snapshot / "data" / "test-00000-of-00001.parquet")

    linked = link_split(snapshot, "train", target)
    assert [f.name for f in linked] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert sorted(p.name for p in target.iterdir()) == [f.name for f in linked]  # the stale link is gone
    loaded = read_records(target, DataConfig())
    assert [r.index for r in loaded] == [0, 1, 2]

    # Moving the whole tree keeps the links valid (they are relative).
    moved = tmp_path.rename(tmp_path.parent / (tmp_path.name + "_moved"))
    assert len(read_records(moved / "ocean_r1" / "stage1", DataConfig())) == 3
    with pytest.raises(DataError, match="no parquet file of split 'validation'.*train-00000"):
        link_split(moved / "hub" / "owner__data", "validation", moved / "x")


@pytest.mark.parametrize("offline", ["unreachable", "HF_HUB_OFFLINE"])
def test_offline_fails_at_once_saying_what_to_place_where(offline, tmp_path, monkeypatch, capsys):
    if offline == "unreachable":
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    assert fetch_training(str(tmp_path), "1") != 0
    assert time.monotonic() - start < 10
    message = capsys.readouterr().err
    assert ("not reachable" if offline == "unreachable" else "HF_HUB_OFFLINE") in message
    assert f"{tmp_path}/ocean_r1/stage1/" in message and "minglingfeng/Ocean_R1_visual_data_stage1" in message
    assert f"{tmp_path}/ocean_r1/val/geoqa_test/" in message
    assert "hf download Qwen/Qwen2.5-VL-3B-Instruct" in message and "model.name_or_path" in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cli_exits_nonzero_offline(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ocean_lib",
            "data",
            "fetch-training",
            "--root",
            str(tmp_path),
            "--stage",
            "2",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and f"{tmp_path}/ocean_r1/stage2/" in done.stderr
