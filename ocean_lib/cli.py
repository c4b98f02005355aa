"""What each ``python -m ocean_lib`` subcommand does (the parser lives in ``__main__``)."""

from __future__ import annotations

import argparse
import json
import sys

from ocean_lib.config import load_config

BENCH_SCRIPTS = {"grpo": "grpo_step.py", "rewards": "rewards.py", "micro-batches": "micro_batches.py"}
"""``python -m ocean_lib bench <name>`` runs ``bench/<script>`` (scripts live beside the package in a checkout)."""


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
    from ocean_lib.evaluation import main_fetch_benchmarks

    return main_fetch_benchmarks(args.root, args.only)


def _model(args: argparse.Namespace) -> int:
    from ocean_lib.study import build_tiny_model

    print(f"tiny model saved to {build_tiny_model(load_config(args.params, args.overrides))}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ocean_lib.evaluation import main_eval

    return main_eval(args)


def _reproduce(args: argparse.Namespace) -> int:
    from ocean_lib.study import reproduce

    reproduce(args.params, args.overrides, force=args.force)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / BENCH_SCRIPTS[args.which]
    if not script.exists():
        raise SystemExit(f"{script} not found: benchmarks run from a source checkout of ocean_lib")
    sys.argv = [str(script)]  # the script parses its own arguments, not the CLI's
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _gpu_check(args: argparse.Namespace) -> int:
    from ocean_lib.gpu_check import main

    return main()
