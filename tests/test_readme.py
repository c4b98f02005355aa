"""The README's commands, as a newcomer copies them: through the project's venv, writing only where runs write."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMANDS = [
    line.strip()
    for block in re.findall(r"```bash\n(.*?)```", README, re.S)
    for line in block.splitlines()
    if line.strip() and not line.startswith((" ", "#"))
]


def test_every_command_runs_in_the_venv():
    # Before: bare `python -m ocean_lib ...`, which on a fresh machine is the system's Python
    # ("No module named 'papermill'").
    assert COMMANDS and all(re.match(r"(make|\.venv/bin/\w+) ", line) for line in COMMANDS), COMMANDS
    assert "make reproduce PARAMS=params/ci.yaml" in README  # the quick first run


def test_commands_write_under_outputs_not_over_tracked_files():
    targets = re.findall(r"--screenshots (\S+)", README)
    assert targets and all(t.startswith("outputs/") for t in targets), targets  # was docs/images (tracked)
    jupyter = re.findall(r"\.venv/bin/jupyter lab[^`]*", README)
    assert jupyter and all("notebooks/" not in j for j in jupyter), jupyter  # outputs/ must stay reachable
