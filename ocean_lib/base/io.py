"""Atomic file writes and JSON-lines helpers: the run directory is only ever seen complete."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import sys
import tempfile
import time
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


def make_readable(directory: str | Path) -> None:
    """Files 0644 and folders 0755 under ``directory`` (itself included), as every output of the project: a
    staging folder from ``mkdtemp`` is 0700, and transformers writes ``model.safetensors`` 0600."""
    directory = Path(directory)
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


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
"""Environment variable: the locks an ancestor process holds on this process's behalf, as JSON ``{lock file:
token}`` (``launch`` holds the run directory's lock while its ``accelerate launch`` child writes there)."""
ORPHAN_GRACE_S = 10.0
"""How long an acquirer waits for the processes still holding a lock whose taker is gone (its children, which
die with it: :func:`ocean_lib.training.launch.die_with_parent`) before it refuses."""


class LockedError(RuntimeError):
    """Another live process holds the lock of a directory this process wants to write."""


class DirectoryLock:
    """An exclusive lock on a directory that one job writes (a run directory, an evaluation output, a study).

    ``with DirectoryLock(path, "training run"):`` takes ``path/.lock`` or raises :class:`LockedError` naming the
    process that took it (PID, host, command, since when). The lock is the kernel's ``flock`` on that file:

    * taking it needs the file exclusively for a moment (to write the taker's record), then the taker holds it
      shared, and so does every process it starts with :meth:`environment` (each checks the taker's token).
      The directory stays locked while any of them lives: a launcher killed by SIGKILL does not free it for a
      second writer while its trainer still writes.
    * a process that dies, even by SIGKILL, releases its hold: a lock file whose holders are all dead is stale
      and is taken over. The taker removes the file on release when it is the last holder.
    * ``key``: the identity of the job, for a directory that several machines write under one lock each
      (``suffix`` per machine): a lock under another suffix held with another key (or none) refuses this one.
      Without a key, other suffixes are independent (one lock per evaluation shard).
    """

    def __init__(self, directory: str | Path, what: str, suffix: str = "", key: str | None = None):
        self.directory = Path(directory)
        self.path = self.directory / f"{LOCK_FILE}{suffix}"  # a suffix: one lock per part (shard, machine)
        self.what = what
        self.key = key
        self.token: str | None = None  # the taker's: processes it starts share the lock only with it
        self._fd: int | None = None
        self._taker = False
        self.took_over: str | None = None  # the stale holder's description, when there was one

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def inherited(self) -> tuple[str, str] | None:
        """(lock file, token) of this directory's lock held by an ancestor, if any (whatever its suffix)."""
        held = json.loads(os.environ.get(INHERITED_LOCKS) or "{}")
        for path, token in held.items():
            if Path(path).parent == self.directory.resolve():
                return path, token
        return None

    def acquire(self) -> None:
        if self.inherited is not None:
            self._share(*self.inherited)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        waited_since = time.monotonic()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_flock(fd, fcntl.LOCK_EX):
                record = _record(fd)
                os.close(fd)
                if _orphaned(record) and time.monotonic() - waited_since < ORPHAN_GRACE_S:
                    time.sleep(0.2)  # the gone taker's children are dying with it
                    continue
                raise LockedError(self._refusal(record, self.path))
            # The previous holder may have removed the file between our open and our flock: then we locked a
            # file nobody else can see, and must lock the one now at the path instead.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self.took_over = _record(fd).get("description")
        self.token = secrets.token_hex(8)
        record = {
            "description": f"pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}: " + " ".join(sys.argv)[:300],
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "token": self.token,
            "key": self.key,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        # Held shared from now on, so that the processes this one starts can share it. Converting is not atomic:
        # an acquirer may take the file in between; its record then replaces ours and we give way.
        fcntl.flock(fd, fcntl.LOCK_SH)
        if _record(fd).get("token") != self.token:
            os.close(fd)
            raise LockedError(self._refusal(_record_at(self.path), self.path))
        self._fd, self._taker = fd, True
        if self.key is not None:
            try:
                self._check_other_parts()
            except LockedError:
                self.release()
                raise

    def release(self) -> None:
        if self._fd is None:
            return
        # Only the last holder removes the file (a waiter then retries on a fresh one); while processes this
        # one started still hold it, it stays, and locks the directory until they are gone.
        if self._taker and _try_flock(self._fd, fcntl.LOCK_EX):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def environment(self) -> dict[str, str]:
        """The environment entry that lets a child process share this lock."""
        held = json.loads(os.environ.get(INHERITED_LOCKS) or "{}")
        if self.token is not None:
            held[str(self.path.resolve())] = self.token
        return {INHERITED_LOCKS: json.dumps(held)}

    def _share(self, path: str, token: str) -> None:
        """Hold the lock an ancestor took, provided it is still that ancestor's (not a later taker's)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _same_file(fd, Path(path)) and _record(fd).get("token") == token:
                self._fd, self.path, self.token = fd, Path(path), token
                return
            os.close(fd)
        raise LockedError(
            f"{self.directory}: the process that started this one no longer holds its lock "
            f"({_record_at(Path(path)).get('description', 'no holder now')}); stopping rather than writing "
            "beside another writer"
        )

    def _check_other_parts(self) -> None:
        """Refuse when a lock of this directory under another suffix is held for another job (``key``)."""
        for other in sorted(self.directory.glob(f"{LOCK_FILE}*")):
            if other == self.path:
                continue
            try:
                fd = os.open(other, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                if _try_flock(fd, fcntl.LOCK_EX):  # nobody holds it: a stale file
                    continue
                record = _record(fd)
                if record.get("key") != self.key:
                    raise LockedError(self._refusal(record, other))
            finally:
                os.close(fd)

    def _refusal(self, record: dict[str, Any], path: Path) -> str:
        holder = record.get("description", "unknown")
        if _orphaned(record):
            pids = ", ".join(map(str, _holders(path))) or "unknown"
            return (
                f"{self.directory} is in use: the {self.what} taken by {holder} is gone, but processes it started "
                f"still hold the lock (pids {pids}). They should have died with it; stop them before writing there."
            )
        return (
            f"{self.directory} is in use: another {self.what} is writing there ({holder}). Wait for it to "
            "finish or stop that process; two writers would interleave their outputs."
        )


def _try_flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _record(fd: int) -> dict[str, Any]:
    """The taker's record in a lock file (a lock file of an older version: its text as the description)."""
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {"description": text} if text else {}
    return record if isinstance(record, dict) else {"description": text}


def _record_at(path: Path) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return {}
    try:
        return _record(fd)
    finally:
        os.close(fd)


def _orphaned(record: dict[str, Any]) -> bool:
    """Whether the lock's taker ran on this host and is gone (whoever holds the lock now is what it started)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _holders(path: Path) -> list[int]:
    """The PIDs holding a flock on ``path`` on this host (Linux's /proc/locks; empty elsewhere)."""
    try:
        inode = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    # "1: FLOCK  ADVISORY  READ  1234 08:01:5678 0 EOF"; a blocked waiter's line has "->" after the number
    fields = [line.split() for line in lines if "->" not in line]
    return sorted(
        {
            int(f[4])
            for f in fields
            if len(f) > 5 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == str(inode)
        }
    )
