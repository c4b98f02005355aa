"""``python -m ocean_lib``: the command line, one parser for every step of the study, and what each command does.

Library functions take plain values; this module turns arguments into those values and results into exit codes.
A failing command prints one message (``error: ...``) and its exit code instead of a traceback; ``--debug`` prints
the traceback as well (``launch`` passes it to its training child, so a run's ``log.txt`` always holds it).
"""

from __future__ import annotations

import argparse
import difflib
import signal
import sys
import traceback
from pathlib import Path

from ocean_lib.base.config import add_params_arguments, load_config
from ocean_lib.base.paths import PROJECT_ROOT
from ocean_lib.base.run_dir import ERROR_PREFIX, RunDir
from ocean_lib.base.schema import ConfigError, RunConfig

DESCRIPTION = "One command-line entry point for every step of the Ocean-R1 study."
EPILOG = """\
first run (the miniature, on CPU):
  python -m ocean_lib reproduce --params params/mini.yaml    the whole study, ~22 minutes
  python -m ocean_lib reproduce --params params/ci.yaml      the same at the size of a test, ~3 minutes

where outputs go: a study under study.output_dir (params/mini.yaml: outputs/mini/); one training run under
logging.output_dir/logging.run_name (config.yaml, metrics.jsonl, log.txt, final/); an evaluation
under eval.output_dir/<model name>/. Any of them can be changed with --set KEY=VALUE.

Errors print one message and the exit code (1: failed, 2: bad arguments or config); put --debug before the
command to see the traceback too."""

EXIT_FAILED, EXIT_USAGE = 1, 2


class UsageError(ValueError):
    """Arguments that do not make a command (exit code 2, as argparse's own)."""


BENCH_SCRIPTS = {"grpo": "grpo_step.py", "rewards": "rewards.py", "micro-batches": "micro_batches.py"}
"""``python -m ocean_lib bench <name>`` runs ``bench/<script>`` of the checkout."""


def _command(
    commands: argparse._SubParsersAction, name: str, help: str, outputs: str
) -> argparse.ArgumentParser:  # noqa: A002
    """A sub-command whose ``--help`` says what it does and where it writes."""
    return commands.add_parser(name, help=help, description=f"{help[0].upper()}{help[1:]}. {outputs}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ocean_lib",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an error, not only its message"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        commands,
        "train",
        "run one training stage in this process (launch calls this through accelerate launch)",
        "Writes logging.output_dir/logging.run_name/ (config.yaml, metrics.jsonl, rollouts.jsonl, checkpoints/, "
        "final/).",
    )
    add_params_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")

    p = _command(
        commands,
        "launch",
        "run one training stage as an accelerate-launched subprocess, with a progress bar",
        "Writes logging.output_dir/logging.run_name/ (config.yaml, metrics.jsonl, rollouts.jsonl, checkpoints/, "
        "final/, and log.txt with the training process's output); name a new run with "
        "--set logging.run_name=NAME.",
    )
    add_params_arguments(p)
    p.add_argument(
        "--num-processes", type=int, default=1, help="processes per machine (GPUs, or CPU workers)"
    )
    p.add_argument("--num-machines", type=int, default=1, help="machines taking part")
    p.add_argument("--machine-rank", type=int, default=0, help="this machine's rank (0 = main)")
    p.add_argument("--main-process-ip", default=None, help="address of machine rank 0 (multi-node)")
    p.add_argument("--main-process-port", type=int, default=29500, help="port on machine rank 0 (multi-node)")
    p.add_argument(
        "--accelerate-config", default=None, help="accelerate config file (params/accelerate/*.yaml)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")

    p = _command(
        commands,
        "data",
        "build the miniature data, or fetch Ocean-R1's data and the benchmarks",
        "See each sub-command's --help for where it writes.",
    )
    data = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    add_params_arguments(
        _command(
            data,
            "build",
            "write the procedural tasks as parquet files and a preview PNG",
            "Writes data.synthetic.output_dir/ (train/, test/, train_text/, test_text/, preview.png, "
            "manifest.json).",
        )
    )
    fetch = _command(
        data,
        "fetch-training",
        "download Ocean-R1's training data and base model (network)",
        "Writes under --root.",
    )
    fetch.add_argument("--root", default="data", help="directory to download into")
    fetch.add_argument("--stage", choices=["1", "2", "all"], default="all", help="which stage's data")
    bench_fetch = _command(
        data,
        "fetch-benchmarks",
        "download the benchmarks' annotations and images",
        "Writes under --root (eval.data_root reads from there).",
    )
    bench_fetch.add_argument("--root", default="data/benchmarks", help="directory to download into")
    bench_fetch.add_argument("--only", default=None, help="comma-separated benchmark names")

    p = _command(commands, "model", "build the miniature model", "See build-tiny --help.")
    model = p.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")
    add_params_arguments(
        _command(
            model,
            "build-tiny",
            "train the BPE tokenizer and save a random tiny Qwen2.5-VL",
            "Writes model.name_or_path/ (a save_pretrained directory).",
        )
    )

    p = _command(
        commands,
        "eval",
        "evaluate a checkpoint on benchmarks (eval rescore: score stored outputs again, no model)",
        "Writes eval.output_dir/<model name>/ (<benchmark>.jsonl per item, summary.json); items already there "
        "are not generated again.",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["run", "rescore", "judge", "table"],
        default="run",
        help="run: generate and score (default); rescore: score the stored outputs again and print the table; "
        "judge: score the stored outputs of *_judge benchmarks with the model judge (eval.judge_url, "
        "eval.judge_model); table: the result table of --row summaries beside the params' published table "
        "(eval.published_table)",
    )
    add_params_arguments(p, required=False)
    p.add_argument("--model", default=None, help="checkpoint directory or hub id (required to run)")
    p.add_argument(
        "--outputs",
        default=None,
        help="rescore: directory of <benchmark>.jsonl outputs (default: eval.output_dir/<model name>)",
    )
    p.add_argument(
        "--benchmarks",
        default=None,
        help="comma-separated benchmark names (default: eval.benchmarks; rescore: every one with outputs)",
    )
    p.add_argument("--model-name", default=None, help="output directory name (default: from the model path)")
    p.add_argument(
        "--max-items", type=int, default=None, help="first N items per benchmark (default: eval.max_items)"
    )
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap every benchmark's generation budget")
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="with --model RUN_DIR: evaluate its checkpoints/step_N instead of final/ (model name <run>_step_N)",
    )
    p.add_argument(
        "--row",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="table: a row label and its evaluation directory (summary.json); repeat for more rows",
    )
    p.add_argument("--out", default=None, help="table: also write <out>.md and <out>.csv")

    p = _command(
        commands,
        "reproduce",
        "run the study's notebooks end to end with papermill",
        "Writes study.output_dir/ (data/, models/, runs/<stage>/, eval/<model>/, notebooks/, figures/, "
        "report.html, results.md, results.csv); finished stages and evaluations are reused.",
    )
    add_params_arguments(p)
    p.add_argument("--force", action="store_true", help="delete the study directory and start over")

    p = _command(
        commands,
        "bench",
        "benchmarks: grpo (a step against TRL), rewards (scoring throughput), micro-batches (length buckets)",
        "Prints its measurements (docs/performance.md says how to read them).",
    )
    p.add_argument("which", choices=list(BENCH_SCRIPTS), help="which benchmark")
    p.add_argument(
        "options", nargs=argparse.REMAINDER, help="the benchmark's own options (bench NAME --help lists them)"
    )

    p = _command(
        commands,
        "verdicts",
        "re-score Ocean-R1's published per-item evaluation logs and compare every verdict with ours",
        "A correctness check of the evaluation (ocean_lib/evaluation/verdicts.py).",
    )
    p.add_argument("--logs", required=True, help="directory holding Ocean-R1's src/eval/logs/eval/*.json")
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--only", default=None, help="comma-separated log name prefixes to measure")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per scored output (math-verify's own)")

    p = _command(
        commands,
        "plan",
        "print the optimizer steps and checkpoints a params file plans for its training data",
        "Writes nothing; reads the training data's row counts (parquet footers) or takes them from --rows.",
    )
    add_params_arguments(p)
    p.add_argument(
        "--rows",
        type=int,
        action="append",
        default=[],
        help="rows of a training source not on this machine (a hub id), one per data.train_files entry in "
        "order; repeat for several",
    )

    p = _command(
        commands,
        "gpu-check",
        "check on one GPU what a params file needs: vLLM, attention, DeepSpeed ZeRO-2/3, memory",
        "Writes a JSON report to --out and prints one line per check.",
    )
    add_params_arguments(p, required=False)
    p.add_argument("--out", default=None, help="JSON report (default: outputs/gpu_check.json)")
    p.add_argument(
        "--plan",
        action="store_true",
        help="build and validate every check's configuration on CPU, run nothing on a GPU (exit 0: all would start)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    handler = {
        "train": _train,
        "launch": _launch,
        "data": _data,
        "model": _model,
        "eval": _eval,
        "reproduce": _reproduce,
        "bench": _bench,
        "verdicts": _verdicts,
        "plan": _plan,
        "gpu-check": _gpu_check,
    }[args.command]
    return handler(args) or 0


def _check_inputs(args: argparse.Namespace):
    """The run's config, after making sure what the miniature builds (data, tiny model) is there."""
    from ocean_lib.study.pipeline import missing_inputs

    cfg = load_config(args.params, args.overrides)
    hint = missing_inputs(cfg, args.params)
    if hint:
        raise FileNotFoundError(hint)
    return cfg


def _train(args: argparse.Namespace) -> int:
    import os
    import secrets

    from ocean_lib.training import launch

    launch.bind_to_launcher()  # started by `launch`: dies with it
    from ocean_lib.base.io import DirectoryLock
    from ocean_lib.training.trainer import train

    cfg = _check_inputs(args)
    lock = DirectoryLock(cfg.run_dir, "training run", key=secrets.token_hex(8))
    if lock.inherited is None and os.environ.get("RANK", "0") != "0":
        # the other processes of an `accelerate launch` by hand: the main one holds the lock
        train(cfg, resume=args.resume)
        return 0
    with lock:  # started by `launch`, every process shares its lock: the directory is locked while any writes
        final = train(cfg, resume=args.resume)
    print(f"final weights: {final}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    from ocean_lib.base.run_dir import RunDir
    from ocean_lib.training import launch

    cfg = _check_inputs(args)
    topology = launch.Topology(
        num_processes=args.num_processes,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        main_process_ip=args.main_process_ip,
        main_process_port=args.main_process_port,
        accelerate_config=args.accelerate_config,
    )
    log = RunDir(cfg.run_dir).log_of(args.machine_rank)
    print(f"training {cfg.run_dir} (the training process's output: {log})", file=sys.stderr)
    launch.train(args.params, args.overrides, topology, resume=args.resume)
    return 0


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "build":
        from ocean_lib.data import synthetic

        built = synthetic.build(load_config(args.params, args.overrides))
        for split, counts in built["counts"].items():
            print(f"{split}: " + ", ".join(f"{family} {n}" for family, n in counts.items()))
        print(f"written to {Path(built['manifest']).parent} (preview: {built['preview']})")
        return 0
    if args.data_command == "fetch-training":
        from ocean_lib.data import fetch

        return fetch.fetch_training(args.root, args.stage)
    from ocean_lib.evaluation import fetch_benchmarks, manual_steps_for

    fetched = fetch_benchmarks(args.root, None if args.only is None else args.only.split(","))
    for name, files in fetched.items():
        size = sum(path.stat().st_size for path in files) / 2**20
        print(f"{name}: {len(files)} files, {size:,.1f} MiB in {Path(args.root).resolve()}")
    for step in manual_steps_for(list(fetched)):
        print(f"by hand: {step}")
    return 0


def _model(args: argparse.Namespace) -> int:
    from ocean_lib.study.pipeline import build_miniature_model

    print(f"tiny model saved to {build_miniature_model(load_config(args.params, args.overrides))}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ocean_lib.evaluation import evaluate, model_name_of

    # Without a params file, bf16 as Ocean-R1's evaluation scripts load the model (the knob's default is fp32).
    overrides = args.overrides if args.params else ["model.inference_dtype=bfloat16", *args.overrides]
    cfg = load_config(args.params, overrides)
    names = args.benchmarks.split(",") if args.benchmarks else None
    if args.action in ("run", "rescore"):
        _check_benchmark_names(names or (cfg.eval.benchmarks if args.action == "run" else []))
    if args.action == "rescore":
        return _rescore(args, cfg, names)
    if args.action == "table":
        return _table(args, cfg, names)
    if args.action == "judge":
        return _judge(args, cfg, names)
    if args.model is None:
        raise UsageError("eval needs --model (or `eval rescore` to score stored outputs)")
    if args.step is not None:  # a run directory's intermediate checkpoint, named after the run and the step
        args.model_name = args.model_name or f"{Path(args.model).name}_step_{args.step}"
        args.model = str(RunDir(Path(args.model)).complete_checkpoint(args.step))
    summary = evaluate(
        args.model,
        names,
        cfg,
        model_name=args.model_name,
        max_items=args.max_items,
        max_new_tokens_cap=args.max_new_tokens,
    )
    if summary is None:  # not the main process of a sharded evaluation
        return 0
    for name, entry in summary["benchmarks"].items():
        low, high = entry["ci95"]
        done = "" if entry.get("complete", True) else f" (of {entry.get('n_items', '?')} items)"
        print(
            f"{name:<16} {100 * entry['accuracy']:5.1f} % ± {100 * (high - low) / 2:.1f}  n={entry['n']}{done}"
        )
    directory = Path(cfg.eval.output_dir) / (args.model_name or model_name_of(args.model))
    print(f"written to {directory}/ (summary.json, <benchmark>.jsonl per item)")
    return 0


def _check_benchmark_names(names: list[str]) -> None:
    """A misspelt benchmark is a bad argument (exit code 2), named with the closest registered names."""
    from ocean_lib.evaluation import BENCHMARKS

    for name in names:
        if name not in BENCHMARKS:
            close = difflib.get_close_matches(name, BENCHMARKS, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise UsageError(f"unknown benchmark {name!r}{hint} (known: {', '.join(BENCHMARKS)})")


def _rescore(args: argparse.Namespace, cfg: RunConfig, names: list[str] | None) -> int:
    """``eval rescore``: the stored outputs scored again by the current items and scorers, and the table."""
    from ocean_lib.evaluation import model_name_of, rescore
    from ocean_lib.evaluation.runner import benchmarks_with_outputs
    from ocean_lib.study.report import results_table

    if args.outputs is None and args.model is None and args.model_name is None:
        raise UsageError("eval rescore needs --outputs (or --model / --model-name)")
    directory = Path(
        args.outputs or Path(cfg.eval.output_dir) / (args.model_name or model_name_of(args.model))
    )
    names = names or benchmarks_with_outputs(directory)
    if not names:
        raise FileNotFoundError(f"no <benchmark>.jsonl of a registered benchmark in {directory}")
    summary = rescore(directory, names, cfg)
    print(results_table({directory.name: summary}, published=cfg.eval.published_table).markdown())
    return 0


def _judge(args: argparse.Namespace, cfg: RunConfig, names: list[str] | None) -> int:
    """``eval judge``: the stored outputs of the judge benchmarks scored by the configured model judge."""
    from ocean_lib.evaluation import model_name_of
    from ocean_lib.evaluation.judge import KINDS
    from ocean_lib.evaluation.runner import judge_outputs
    from ocean_lib.study.report import results_table

    if args.outputs is None and args.model is None and args.model_name is None:
        raise UsageError("eval judge needs --outputs (or --model / --model-name)")
    directory = Path(
        args.outputs or Path(cfg.eval.output_dir) / (args.model_name or model_name_of(args.model))
    )
    names = names or [f"{k}_judge" for k in KINDS if (directory / f"{k}_judge.jsonl").exists()]
    if not names:
        raise FileNotFoundError(f"no <benchmark>.jsonl of a *_judge benchmark in {directory}")
    summary = judge_outputs(directory, names, cfg)
    print(
        results_table({directory.name: summary}, columns=names, published=cfg.eval.published_table).markdown()
    )
    return 0


def _table(args: argparse.Namespace, cfg: RunConfig, names: list[str] | None) -> int:
    """``eval table``: the result table of evaluated models beside the published table their params name (by
    default every column of that table, so that each published number shows, with its comparability)."""
    from ocean_lib.study.report import PUBLISHED_TABLES, load_summary, results_table

    if not args.row:
        raise UsageError("eval table needs at least one --row LABEL=DIR")
    rows = {}
    for spec in args.row:
        label, sep, directory = spec.partition("=")
        if not sep or not label or not directory:
            raise UsageError(f"--row {spec!r}: expected LABEL=DIR")
        rows[label] = directory
    if (
        names is None and cfg.eval.published_table != "none"
    ):  # every published column, then the others measured
        measured = [name for directory in rows.values() for name in load_summary(directory)["benchmarks"]]
        names = list(dict.fromkeys([*PUBLISHED_TABLES[cfg.eval.published_table].columns, *measured]))
    table = results_table(rows, columns=names, published=cfg.eval.published_table)
    print(table.markdown())
    if args.out:
        print("written: " + ", ".join(str(path) for path in table.write(args.out)))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from ocean_lib.study.pipeline import reproduce

    reproduce(args.params, args.overrides, force=args.force)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import runpy

    script = PROJECT_ROOT / "bench" / BENCH_SCRIPTS[args.which]
    if not script.exists():
        raise FileNotFoundError(f"{script} not found: benchmarks run from a source checkout of ocean_lib")
    sys.argv = [f"python -m ocean_lib bench {args.which}", *args.options]  # the script parses its own options
    sys.path.insert(
        0, str(script.parent)
    )  # as `python bench/<script>` has it: they import bench/conditions.py
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _verdicts(args: argparse.Namespace) -> int:
    from ocean_lib.evaluation import verdicts

    return verdicts.main(args)


def _plan(args: argparse.Namespace) -> int:
    """``plan``: the steps a run of the params trains, from its data's size (before rows are dropped)."""
    from ocean_lib.data.records import count_rows
    from ocean_lib.training.run_state import Schedule

    cfg = load_config(args.params, args.overrides)
    t, sources = cfg.train, cfg.data.train_files
    if args.rows and len(args.rows) != len(sources):
        raise UsageError(
            f"--rows given {len(args.rows)} times; data.train_files has {len(sources)}: {sources}"
        )
    counts = args.rows or [count_rows(source) for source in sources]
    for source, count in zip(sources, counts, strict=True):
        print(f"{source}: {count:,} rows" + (" (--rows)" if args.rows else ""))
    schedule = Schedule(sum(counts), cfg)
    unused = sum(counts) - schedule.steps_per_epoch * t.prompts_per_step
    print(
        f"{t.prompts_per_step} prompts per step: {schedule.steps_per_epoch:,} steps per epoch "
        f"({unused} rows of each epoch unused), {t.epochs} epochs"
        + (f", train.max_steps {t.max_steps}" if t.max_steps else "")
        + f": {schedule.total_steps:,} steps"
    )
    saved = list(range(t.save_every, schedule.total_steps, t.save_every)) if t.save_every else []
    if saved:
        print(
            f"checkpoints/step_N every {t.save_every} steps: step_{saved[0]} ... step_{saved[-1]} "
            f"({len(saved)}; the last {t.keep_last} kept), final/ = step {schedule.total_steps:,}"
        )
    else:
        print(f"final/ = step {schedule.total_steps:,} (no intermediate checkpoints)")
    print("(an upper bound: rows dropped as overlong or skipped as bad at load time shorten each epoch)")
    return 0


def _gpu_check(args: argparse.Namespace) -> int:
    from ocean_lib.cli.gpu_check import main

    return main(args.params, args.overrides, args.out, plan=args.plan)


def error_message(error: BaseException) -> str:
    """What a user needs from an exception: its message (a KeyError's is its argument, not its repr)."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    text = str(error).strip()
    return text or type(error).__name__


def report_error(error: BaseException, debug: bool) -> int:
    """Print ``error: <message>`` (continuation lines indented) and the exit code; return the code."""
    code = EXIT_USAGE if isinstance(error, ConfigError | UsageError) else EXIT_FAILED
    if debug:
        traceback.print_exception(error)
    first, *rest = error_message(error).splitlines() or [""]
    lines = [f"{ERROR_PREFIX}{first}", *(f"  {line}" for line in rest)]
    hint = "" if debug else "; add --debug before the command for the traceback"
    lines.append(f"(exit code {code}{hint})")
    print("\n".join(lines), file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt as stop:  # Ctrl-C, or training stopped by SIGINT or SIGTERM (launch.Stopped)
        code = 128 + getattr(stop, "signum", signal.SIGINT)
        # a stopped training process's message is its error line: a launcher that did not stop it names it
        said = f"{ERROR_PREFIX}{stop}\n(exit code {code})" if str(stop) else f"interrupted (exit code {code})"
        print(said, file=sys.stderr)
        return code
    except Exception as error:  # every failure becomes one message; --debug shows where it came from
        return report_error(error, args.debug)
