"""Atomic file writes and JSON-lines helpers: the run directory is only ever seen complete."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes files private; outputs are meant to be read
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows as one write followed by fsync, so a crash leaves at most one torn last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the rows of a JSON-lines file, skipping a torn final line left by a crash mid-write."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # a torn last line from a crash mid-append
                return
            raise ValueError(f"{path}: line {number} is not valid JSON: {error}") from error


# ----------------------------------------------------------------------------------------------------------------
# One writer per directory
# ----------------------------------------------------------------------------------------------------------------

LOCK_FILE = ".lock"
INHERITED_LOCKS = "OCEAN_LIB_HELD_LOCKS"
"""Environment variable: lock files (os.pathsep-separated) held by an ancestor process on this process's behalf
(``launch`` holds the run directory's lock while its ``accelerate launch`` child writes there)."""


class LockedError(RuntimeError):
    """Another live process holds the lock of a directory this process wants to write."""


class DirectoryLock:
    """An exclusive lock on a directory that one process writes (a run directory, an evaluation output).

    ``with DirectoryLock(path, "training run"):`` takes ``path/.lock`` or raises :class:`LockedError` naming the
    process that holds it (PID, host, command, since when). The lock is the kernel's ``flock`` on that file, so a
    holder that dies, even by SIGKILL, releases it: a lock file left by a dead process is stale and is taken over.
    The file holds the holder's PID for the message; it is removed on release. A process started by the holder
    with the lock path in :data:`INHERITED_LOCKS` shares the lock instead of waiting for it.
    """

    def __init__(self, directory: str | Path, what: str, suffix: str = ""):
        self.path = Path(directory) / f"{LOCK_FILE}{suffix}"  # a suffix: one lock per part (an eval shard)
        self.what = what
        self._fd: int | None = None
        self.took_over: str | None = None  # the stale holder's description, when there was one

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        import fcntl
        import socket
        import sys
        import time

        if str(self.path.resolve()) in os.environ.get(INHERITED_LOCKS, "").split(os.pathsep):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise LockedError(
                    f"{self.path.parent} is in use: another {self.what} is writing there ({holder}). Wait for it "
                    f"to finish or stop that process; two writers would interleave their outputs."
                ) from None
            # The previous holder may have removed the file between our open and our flock: then we locked a
            # file nobody else can see, and must lock the one now at the path instead.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = os.read(fd, 4096).decode("utf-8", "replace").strip()
        self.took_over = stale or None
        record = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
        record += " ".join(sys.argv)[:300]
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode("utf-8"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a waiter then retries on a fresh file
        os.close(self._fd)
        self._fd = None

    def environment(self) -> dict[str, str]:
        """The environment entry that lets a child process share this lock."""
        held = [p for p in os.environ.get(INHERITED_LOCKS, "").split(os.pathsep) if p]
        return {INHERITED_LOCKS: os.pathsep.join([*held, str(self.path.resolve())])}
