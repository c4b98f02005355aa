"""The study: Ocean-R1's experiment as a chain of training stages, evaluations and notebooks.

::

    tiny model (random init, offline)        or  Qwen2.5-VL-3B-Instruct at real scale
      └─ warm-start (SFT)  = "base", the Instruct starting point of the miniature
           ├─ GRPO on text-only twins       = "GRPO-text"
           └─ GRPO-vis stage 1 (reasoning)  → GRPO-vis stage 2 (perception + replay) = "GRPO-vis"

Everything lives under ``study.output_dir``: ``data/``, ``models/``, ``runs/<stage>/``, ``eval/<model>/``,
``notebooks/`` (executed), ``report.html``, ``results.md``, ``results.csv`` and ``figures/``. The stage graph is
data: ``study.stages`` in the params file names each stage, the stage it starts from, the knobs it sets and the
result row it becomes (:class:`ocean_lib.base.config.StageConfig`), so one file describes the study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ocean_lib.base.config import load_config, to_dict
from ocean_lib.base.paths import PROJECT_ROOT
from ocean_lib.base.run_dir import RunDir
from ocean_lib.base.schema import ConfigError, RunConfig

NOTEBOOKS = ["00_grpo_walkthrough", "01_data", "02_train", "03_evaluate", "04_aha_moments", "05_results"]
"""The notebooks in reading order (the report's order)."""
EXECUTION_ORDER = [
    "01_data",
    "02_train",
    "00_grpo_walkthrough",
    "03_evaluate",
    "04_aha_moments",
    "05_results",
]
"""The order ``reproduce`` runs them in: the walkthrough after training, so that its group comes from the
warm-started base and holds right and wrong answers (a random model's are all wrong, and every advantage is 0)."""
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


STUDY_MARKER = ".ocean_study"
"""Written by a study into the directory it starts in: what ``reproduce --force`` may empty."""
STUDY_ENTRIES = {
    "data",
    "models",
    "runs",
    "eval",
    "notebooks",
    "figures",
    "report.html",
    "results.md",
    "results.csv",
}
"""What a study writes at its top (module docstring): a directory holding nothing else is a study's, marked or not
(studies made before the marker)."""


def study_dir(cfg: RunConfig) -> Path:
    return Path(cfg.study.output_dir)


def claim_study_dir(out: Path) -> None:
    """Mark ``out`` as a study's own directory (:data:`STUDY_MARKER`) when it holds nothing but what a study writes
    (new, empty, or a study made before the marker); a directory that holds other files is left unmarked, so that
    ``--force`` never empties what the study did not start."""
    from ocean_lib.base.io import atomic_write_text

    if (out / STUDY_MARKER).exists() or _foreign(out):
        return
    atomic_write_text(
        out / STUDY_MARKER, "This directory is an Ocean-R1 study's (reproduce --force empties it).\n"
    )


def _foreign(out: Path) -> list[str]:
    """The names at the top of ``out`` that a study does not write."""
    from ocean_lib.base.io import LOCK_FILE

    entries = [c.name for c in out.iterdir()] if out.is_dir() else []
    return sorted(name for name in entries if name not in {*STUDY_ENTRIES, LOCK_FILE, STUDY_MARKER})


def check_forcible(out: Path) -> None:
    """Refuse ``--force`` on a directory that is not a study's (no :data:`STUDY_MARKER`, other files in it) or
    that holds the checkout or the working directory: ``--set study.output_dir=.`` would delete the checkout."""
    resolved = out.resolve()
    for inside, what in ((PROJECT_ROOT, "the checkout"), (Path.cwd(), "the working directory")):
        if inside.resolve().is_relative_to(resolved):
            raise ConfigError(
                f"refusing reproduce --force: {out} holds {what} ({inside}); pick a study.output_dir"
            )
    others = _foreign(out)
    if others and not (out / STUDY_MARKER).exists():
        raise ConfigError(
            f"refusing reproduce --force: {out} is not a study directory (no {STUDY_MARKER}, which a study writes "
            f"in the directory it starts in) and holds {', '.join(others[:5])}"
            f"{' ...' if len(others) > 5 else ''}; --force would delete them. Pick another study.output_dir, or "
            "delete the directory yourself"
        )


def rows(cfg: RunConfig) -> dict[str, str]:
    """The result table's rows, in stage order: row label -> the stage whose final weights it evaluates."""
    return {stage.row: name for name, stage in cfg.study.stages.items() if stage.row}


def grpo_stages(cfg: RunConfig) -> list[str]:
    """The stages trained with GRPO (``train.objective``, the stage's own or the params'), in stage order."""
    return [
        name
        for name, stage in cfg.study.stages.items()
        if stage.set.get("train", {}).get("objective", cfg.train.objective) == "grpo"
    ]


def start_weights(cfg: RunConfig, stage: str) -> str:
    """The weights ``stage`` starts from: its ``starts_from`` stage's final weights, else the
    ``model.name_or_path`` its own ``set`` names, else the params' (the schema refuses a stage that names both)."""
    if stage not in cfg.study.stages:
        raise ValueError(f"unknown stage {stage!r}; study.stages are {list(cfg.study.stages)}")
    spec = cfg.study.stages[stage]
    if spec.starts_from:
        return str(run_dir(cfg, spec.starts_from).final)
    return spec.set.get("model", {}).get("name_or_path") or cfg.model.name_or_path


def stage_overrides(cfg: RunConfig, stage: str) -> list[str]:
    """What turns the study's params into one stage's run: its own knobs, run directory and start weights."""
    start = start_weights(cfg, stage)
    return [
        *cfg.study.stages[stage].overrides(),
        f"model.name_or_path={start}",
        f"logging.output_dir={study_dir(cfg) / 'runs'}",
        f"logging.run_name={stage}",
    ]


def run_dir(cfg: RunConfig, stage: str) -> RunDir:
    return RunDir(study_dir(cfg) / "runs" / stage)


def prepare(cfg: RunConfig) -> dict[str, Any]:
    """Build the procedural data and the offline tiny model if they are not there yet (miniature only)."""
    from ocean_lib.data import synthetic

    claim_study_dir(study_dir(cfg))
    built = None
    synthetic_dir = cfg.data.synthetic.output_dir
    if any(str(f).startswith(synthetic_dir) for f in cfg.data.train_files):
        manifest = Path(synthetic_dir) / "manifest.json"
        built = json.loads(manifest.read_text()) if manifest.exists() else None
        # Where the data lies is not what it is: a study moved or copied elsewhere keeps its data (and a
        # read-only copy can be opened).
        wanted = {k: v for k, v in to_dict(cfg.data.synthetic).items() if k != "output_dir"}
        if built is None or {k: v for k, v in built["synthetic"].items() if k != "output_dir"} != wanted:
            syn = cfg.data.synthetic
            records = sum(syn.train_records(f) + syn.n_test for f in syn.families) * (
                2 if syn.text_only else 1
            )
            with _announced(f"building the procedural data: {records:,} records into {synthetic_dir}"):
                built = synthetic.build(cfg)
    model_dir = Path(cfg.model.name_or_path)
    if not model_dir.exists() and cfg.model.name_or_path.startswith(str(study_dir(cfg))):
        with _announced(f"building the tiny model and its tokenizer into {model_dir}"):
            build_miniature_model(cfg)
    return {"data": built, "model": str(model_dir)}


def missing_inputs(cfg: RunConfig, params: str | Path) -> str | None:
    """What a training run of the miniature needs and is not built yet, with the commands that build it (the
    first thing a fresh clone meets); None when nothing is missing. Data and models of real scale are not
    built here: their absence is left to the loaders' own errors."""
    synthetic_dir = Path(cfg.data.synthetic.output_dir)
    data = [
        f
        for f in [*cfg.data.train_files, *cfg.data.val_files]
        if not Path(f).exists() and Path(f).is_relative_to(synthetic_dir)
    ]
    model = Path(cfg.model.name_or_path)
    missing_model = not model.exists() and model.is_relative_to(study_dir(cfg))
    if not data and not missing_model:
        return None
    lines = [f"not built yet: {', '.join([*data, *([str(model)] if missing_model else [])])}"]
    steps = []
    if data:
        steps.append(f"python -m ocean_lib data build --params {params}")
    if missing_model and model.is_relative_to(study_dir(cfg) / "runs"):
        steps.append(f"the study stage that writes {model} (python -m ocean_lib reproduce --params {params})")
    elif missing_model:
        steps.append(f"python -m ocean_lib model build-tiny --params {params}")
    lines.append("build it with:\n  " + "\n  ".join(steps))
    lines.append(
        f"or run the whole study, which builds both: python -m ocean_lib reproduce --params {params}"
    )
    return "\n".join(lines)


def build_miniature_model(cfg: RunConfig, corpus_per_level: int = 300) -> Path:
    """The miniature Qwen2.5-VL at ``model.name_or_path``, its tokenizer trained on the procedural tasks' text
    (``corpus_per_level`` tasks per family and difficulty: fewer build faster, for benchmarks)."""
    from ocean_lib.data import synthetic
    from ocean_lib.training.models import build_tiny_model

    return build_tiny_model(
        cfg.model.tiny,
        synthetic.corpus(cfg, per_level=corpus_per_level),
        cfg.model.name_or_path,
        cfg.data.min_pixels,
        cfg.data.max_pixels,
    )


def train_stage(
    params: str | Path,
    overrides: list[str],
    stage: str,
    on_metrics: Callable[[list[dict[str, Any]]], None] | None = None,
    num_processes: int = 1,
) -> None:
    """Train one stage as an accelerate-launched subprocess (a finished stage returns at once) and print where
    its final weights are (:func:`run_dir` ``(cfg, stage).final``)."""
    from ocean_lib.training import launch

    cfg = load_config(params, overrides)
    topology = launch.Topology(num_processes=num_processes)
    launch.train(
        params, [*overrides, *stage_overrides(cfg, stage)], topology, resume=True, on_metrics=on_metrics
    )


def evaluate(cfg: RunConfig, labels: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate the study's models on ``study.benchmarks``; cached items are not generated again."""
    from ocean_lib import evaluation

    eval_cfg = dataclasses.replace(
        cfg, eval=dataclasses.replace(cfg.eval, output_dir=str(study_dir(cfg) / "eval"))
    )
    summaries = {}
    stage_of = rows(cfg)
    for label in labels or list(stage_of):
        t0 = time.perf_counter()
        final = run_dir(cfg, stage_of[label]).final
        summaries[label] = evaluation.run(final, cfg.study.benchmarks, eval_cfg, model_name=label)
        items = sum(
            entry["n"]
            for name, entry in summaries[label]["benchmarks"].items()
            if name in cfg.study.benchmarks
        )
        print(
            f"{label}: {items} items of {len(cfg.study.benchmarks)} benchmarks in {_clock(time.perf_counter() - t0)}; answers in {eval_dir(cfg, label)}"
        )
    return summaries


def eval_dir(cfg: RunConfig, label: str) -> Path:
    return study_dir(cfg) / "eval" / label


def reproduce(params: str | Path, overrides: list[str] | None = None, force: bool = False) -> Path:
    """Run the notebooks with papermill (:data:`EXECUTION_ORDER`), then write an HTML report of all of them.

    Stops at the first failing notebook, naming the notebook, the cell and the error. Re-running skips
    finished work (training stages resume, evaluations reuse their caches) unless ``force`` clears the study.
    Holds the study directory's lock throughout (a second ``reproduce`` of the same study is refused), and
    prints where training and evaluation are while a notebook runs (:class:`StudyProgress`).
    """
    import papermill

    from ocean_lib.base.io import LOCK_FILE, DirectoryLock

    overrides = list(overrides or [])
    started = time.perf_counter()
    cfg = load_config(params, overrides)
    out = study_dir(cfg)
    if force:
        check_forcible(out)  # before the lock, which would create the directory
    with DirectoryLock(out, "reproduce of this study"):
        if force:
            for child in out.iterdir():  # all but the lock this process holds
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        claim_study_dir(out)
        executed = out / "notebooks"
        executed.mkdir(parents=True, exist_ok=True)
        progress = StudyProgress(cfg)
        for number, name in enumerate(EXECUTION_ORDER, start=1):
            t0 = time.perf_counter()
            _say(f"{name} ({number} of {len(EXECUTION_ORDER)}) ...")
            try:
                with progress.watching(name):
                    papermill.execute_notebook(
                        str(NOTEBOOK_DIR / f"{name}.ipynb"),
                        str(executed / f"{name}.ipynb"),
                        parameters={"params": str(params), "overrides": overrides},
                        cwd=str(Path.cwd()),
                        kernel_name="python3",
                        progress_bar=False,
                        execution_timeout=cfg.study.notebook_timeout_s,
                        # Not the study's: the kernel's start-up warnings (transport not encrypted), and the
                        # SIGINT jupyter_client sends every kernel it shuts down, which ipykernel logs as an
                        # error with a traceback when it races the shutdown (seen after 03_evaluate). A failing
                        # cell still reaches us as PapermillExecutionError.
                        extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                    )
            except papermill.PapermillExecutionError as error:
                raise RuntimeError(
                    f"notebook {name} failed in cell {error.exec_count} ({error.ename}: {error.evalue}); "
                    f"the executed notebook is {executed / f'{name}.ipynb'}"
                ) from None
            _say(f"{name} done in {_clock(time.perf_counter() - t0)}")
        report = write_report(out)
    _say(
        f"finished in {_clock(time.perf_counter() - started)}: {report}, {out / 'results.md'}, {out / 'figures'}"
    )
    return report


def write_report(out: Path) -> Path:
    """One self-contained HTML page holding every executed notebook, in reading order
    (:func:`ocean_lib.study.report_html.write_report`)."""
    from ocean_lib.study import report_html

    return report_html.write_report(
        [out / "notebooks" / f"{name}.ipynb" for name in NOTEBOOKS], out / "report.html"
    )


@contextlib.contextmanager
def _announced(what: str):
    """Say what a long step does before it starts and how long it took (a notebook showed a minute of silence)."""
    print(f"{what} ...", flush=True)
    t0 = time.perf_counter()
    yield
    print(f"done in {_clock(time.perf_counter() - t0)}", flush=True)


def _say(message: str) -> None:
    print(f"[reproduce] {message}", file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``)."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StudyProgress:
    """What ``reproduce`` prints while a notebook runs: the stage in training with its step, total and ETA, or
    how many evaluation items are answered, every ``interval_s`` when it changed.

    It reads what the runs write (each stage's ``metrics.jsonl`` and the total its ``log.txt`` announces,
    :func:`~ocean_lib.base.run_dir.plan_line`; the evaluation's ``<benchmark>.jsonl`` files), so it needs nothing
    from the notebook's kernel.
    """

    def __init__(self, cfg: RunConfig, interval_s: float = 30.0):
        self.cfg = cfg
        self.interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}  # stage (or "evaluation") -> (time, count) first seen
        self._items: int | None = None  # items per evaluated model

    def training_status(self) -> str | None:
        """The first stage that is not finished, if it has started: ``<stage> (i of n): step s of t, ...``."""
        from ocean_lib.base.run_dir import parse_plan_line

        stages = list(self.cfg.study.stages)
        for number, stage in enumerate(stages, start=1):
            run = run_dir(self.cfg, stage)
            if run.is_finished():
                continue
            if not run.log.exists():
                return None
            plans = [
                p for line in run.log.read_text(errors="replace").splitlines() if (p := parse_plan_line(line))
            ]
            if not plans:
                return f"{stage} (stage {number} of {len(stages)}): starting"
            total = plans[-1][1]
            rows = run.read_metrics()
            step = rows[-1]["step"] if rows else plans[-1][0]
            now = time.time()
            since, first = self._seen.setdefault(stage, (now, step))
            status = f"{stage} (stage {number} of {len(stages)}): step {step} of {total}"
            if step > first:
                per_step = (now - since) / (step - first)
                status += f", {per_step:.1f} s/step, about {_clock(per_step * (total - step))} left"
            return status
        return None

    def evaluation_items(self) -> int | None:
        """Items one model is evaluated on (every study benchmark, capped by eval.max_items); None if unknown."""
        from ocean_lib.evaluation import get_benchmark
        from ocean_lib.evaluation.runner import benchmark_home

        try:
            counts = [
                len(get_benchmark(n).load_items(benchmark_home(get_benchmark(n), self.cfg)))
                for n in self.cfg.study.benchmarks
            ]
        except (OSError, ValueError):  # data not there yet: the notebook itself will say so
            return None
        cap = self.cfg.eval.max_items
        return sum(min(n, cap) if cap > 0 else n for n in counts)

    def evaluation_status(self) -> str | None:
        """Items answered so far per evaluated model, of how many, with an ETA: ``base 1200 of 2000, ...``."""
        counts = {}
        for label in rows(self.cfg):
            files = eval_dir(self.cfg, label).glob("*.jsonl")
            counts[label] = sum(len(path.read_bytes().splitlines()) for path in files)
        done = sum(counts.values())
        if not done:
            return None
        if "evaluation" not in self._seen:
            self._seen["evaluation"] = (time.time(), done)
            self._items = self.evaluation_items()
        of = f" of {self._items}" if self._items else ""
        status = "evaluation items answered: " + ", ".join(f"{label} {n}{of}" for label, n in counts.items())
        since, first = self._seen["evaluation"]
        if self._items and done > first:
            per_item = (time.time() - since) / (done - first)
            status += f"; about {_clock(per_item * (self._items * len(counts) - done))} left"
        return status

    def status(self, notebook: str) -> str | None:
        if notebook == "02_train":
            return self.training_status()
        if notebook == "03_evaluate":
            return self.evaluation_status()
        return None

    @contextlib.contextmanager
    def watching(self, notebook: str):
        """Print :meth:`status` every ``interval_s`` (when it changed) while the block runs."""
        stop = threading.Event()

        def loop() -> None:
            last = None
            while not stop.wait(self.interval_s):
                line = self.status(notebook)
                if line and line != last:
                    _say(f"{notebook}: {line}")
                    last = line

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def results(cfg: RunConfig) -> Any:
    """The result table (rows: base, GRPO-text, GRPO-vis; columns: the study's benchmarks and their average,
    each with a 95% CI), written as ``results.md`` and ``results.csv`` in the study directory."""
    from ocean_lib.evaluation import group_average
    from ocean_lib.study.report import load_summary, results_table

    summaries = {}
    for label in rows(cfg):
        summary = load_summary(eval_dir(cfg, label))
        average = group_average(eval_dir(cfg, label), cfg.study.benchmarks, cfg)
        if average is not None:
            summary["benchmarks"]["average"] = average
        summaries[label] = summary
    table = results_table(
        summaries, columns=[*cfg.study.benchmarks, "average"], published=cfg.eval.published_table
    )
    table.write(study_dir(cfg) / "results")
    return table


class StudyNotReady(RuntimeError):
    """A notebook opened before the one whose outputs it shows has run: the message says what to run first.

    Jupyter shows only the message (``_render_traceback_``), not a traceback through the library."""

    def _render_traceback_(self) -> list[str]:
        return [
            f"{type(self).__name__}: {line}" if i == 0 else line
            for i, line in enumerate(str(self).splitlines())
        ]


def open_study(params: str | Path, overrides: list[str] | None = None, after: str | None = None) -> RunConfig:
    """What every notebook does first: work from the project root (JupyterLab starts notebooks in
    ``notebooks/``, papermill in the root), load the study's config and make sure its data and model exist.

    ``after``: the notebook whose outputs this one shows (``02_train``: every stage trained; ``03_evaluate``: every
    row evaluated). Missing, :class:`StudyNotReady` says what to run, before any data or model is built.
    """
    if not Path(params).exists() and (PROJECT_ROOT / params).exists():
        os.chdir(PROJECT_ROOT)
    cfg = load_config(params, overrides)
    if after is not None:
        missing = _not_done(cfg, after)
        if missing:
            out = study_dir(cfg)
            raise StudyNotReady(
                f"this notebook shows what {after} produces, and the study in {out}/ does not have it yet "
                f"({', '.join(missing)}).\n"
                f"Run the study first, from the project root: make reproduce (or .venv/bin/python -m ocean_lib "
                f"reproduce --params {params}; params/ci.yaml runs in minutes), or the notebooks up to {after} in "
                f"order.\nThe executed notebooks of a finished study are in {out}/notebooks/."
            )
    prepare(cfg)
    return cfg


def _not_done(cfg: RunConfig, notebook: str) -> list[str]:
    """What ``notebook`` should have written and is not there: unfinished stages, or unevaluated rows."""
    if notebook == "02_train":
        return [
            f"stage {stage} not trained"
            for stage in cfg.study.stages
            if not run_dir(cfg, stage).is_finished()
        ]
    if notebook == "03_evaluate":
        return [
            f"{label} not evaluated"
            for label in rows(cfg)
            if not (eval_dir(cfg, label) / "summary.json").exists()
        ]
    raise ValueError(f"open_study(after={notebook!r}): expected 02_train or 03_evaluate")


def figure_path(cfg: RunConfig, name: str) -> Path:
    """``<study>/figures/<name>.png`` (the directory is created)."""
    directory = study_dir(cfg) / "figures"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.png"


def paired_comparison(cfg: RunConfig, a: str = "base", b: str = "GRPO-vis") -> list[dict[str, Any]]:
    """Model ``b`` against model ``a`` on the same items of every study benchmark: accuracy change with its
    paired-bootstrap 95% interval, the discordant pairs and McNemar's exact p-value."""
    from ocean_lib.evaluation import compare_predictions

    rows = []
    for name in cfg.study.benchmarks:
        c = compare_predictions(eval_dir(cfg, a) / f"{name}.jsonl", eval_dir(cfg, b) / f"{name}.jsonl")
        rows.append(
            {
                "benchmark": name,
                "n": c.n,
                a: 100 * c.accuracy_a,
                b: 100 * c.accuracy_b,
                "change": 100 * c.delta.value,
                "change ci95": (100 * c.delta.low, 100 * c.delta.high),
                f"only {a} right": c.only_a,
                f"only {b} right": c.only_b,
                "McNemar p": c.p_mcnemar,
            }
        )
    return rows
