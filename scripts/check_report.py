"""Open a study's report.html in headless Chromium with the network off, print what a reader sees, and save
screenshots (the README's section on the report says what they should show).

    python scripts/check_report.py outputs/mini/report.html --screenshots outputs/mini/screenshots

Exits 1 if an image does not load, a formula is not drawn, the static rollout view is missing, kernel leftovers
show (widget reprs, frozen progress bars, PosixPath, log lines) or the page asks the network for anything.
Needs Chromium (Debian: apt-get install chromium).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from ocean_lib.study.report_html import browser_check

SCREENSHOTS = {
    "report_top.png": "",
    "report_walkthrough_math.png": "3.-Group-normalised-advantages",
    "report_rollouts.png": "1.-The-rollout-browser-(pick-a-run;-filter-by-step,-task,-reward,-length)",
    "report_results.png": "5-%C2%B7-Results",
}
NOISE = ("VBox(children", "0step", "?it/s", "PosixPath(", "[WARNING]", "Setting accelerator to CPU")


def problems(seen: dict) -> list[str]:
    found = []
    if seen["broken_images"]:
        found.append(f"images that did not load: {seen['broken_images']}")
    if seen["math"] < 4:
        found.append(f"only {seen['math']} formulas drawn")
    if seen["rollout_rows"] == 0:
        found.append("no static rollout table")
    if seen["requests"]:
        found.append(f"requests to the network: {seen['requests']}")
    found += [f"kernel leftover in the text: {noise!r}" for noise in NOISE if noise in seen["text"]]
    if re.search(r"(?<![\w$])\$[^$\n]{1,80}\$", seen["text"]):
        found.append("raw TeX ($...$) in the text")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("report", help="a report.html written by reproduce")
    parser.add_argument("--screenshots", default=None, help="directory to save the screenshots in")
    args = parser.parse_args()
    seen = browser_check(args.report, SCREENSHOTS if args.screenshots else None, args.screenshots)
    print(json.dumps({k: v for k, v in seen.items() if k != "text"}, indent=2))
    found = problems(seen)
    for problem in found:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
