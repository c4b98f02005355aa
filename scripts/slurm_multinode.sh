#!/usr/bin/env bash
# Ocean-R1 GRPO across N nodes x 8 GPUs with Slurm: one `python -m ocean_lib launch` (one accelerate launch) per node.
#
#   sbatch --nodes=2 scripts/slurm_multinode.sh params/qwen25vl_3b_stage1.yaml [--set key=value ...]
#
# Run from the repository root on a shared filesystem (every node reads the same checkout, data and outputs/).
# Node 0's first address is the rendezvous point; SLURM_NODEID gives each node its machine rank.
#SBATCH --job-name=ocean-r1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --output=outputs/slurm-%j.log
set -euo pipefail

PARAMS=${1:?usage: sbatch --nodes=N scripts/slurm_multinode.sh PARAMS.yaml [--set key=value ...]}
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-params/accelerate/multi_node_zero3.yaml}
MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-29500}
PYTHON=${PYTHON:-.venv/bin/python}

# srun starts one task per node; single quotes keep SLURM_NODEID for each task to expand on its own node.
srun --kill-on-bad-exit=1 bash -c '
  exec "$0" -m ocean_lib launch --params "$1" \
    --num-processes "$2" --num-machines "$SLURM_NNODES" --machine-rank "$SLURM_NODEID" \
    --main-process-ip "$3" --main-process-port "$4" --accelerate-config "$5" "${@:6}"
' "$PYTHON" "$PARAMS" "$GPUS_PER_NODE" "$MAIN_PROCESS_IP" "$MAIN_PROCESS_PORT" "$ACCELERATE_CONFIG" "$@"
