"""gpu-check on a machine without CUDA: it says so and fails (the checks themselves need a GPU)."""

import subprocess
import sys

import pytest
import torch

from ocean_lib.gpu_check import Result, Workspace, format_table


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has a GPU: run `python -m ocean_lib gpu-check`"
)
def test_without_cuda_it_exits_nonzero_with_a_clear_message():
    done = subprocess.run(
        [sys.executable, "-m", "ocean_lib", "gpu-check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "needs a CUDA GPU" in done.stderr and "torch.cuda.is_available() is False" in done.stderr
    assert "pip install -e .[gpu]" in done.stderr


def test_table_aligns_columns_and_shows_missing_memory_as_a_dash():
    table = format_table(
        [
            Result("bf16 generation", "passed", 3.14, 1.234, "8 samples"),
            Result("vLLM backend", "skipped", 0.0, None, "vllm is not installed"),
        ]
    ).splitlines()
    assert table[0].split() == ["check", "result", "seconds", "peak", "GB", "note"]
    assert table[1].split()[:5] == ["bf16", "generation", "passed", "3.1", "1.2"]
    assert table[2].split()[:5] == ["vLLM", "backend", "skipped", "0.0", "-"]
    assert table[1].index("passed") == table[2].index("skipped")  # columns line up


@pytest.mark.slow
def test_generation_and_training_checks_run_on_cpu(tmp_path):
    """The check code itself, on CPU (the GPU machine runs the same methods on cuda)."""
    work = Workspace.build(tmp_path, device="cpu")
    assert work.generation().startswith("8 samples, mean |Δ log p| vs training forward")
    assert work.training_step().startswith("sdpa, bf16, 2 steps")
