"""Before ``make flash-attn`` builds flash-attn from source: is there an nvcc for the CUDA this torch was built with?

    python scripts/check_cuda_toolkit.py

flash-attn 2.8.3.post2 has no wheel; its build compiles CUDA kernels with the nvcc that torch's extension builder
finds (``CUDA_HOME``, else ``nvcc`` on ``PATH``, else ``/usr/local/cuda``), and that builder refuses a toolkit
whose major version differs from ``torch.version.cuda`` (the lock's torch 2.14.0: CUDA 13.0). This says so in
seconds, naming what it found, instead of after a failed compile. Exit status 0 when the build can start.
"""

from __future__ import annotations

import re
import subprocess
import sys


def nvcc_release(version_output: str) -> str | None:
    """The release of ``nvcc --version``'s output ("Cuda compilation tools, release 13.0, V13.0.88" -> "13.0")."""
    match = re.search(r"release (\d+\.\d+)", version_output)
    return match.group(1) if match else None


def problem(torch_cuda: str | None, cuda_home: str | None, nvcc_output: str | None) -> str | None:
    """Why flash-attn cannot be built here, or None."""
    if torch_cuda is None:
        return (
            "this torch is a CPU build (torch.version.cuda is None): run `make install-gpu` on a CUDA machine"
        )
    if cuda_home is None or nvcc_output is None:
        return (
            f"no nvcc found (CUDA_HOME, PATH, /usr/local/cuda): install the CUDA {torch_cuda} toolkit "
            f"(nvcc {torch_cuda.split('.')[0]}.x) and set CUDA_HOME to it"
        )
    release = nvcc_release(nvcc_output)
    if release is None or release.split(".")[0] != torch_cuda.split(".")[0]:
        return (
            f"{cuda_home}/bin/nvcc is release {release}, torch is built with CUDA {torch_cuda}: torch's extension "
            f"builder refuses a different major version; set CUDA_HOME to a CUDA {torch_cuda.split('.')[0]}.x toolkit"
        )
    return None


def main() -> int:
    import torch
    from torch.utils import cpp_extension

    cuda_home, output = cpp_extension.CUDA_HOME, None
    if cuda_home is not None:
        try:
            output = subprocess.run(
                [f"{cuda_home}/bin/nvcc", "--version"], capture_output=True, text=True, check=True
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            output = None
    reason = problem(torch.version.cuda, cuda_home, output)
    if reason:
        print(f"make flash-attn: {reason}", file=sys.stderr)
        return 1
    print(
        f"make flash-attn: torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc {nvcc_release(output)} at {cuda_home}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
