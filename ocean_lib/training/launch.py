"""Run a training stage as an ``accelerate launch`` subprocess (what notebooks and the study pipeline call), and
the lifecycle of that process tree.

The child writes the run directory; the parent holds the directory's lock, streams the child's output into
``<run>/log.txt``, shows a progress bar of steps with their total and ETA driven by ``metrics.jsonl`` (works the
same in a terminal and in JupyterLab, and counts from the checkpoint on resume), hands every new metrics row to an
optional callback (live plots), and on failure raises with the child's error message and where its log is.

Every refusal the trainer would make (a finished or different run in the directory, a missing data path) is
made here first, before accelerate takes its 30 s or more to start.

Lifecycle (Linux): the tree ``launch`` -> ``accelerate launch`` -> training processes lives and dies together.
Each child asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``), so that a launcher killed by
SIGKILL (or a notebook kernel that is shut down) takes accelerate and the trainers with it. SIGINT and SIGTERM
of the launcher (Ctrl-C, a notebook's interrupt, a scheduler's cancel) reach the training processes as SIGTERM,
which stop at the end of their step with a checkpoint (:class:`StopSignals` in the trainer); a second signal
stops everything at once. The training processes share the lock the launcher took
(:class:`~ocean_lib.base.io.DirectoryLock`), so the directory stays locked while any of them lives.

On N machines (one ``launch`` per machine, ``scripts/slurm_multinode.sh``) each machine's launcher holds a lock
of its own, keyed by the run's identity (:func:`run_key`): the machines of one run share the directory, another
run is refused. Each writes its own log (``RunDir.log_of``).

On CPU, ``accelerate launch --cpu --num_processes 2`` silently starts ONE process; the working form is
``--multi_gpu --num_processes N`` with ``Accelerator(cpu=True)`` in the script, which the trainer does when
no GPU is present (and, for a DeepSpeed config file, DeepSpeed over gloo: :mod:`ocean_lib.training.distributed`). The
trainer refuses a launch it would not honour (process count, precision, DeepSpeed settings that contradict the
params) and records how it ran in ``<run>/run_info.json``.

DeepSpeed compiles some C++ ops at their first use (on CPU, its shared-memory collectives) with torch's JIT,
under a lock file that torch deletes when the build ends and otherwise waits for forever, without a word. The
training processes build into a folder of this Python environment (:func:`torch_extensions_dir`), and a lock left
by a killed build is refused before anything starts (:func:`check_build_locks`), so neither can hang a launch.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import functools
import hashlib
import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocean_lib.base.config import load_config, to_dict
from ocean_lib.base.io import DirectoryLock
from ocean_lib.base.run_dir import RunDir, check_start, error_message_in, parse_plan_line
from ocean_lib.base.schema import RunConfig
from ocean_lib.training.distributed import precision_of

LAUNCHER_PID = "OCEAN_LIB_LAUNCHER_PID"
"""Environment variable: the PID of the launcher a training process was started by (:func:`bind_to_launcher`)."""
PR_SET_PDEATHSIG = 1  # linux/prctl.h
KILLED = re.compile(r"died with <Signals\.(SIG\w+): (\d+)>|Signal (\d+) \((SIG\w+)\) received by PID")
"""How accelerate reports a training process killed by a signal: its simple launcher (CalledProcessError) and
torch's elastic agent (ChildFailedError)."""


BUILD_LOCK_STALE_S = 600.0
"""A JIT build lock older than this was left by a killed build: DeepSpeed's CPU ops build in about a minute."""


class LaunchError(RuntimeError):
    """The training subprocess failed."""


class Stopped(KeyboardInterrupt):
    """Training was asked to stop by a signal and did (at the end of a step with a checkpoint, or at once on a
    second signal). A KeyboardInterrupt, as Ctrl-C's: a notebook cell shows it interrupted, and the command line
    exits with 128 + ``signum``."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM are recorded in ``received`` instead of ending the process, so that the
    work stops at a clean point (the trainer: the end of a step); a second one raises :class:`Stopped` at once.
    Only in the main thread, where Python runs signal handlers (elsewhere a no-op)."""

    def __enter__(self) -> StopSignals:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if len(self.received) == 2:
            raise Stopped(
                f"stopped at once by a second {signal.Signals(signum).name}; --resume continues from the last "
                "checkpoint",
                signum,
            )


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere a
    no-op). With ``parent_pid``, die now if the parent is already gone (it may die before this call)."""
    if not sys.platform.startswith("linux") or _libc_prctl()(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # where prctl is refused (a seccomp profile), the tree is stopped by the launcher alone
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def bind_to_launcher() -> None:
    """In a training process started by :func:`train` (through accelerate): die with its parent, whose own
    parent is the launcher, so that killing the launcher ends the whole tree; die now if the launcher is gone."""
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is None:
        return
    die_with_parent()
    try:
        os.kill(int(launcher), 0)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)


@functools.cache
def _libc_prctl() -> Any:
    """libc's prctl, looked up once: a child between fork and exec must not call the dynamic loader."""
    return ctypes.CDLL(None, use_errno=True).prctl


def _children(pid: int) -> list[int]:
    """The PIDs of ``pid``'s child processes (Linux's /proc; none elsewhere)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:  # the thread or the process ended meanwhile
            continue
    return found


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue


@dataclass(frozen=True)
class Topology:
    """Where the processes run: ``num_processes`` per machine, on ``num_machines`` machines."""

    num_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int = 29500
    accelerate_config: str | None = None  # a file from params/accelerate/ (DeepSpeed, FSDP, multi-node)


def accelerate_command(
    params: str | Path, overrides: list[str], topology: Topology, resume: bool, mixed_precision: str = "no"
) -> list[str]:
    """The ``accelerate launch`` command line for one training stage (tested as a list of strings).

    Without a config file the command names every setting (a user's default accelerate config must not leak in);
    ``mixed_precision`` is the one the params ask for (:func:`ocean_lib.training.distributed.precision_of`)."""
    t = topology
    total = t.num_processes * t.num_machines
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if t.accelerate_config:
        cmd += ["--config_file", str(t.accelerate_config)]
    elif total > 1:
        cmd += ["--multi_gpu"]
    cmd += ["--num_processes", str(total), "--num_machines", str(t.num_machines)]
    if t.num_machines > 1:
        if not t.main_process_ip:
            raise LaunchError("multi-node launch needs main_process_ip (the address of machine rank 0)")
        cmd += [
            "--machine_rank",
            str(t.machine_rank),
            "--main_process_ip",
            t.main_process_ip,
            "--main_process_port",
            str(t.main_process_port),
        ]
    if not t.accelerate_config:
        cmd += ["--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
    # --debug: the child prints its traceback into log.txt as well as its one-line error
    cmd += ["-m", "ocean_lib", "--debug", "train", "--params", str(params)]
    for item in [*overrides, f"train.num_processes={total}", "logging.progress=false"]:
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    return cmd


def run_key(
    params: str | Path, overrides: list[str], topology: Topology, resume: bool, cfg: RunConfig
) -> str:
    """The identity of a run across machines: every machine's launcher of one multi-node run computes the same
    key (same params, overrides, topology but the machine rank, and resolved config); on one machine, a key of its
    own (whoever else holds a lock there is another run)."""
    if topology.num_machines == 1:
        return secrets.token_hex(8)
    shared = {**dataclasses.asdict(topology), "machine_rank": None}
    text = json.dumps([str(params), overrides, shared, resume, to_dict(cfg)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):  # the stream was closed under us while the launcher shut down
        pass
    lines.put(None)


def _progress_bar(name: str, done: int, total: int, enabled: bool) -> Any:
    """A bar of optimizer steps with its total, so it shows an ETA; ``done`` steps were trained before."""
    from tqdm.auto import tqdm

    return tqdm(desc=name, total=total, initial=done, unit="step", disable=not enabled, dynamic_ncols=True)


def killed_by_signal(lines: list[str]) -> str | None:
    """What to say when accelerate's output reports a training process that died of a signal (the first failure,
    where torch's elastic agent lists several), e.g. "killed by signal 9 (SIGKILL) — out of memory?"; else None."""
    root = next((i for i, line in enumerate(lines) if "Root Cause" in line), 0)
    for line in lines[root:]:
        match = KILLED.search(line)
        if match:
            name, number = (match[1], match[2]) if match[1] else (match[4], match[3])
            hint = " — out of memory?" if int(number) == signal.SIGKILL else ""
            return f"a training process was killed by signal {number} ({name}){hint}"
    return None


def train(
    params: str | Path,
    overrides: list[str] | None = None,
    topology: Topology | None = None,
    resume: bool = False,
    on_metrics: Callable[[list[dict[str, Any]]], None] | None = None,
    callback_interval_s: float = 10.0,
    timeout_s: float | None = None,
) -> Path:
    """Launch one stage and wait for it; return the run's ``final/`` directory.

    Three steps: refuse what the trainer would refuse before starting anything (a finished run resumed is
    returned at once); start accelerate under this run's lock (a second writer gets
    :class:`~ocean_lib.base.io.LockedError`) and follow it; say how it ended. The child's output goes to
    ``<run>/log.txt``, not to the screen, so the progress bar stays one line; on failure the error names the child's own message and the log that holds its traceback. SIGINT or SIGTERM
    stops the training at the end of its step with a checkpoint and raises :class:`Stopped`. ``timeout_s``: kill
    the whole tree and raise after this many seconds (a hung collective waits forever otherwise).
    """
    overrides = list(overrides or [])
    topology = topology or Topology()
    total = topology.num_processes * topology.num_machines
    cfg = load_config(params, [*overrides, f"train.num_processes={total}"])  # fail fast, before spawning
    run = RunDir(cfg.run_dir)
    cmd = accelerate_command(params, overrides, topology, resume, precision_of(cfg))
    suffix = f".machine-{topology.machine_rank}" if topology.machine_rank else ""
    key = run_key(params, overrides, topology, resume, cfg)
    main_machine = topology.machine_rank == 0
    with DirectoryLock(run.path, "training run", suffix, key) as lock:
        # 1. Refuse, before anything starts, what the trainer would refuse; a finished run is reused as it is.
        if _refuse_or_reuse(run, cfg, resume):
            if cfg.logging.progress and main_machine:
                print(f"{cfg.logging.run_name}: already trained; final weights in {run.final}")
            return run.final
        env = _child_environment(lock, topology)
        check_build_locks(Path(env["TORCH_EXTENSIONS_DIR"]))
        # 2. Start accelerate and follow it to its end: output to the log, progress, metrics, signals.
        with open(run.log_of(topology.machine_rank), "a", encoding="utf-8") as log, StopSignals() as signals:
            returncode, tail, outcome = _supervise(
                cmd, env, run, cfg, resume, log, signals, on_metrics, callback_interval_s, timeout_s
            )
    # 3. Say how it ended: the final weights, a clean stop with its checkpoint, or the failure's own message.
    return _ending(run, cfg, topology, returncode, tail, outcome, signals)


def _refuse_or_reuse(run: RunDir, cfg: RunConfig, resume: bool) -> bool:
    """Raise what the trainer would raise at its start (a finished run not resumed, changed settings, a missing
    data path), so no process is spawned for it; True when the run is finished and ``--resume`` reuses it."""
    from ocean_lib.data.records import check_source

    check_start(run, cfg, resume)
    for source in [*cfg.data.train_files, *cfg.data.val_files]:
        check_source(source)
    return resume and run.is_finished()


def torch_extensions_dir() -> Path:
    """Where torch builds the ops DeepSpeed compiles at first use: ``TORCH_EXTENSIONS_DIR`` if set, else
    ``<sys.prefix>/torch_extensions`` in a virtual environment. Torch's default, ``~/.cache/torch_extensions``, is
    shared by every environment of the user: two environments rebuild over each other's builds, and a build killed
    in one leaves a lock that hangs every later launch in all of them."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "torch_extensions"
    return Path.home() / ".cache" / "torch_extensions"


def check_build_locks(root: Path, stale_after_s: float = BUILD_LOCK_STALE_S) -> None:
    """Refuse to launch while a build lock under ``root`` (``<op>/lock``; ``<python>_<device>/<op>/lock`` in
    torch's default folder) is older than ``stale_after_s``: its build was killed, and the training processes
    would wait for it forever. A younger lock is a build in progress (another launch's); torch waits for it."""
    now = time.time()
    stale = [lock for lock in sorted(root.rglob("lock")) if now - lock.stat().st_mtime > stale_after_s]
    if stale:
        listed = "\n".join(f"  {lock} ({(now - lock.stat().st_mtime) / 60:.0f} min old)" for lock in stale)
        raise LaunchError(
            "a build of DeepSpeed's compiled ops was killed and left its lock, which the training processes "
            f"would wait for forever:\n{listed}\nNo build takes that long: delete the lock and launch again."
        )


def _child_environment(lock: DirectoryLock, topology: Topology) -> dict[str, str]:
    return {
        **os.environ,
        "TORCH_EXTENSIONS_DIR": str(torch_extensions_dir()),
        **lock.environment(),  # the training processes share the lock this process holds
        LAUNCHER_PID: str(os.getpid()),
        "PYTHONUNBUFFERED": "1",
        # this machine's processes share its cores (the other machines have their own)
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // topology.num_processes)),
    }


def _ending(
    run: RunDir,
    cfg: RunConfig,
    topology: Topology,
    returncode: int,
    tail: list[str],
    outcome: str | None,
    signals: StopSignals,
) -> Path:
    """The final weights of a run that ended well; otherwise :class:`Stopped` or :class:`LaunchError`."""
    main_machine = topology.machine_rank == 0
    rows = run.read_metrics()
    if returncode == 0:
        if cfg.logging.progress and main_machine:
            print(
                outcome
                or f"{cfg.logging.run_name}: already trained ({len(rows)} steps); final weights in {run.final}"
            )
        return run.final
    if signals.received:
        last = run.last_checkpoint()
        kept = f"its last checkpoint is step {last[0]} ({last[1]})" if last else "no checkpoint was written"
        name = signal.Signals(signals.received[0]).name
        raise Stopped(
            f"{cfg.logging.run_name}: stopped by {name}; {kept}; continue with the same command and --resume",
            signals.received[0],
        )
    message = (
        outcome
        or killed_by_signal(tail)
        or error_message_in(tail)
        or "its last lines:\n" + "\n".join(tail[-25:])
    )
    raise LaunchError(
        f"training run {run.path} failed (exit code {returncode}): {message}\n"
        f"The whole output, traceback included, is in {run.log_of(topology.machine_rank)}"
    )


def _supervise(
    cmd: list[str],
    env: dict[str, str],
    run: RunDir,
    cfg: RunConfig,
    resume: bool,
    log: Any,
    signals: StopSignals,
    on_metrics: Callable[[list[dict[str, Any]]], None] | None,
    callback_interval_s: float,
    timeout_s: float | None,
) -> tuple[int, list[str], str | None]:
    """Run ``cmd`` to its end: (exit code, last lines of its output, what to say: the summary of a trained run,
    or why it was killed). Whatever ends this function (a second signal, an error in ``on_metrics``) leaves no
    process of the tree behind."""
    started = time.time()
    # A resumed child first trims metrics written after its checkpoint: rows older than this launch that go
    # beyond the last checkpoint are not progress.
    checkpoint = run.last_checkpoint()
    resumable = checkpoint[0] if resume and checkpoint else 0
    bar = None
    tail: collections.deque[str] = collections.deque(maxlen=200)
    shown, last_call, asked_to_stop, timed_out = 0, 0.0, set(), False
    lines: queue.Queue[str | None] = queue.Queue()
    parent = os.getpid()
    if sys.platform.startswith("linux"):
        _libc_prctl()  # resolved here, not in the forked child
    child = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        bufsize=1,
        start_new_session=True,  # signals from the terminal or a notebook reach the launcher only: it stops cleanly
        preexec_fn=lambda: die_with_parent(parent),
    )
    # A thread drains the child's output so that a full pipe never blocks it while we poll metrics.
    pump = threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True)
    pump.start()
    try:
        finished, launched = False, time.monotonic()
        while not finished:
            time.sleep(1.0)
            if timeout_s is not None and time.monotonic() - launched > timeout_s:
                timed_out = True
                break
            if signals.received:
                if not asked_to_stop:
                    print(
                        f"{cfg.logging.run_name}: stopping at the end of the current step, with a checkpoint "
                        "(signal again to stop at once)",
                        file=sys.stderr,
                        flush=True,
                    )
                # the training processes (accelerate's children), each asked once, as they appear
                trainers = [pid for pid in _children(child.pid) if pid not in asked_to_stop]
                _signal(trainers, signal.SIGTERM)
                asked_to_stop.update(trainers)
            while not finished:
                try:
                    line = lines.get_nowait()
                except queue.Empty:
                    break
                if line is None:
                    finished = True
                    continue
                log.write(line)
                tail.append(line.rstrip("\n"))
                plan = parse_plan_line(line)
                if plan is not None and bar is None:
                    bar = _progress_bar(cfg.logging.run_name, plan[0], plan[1], cfg.logging.progress)
            log.flush()
            rows = run.read_metrics()
            fresh = run.metrics.exists() and run.metrics.stat().st_mtime >= started
            # Redrawn when the step changes only: a log file of the terminal's output keeps one frame per step.
            if (
                rows
                and bar is not None
                and rows[-1]["step"] != bar.n
                and (fresh or rows[-1]["step"] <= resumable)
            ):
                bar.n = rows[-1]["step"]
                bar.set_postfix(
                    {k: f"{rows[-1][k]:.3f}" for k in ("reward/overall", "loss/sft") if k in rows[-1]},
                    refresh=False,
                )
                bar.refresh()
            # Redrawing live plots costs CPU the training needs: at most every callback_interval_s.
            if (
                on_metrics is not None
                and len(rows) > shown
                and (finished or time.time() - last_call >= callback_interval_s)
            ):
                on_metrics(rows)
                shown, last_call = len(rows), time.time()
    finally:
        if child.poll() is None:  # stopped early: the trainers die with accelerate (die_with_parent)
            _signal(_children(child.pid), signal.SIGKILL)
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        pump.join(timeout=10)  # the output's end, once every process that held the pipe is gone
        if not pump.is_alive():
            child.stdout.close()
        if bar is not None:
            bar.close()
    while not lines.empty():  # what came after the last poll
        line = lines.get()
        if line is not None:
            log.write(line)
            tail.append(line.rstrip("\n"))
    outcome = None
    if child.returncode == 0 and bar is not None:
        rows = run.read_metrics()
        minutes, seconds = divmod(round(time.time() - started), 60)
        outcome = (
            f"{cfg.logging.run_name}: trained to step {rows[-1]['step'] if rows else 0} of {bar.total} "
            f"in {minutes}:{seconds:02d}; final weights in {run.final}"
        )
    elif child.returncode != 0 and timed_out:
        outcome = f"it did not finish within {timeout_s} s and was stopped (a hung collective?)"
    return child.returncode, list(tail), outcome
