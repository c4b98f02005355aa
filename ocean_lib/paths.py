"""Where the project's own files are, for commands run from a source checkout (notebooks, params, bench)."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout holding ``ocean_lib/``, ``notebooks/``, ``params/`` and ``bench/``."""
