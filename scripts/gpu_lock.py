"""Write requirements/gpu.lock from pip's own resolution, one ``pip install --report`` per Python version.

    python scripts/gpu_lock.py OUT REPORT_3.11.json REPORT_3.12.json

Each report comes from ``pip install --dry-run --ignore-installed --report R "torch==…" ".[dev,gpu]"`` in a
fresh venv of that Python on Linux x86-64 (``make lock-gpu`` runs both). A package pinned alike by every report
is one line; one that differs, or that only some versions install, gets a ``python_version`` marker per report.
The project itself is left out (``make`` installs it editable).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROJECT = "ocean_lib"


def resolved(report: Path) -> tuple[str, dict[str, str]]:
    """(the report's Python as "3.x", {name: version}) of what pip would install."""
    data = json.loads(report.read_text())
    python = ".".join(data["environment"]["python_full_version"].split(".")[:2])
    pins = {}
    for item in data["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name.lower().replace("-", "_") != PROJECT:
            pins[name] = version
    return python, pins


def lock_lines(reports: dict[str, dict[str, str]]) -> list[str]:
    """``name==version`` lines, with a marker where the Python versions' resolutions differ."""
    names = sorted({name for pins in reports.values() for name in pins}, key=str.lower)
    lines = []
    for name in names:
        versions = {python: pins.get(name) for python, pins in reports.items()}
        if len(set(versions.values())) == 1:
            lines.append(f"{name}=={versions[next(iter(versions))]}")
            continue
        for python, version in sorted(versions.items()):
            if version is not None:
                lines.append(f'{name}=={version} ; python_version == "{python}"')
    return lines


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, paths = Path(argv[1]), [Path(p) for p in argv[2:]]
    reports = dict(resolved(path) for path in paths)
    header = [
        "# The GPU environment (Linux x86-64, CUDA 13, Python "
        + " / ".join(sorted(reports))
        + "): vLLM 0.33.0 and the torch it pins, resolved by pip.",
        "# Made with `make lock-gpu` (pip install --dry-run --report per Python, then scripts/gpu_lock.py);",
        "# installed with `make install-gpu`. The CPU environment is requirements/cpu.lock.",
    ]
    out.write_text("\n".join(header + lock_lines(reports)) + "\n")
    print(f"{out}: {len(lock_lines(reports))} lines from {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
