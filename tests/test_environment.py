"""The two locks, pyproject.toml and the Makefile say the same thing; the Makefile's stamp sees a changed install."""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# `make test` runs this file: its flags and the variables it was given (exported to us) must not reach the
# make calls made here.
MAKE_VARIABLES = (
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "VENV",
    "GPU",
    "TORCH_SPEC",
    "LOCK",
    "EXTRAS",
    "OVERRIDES",
)
MAKE_ENV = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAKEFILE = (ROOT / "Makefile").read_text()


def _pins(lock: str, python: str = "3.11") -> dict[str, Version]:
    """``name -> version`` of a lock's lines that apply to ``python``."""
    pins = {}
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"python_version": python}):
            pins[requirement.name.lower().replace("_", "-")] = Version(
                str(requirement.specifier).removeprefix("==")
            )
    return pins


def _requirement(name: str, group: list[str]) -> Requirement:
    return next(Requirement(r) for r in group if Requirement(r).name == name)


def test_transformers_range_covers_both_locks_and_its_floor_is_what_ci_tests():
    supported = _requirement("transformers", PYPROJECT["project"]["dependencies"]).specifier
    for lock in ("cpu.lock", "gpu.lock"):
        assert _pins(lock)["transformers"] in supported, lock
    lowest = re.search(r"^LOWEST_TRANSFORMERS := transformers==(\S+)", MAKEFILE, re.M).group(1)
    assert str(supported) == f">={lowest}"


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_gpu_lock_holds_the_gpu_extra_and_the_torch_vllm_pins(python):
    pins = _pins("gpu.lock", python)
    for requirement in PYPROJECT["project"]["optional-dependencies"]["gpu"]:
        requirement = Requirement(requirement)
        assert pins[requirement.name] in requirement.specifier, requirement
    torch = re.search(r"^TORCH_SPEC \?= (torch==\S+)\nLOCK +\?= requirements/gpu.lock", MAKEFILE, re.M).group(
        1
    )
    assert pins["torch"] == Version(torch.removeprefix("torch=="))
    assert "torch" not in _pins("cpu.lock")  # the CPU wheel comes from TORCH_SPEC alone


def _make_is_up_to_date(venv: Path, *settings: str) -> bool:
    """Whether ``make install`` would do nothing for ``venv`` with these settings (``make -q``)."""
    done = subprocess.run(
        ["make", "-q", "-C", str(ROOT), f"VENV={venv}", "install", *settings],
        capture_output=True,
        timeout=60,
        env=MAKE_ENV,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_stamp_records_the_install_so_another_one_reinstalls(tmp_path):
    venv = tmp_path / "venv"
    assert not _make_is_up_to_date(venv)  # nothing installed yet
    dry = subprocess.run(
        ["make", "-n", "-s", "-C", str(ROOT), f"VENV={venv}", "install"],
        capture_output=True,
        text=True,
        timeout=60,
        env=MAKE_ENV,
    )
    stamp_line = dry.stdout.strip().splitlines()[-1]  # echo '<spec>' > <venv>/.installed
    spec = re.fullmatch(rf"echo '(.*)' > {re.escape(str(venv))}/\.installed", stamp_line).group(1)
    assert "torch=torch==2.13.0 lock=requirements/cpu.lock extras=dev" in spec
    venv.mkdir()
    (venv / ".installed").write_text(spec + "\n")
    assert _make_is_up_to_date(venv)
    assert not _make_is_up_to_date(venv, "GPU=1")  # another torch, lock and extras
    assert not _make_is_up_to_date(venv, "EXTRAS=dev,gpu")
    assert not _make_is_up_to_date(venv, "OVERRIDES=transformers==5.16.1")
    # the extras install with their dependencies, from the lock, in one resolution
    assert '-m pip install -q -r requirements/cpu.lock -e ".[dev]"' in dry.stdout
    assert "--no-deps" not in dry.stdout


def test_make_flash_attn_first_checks_for_an_nvcc_of_torchs_cuda():
    """flash-attn compiles with the nvcc torch's extension builder finds, which must share torch's CUDA major
    version (the GPU lock's torch 2.14.0: 13.0): the check names what is missing before a long failed build."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "check_cuda_toolkit", ROOT / "scripts/check_cuda_toolkit.py"
    )
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    nvcc13 = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 13.0, V13.0.88\n"
    assert check.nvcc_release(nvcc13) == "13.0"
    assert check.problem("13.0", "/usr/local/cuda-13.0", nvcc13) is None
    assert check.problem("13.0", "/opt/cuda13.2", nvcc13.replace("13.0", "13.2")) is None  # minor: accepted
    assert "release 12.8" in check.problem("13.0", "/usr/local/cuda", nvcc13.replace("13.0", "12.8"))
    assert "no nvcc found" in check.problem("13.0", None, None)
    assert "CPU build" in check.problem(None, None, None)
    flash = re.search(r"^flash-attn:\n((?:\t.*\n)+)", MAKEFILE, re.M).group(1).splitlines()
    assert flash.index("\t$(BIN)/python scripts/check_cuda_toolkit.py") < next(
        i for i, line in enumerate(flash) if "pip install $(FLASH_ATTN)" in line
    )
    import torch

    if torch.version.cuda is None:  # the CPU lock's torch: the check stops make before pip
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts/check_cuda_toolkit.py")], capture_output=True, text=True
        )
        assert done.returncode == 1 and "CPU build" in done.stderr
