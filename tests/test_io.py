"""One writer per directory: the lock that run directories, evaluation outputs and studies are written under,
held by real processes (a live holder refuses a second writer; a holder killed with SIGKILL leaves a stale lock
that the next writer takes over)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ocean_lib.base.io import INHERITED_LOCKS, LOCK_FILE, DirectoryLock, LockedError

ROOT = Path(__file__).resolve().parents[1]
HOLD = textwrap.dedent(
    """
    import sys, time
    from ocean_lib.base.io import DirectoryLock
    lock = DirectoryLock(sys.argv[1], "test writer")
    lock.acquire()
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
