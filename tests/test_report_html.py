"""report.html: executed notebooks merged into one page that renders offline (math drawn as SVG, no CDN script,
widgets replaced by their static view or dropped, no warnings or log lines, parameters shown once)."""

from __future__ import annotations

import base64
import io
import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from PIL import Image

from ocean_lib.study.report_html import (
    browser_check,
    clean_outputs,
    find_chromium,
    math_image,
    render_math,
    write_report,
)

WIDGET = "application/vnd.jupyter.widget-view+json"


def widget_output(plain: str, html: str | None = None):
    data = {WIDGET: {"model_id": "abc", "version_major": 2, "version_minor": 0}, "text/plain": plain}
    if html is not None:
        data["text/html"] = html
    return new_output("display_data", data=data)


def test_math_is_drawn_as_svg_outside_code_only():
    text = "Advantage $A_i = \\dfrac{r_i - \\operatorname{mean}(r)}{\\operatorname{std}(r) + \\varepsilon}$, not `$x$`."
    out = render_math(text)
    (image,) = re.findall(r'<img class="math" alt="([^"]+)" src="data:image/svg\+xml;base64,([^"]+)"', out)
    assert image[0].startswith("A_i = \\dfrac")
    assert base64.b64decode(image[1]).lstrip().startswith(b"<?xml") and b"<svg" in base64.b64decode(image[1])
    assert out.endswith("not `$x$`.")  # code is shown as written
    assert "display: block" in render_math("$$\\beta\\,\\text{KL}$$")
    assert math_image("\\frac{") is None and render_math("$\\frac{$") == "<code>$\\frac{$</code>"


def test_widgets_progress_bars_warnings_and_log_lines_are_left_out():
    outputs = [
        widget_output("mini_counting:   0%|          | 0/500 [00:00<?, ?item/s]"),  # a tqdm bar: first frame
        widget_output("VBox(children=(HBox(...", "<table class='ocean-rollouts'></table>"),
        new_output("stream", name="stderr", text="UserWarning: something about the CPU\n"),
        new_output(
            "stream",
            name="stdout",
            text="[2026-11-30 12:53:31,006] [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator "
            "to CPU.\nwarmstart: trained to step 2 of 2\n",
        ),
        new_output(
            "stream", name="stdout", text="[2026-11-30 12:53:31,006] [INFO] [x.py:1:y] only a log line\n"
        ),
    ]
    kept = clean_outputs(outputs)
    assert kept == [
        {
            "output_type": "display_data",
            "data": {"text/html": "<table class='ocean-rollouts'></table>"},
            "metadata": {},
        },
        {"output_type": "stream", "name": "stdout", "text": "warmstart: trained to step 2 of 2\n"},
    ]
    assert outputs[0]["data"][WIDGET]  # the executed notebook itself is not changed


def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture
def report(tmp_path):
    """Two executed notebooks as papermill leaves them (defaults and injected parameters, a progress bar, a
    figure, the rollout browser, widget state), merged into a report."""
    notebooks = []
    for name in ("a", "b"):
        parameters = new_code_cell(
            'params = "params/mini.yaml"\noverrides = []', metadata={"tags": ["parameters"]}
        )
        injected = new_code_cell(
            f'# Parameters\nparams = "params/ci.yaml"\noverrides = ["study.output_dir=/tmp/{name}"]\n',
            metadata={"tags": ["injected-parameters"]},
        )
        plot = new_code_cell("plots.x()")
        plot.outputs = [
            widget_output("0step [00:00, ?step/s]"),
            new_output("display_data", data={"image/png": png(), "text/plain": "<Figure>"}),
            widget_output(
                "VBox(children=(HBox(...",
                f"<table class='ocean-rollouts'><tbody><tr><td><img src='data:image/png;base64,{png()}'></td></tr>"
                "</tbody></table>",
            ),
        ]
        notebook = new_notebook(
            cells=[
                new_markdown_cell(f"# {name}\n\nThe ratio $\\rho = \\pi_\\theta / \\pi_\\text{{old}}$."),
                parameters,
                injected,
                plot,
            ],
            metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}}},
        )
        nbformat.write(notebook, tmp_path / f"{name}.ipynb")
        notebooks.append(tmp_path / f"{name}.ipynb")
    return write_report(notebooks, tmp_path / "report.html")


def test_the_report_needs_no_network_and_shows_what_ran(report):
    page = report.read_text()
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"https?:", page)  # nothing to fetch
    assert "mathjax" not in page.lower() and "require.js" not in page and "widget-state" not in page
    assert page.count('class="math"') == 2 and "$\\rho" not in page
    assert page.count("ocean-rollouts") == 2 and "VBox" not in page and "0step" not in page
    assert 'params = "params/mini.yaml"' not in page.replace("&quot;", '"')  # the defaults: not what ran
    assert page.replace("&quot;", '"').count("study.output_dir=/tmp/") == 2


FAKE_CHROMIUM = """#!/usr/bin/env python3
import sys, json
page = sys.argv[-1]
open(sys.argv[0] + ".opened", "a").write(page + "\\n")
for arg in sys.argv:
    if arg.startswith("--screenshot="):
        open(arg.split("=", 1)[1], "wb").write(b"png")
seen = {"images": 0, "broken_images": [], "math": 0, "figures": 0, "rollout_rows": 0, "tables": 0,
        "requests": [], "text": ""}
print('<pre id="ocean-probe">' + json.dumps(seen) + "</pre>")
"""


def test_the_browser_check_writes_nothing_beside_the_report(report, tmp_path_factory, monkeypatch):
    """Before, a probe copy of the page was written beside the report (failing in a read-only folder)."""
    elsewhere = tmp_path_factory.mktemp("check")
    bin_dir = elsewhere / "bin"
    bin_dir.mkdir()
    (bin_dir / "chromium").write_text(FAKE_CHROMIUM)  # records which page it was asked to open
    (bin_dir / "chromium").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    folder = report.parent
    before = (folder.stat().st_mtime_ns, sorted(p.name for p in folder.iterdir()))
    browser_check(report, {"top.png": ""}, elsewhere / "shots")
    assert (folder.stat().st_mtime_ns, sorted(p.name for p in folder.iterdir())) == before
    opened = (bin_dir / "chromium.opened").read_text().split()
    assert len(opened) == 2 and all(not page.startswith(folder.as_uri() + "/") for page in opened)


@pytest.mark.skipif(
    find_chromium() is None, reason="Chromium is not installed (Debian: apt-get install chromium)"
)
def test_the_report_renders_in_headless_chromium_with_the_network_off(report, tmp_path):
    seen = browser_check(report, {"top.png": ""}, tmp_path / "shots")
    assert seen["broken_images"] == [] and seen["requests"] == []
    assert (seen["math"], seen["figures"], seen["rollout_rows"]) == (2, 4, 2)
    assert "The ratio" in seen["text"] and "$" not in seen["text"]
    shot = Image.open(tmp_path / "shots" / "top.png")
    assert shot.size == (1280, 1600) and len(shot.convert("L").getcolors(2**16)) > 2  # not a blank page
