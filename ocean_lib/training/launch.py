"""Run a training stage as an ``accelerate launch`` subprocess (what notebooks and the study pipeline call).

The child writes the run directory; the parent holds the directory's lock, streams the child's output into
``<run>/log.txt``, shows a progress bar of steps with their total and ETA driven by ``metrics.jsonl`` (works the
same in a terminal and in JupyterLab, and counts from the checkpoint on resume), hands every new metrics row to an
optional callback (live plots), and on failure raises with the child's error message and where its log is.

On CPU, ``accelerate launch --cpu --num_processes 2`` silently starts ONE process; the working form is
``--multi_gpu --num_processes N`` with ``Accelerator(cpu=True)`` in the script, which the trainer does when
no GPU is present (and, for a DeepSpeed config file, DeepSpeed over gloo: :mod:`ocean_lib.training.distributed`). The
trainer refuses a launch it would not honour (process count, precision, DeepSpeed settings that contradict the
params) and records how it ran in ``<run>/run_info.json``.
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocean_lib.base.config import load_config
from ocean_lib.base.io import DirectoryLock
from ocean_lib.base.run_dir import RunDir, error_message_in, parse_plan_line
from ocean_lib.training.distributed import precision_of


class LaunchError(RuntimeError):
    """The training subprocess failed."""


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


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _progress_bar(name: str, done: int, total: int, enabled: bool) -> Any:
    """A bar of optimizer steps with its total, so it shows an ETA; ``done`` steps were trained before."""
    from tqdm.auto import tqdm

    return tqdm(desc=name, total=total, initial=done, unit="step", disable=not enabled, dynamic_ncols=True)


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

    Holds the run directory's lock while the stage trains (a second writer gets :class:`~ocean_lib.base.io.LockedError`).
    The child's output goes to ``<run>/log.txt``, not to the screen, so the progress bar stays one line; on
    failure the error names the child's own message and the log that holds its traceback. ``timeout_s``: stop
    the whole process group and raise after this many seconds (a hung collective waits forever otherwise).
    """
    overrides = list(overrides or [])
    topology = topology or Topology()
    total = topology.num_processes * topology.num_machines
    cfg = load_config(params, [*overrides, f"train.num_processes={total}"])  # fail fast, before spawning
    run = RunDir(cfg.run_dir)
    cmd = accelerate_command(params, overrides, topology, resume, precision_of(cfg))
    lock = DirectoryLock(run.path, "training run")
    env = {
        **os.environ,
        **lock.environment(),  # the child writes under the lock this process holds
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // total)),
    }
    started = time.time()
    # A resumed child first trims metrics written after its checkpoint: rows older than this launch that go
    # beyond the last checkpoint are not progress.
    checkpoint = run.last_checkpoint()
    resumable = checkpoint[0] if resume and checkpoint else 0
    bar = None
    tail: collections.deque[str] = collections.deque(maxlen=200)
    shown, last_call = 0, 0.0
    lines: queue.Queue[str | None] = queue.Queue()
    with (
        lock,
        open(run.log, "a", encoding="utf-8") as log,
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            bufsize=1,
            start_new_session=timeout_s is not None,  # its own process group, killed whole on timeout
        ) as child,
    ):
        # A thread drains the child's output so that a full pipe never blocks it while we poll metrics.
        threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True).start()
        finished, timed_out, launched = False, False, time.monotonic()
        while not finished:
            time.sleep(1.0)
            if timeout_s is not None and not timed_out and time.monotonic() - launched > timeout_s:
                os.killpg(child.pid, signal.SIGKILL)
                timed_out = True
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
        child.wait()
    if bar is not None:
        bar.close()
    if child.returncode == 0 and cfg.logging.progress:
        rows = run.read_metrics()
        if bar is None:  # the child found the run finished and trained nothing
            print(
                f"{cfg.logging.run_name}: already trained ({len(rows)} steps); final weights in {run.final}"
            )
        else:
            minutes, seconds = divmod(round(time.time() - started), 60)
            print(
                f"{cfg.logging.run_name}: trained to step {rows[-1]['step'] if rows else 0} of {bar.total} "
                f"in {minutes}:{seconds:02d}; final weights in {run.final}"
            )
    if child.returncode != 0:
        message = error_message_in(list(tail))
        if timed_out:
            message = f"it did not finish within {timeout_s} s and was stopped (a hung collective?)"
        elif message is None:
            message = "its last lines:\n" + "\n".join(list(tail)[-25:])
        raise LaunchError(
            f"training run {run.path} failed (exit code {child.returncode}): {message}\n"
            f"The whole output, traceback included, is in {run.log}"
        )
    return run.final
