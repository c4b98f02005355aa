"""The study's ``report.html``: every executed notebook in one page that needs nothing but a browser.

nbconvert's page would fetch MathJax, require.js and the widget manager from CDNs and show what a kernel left
behind; the report is cleaned of both:

- math in Markdown cells (``$...$``, ``$$...$$``) is drawn by matplotlib's mathtext as inline SVG images, with
  the TeX as their alt text (a formula mathtext cannot draw stays as code);
- a widget output shows its static HTML when it carries one (the rollout browser's table of sample rollouts),
  and is dropped otherwise: a progress bar's saved text is its first frame (``0/500``), and there is no widget
  state or widget script in the page;
- stderr streams (warnings, progress text) and log records on stdout (``[2026-...] [WARNING] ...``) are left out;
  the executed notebooks under ``notebooks/`` keep every output;
- the parameters cell shows the values papermill injected, once.

The page loads no script and no stylesheet from anywhere (``tests/test_report_html.py`` checks it, and
``scripts/check_report.py`` opens it in headless Chromium).
"""

from __future__ import annotations

import base64
import copy
import functools
import html
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
LOG_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+\] \[(DEBUG|INFO|WARNING)\].*\n?", re.M)
"""A log line (DeepSpeed's and accelerate's format) on stdout: it belongs to logs, not to the report."""
MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$(?!\s)([^$\n]+?)(?<![\s\\])\$", re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1|^(```|~~~).*?^\3", re.S | re.M)
MATH_POINTS = 12  # font size of rendered math; the page's body text is about as large


def _template() -> Any:
    """nbconvert's lab template without the CDN scripts it would load (require.js, MathJax, mermaid, widgets)."""
    import jinja2

    return jinja2.DictLoader(
        {
            "offline.html.j2": "{%- extends 'lab/index.html.j2' -%}\n"
            + "".join(
                f"{{% block {name} %}}{{% endblock {name} %}}\n"
                for name in (
                    "html_head_js_requirejs",
                    "html_head_js_mathjax",
                    "html_head_js_mermaidjs",
                    "jupyter_widgets",
                )
            )
        }
    )


@functools.lru_cache(maxsize=256)
def math_image(tex: str, display: bool = False) -> str | None:
    """``tex`` drawn as an ``<img>`` holding an SVG (data URI), aligned on the text's baseline; None if
    matplotlib's mathtext cannot draw it."""
    from matplotlib import mathtext
    from matplotlib.font_manager import FontProperties

    buffer = io.BytesIO()
    try:
        depth = mathtext.math_to_image(
            f"${tex.strip()}$", buffer, prop=FontProperties(size=MATH_POINTS), format="svg"
        )
    except ValueError:  # mathtext's parse errors
        return None
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    style = "display: block; margin: 6px auto" if display else f"vertical-align: -{depth:.1f}pt"
    return f'<img class="math" alt="{html.escape(tex.strip())}" src="data:image/svg+xml;base64,{data}" style="{style}">'


def render_math(markdown: str) -> str:
    """Markdown with each ``$...$`` / ``$$...$$`` outside code replaced by :func:`math_image` (or kept as code
    when mathtext cannot draw it)."""

    def replace(match: re.Match[str]) -> str:
        tex, display = (match.group(1), True) if match.group(1) is not None else (match.group(2), False)
        return math_image(tex, display) or f"<code>{html.escape(match.group(0))}</code>"

    pieces, cursor = [], 0
    for code in CODE_SPAN.finditer(markdown):  # code is shown as written
        pieces.append(MATH.sub(replace, markdown[cursor : code.start()]))
        pieces.append(code.group(0))
        cursor = code.end()
    pieces.append(MATH.sub(replace, markdown[cursor:]))
    return "".join(pieces)


def clean_outputs(outputs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The outputs a reader of the report sees (see the module's docstring)."""
    kept = []
    for output in outputs:
        output = copy.deepcopy(output)
        if output.get("output_type") == "stream":
            if output.get("name") == "stderr":
                continue
            output["text"] = LOG_RECORD.sub("", output["text"])
            if not output["text"]:
                continue
        data = output.get("data", {})
        if WIDGET_VIEW in data:
            if "text/html" not in data:
                continue
            output["data"] = {"text/html": data["text/html"]}
        kept.append(output)
    return kept


def clean_notebook(notebook: Any) -> Any:
    """A copy of an executed notebook as the report shows it."""
    notebook = copy.deepcopy(notebook)
    notebook.metadata.pop("widgets", None)
    injected = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
    cells = []
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags and injected:
            continue  # the defaults; the injected cell right after it holds what ran
        if cell.cell_type == "markdown":
            cell.source = render_math(cell.source)
        elif cell.cell_type == "code":
            cell.outputs = clean_outputs(cell.outputs)
        cells.append(cell)
    notebook.cells = cells
    return notebook


def write_report(notebooks: Sequence[str | Path], path: str | Path) -> Path:
    """One HTML page holding the executed ``notebooks`` in order, cleaned by :func:`clean_notebook`."""
    import nbformat
    from nbconvert import HTMLExporter

    from ocean_lib.base.io import atomic_write_text

    merged = None
    for source in notebooks:
        notebook = clean_notebook(nbformat.read(str(source), as_version=4))
        if merged is None:
            merged = notebook
        else:
            merged.cells.extend(notebook.cells)
    if merged is None:
        raise ValueError("write_report needs at least one notebook")
    exporter = HTMLExporter(extra_loaders=[_template()], template_file="offline.html.j2")
    body, _ = exporter.from_notebook_node(merged)
    atomic_write_text(path, body)
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# Checking the page in a real browser
# ----------------------------------------------------------------------------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const shown = (image) => image.complete && image.naturalWidth > 0;
  const result = {
    images: images.length,
    broken_images: images.filter((image) => !shown(image)).map((image) => image.alt || image.src.slice(0, 40)),
    math: images.filter((image) => image.classList.contains("math") && shown(image)).length,
    figures: images.filter((image) => image.src.startsWith("data:image/png") && shown(image)).length,
    rollout_rows: document.querySelectorAll("table.ocean-rollouts tbody tr").length,
    tables: document.querySelectorAll("table").length,
    requests: performance.getEntriesByType("resource").map((entry) => entry.name)
      .filter((name) => !name.startsWith("data:")),
    text: document.body.innerText,
  };
  const out = document.createElement("pre");
  out.id = "ocean-probe";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""
OFFLINE_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves and no proxy answers: the network is off
    "--proxy-server=127.0.0.1:9",
)


def find_chromium() -> str | None:
    import shutil

    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def browser_check(
    report: str | Path, screenshots: dict[str, str] | None = None, out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Open ``report`` in headless Chromium with the network off and say what a reader sees: images (and which
    did not load), rendered formulas, figures, rows of the rollout table, tables, every request the page made
    (none should leave the page), and its text. ``screenshots`` maps a file name to an anchor of the page
    (an element's id; ``""``: the top); each is saved under ``out_dir`` as a 1280×1600 view.

    The probe script runs in a copy of the page in a temporary directory (the report stays without scripts, its
    folder untouched and possibly read-only; a page that needed files beside it shows them as broken there).
    """
    import json
    import subprocess
    import tempfile

    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(
            f"no Chromium found ({', '.join(CHROMIUM_NAMES)}); on Debian: apt-get install chromium"
        )
    report = Path(report).resolve()
    with tempfile.TemporaryDirectory() as profile, tempfile.TemporaryDirectory() as copies:
        probe = Path(copies) / report.name
        probe.write_text(
            report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
        )
        try:
            dumped = subprocess.run(
                [
                    chromium,
                    *OFFLINE_FLAGS,
                    f"--user-data-dir={profile}",
                    "--virtual-time-budget=20000",
                    "--dump-dom",
                    probe.as_uri(),
                ],
                capture_output=True,
                text=True,
                timeout=180,
                check=True,
            ).stdout
        finally:
            probe.unlink(missing_ok=True)
        found = re.search(r'<pre id="ocean-probe">(.*?)</pre>', dumped, re.S)
        if found is None:
            raise RuntimeError(f"the page did not finish loading in Chromium: {report}")
        result = json.loads(html.unescape(found.group(1)))
        for name, anchor in (screenshots or {}).items():
            target = (Path(out_dir or ".") / name).resolve()
            target.parent.mkdir(parents=True, exist_ok=True)
            # The view starts at the anchor's cell: the cells before it are removed from the copy (a headless
            # screenshot of a page scrolled far down comes out blank).
            start = (
                f"<script>const at = document.getElementById({json.dumps(anchor)})?.closest('.jp-Cell');"
                "while (at && at.previousElementSibling) at.previousElementSibling.remove();</script>"
            )
            probe.write_text(
                report.read_text(encoding="utf-8").replace("</body>", start + "</body>"), encoding="utf-8"
            )
            try:
                subprocess.run(
                    [
                        chromium,
                        *OFFLINE_FLAGS,
                        f"--user-data-dir={profile}",
                        "--window-size=1280,1600",
                        "--hide-scrollbars",
                        "--virtual-time-budget=20000",
                        f"--screenshot={target}",
                        probe.as_uri(),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=180,
                    check=True,
                )
            finally:
                probe.unlink(missing_ok=True)
    return result
