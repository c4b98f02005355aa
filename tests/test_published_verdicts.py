"""``python -m ocean_lib verdicts`` on logs in the first Ocean-R1 repository's format (small ones written here): it
re-scores them through the registry and counts the verdicts that agree, and names the ones that do not."""

from __future__ import annotations

import json
import subprocess
import sys


def test_published_logs_are_rescored_through_the_registry(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    counting = [  # the counting script stores no verdict: extracted_answer == ground_truth is it
        {
            "question": {"image_path": "a.png", "question": "How many?", "ground_truth": 3},
            "ground_truth": 3,
            "model_output": "<think>x</think><answer>3</answer>",
            "extracted_answer": 3,
        },
        {
            "question": {"image_path": "b.png", "question": "How many?", "ground_truth": 2},
            "ground_truth": 2,
            "model_output": "<think>x</think><answer>two</answer>",
            "extracted_answer": None,
        },
    ]
    mmmu = [  # the MMMU script keeps the row, with "\nChoices: ..." appended to the question
        {"id": "validation_Art_1", "question": "Which?\nChoices: A. x\nB. y", "options": "['x', 'y']",
         "answer": "B", "ground_truth": "B", "model_output": "<answer>B</answer>", "is_correct": True},
        {"id": "validation_Art_2", "question": "Sum?", "options": "[]", "answer": "4", "ground_truth": "4",
         "model_output": "<answer>4</answer>", "is_correct": False},  # a verdict our rule does not share
    ]  # fmt: skip
    (logs / "counting_superclevr_5k_grpo_m.json").write_text(
        json.dumps({"accuracy": 50.0, "results": counting})
    )
    (logs / "mmmu_validation_grpo_m.json").write_text(json.dumps({"accuracy": 50.0, "results": mmmu}))
    (logs / "unrelated.json").write_text("{}")
    work = tmp_path / "work"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ocean_lib",
            "verdicts",
            "--logs",
            str(logs),
            "--work",
            str(work),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((work / "published_verdicts.json").read_text())
    assert report["per_benchmark"]["superclevr (current script)"] == {
        "logs": 1, "items": 2, "agreement": 1.0, "lowest_log_agreement": 1.0,
    }  # fmt: skip
    (entry,) = [log for log in report["logs"] if log["benchmark"] == "mmmu"]
    assert (entry["agree"], entry["our_accuracy"], entry["published_accuracy"]) == (1, 1.0, 0.5)
    assert [d["id"] for d in entry["differing"]] == ["validation_Art_2"]
