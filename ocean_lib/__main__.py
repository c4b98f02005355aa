"""``python -m ocean_lib``: one command-line entry point for every step of the study."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from ocean_lib.cli import BENCH_SCRIPTS
    from ocean_lib.config import add_params_arguments
    from ocean_lib.evaluation.runner import add_eval_arguments

    parser = argparse.ArgumentParser(prog="python -m ocean_lib", description=__doc__)
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

    add_eval_arguments(commands.add_parser("eval", help="evaluate a checkpoint on benchmarks"))

    p = commands.add_parser("reproduce", help="run the study's notebooks end to end with papermill")
    add_params_arguments(p)
    p.add_argument("--force", action="store_true", help="re-run stages that already finished")

    p = commands.add_parser(
        "bench",
        help="benchmarks: grpo (a step against TRL), rewards (scoring throughput), micro-batches (length buckets)",
    )
    p.add_argument("which", choices=list(BENCH_SCRIPTS), help="which benchmark")

    commands.add_parser("gpu-check", help="check bf16, flash-attention, DeepSpeed and vLLM on one GPU")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ocean_lib import cli

    return int(cli.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
