"""The model judge of the verl table's math columns: VLMEvalKit's prompts, and the reading of its examples and of a
judge's replies, on CPU (the judge is a local HTTP server that answers from a script; no network)."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from ocean_lib.base.config import load_config
from ocean_lib.base.io import append_jsonl, atomic_write_json
from ocean_lib.cli.main import main
from ocean_lib.evaluation import judge
from ocean_lib.evaluation.benchmarks import get_benchmark
from ocean_lib.evaluation.judge import (
    MATHVERSE_SCORE_EXAMPLES,
    MATHVISION_EXAMPLES,
    MATHVISTA_EXAMPLES,
    Case,
    Judge,
    extract_prompt,
    infer_option,
    judge_response,
    mathverse_judgement,
    mathverse_score_prompt,
    mathvision_correct,
    mathvista_correct,
    prefetch,
)


def parse_example(example: str) -> tuple[str, str, str]:
    """(question with its hint and choices, model response, extracted answer) of a VLMEvalKit in-context example."""
    question, rest = example.split("\nModel response: ")
    response, extracted = rest.split("\n\nExtracted answer: ")
    return question.strip(), response.strip(), extracted.strip()


# What each of MathVista's five examples asks for (its hint), and whether VLMEvalKit counts its own extracted
# answer right: a list answer never is (its check compares str(None) with the answer).
MATHVISTA_CASES = [
    ("integer", True),
    ("float", True),
    ("float", True),
    ("list", False),
    ("multi_choice", True),
]


def vista_case(example: str, answer_type: str) -> tuple[Case, str]:
    question, response, extracted = parse_example(example)
    if answer_type == "multi_choice":
        options = re.findall(r"\([A-D]\) ([^(\n]+?)(?= \(|\n|$)", question)
        return Case(question, extracted, tuple(options)), response
    return Case(question, extracted, answer_type=answer_type), response


def test_extraction_prompt_is_vlmevalkits_examples_then_the_question_and_response():
    question, response, _ = parse_example(MATHVISTA_EXAMPLES[4])
    prompt = extract_prompt(MATHVISTA_EXAMPLES, question, response)
    assert prompt.startswith(
        "\nPlease read the following example.\nThen extract the answer from the model response and type it at the "
        "end of the prompt.\n\n\nHint: Please answer the question requiring an integer answer"
    )
    assert all(f"{example}\n" in prompt for example in MATHVISTA_EXAMPLES)
    assert prompt.endswith(f"{question}\nModel respone: The correct answer is (B) 8/11.Extracted answer:")
    # MathVision's examples are MathVista's with one generic hint for every free-form answer.
    hint = "Hint: Please answer the question and provide the final answer at the end.\n"
    assert all(e.startswith("\n" + hint) for e in MATHVISION_EXAMPLES[:4])
    assert MATHVISION_EXAMPLES[4] == MATHVISTA_EXAMPLES[4]
    assert [parse_example(e)[1:] for e in MATHVISION_EXAMPLES] == [
        parse_example(e)[1:] for e in MATHVISTA_EXAMPLES
    ]


def test_mathverse_score_prompt_keeps_vlmevalkits_text():
    prompt = mathverse_score_prompt("What is x?", "C", "B")
    assert prompt.endswith(
        "\n    [Question]: What is x?\n    [Standard Answer]: C\n    [Model_answer] : B\n    Judgement:"
    )
    assert all(f"{example}\n\n" in prompt for example in MATHVERSE_SCORE_EXAMPLES)
    assert (
        "B:2\u221a{{3}}" in prompt
    )  # VLMEvalKit's doubled braces reach the judge as written (no format call)


@pytest.mark.parametrize(("index", "answer_type", "right"), [(i, *c) for i, c in enumerate(MATHVISTA_CASES)])
def test_mathvista_reads_its_own_examples_as_vlmevalkit_does(index, answer_type, right):
    case, response = vista_case(MATHVISTA_EXAMPLES[index], answer_type)
    assert (
        mathvista_correct(case.answer, case) is right
    )  # the judge replying with the example's extracted answer
    # The rule step finds the letter in the multiple-choice response itself; the free-form ones need the judge.
    assert prefetch("mathvista", response, case) == ("B" if case.options else None)


def test_mathvision_reads_its_examples_and_compares_answers_without_eval():
    for example in MATHVISION_EXAMPLES[:4]:
        question, response, extracted = parse_example(example)
        case = Case(question, extracted)
        assert prefetch("mathvision", response, case) is None and mathvision_correct(extracted, case)
    assert mathvision_correct("3/4", Case("q", "0.75")) and mathvision_correct(
        "\\frac{3}{4}", Case("q", "0.75")
    )
    assert not mathvision_correct("__import__('os').getpid()", Case("q", "1"))  # not run: not arithmetic
    assert mathvision_correct("A", Case("q", "A", ("1", "2"))) and not mathvision_correct(
        "none", Case("q", "A", ("1", "2"))
    )


def test_option_reading_follows_can_infer():
    options = ["3/11", "8/11", "6/11", "3/5"]
    assert infer_option("The correct answer is (B) 8/11.", options) == "B"
    assert infer_option("8/11", options) == "B"  # by the option's text
    assert infer_option("A", options) == "A"
    assert infer_option("(A) and (B)", options) is None  # two letters: none
    assert infer_option("Cannot determine the answer", options) == "Z"
    assert (
        infer_option("The answer is D. A and C are wrong, as shown by the figure above here.", options) == "D"
    )


def test_mathverse_judgements_are_0_or_1_only():
    assert mathverse_judgement(" 1\n") is True and mathverse_judgement("0") is False
    assert mathverse_judgement("Judgement: 1") is None and mathverse_judgement("") is None


class ScriptedJudge:
    """An OpenAI-compatible /chat/completions endpoint on localhost whose replies are a list, in order (an int is
    an HTTP error status); it records every request body."""

    def __init__(self, replies: list[str | int]):
        self.replies, self.requests = list(replies), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                outer.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                reply = outer.replies.pop(0)
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    return
                body = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def scripted():
    servers = []

    def start(replies):
        servers.append(ScriptedJudge(replies))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_the_judge_flow_retries_and_asks_only_what_vlmevalkit_asks(scripted):
    case, response = vista_case(MATHVISTA_EXAMPLES[0], "integer")
    server = scripted([500, "14"])  # a failed request is asked again, hotter
    assert judge_response("mathvista", response, case, Judge(server.url, "judge-model")) == ("14", True)
    assert [r["temperature"] for r in server.requests] == [0.0, 0.5]
    assert server.requests[1]["messages"][0]["content"] == extract_prompt(
        MATHVISTA_EXAMPLES, case.question, response
    )
    assert server.requests[1]["model"] == "judge-model" and server.requests[1]["max_tokens"] == 128

    # MathVerse: the extract equal to the standard answer needs no score; otherwise the judge scores, 0 or 1.
    server = scripted(["C", "B", "maybe", "0"])
    judged = Judge(server.url, "m")
    assert judge_response("mathverse", "so C", Case("Which?", "C"), judged) == ("C", True)
    assert judge_response("mathverse", "so B", Case("Which?", "C"), judged) == ("B", False)
    assert len(server.requests) == 4  # "maybe" was not a judgement: asked again


def tsv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def test_eval_judge_rescores_stored_outputs_and_the_table_says_which_judge(tmp_path, scripted, capsys):
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, format="PNG")
    picture = base64.b64encode(image.getvalue()).decode()
    root = tmp_path / "benchmarks"
    (root / "mathvista").mkdir(parents=True)
    rows = [
        {"index": 1, "image": picture, "question": "Hint: integer\nQuestion: How many?", "answer": "14", "choices": "nan",
         "question_type": "free_form", "answer_type": "integer", "answer_option": "nan", "task": "counting"},
        {"index": 2, "image": picture, "question": "Which?\nChoices: (A) 3/11 (B) 8/11", "answer": "8/11",
         "choices": "['3/11', '8/11']", "question_type": "multi_choice", "answer_type": "text", "answer_option": "B",
         "task": "fraction"},
    ]  # fmt: skip
    (root / "mathvista" / "MathVista_MINI.tsv").write_text(tsv(rows))
    benchmark = get_benchmark("mathvista_judge")
    items = benchmark.load_items(root)
    assert items[0].prompt == "<image> Hint: integer\nQuestion: How many?"  # VLMEvalKit's: the question alone
    assert judge.case_of(items[1]) == Case(
        "Which?\nChoices: (A) 3/11 (B) 8/11", "B", ("3/11", "8/11"), "text"
    )

    outputs = tmp_path / "eval" / "ours"
    outputs.mkdir(parents=True)
    append_jsonl(outputs / "mathvista_judge.jsonl", [
        {"id": "1", "output": "There are fourteen of them.", "correct": False, "written": 1},
        {"id": "2", "output": "The answer is (B).", "correct": True, "written": 1},
    ])  # fmt: skip
    atomic_write_json(outputs / "mathvista_judge.ids.json", ["1", "2"])
    atomic_write_json(
        outputs / "summary.json",
        {"benchmarks": {"mathvista_judge": {"n": 2, "accuracy": 0.5, "ci95": [0, 1]}}},
    )
    server = scripted(["14"])  # only the first needs the judge: the rule reads B from the second
    sets = [
        f"eval.data_root={root}",
        f"eval.judge_url={server.url}",
        "eval.judge_model=qwen-judge",
        "eval.published_table=verl",
    ]
    assert main(["eval", "judge", "--outputs", str(outputs), *sum((["--set", s] for s in sets), [])]) == 0
    assert len(server.requests) == 1
    entry = json.loads((outputs / "summary.json").read_text())["benchmarks"]["mathvista_judge"]
    assert entry["accuracy"] == 1.0 and entry["judge"] == f"qwen-judge at {server.url}"
    assert (
        "| ours | 100.0 ± 0.0 ≈ |" in capsys.readouterr().out
    )  # judged: comparable as far as the split is known
    cfg = load_config(None, [f"eval.data_root={root}"])
    assert cfg.eval.judge_model == ""  # without a judge configured, eval judge refuses
    assert main(["eval", "judge", "--outputs", str(outputs), "--set", f"eval.data_root={root}"]) == 1
