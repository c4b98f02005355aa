"""The machine a benchmark ran on, recorded beside every result, and whether its ratio is a measurement at all.

A ratio taken while other jobs crowd the cores measures the scheduler as much as the code: on this project's
2-core machine the GRPO bench gave 1.67-1.72x in five runs at load averages up to 3.8, and 0.91x at load 7-11
(docs/performance.md, "Reading these numbers"). So each bench samples the 1-minute load average before, during
and after its timed part, and a ratio whose highest sample exceeds ``LOAD_PER_CORE_LIMIT`` per core is printed
and saved as "not a measurement".
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

LOAD_PER_CORE_LIMIT = 2.0
"""Highest 1-minute load average per core at which a ratio still counts (why 2: docs/performance.md)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every bench shares: where its results go, and the load limit of a measurement."""
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--load-limit",
        type=float,
        default=LOAD_PER_CORE_LIMIT,
        help="highest 1-minute load average per core at which the ratios count as measurements",
    )


def machine() -> dict[str, Any]:
    """What the timings depend on besides the code: cores, torch's CPU kernels and threads, OpenMP's waiting."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


class LoadLog:
    """The 1-, 5- and 15-minute load averages, sampled at named moments (``mark``) of a benchmark."""

    def __init__(self, limit_per_core: float = LOAD_PER_CORE_LIMIT):
        self.limit = limit_per_core * (os.cpu_count() or 1)
        self.samples: dict[str, tuple[float, float, float]] = {}

    def mark(self, moment: str) -> None:
        self.samples[moment] = os.getloadavg()

    def verdict(self) -> dict[str, Any]:
        """The samples, the limit, and ``measurement``: False when the highest 1-minute sample exceeds it."""
        highest = max(one for one, _, _ in self.samples.values())
        return {
            "load_average": self.samples,
            "highest_1min_load": highest,
            "load_limit": self.limit,
            "measurement": highest <= self.limit,
        }

    def label(self) -> str:
        """'' for a measurement, else the suffix every printed ratio carries."""
        v = self.verdict()
        if v["measurement"]:
            return ""
        cores = os.cpu_count()
        return f" (not a measurement: load average {v['highest_1min_load']:.1f} > {v['load_limit']:.1f} on {cores} cores)"
