"""One writer per directory: the lock that run directories, evaluation outputs and studies are written under,
held by real processes (a live holder refuses a second writer; a holder killed with SIGKILL leaves a stale lock
that the next writer takes over, unless a process it started still writes; the machines of one multi-node run
share a directory, another run is refused)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ocean_lib.base import io
from ocean_lib.base.io import INHERITED_LOCKS, LOCK_FILE, DirectoryLock, LockedError

ROOT = Path(__file__).resolve().parents[1]
HOLD = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from ocean_lib.base.io import DirectoryLock
    lock = DirectoryLock(sys.argv[1], "test writer")
    lock.acquire()
    if len(sys.argv) > 2:  # a writer of its own, sharing the lock as a launched trainer does
        env = {**os.environ, **lock.environment()}
        writer = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1]], env=env, stdout=subprocess.PIPE)
        assert writer.stdout.readline().strip() == b"held"
        print(writer.pid, flush=True)
    print("held", flush=True)
    time.sleep(120)
    """
)


def hold(directory: Path) -> subprocess.Popen:
    """A process that takes the directory's lock and keeps it; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    holder = hold(tmp_path)
    try:
        with pytest.raises(LockedError) as refused:
            DirectoryLock(tmp_path, "training run").acquire()
        message = str(refused.value)
        assert (
            str(tmp_path) in message and f"pid {holder.pid}" in message and "another training run" in message
        )
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder = hold(tmp_path)
    holder.kill()  # SIGKILL: no clean-up ran, the lock file is still there
    holder.wait()
    assert f"pid {holder.pid}" in (tmp_path / LOCK_FILE).read_text()
    with DirectoryLock(tmp_path, "training run") as lock:
        assert f"pid {holder.pid}" in lock.took_over
        assert f"pid {os.getpid()}" in (tmp_path / LOCK_FILE).read_text()
    assert not (tmp_path / LOCK_FILE).exists()  # released: nothing left behind


def test_released_locks_can_be_taken_again_and_children_share_their_parents(tmp_path, monkeypatch):
    with DirectoryLock(tmp_path / "run", "training run") as lock:
        assert (tmp_path / "run").is_dir()
        with pytest.raises(LockedError):  # another holder, even in this process
            DirectoryLock(tmp_path / "run", "training run").acquire()
        monkeypatch.setenv(INHERITED_LOCKS, lock.environment()[INHERITED_LOCKS])
        with DirectoryLock(tmp_path / "run", "training run"):  # what a launched child sees: shared
            pass
        monkeypatch.delenv(INHERITED_LOCKS)
    with DirectoryLock(tmp_path / "run", "training run"):  # released: free again
        pass
    # a suffix names a lock of its own (one per evaluation shard)
    with (
        DirectoryLock(tmp_path, "evaluation", ".shard-0-of-2"),
        DirectoryLock(tmp_path, "evaluation", ".shard-1-of-2"),
    ):
        pass


def test_a_writer_started_by_the_holder_keeps_the_directory_locked_after_the_holder_is_killed(
    tmp_path, monkeypatch
):
    """A launcher killed by SIGKILL while its trainer writes: the next launch must not become a second writer."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), HOLD],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    writer = int(holder.stdout.readline())
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    monkeypatch.setattr(io, "ORPHAN_GRACE_S", 0.5)  # how long an acquirer waits for a dead taker's children
    try:
        with pytest.raises(LockedError) as refused:
            DirectoryLock(tmp_path, "training run").acquire()
        message = str(refused.value)
        assert (
            f"taken by pid {holder.pid}" in message and "is gone" in message and f"pids {writer}" in message
        )
    finally:
        os.kill(writer, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:  # the writer's death frees the directory (it is not our child: poll)
        try:
            with DirectoryLock(tmp_path, "training run") as lock:
                assert f"pid {holder.pid}" in lock.took_over
            break
        except LockedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_a_child_shares_only_the_lock_its_parent_took(tmp_path, monkeypatch):
    with DirectoryLock(tmp_path, "training run") as lock:
        inherited = json.loads(lock.environment()[INHERITED_LOCKS])
        monkeypatch.setenv(INHERITED_LOCKS, json.dumps(dict.fromkeys(inherited, "another taker's token")))
        with pytest.raises(LockedError, match="no longer holds its lock"):
            DirectoryLock(tmp_path, "training run").acquire()


def test_the_machines_of_one_run_share_its_directory_and_another_run_is_refused(tmp_path):
    with (
        DirectoryLock(tmp_path, "training run", key="run-a"),
        DirectoryLock(tmp_path, "training run", ".machine-1", key="run-a"),  # the same run's second machine
    ):
        with pytest.raises(LockedError, match="another training run is writing there"):
            DirectoryLock(tmp_path, "training run", ".machine-2", key="run-b").acquire()
        with pytest.raises(LockedError):  # the same machine twice
            DirectoryLock(tmp_path, "training run", ".machine-1", key="run-a").acquire()
    (tmp_path / f"{LOCK_FILE}.machine-3").write_text('{"key": "run-x"}')  # a stale lock file, nobody holds it
    with DirectoryLock(tmp_path, "training run", ".machine-1", key="run-b"):
        pass
