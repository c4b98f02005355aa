"""Where the project's own files are, for commands run from a source checkout (notebooks, params, bench)."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The checkout holding ``ocean_lib/``, ``notebooks/``, ``params/`` and ``bench/``."""

HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt"]
"""Files of a model repository on the hub that loading needs; skips duplicate .bin weights some repositories carry."""
