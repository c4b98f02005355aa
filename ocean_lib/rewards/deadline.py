"""Worker processes that run calls under a per-call wall-clock deadline, and are killed when they overrun it.

Why processes: a signal-based timeout (math-verify's own) cannot interrupt a long C-level operation such as
sympy evaluating ``9**9**9**9``, works only in the main thread, and nests badly. A separate process can always
be killed. Workers are fresh interpreters started with ``subprocess`` and spoken to over two pipes, so the
(possibly multi-threaded) training process is never forked and no ``__main__`` is re-imported (the
``if __name__ == "__main__"`` trap of multiprocessing's spawn/forkserver). Each runs an initializer once and
then serves for the life of the pool.

Protocol. Calls go out in chunks; every result comes back on its own, in order, as soon as it is computed. So
the parent always knows which call a worker is on and since when: a call's deadline is ``timeout_s`` after the
previous result (or after the chunk reached an idle worker). When it passes, the worker is killed, that call's
result is ``None``, the calls queued behind it go back to the front of the queue, and a fresh worker takes the
slot. A worker that dies mid-call is handled the same way.

Throughput. Each worker holds up to :data:`MAX_IN_FLIGHT` calls, so it never idles while a busy parent (or
a loaded machine) is slow to send more. The parent never blocks on a send to a worker that might be hung:
a chunk is sent to a busy worker only if it fits in the free space of the pipe (enlarged to 1 MiB where Linux
allows), counting every chunk the worker has not started reading yet.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

Call = tuple[Callable[..., Any], tuple[Any, ...]]

CHUNK = 16
"""Calls per message to a worker."""
MAX_IN_FLIGHT = 8 * CHUNK
"""Calls a worker may hold (being computed or waiting in its pipe)."""

_PIPE_BYTES = 1 << 20  # asked for; Linux grants up to /proc/sys/fs/pipe-max-size (1 MiB by default)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding ocean_lib/
_BOOT = "import sys; from ocean_lib.rewards.deadline import serve; serve(sys.argv[1:])"
_QUIET_LOGGERS = ("math_verify", "latex2sympy2_extended")  # per-call timeout warnings would flood stderr


def default_size() -> int:
    """Workers to use when the config says 0: the CPUs this process may run on, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def serve(argv: list[str]) -> None:
    """Worker main: ``argv`` = read fd, write fd, memory limit in bytes, optionally ``"module:function"`` to run
    first. Says ``ready`` after that, then for each chunk of calls sends one ``(ok, value)`` per call, in order;
    exits on ``None`` or when the parent's end of the pipe closes."""
    read_fd, write_fd, memory_limit_bytes, *initializer = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us if needed
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (int(memory_limit_bytes), hard))
    except (ImportError, ValueError, OSError):  # no such limit here: the deadline still bounds the damage
        pass
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if initializer:
        module, function = initializer[0].split(":")
        getattr(importlib.import_module(module), function)()
    inbox = Connection(int(read_fd), writable=False)
    outbox = Connection(int(write_fd), readable=False)
    outbox.send("ready")
    while True:
        try:
            chunk = inbox.recv()
        except EOFError:
            return
        if chunk is None:
            return
        for fn, args in chunk:
            try:
                outbox.send((True, fn(*args)))
            except Exception as error:  # noqa: BLE001 - report, keep serving
                outbox.send((False, repr(error)))


def _pipe(capacity: int) -> tuple[int, int, int]:
    """An OS pipe, enlarged towards ``capacity`` where possible: (read fd, write fd, granted capacity)."""
    read_fd, write_fd = os.pipe()
    granted = 1 << 16  # the Linux default, and a safe assumption elsewhere
    with contextlib.suppress(ImportError, AttributeError, OSError):
        import fcntl

        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, capacity)
        granted = fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ)
    return read_fd, write_fd, granted


@dataclass(eq=False)  # identity: workers are found in lists by `is`
class _Worker:
    process: subprocess.Popen
    outbox: Connection  # parent → worker
    inbox: Connection  # worker → parent
    pipe_bytes: int  # capacity of the outbox pipe
    started: float
    ready: bool = False
    in_flight: deque[int] = field(default_factory=deque)  # calls sent and not answered, in order
    unread: deque[tuple[int, int]] = field(
        default_factory=deque
    )  # (first call, bytes) of chunks not yet read
    deadline: float = math.inf  # for in_flight[0]

    def has_slots(self) -> bool:
        """Whether another chunk of calls may be queued on this worker (checked before pickling one)."""
        return not self.in_flight or len(self.in_flight) + CHUNK <= MAX_IN_FLIGHT

    def has_pipe_room(self, nbytes: int) -> bool:
        """Whether a message of ``nbytes`` can be sent now without any risk of blocking."""
        if not self.in_flight:
            return True  # an idle worker is reading its pipe
        return sum(size for _, size in self.unread) + nbytes + 64 <= self.pipe_bytes

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.outbox.close()
        self.inbox.close()


@dataclass
class _Batch:
    """The calls of one ``map``: drawn lazily from ``source``; ``retry`` holds calls to send again first."""

    source: Iterator[Call]
    calls: list[Call] = field(default_factory=list)
    results: list[Any | None] = field(default_factory=list)
    retry: deque[list[int]] = field(default_factory=deque)
    exhausted: bool = False

    def next_chunk(self) -> list[int] | None:
        if self.retry:
            return self.retry.popleft()
        if self.exhausted:
            return None
        new = list(itertools.islice(self.source, CHUNK))
        self.exhausted = len(new) < CHUNK
        if not new:
            return None
        first = len(self.calls)
        self.calls += new
        self.results += [None] * len(new)
        return list(range(first, first + len(new)))


class DeadlinePool:
    """A fixed number of worker processes that run ``fn(*args)`` calls, each within ``timeout_s`` or not at all.

    ``fn`` must be importable by name in a fresh interpreter (a module-level function). ``initializer``
    (``"module:function"``) runs once in each worker before it takes calls: imports and warm-up there do not
    count against any call's deadline. ``map`` returns one entry per call: the value, or ``None`` when the call
    overran its deadline, raised, or its worker died. Not thread-safe (callers serialise); safe across
    ``fork``: a forked child that inherits a pool leaves the parent's workers alone and starts its own.
    """

    def __init__(
        self,
        size: int,
        initializer: str | None = None,
        memory_limit_bytes: int = 4 << 30,
        startup_timeout_s: float = 120.0,
    ) -> None:
        if size < 1:
            raise ValueError(f"a DeadlinePool needs at least one worker, got size={size}")
        self.size = size
        self.initializer = initializer
        self.memory_limit_bytes = memory_limit_bytes
        self.startup_timeout_s = startup_timeout_s
        self._workers: list[_Worker] = []
        self._pid = os.getpid()

    def map(self, calls: Iterable[Call], timeout_s: float) -> list[Any | None]:
        """Run every call; a call's deadline starts when its worker begins it (start-up time is not counted).

        ``calls`` is consumed lazily, as workers have room, so a generator that does work to produce its calls
        (the scorer's string rules) runs here while the workers compute.
        """
        if os.getpid() != self._pid:  # inherited through fork: those workers belong to our parent
            self._workers, self._pid = [], os.getpid()
        batch = _Batch(iter(calls))
        try:
            while True:
                self._dispatch(batch, timeout_s)
                if not any(w.in_flight for w in self._workers) and not batch.retry and batch.exhausted:
                    return batch.results
                self._collect(batch, timeout_s)
        except BaseException:  # e.g. KeyboardInterrupt: calls may be half-sent, so start afresh next time
            self.close()
            raise

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
        for worker in self._workers:
            with contextlib.suppress(OSError):  # already gone
                worker.outbox.send(None)
        for worker in self._workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=1.0)
            worker.stop()
        self._workers = []

    # ------------------------------------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        to_worker_r, to_worker_w, pipe_bytes = _pipe(_PIPE_BYTES)
        from_worker_r, from_worker_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        argv = [str(to_worker_r), str(from_worker_w), str(self.memory_limit_bytes)]
        argv += [self.initializer] if self.initializer else []
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, *argv],
            pass_fds=(to_worker_r, from_worker_w),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        os.close(to_worker_r)
        os.close(from_worker_w)
        outbox = Connection(to_worker_w, readable=False)
        inbox = Connection(from_worker_r, writable=False)
        return _Worker(process, outbox, inbox, pipe_bytes, started=time.monotonic())

    def _replace(self, worker: _Worker, batch: _Batch) -> None:
        """Kill ``worker``; its current call stays unanswered, the calls queued behind it are sent again first."""
        if len(worker.in_flight) > 1:
            batch.retry.appendleft(list(worker.in_flight)[1:])
        worker.stop()
        self._workers[self._workers.index(worker)] = self._spawn()

    def _dispatch(self, batch: _Batch, timeout_s: float) -> None:
        """Give every ready worker as many calls as it has room for; start the workers on first need."""
        if not self._workers and (batch.retry or not batch.exhausted):
            chunk = batch.next_chunk()
            if chunk is None:
                return
            batch.retry.appendleft(chunk)
            self._workers = [self._spawn() for _ in range(self.size)]
        for worker in list(self._workers):
            while worker.ready and worker.has_slots() and (chunk := batch.next_chunk()) is not None:
                message = bytes(ForkingPickler.dumps([batch.calls[i] for i in chunk]))
                if not worker.has_pipe_room(len(message)):
                    batch.retry.appendleft(chunk)
                    break
                try:
                    worker.outbox.send_bytes(message)
                except OSError:  # died: this chunk never reached it
                    batch.retry.appendleft(chunk)
                    self._replace(worker, batch)
                    break
                if not worker.in_flight:
                    worker.deadline = time.monotonic() + timeout_s
                worker.in_flight.extend(chunk)
                worker.unread.append((chunk[0], len(message)))

    def _collect(self, batch: _Batch, timeout_s: float) -> None:
        """Wait for results or the next deadline, take every result there is, then enforce deadlines."""
        active = [w for w in self._workers if w.in_flight or not w.ready]
        if not active:
            return
        wake = min(w.deadline if w.ready else w.started + self.startup_timeout_s for w in active)
        for inbox in wait([w.inbox for w in active], timeout=max(0.0, wake - time.monotonic())):
            worker = next(w for w in active if w.inbox is inbox)
            while self._receive(worker, batch, timeout_s) and worker.in_flight and worker.inbox.poll():
                pass
        now = time.monotonic()
        for worker in [w for w in active if any(w is x for x in self._workers)]:
            if not worker.ready and now > worker.started + self.startup_timeout_s:
                raise RuntimeError(f"a scoring worker did not start within {self.startup_timeout_s:.0f} s")
            if worker.in_flight and now > worker.deadline and not worker.inbox.poll():
                self._replace(worker, batch)

    def _receive(self, worker: _Worker, batch: _Batch, timeout_s: float) -> bool:
        """Take one message from ``worker``; False if it had died (it is then replaced)."""
        try:
            message = worker.inbox.recv()
        except (EOFError, OSError):
            if not worker.ready:
                code = worker.process.wait()
                raise RuntimeError(f"a scoring worker exited during start-up (exit code {code})") from None
            self._replace(worker, batch)
            return False
        if not worker.ready:
            worker.ready = True
            return True
        ok, value = message
        call = worker.in_flight.popleft()
        batch.results[call] = value if ok else None
        while worker.unread and worker.unread[0][0] <= call:  # it has read every chunk up to this call's
            worker.unread.popleft()
        worker.deadline = time.monotonic() + timeout_s
        return True
