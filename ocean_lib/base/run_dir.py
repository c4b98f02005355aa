"""The run directory: the only interface between a training process and the notebooks that read it.

::

    outputs/runs/<name>/
      config.yaml        resolved RunConfig
      run_info.json      how the run actually ran: processes, backend, ZeRO stage, dtypes, attention, versions
      metrics.jsonl      one line per optimizer step (append-only; trimmed back to the checkpoint on resume)
      rollouts.jsonl     sampled completions with their reward breakdown and advantage
      checkpoints/step_N/  policy + processor (save_pretrained), optimizer.pt, scheduler.pt, trainer_state.json
      final/             policy + processor (save_pretrained), loadable by transformers and vLLM
      log.txt            the launcher's captured stdout/stderr (with the traceback of a failure); on N machines
                         machine rank 0's, and log.machine-R.txt machine rank R's

The training process also talks to its launcher through two kinds of lines of its output: the plan
(:func:`plan_line`, the step range it will train: the launcher's progress bar needs the total) and, if it fails,
its error message (lines from :data:`ERROR_PREFIX` on, continuation lines indented).

Every file is written atomically (temporary name, then rename), so a reader or a resumed run only ever sees
complete checkpoints: ``trainer_state.json`` is written last and a checkpoint without it does not exist.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocean_lib.base.config import config_changes, load_config
from ocean_lib.base.io import append_jsonl, atomic_write_json, atomic_write_text, make_readable, read_jsonl
from ocean_lib.base.schema import RunConfig

STATE_FILE = "trainer_state.json"
ROLLOUT_THUMBNAIL_SIDE = 256  # images/ holds embedded images reduced to this side, for the rollout browser
PLAN_PREFIX = "[ocean_lib] training steps "
ERROR_PREFIX = "error: "


def plan_line(done: int, total: int) -> str:
    """The line a training process prints before its first step: steps done already and the total."""
    return f"{PLAN_PREFIX}{done + 1}..{total} of {total}"


def parse_plan_line(line: str) -> tuple[int, int] | None:
    """(steps done, total steps) from a :func:`plan_line`; None for any other line."""
    if not line.startswith(PLAN_PREFIX):
        return None
    span, _, total = line[len(PLAN_PREFIX) :].strip().partition(" of ")
    first = span.partition("..")[0]
    if not (first.isdigit() and total.isdigit()):
        return None
    return int(first) - 1, int(total)


class TrainingError(RuntimeError):
    """The run cannot continue (non-finite loss or reward, wrong process count, existing run directory)."""


def error_message_in(lines: list[str]) -> str | None:
    """The first error message a failed process printed (``error: ...`` and its indented continuation)."""
    for i, line in enumerate(lines):
        if line.startswith(ERROR_PREFIX):
            message = [line[len(ERROR_PREFIX) :]]
            for following in lines[i + 1 :]:
                if not following.startswith("  "):
                    break
                message.append(following[2:])
            return "\n".join(message)
    return None


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_info(self) -> Path:
        return self.path / "run_info.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def rollouts(self) -> Path:
        return self.path / "rollouts.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def log(self) -> Path:
        return self.path / "log.txt"

    def log_of(self, machine_rank: int) -> Path:
        """The launcher's log on machine ``machine_rank`` of a multi-node run (machines never share a file)."""
        return self.log if machine_rank == 0 else self.path / f"log.machine-{machine_rank}.txt"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step}"

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint whose state file exists, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for child in self.checkpoints.iterdir():
            if child.name.startswith("step_") and (child / STATE_FILE).is_file():
                found.append((int(child.name.removeprefix("step_")), child))
        return sorted(found)

    def complete_checkpoint(self, step: int) -> Path:
        """``checkpoints/step_N`` if it is complete; otherwise an error naming the complete steps there are
        (``train.keep_last`` prunes older ones)."""
        steps = dict(self.complete_checkpoints())
        if step not in steps:
            kept = ", ".join(str(s) for s in steps) or "none"
            raise FileNotFoundError(
                f"{self.path}: no complete checkpoint of step {step} (complete steps: {kept})"
            )
        return steps[step]

    def last_checkpoint(self) -> tuple[int, Path] | None:
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def is_finished(self) -> bool:
        return (self.final / STATE_FILE).is_file()

    def log_metrics(self, row: dict[str, Any]) -> None:
        append_jsonl(self.metrics, [row])

    def log_rollouts(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            append_jsonl(self.rollouts, rows)

    def read_metrics(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.metrics))

    def trim_to_step(self, step: int) -> None:
        """Drop metric and rollout lines logged after ``step`` (work lost with a killed process)."""
        for path in (self.metrics, self.rollouts):
            if path.exists():
                kept = [row for row in read_jsonl(path) if row["step"] <= step]
                atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


def publish_dir(tmp: Path, final: Path, state: dict[str, Any]) -> None:
    """Mark a fully written directory complete (state file last), readable by all, and move it into place
    atomically."""
    make_readable(tmp)
    atomic_write_json(tmp / STATE_FILE, state)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def prune_checkpoints(run: RunDir, keep_last: int) -> None:
    for _, path in run.complete_checkpoints()[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    if run.checkpoints.is_dir():  # half-written leftovers of a killed save
        for child in run.checkpoints.iterdir():
            if child.name.startswith(".tmp"):
                shutil.rmtree(child, ignore_errors=True)


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())


# ----------------------------------------------------------------------------------------------------------------
# Which runs may be started or continued (decided by the launcher before it starts any process, and again by the
# training process itself)
# ----------------------------------------------------------------------------------------------------------------

# Knobs that do not change what a run computes: a resumed (or reused finished) run may differ in these only.
RESUME_MAY_CHANGE = ("logging.progress", "train.save_every", "train.keep_last", "eval.", "study.")


def check_start(run: RunDir, cfg: RunConfig, resume: bool) -> None:
    """Refuse to train into ``run`` over an earlier run (without ``resume``), or to continue (or reuse the result
    of) a run that was started with other settings."""
    if not resume:
        if run.metrics.exists() and run.read_metrics():
            state = (
                "a finished run"
                if run.is_finished()
                else f"a run stopped at step {run.read_metrics()[-1]['step']}"
            )
            raise TrainingError(
                f"{run.path} already holds {state}: pass --resume to continue it (a finished run is then reused "
                "as it is), or train a new one elsewhere with --set logging.run_name=NEW_NAME"
            )
        return
    # A run that stopped before its first step (a typo in its data paths, say) left only config.yaml: nothing
    # trained, so nothing can be mixed, and the config is simply rewritten.
    if run.config.exists() and (run.read_metrics() or run.complete_checkpoints() or run.is_finished()):
        check_resumable(run, cfg)


def check_resumable(run: RunDir, cfg: RunConfig) -> None:
    """Refuse to continue (or reuse the result of) a run that was started with other settings."""
    changes = {
        key: values
        for key, values in config_changes(load_config(run.config), cfg, relative_to_study=True).items()
        if not key.startswith(RESUME_MAY_CHANGE)
    }
    if changes:
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in sorted(changes.items()))
        raise TrainingError(
            f"{run.path} was trained with other settings ({listed}); resuming would mix two runs. Pick a new "
            "logging.run_name (or study.output_dir), or delete the run (`reproduce --force` clears a study)"
        )
