"""The result table, the VLMEvalKit export, and the benchmark downloader (against a local HTTP server)."""

from __future__ import annotations

import csv
import io
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ocean_lib.base import prompts
from ocean_lib.base.io import append_jsonl, atomic_write_json
from ocean_lib.evaluation import MANUAL_STEPS, FetchError, export_vlmevalkit, fetch_benchmarks
from ocean_lib.evaluation.fetch import UrlFile
from ocean_lib.study.report import PUBLISHED_TABLES, results_table


def entry(accuracy: float, low: float, high: float, title: str = "") -> dict:
    return {"accuracy": accuracy, "ci95": [low, high], "n": 100, "title": title}


def test_results_table_rows_columns_and_published_reference_rows(tmp_path):
    base = {
        "benchmarks": {
            "superclevr": entry(0.5, 0.4, 0.6),
            "refcoco_avg": entry(0.25, 0.2, 0.3),
            "mini_counting": entry(0.125, 0.1, 0.15, "miniature counting (image)"),
        }
    }
    tuned = {"benchmarks": {"superclevr": entry(0.75, 0.7, 0.8)}}
    atomic_write_json(tmp_path / "tuned/summary.json", tuned)
    table = results_table({"base": base, "GRPO-vis": tmp_path / "tuned"})

    assert table.columns == ["superclevr", "refcoco_avg", "mini_counting"]  # published order first
    lines = table.markdown().splitlines()
    assert lines[0] == "| Model | SuperCLEVR | RefCOCO/+/g avg | miniature counting (image) |"
    # Cells of a published column say how comparable they are with the published number (= same protocol).
    assert lines[2] == "| base | 50.0 ± 10.0 = | 25.0 ± 5.0 = | 12.5 ± 2.5 |"
    assert lines[3] == "| GRPO-vis | 75.0 ± 5.0 = | – | – |"
    # Published rows fill only the columns they measured, without intervals; the base model's RefCOCO number
    # belongs to the plain-prompt protocol, so it is not in the Ocean-R1-protocol column.
    assert lines[4] == "| *Qwen2.5-VL-3B-Instruct (published)* | 64.1 = | – | – |"
    assert lines[6] == "| *Ocean-R1 GRPO-vis 3B (published)* | 93.4 = | 86.1 = | – |"
    # Then the published table's source and each column's comparability, and every column's protocol.
    below = lines[4 + len(PUBLISHED_TABLES["v1"].rows) :]
    assert below[1].startswith("Published rows: github.com/fengzi258/Ocean-R1, README.md, Evaluation;")
    assert below[4:6] == [
        "- SuperCLEVR: same protocol, published per-item logs re-scored: every verdict agrees",
        "- RefCOCO/+/g avg: same protocol, the REC script as written (no logs published)",
    ]
    assert below[6:] == [
        "",
        "Protocols: SuperCLEVR: Ocean-R1 v1 (first repo, src/eval/test_qwen2d5vl_counting_superclevr_5k.py); "
        "RefCOCO/+/g avg: Ocean-R1 v1 (first repo, src/eval/test_qwen2d5vl_rec.py, from VLM-R1's test_rec_r1.py); "
        "miniature counting (image): miniature (its real counterpart's rule).",
    ]

    rows = list(csv.DictReader(io.StringIO(table.csv())))
    assert rows[0] == {
        "model": "base",
        "benchmark": "superclevr",
        "accuracy": "50.00",
        "ci_low": "40.00",
        "ci_high": "60.00",
        "reference": "0",
        "protocol": "Ocean-R1 v1 (first repo, src/eval/test_qwen2d5vl_counting_superclevr_5k.py)",
        "comparability": "same protocol",
    }
    assert {
        "model": "Ocean-R1 GRPO-vis 3B (published)",
        "benchmark": "refcoco_avg",
        "accuracy": "86.10",
        "ci_low": "",
        "ci_high": "",
        "reference": "1",
        "protocol": "Ocean-R1 v1 (first repo, src/eval/test_qwen2d5vl_rec.py, from VLM-R1's test_rec_r1.py)",
        "comparability": "same protocol",
    } in rows

    markdown, table_csv = table.write(tmp_path / "results")
    assert markdown.read_text() == table.markdown() and table_csv.read_text() == table.csv()


def test_results_table_without_published_columns_has_no_reference_rows():
    table = results_table({"tiny": {"benchmarks": {"mini_spatial": entry(0.5, 0.4, 0.6)}}})
    assert [row.label for row in table.rows] == ["tiny"]


def test_results_table_names_a_missing_summary(tmp_path):
    with pytest.raises(FileNotFoundError, match="no evaluation summary"):
        results_table({"x": tmp_path})


def test_vlmevalkit_export_keeps_question_answer_and_full_prediction(tmp_path):
    question = "How many chairs?\n(A) 1\n(B) 2"
    append_jsonl(
        tmp_path / "cvbench.jsonl",
        [
            {
                "id": "2D/5",
                "subset": "Count",
                "prompt": prompts.eval_turn(question, "think", 1),
                "output": "<think>two\tchairs</think><answer>B</answer>",
                "answer": "(B)",
                "correct": True,
            }
        ],
    )
    path = export_vlmevalkit(tmp_path / "cvbench.jsonl", tmp_path / "cvbench.tsv")
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    assert rows == [
        {
            "index": "2D/5",
            "question": question,
            "answer": "(B)",
            "prediction": "<think>two\tchairs</think><answer>B</answer>",
            "category": "Count",
        }
    ]
    # The first Ocean-R1 repository's MMMU turn: system text before, instruction after, images last.
    mmmu = prompts.eval_turn("What is 2+2?\nChoices: A. 3\nB. 4", "v1_mmmu", 2, images_first=False)
    append_jsonl(tmp_path / "mmmu.jsonl", [{"id": "v_1", "prompt": mmmu, "output": "B", "answer": "B"}])
    (row,) = csv.DictReader(
        export_vlmevalkit(tmp_path / "mmmu.jsonl", tmp_path / "m.tsv").open(), delimiter="\t"
    )
    assert row["question"] == "What is 2+2?\nChoices: A. 3\nB. 4"


# ----------------------------------------------------------------------------------------------------------------
# fetch-benchmarks
# ----------------------------------------------------------------------------------------------------------------


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``files`` and honours ``Range: bytes=N-`` like the benchmark hosts do."""

    files: dict[str, bytes] = {}
    ranges: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        start = int(requested.removeprefix("bytes=").rstrip("-")) if requested else 0
        self.ranges.append(requested or "")
        self.send_response(206 if requested else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_downloads_resumes_a_partial_file_and_unpacks_archives(tmp_path, server):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("images/0.png", b"png bytes")
    annotations = b'{"image_path": "0.png"}\n' * 1000
    RangeHandler.files = {"/bench/test.jsonl": annotations, "/bench/images.zip": archive.getvalue()}
    RangeHandler.ranges = []
    partial = tmp_path / "bench/test.jsonl.part"
    partial.parent.mkdir()
    partial.write_bytes(annotations[:4000])  # an interrupted earlier download
    sources = {
        "bench": (
            UrlFile(f"{server}/bench/test.jsonl", "bench"),
            UrlFile(f"{server}/bench/images.zip", "bench"),
        )
    }

    fetched = fetch_benchmarks(tmp_path, ["bench"], sources=sources)
    assert (tmp_path / "bench/test.jsonl").read_bytes() == annotations
    assert "bytes=4000-" in RangeHandler.ranges  # continued, not restarted
    assert (tmp_path / "bench/images/0.png").read_bytes() == b"png bytes"
    assert fetched == {"bench": [tmp_path / "bench/test.jsonl", tmp_path / "bench/images.zip"]}

    RangeHandler.ranges = []
    fetch_benchmarks(tmp_path, ["bench"], sources=sources)  # everything present: nothing downloaded again
    assert RangeHandler.ranges == []


def test_fetch_offline_fails_at_once_with_the_manual_steps(tmp_path):
    sources = {"bench": (UrlFile("http://127.0.0.1:9/bench/test.jsonl", "bench"),)}  # port 9: nothing listens
    start = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch_benchmarks(tmp_path, ["bench"], sources=sources)
    assert time.monotonic() - start < 10
    assert "cannot reach http://127.0.0.1:9" in str(caught.value) and MANUAL_STEPS in str(caught.value)
    assert not any(Path(tmp_path).iterdir())


def test_manual_steps_cover_every_real_benchmark():
    from ocean_lib.evaluation import BENCHMARKS

    for name in BENCHMARKS:
        if not name.startswith("mini_"):
            assert f"`{name}`" in MANUAL_STEPS, name


EXTERNAL_IMAGES = {"superclevr", "superclevr200", "superclevr_verl", "geoqa", "geoqa_parquet", "geoqa_verl",
                   "refcoco", "refcocop", "refcocog", "refcoco_plain", "refcocop_plain", "refcocog_plain",
                   "refcoco_bare", "refcocop_bare", "refcocog_bare", "cvbench_parquet"}  # fmt: skip


def test_fetch_delivers_every_file_the_registry_reads_or_names_the_manual_step(tmp_path):
    from ocean_lib.evaluation import BENCHMARKS
    from ocean_lib.evaluation.fetch import SOURCES, manual_steps_for

    for name, benchmark in BENCHMARKS.items():
        if benchmark.home != "benchmarks":
            continue
        root = tmp_path / name
        for source in SOURCES[name]:  # every benchmark has sources
            for pattern in source.delivers:  # a file where each download or archive puts one
                path = root / pattern.replace("**/", "").replace("*", "00000")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
        assert benchmark.annotation_files(root), name  # raises if no delivered file matches its patterns
        if name in EXTERNAL_IMAGES:
            images = root / benchmark.image_root
            delivered = images.is_dir() and any(p.is_file() for p in images.rglob("*"))
            assert delivered or manual_steps_for([name]), name
    assert (
        manual_steps_for(["cvbench_parquet"])
        and "images/cvbench/<index>.jpg" in manual_steps_for(["cvbench_parquet"])[0]
    )


def test_group_average_is_the_mean_of_split_accuracies_over_the_summarised_items(tmp_path):
    from ocean_lib.base.schema import RunConfig
    from ocean_lib.evaluation import group_average

    verdicts = {"refcoco": [True, True, False, False], "refcocop": [True], "refcocog": [False, False]}
    for name, correct in verdicts.items():
        rows = [{"id": f"{name}/{i}", "correct": c} for i, c in enumerate(correct)]
        append_jsonl(tmp_path / f"{name}.jsonl", rows + [{"id": "stale", "correct": True}])  # not summarised
        atomic_write_json(tmp_path / f"{name}.ids.json", [row["id"] for row in rows])
    average = group_average(tmp_path, ["refcoco", "refcocop", "refcocog"], RunConfig())
    assert average["accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert (average["n"], average["complete"]) == (7, True)
    assert average["ci95"][0] <= average["accuracy"] <= average["ci95"][1]
    assert group_average(tmp_path, ["refcoco", "mmmu"], RunConfig()) is None  # mmmu never summarised
