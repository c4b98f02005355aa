"""``python -m ocean_lib``: the command line, one parser for every step of the study, and what each command does.

Library functions take plain values; this module turns arguments into those values and results into exit codes.
"""

from __future__ import annotations

import argparse
import json
import sys

from ocean_lib.config import RunConfig, add_params_arguments, load_config
from ocean_lib.paths import PROJECT_ROOT

DESCRIPTION = "One command-line entry point for every step of the Ocean-R1 study."

BENCH_SCRIPTS = {"grpo": "grpo_step.py", "rewards": "rewards.py", "micro-batches": "micro_batches.py"}
"""``python -m ocean_lib bench <name>`` runs ``bench/<script>`` of the checkout."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ocean_lib", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "train", help="run one training stage in this process (accelerate launch calls this)"
    )
    add_params_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")

    p = commands.add_parser("launch", help="run one training stage as an accelerate-launched subprocess")
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

    p = commands.add_parser(
        "data", help="build the miniature data, or fetch Ocean-R1's data and the benchmarks"
    )
    data = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    add_params_arguments(
        data.add_parser("build", help="write the procedural tasks as parquet files and a preview PNG")
    )
    fetch = data.add_parser(
        "fetch-training", help="download Ocean-R1's training data and base model (network)"
    )
    fetch.add_argument("--root", default="data", help="directory to download into")
    fetch.add_argument("--stage", choices=["1", "2", "all"], default="all", help="which stage's data")
    bench_fetch = data.add_parser("fetch-benchmarks", help="download the benchmarks' annotations and images")
    bench_fetch.add_argument("--root", default="data/benchmarks", help="directory to download into")
    bench_fetch.add_argument("--only", default=None, help="comma-separated benchmark names")

    p = commands.add_parser("model", help="build the miniature model")
    model = p.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")
    add_params_arguments(
        model.add_parser("build-tiny", help="train the BPE tokenizer and save a random tiny Qwen2.5-VL")
    )

    p = commands.add_parser(
        "eval",
        help="evaluate a checkpoint on benchmarks (eval rescore: score stored outputs again, no model)",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["run", "rescore"],
        default="run",
        help="run: generate and score (default); rescore: score the stored outputs again and print the table",
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

    p = commands.add_parser("reproduce", help="run the study's notebooks end to end with papermill")
    add_params_arguments(p)
    p.add_argument("--force", action="store_true", help="re-run stages that already finished")

    p = commands.add_parser(
        "bench",
        help="benchmarks: grpo (a step against TRL), rewards (scoring throughput), micro-batches (length buckets)",
    )
    p.add_argument("which", choices=list(BENCH_SCRIPTS), help="which benchmark")

    p = commands.add_parser(
        "gpu-check",
        help="check on one GPU what a params file needs: vLLM, attention, DeepSpeed ZeRO-2/3, memory",
    )
    add_params_arguments(p, required=False)
    p.add_argument("--out", default=None, help="JSON report (default: outputs/gpu_check.json)")
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
        "gpu-check": _gpu_check,
    }[args.command]
    return handler(args) or 0


def _train(args: argparse.Namespace) -> int:
    from ocean_lib.trainer import train

    final = train(load_config(args.params, args.overrides), resume=args.resume)
    print(f"final weights: {final}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    from ocean_lib import launch

    topology = launch.Topology(
        num_processes=args.num_processes,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        main_process_ip=args.main_process_ip,
        main_process_port=args.main_process_port,
        accelerate_config=args.accelerate_config,
    )
    final = launch.train(args.params, args.overrides, topology, resume=args.resume, echo=True)
    print(f"final weights: {final}")
    return 0


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "build":
        from ocean_lib.data import synthetic

        print(json.dumps(synthetic.build(load_config(args.params, args.overrides)), indent=2, default=str))
        return 0
    if args.data_command == "fetch-training":
        from ocean_lib.data import fetch

        return fetch.fetch_training(args.root, args.stage)
    from pathlib import Path

    from ocean_lib.evaluation import FetchError, fetch_benchmarks, manual_steps_for

    try:
        fetched = fetch_benchmarks(args.root, None if args.only is None else args.only.split(","))
    except FetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, files in fetched.items():
        size = sum(path.stat().st_size for path in files) / 2**20
        print(f"{name}: {len(files)} files, {size:,.1f} MiB in {Path(args.root).resolve()}")
    for step in manual_steps_for(list(fetched)):
        print(f"by hand: {step}")
    return 0


def _model(args: argparse.Namespace) -> int:
    from ocean_lib.study import build_miniature_model

    print(f"tiny model saved to {build_miniature_model(load_config(args.params, args.overrides))}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ocean_lib.data import DataError
    from ocean_lib.evaluation import BenchmarkDataError, MissingImagesError, SettingsMismatchError, evaluate

    # Without a params file, bf16 as Ocean-R1's evaluation scripts load the model (the knob's default is fp32).
    overrides = args.overrides if args.params else ["model.dtype=bfloat16", *args.overrides]
    cfg = load_config(args.params, overrides)
    names = args.benchmarks.split(",") if args.benchmarks else None
    try:
        if args.action == "rescore":
            return _rescore(args, cfg, names)
        if args.model is None:
            print("error: eval needs --model (or `eval rescore` to score stored outputs)", file=sys.stderr)
            return 2
        summary = evaluate(
            args.model,
            names,
            cfg,
            model_name=args.model_name,
            max_items=args.max_items,
            max_new_tokens_cap=args.max_new_tokens,
        )
    except (
        MissingImagesError,
        SettingsMismatchError,
        BenchmarkDataError,
        DataError,
        FileNotFoundError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyError as error:  # an unknown benchmark name
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 1
    if summary is not None:
        print(json.dumps(summary["benchmarks"], indent=2))
    return 0


def _rescore(args: argparse.Namespace, cfg: RunConfig, names: list[str] | None) -> int:
    """``eval rescore``: the stored outputs scored again by the current items and scorers, and the table."""
    from pathlib import Path

    from ocean_lib.evaluation import model_name_of, rescore
    from ocean_lib.evaluation.runner import benchmarks_with_outputs
    from ocean_lib.report import results_table

    if args.outputs is None and args.model is None and args.model_name is None:
        print("error: eval rescore needs --outputs (or --model / --model-name)", file=sys.stderr)
        return 2
    directory = Path(
        args.outputs or Path(cfg.eval.output_dir) / (args.model_name or model_name_of(args.model))
    )
    names = names or benchmarks_with_outputs(directory)
    if not names:
        print(f"error: no <benchmark>.jsonl of a registered benchmark in {directory}", file=sys.stderr)
        return 1
    summary = rescore(directory, names, cfg)
    print(results_table({directory.name: summary}).markdown())
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from ocean_lib.study import reproduce

    reproduce(args.params, args.overrides, force=args.force)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import runpy

    script = PROJECT_ROOT / "bench" / BENCH_SCRIPTS[args.which]
    if not script.exists():
        raise SystemExit(f"{script} not found: benchmarks run from a source checkout of ocean_lib")
    sys.argv = [str(script)]  # the script parses its own arguments, not the CLI's
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _gpu_check(args: argparse.Namespace) -> int:
    from ocean_lib.gpu_check import main

    return main(args.params, args.overrides, args.out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(run(args) or 0)
