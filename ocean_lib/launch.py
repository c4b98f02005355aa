"""Run a training stage as an ``accelerate launch`` subprocess (what notebooks and the study pipeline call).

The child writes the run directory; the parent streams the child's output into ``<run>/log.txt``, shows a
progress bar driven by ``metrics.jsonl`` (works the same in a terminal and in JupyterLab), hands every new
metrics row to an optional callback (live plots), and on failure raises with the command, the exit code and
the last lines of the log.

On CPU, ``accelerate launch --cpu --num_processes 2`` silently starts ONE process; the working form is
``--multi_gpu --num_processes N`` with ``Accelerator(cpu=True)`` in the script, which the trainer does when
no GPU is present. The trainer also asserts that the process count is the one the config expects.
"""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocean_lib.config import load_config
from ocean_lib.run_dir import RunDir


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
    params: str | Path, overrides: list[str], topology: Topology, resume: bool
) -> list[str]:
    """The ``accelerate launch`` command line for one training stage (tested as a list of strings)."""
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
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["-m", "ocean_lib", "train", "--params", str(params)]
    for item in [*overrides, f"train.num_processes={total}", "logging.progress=false"]:
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    return cmd


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def train(
    params: str | Path,
    overrides: list[str] | None = None,
    topology: Topology | None = None,
    resume: bool = False,
    on_metrics: Callable[[list[dict[str, Any]]], None] | None = None,
    echo: bool = False,
    callback_interval_s: float = 10.0,
) -> Path:
    """Launch one stage and wait for it; return the run's ``final/`` directory."""
    overrides = list(overrides or [])
    topology = topology or Topology()
    total = topology.num_processes * topology.num_machines
    cfg = load_config(params, [*overrides, f"train.num_processes={total}"])  # fail fast, before spawning
    run = RunDir(cfg.run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    cmd = accelerate_command(params, overrides, topology, resume)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // total)),
        # Busy-waiting OpenMP threads make small matmuls ~100x slower whenever another job holds a core.
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }

    from tqdm.auto import tqdm

    progress = tqdm(desc=cfg.logging.run_name, unit="step", disable=not cfg.logging.progress)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    seen = len(run.read_metrics()) if resume else 0
    shown, last_call = 0, 0.0
    lines: queue.Queue[str | None] = queue.Queue()
    with (
        open(run.log, "a", encoding="utf-8") as log,
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
        ) as child,
    ):
        # A thread drains the child's output so that a full pipe never blocks it while we poll metrics.
        threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True).start()
        finished = False
        while not finished:
            time.sleep(1.0)
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
                if echo:
                    sys.stdout.write(line)
            log.flush()
            rows = run.read_metrics()
            if len(rows) > seen:
                progress.update(len(rows) - seen)
                seen = len(rows)
            # Redrawing live plots costs CPU the training needs: at most every callback_interval_s.
            if (
                on_metrics is not None
                and seen > shown
                and (finished or time.time() - last_call >= callback_interval_s)
            ):
                on_metrics(rows)
                shown, last_call = seen, time.time()
        child.wait()
    progress.close()
    if child.returncode != 0:
        lines = "\n".join(tail)
        raise LaunchError(
            f"training exited with code {child.returncode}\ncommand: {' '.join(cmd)}\nlog: {run.log}\n"
            f"last lines:\n{lines}"
        )
    return run.final
