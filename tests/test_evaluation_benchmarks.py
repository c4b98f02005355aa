"""Benchmark loaders: the real annotation files parse with every field intact, and each published layout loads
from a small file written here into the prompt, ground truth and image order of the reference script that the
benchmark reproduces (the scoring rules are in test_evaluation_scorers.py)."""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ANNOTATIONS, needs_shared
from PIL import Image

from ocean_lib.base import prompts
from ocean_lib.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkDataError,
    get_benchmark,
    resolve_image,
)
from ocean_lib.evaluation.scorers import score_box, score_option_math_verify


def png(colour=(123, 117, 104), size=(32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def place_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png())


def write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


# ----------------------------------------------------------------------------------------------------------------
# The real annotation files
# ----------------------------------------------------------------------------------------------------------------

REAL_LAYOUT = {  # file in ../shared -> where the registry expects it under the data root
    "super_clevr_test_5k.jsonl": "superclevr",
    "superclevr_test200_counting_problems.jsonl": "superclevr",
    "geoqa_test_prompts.jsonl": "geoqa",
    "geoqa_test.parquet": "geoqa",
    "cvbench_test.parquet": "cvbench",
}


@pytest.fixture
def real_root(tmp_path) -> Path:
    for name, directory in REAL_LAYOUT.items():
        (tmp_path / directory).mkdir(exist_ok=True)
        (tmp_path / directory / name).symlink_to(ANNOTATIONS / name)
    return tmp_path


def jsonl_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (ANNOTATIONS / name).read_text().splitlines() if line.strip()]


# The prompt each script builds from a question (image first): the first Ocean-R1 repository's counting and
# GeoQA scripts, and R1-V's for its 200-question file.
FIRST_REPO_COUNTING = "{} First output the thinking process in <think> </think> and final answer (number) in <answer> </answer> tags."
FIRST_REPO_GEOQA = (
    "{} Output the thinking process in <think> </think> and final answer (number) in <answer> </answer> tags."
)
R1V = "{} " + prompts.THINK_INSTRUCTION


@needs_shared
@pytest.mark.parametrize(
    ("benchmark", "file", "count", "template"),
    [
        ("superclevr", "super_clevr_test_5k.jsonl", 5000, FIRST_REPO_COUNTING),
        ("superclevr200", "superclevr_test200_counting_problems.jsonl", 200, R1V),
        ("geoqa", "geoqa_test_prompts.jsonl", 754, FIRST_REPO_GEOQA),
    ],
)
def test_real_question_files_parse_with_fields_intact(real_root, benchmark, file, count, template):
    items = BENCHMARKS[benchmark].load_items(real_root)
    rows = jsonl_rows(file)
    assert len(items) == len(rows) == count
    for item, row in zip(items, rows, strict=True):
        assert item.prompt == "<image> " + template.format(row["question"])
        assert item.answer == str(row["ground_truth"])
        assert [image.source for image in item.images] == [row["image_path"]]
        assert not item.images[0].found  # ../shared has no images


@needs_shared
@pytest.mark.parametrize(
    ("benchmark", "file", "count"),
    [("geoqa_parquet", "geoqa_test.parquet", 740), ("cvbench_parquet", "cvbench_test.parquet", 2638)],
)
def test_real_training_format_files_parse_with_fields_intact(real_root, benchmark, file, count):
    items = BENCHMARKS[benchmark].load_items(real_root)
    rows = pq.read_table(ANNOTATIONS / file).to_pylist()
    assert len(items) == len(rows) == count
    for item, row in zip(items, rows, strict=True):
        if benchmark == "geoqa_parquet":  # verl's validation: the stored training-format turn
            assert item.prompt == row["prompt"][0]["content"]
        else:  # Ocean-R1's CV-Bench script: CV-Bench's prompt, a space, R1-V's instruction
            assert item.prompt == "<image> " + R1V.format(row["extra_info"]["question"])
        assert item.answer == row["reward_model"]["ground_truth"]
        assert item.id == str(row["extra_info"]["index"])
        assert [image.source for image in item.images] == [image["path"] for image in row["images"]]


@needs_shared
def test_real_cvbench_tasks_and_options_are_recovered(real_root):
    items = BENCHMARKS["cvbench_parquet"].load_items(real_root)
    tasks = {}
    for item in items:
        tasks[item.subset] = tasks.get(item.subset, 0) + 1
        letter = item.answer.strip("()")
        assert prompts.OPTION_LETTERS.index(letter) < len(item.options)
    assert tasks == {"Count": 788, "Relation": 650, "Depth": 600, "Distance": 600}
    first = next(item for item in items if item.id == "619")
    assert first.options == ("left", "right") and first.answer == "(A)"


@needs_shared
def test_real_image_paths_resolve_under_the_image_root_by_their_trailing_components(real_root):
    place_image(real_root / "superclevr/images/superCLEVR_new_025432.png")  # 5k file: bare names
    place_image(real_root / "superclevr/images/superCLEVR_new_025000.png")  # 200 file: ./images/...
    place_image(real_root / "geoqa/Geo170K/images/test/0.png")  # jsonl: ./Geo170K/images/test/0.png
    place_image(
        real_root / "cvbench/images/cvbench/619.jpg"
    )  # parquet: /data_train2/.../images/cvbench/619.jpg
    found = {
        name: [item.id for item in BENCHMARKS[name].load_items(real_root) if item.images[0].found]
        for name in ("superclevr", "superclevr200", "geoqa", "cvbench_parquet")
    }
    assert found == {"superclevr": ["0"], "superclevr200": ["0"], "geoqa": ["0"], "cvbench_parquet": ["619"]}


def test_resolve_image_prefers_the_longest_matching_suffix(tmp_path):
    place_image(tmp_path / "a/b/c.png")
    place_image(tmp_path / "c.png")
    assert resolve_image("/elsewhere/a/b/c.png", tmp_path) == str(tmp_path / "a/b/c.png")
    assert resolve_image("./x/c.png", tmp_path) == str(tmp_path / "c.png")
    assert resolve_image("missing.png", tmp_path) is None


def test_missing_annotation_file_names_the_pattern_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"superclevr/super_clevr_test_5k.jsonl under .*"):
        BENCHMARKS["superclevr"].load_items(tmp_path)
    with pytest.raises(KeyError, match="unknown benchmark 'supreclevr'"):
        get_benchmark("supreclevr")


def test_malformed_row_names_file_row_and_field(tmp_path):
    path = tmp_path / "superclevr/super_clevr_test_5k.jsonl"
    path.parent.mkdir()
    path.write_text(
        json.dumps({"image_path": "a.png", "question": "How many?", "ground_truth": 1})
        + "\n"
        + json.dumps({"image_path": "b.png", "question": "How many?"})
        + "\n"
    )
    with pytest.raises(
        BenchmarkDataError, match=r"super_clevr_test_5k.jsonl: row 1 has no field 'ground_truth'"
    ):
        BENCHMARKS["superclevr"].load_items(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Published layouts, from small files written here
# ----------------------------------------------------------------------------------------------------------------


def test_rec_json_loader(tmp_path):
    rows = [
        {
            "image": "COCO_train2014_000000000009.jpg",
            "problem": "the man on the left",
            "solution": [1.5, 2, 30, 40],
            "normalized_solution": [2, 4, 46, 83],
            "height": 48,
            "width": 64,
        },
        {
            "image": "train2014/COCO_train2014_000000000010.jpg",
            "problem": "red car",
            "solution": [0, 0, 10, 10],
            "normalized_solution": [0, 0, 15, 20],
            "height": 48,
            "width": 64,
        },
    ]
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec/refcocog_val.json").write_text(json.dumps(rows))
    place_image(tmp_path / "coco/train2014/COCO_train2014_000000000009.jpg")
    place_image(tmp_path / "coco/train2014/COCO_train2014_000000000010.jpg")
    items = BENCHMARKS["refcocog"].load_items(tmp_path)
    assert [item.id for item in items] == ["refcocog_val/0", "refcocog_val/1"]
    assert items[0].prompt == f"{prompts.IMAGE_MARKER} the man on the left {prompts.GROUNDING_INSTRUCTION}"
    assert json.loads(items[0].answer) == [1.5, 2, 30, 40]
    assert all(item.images[0].found and item.subset == "refcocog_val" for item in items)

    rows[1]["solution"] = [0, 0, 10]
    (tmp_path / "rec/refcocog_val.json").write_text(json.dumps(rows))
    with pytest.raises(BenchmarkDataError, match=r"refcocog_val.json: row 1 field 'solution'"):
        BENCHMARKS["refcocog"].load_items(tmp_path)


def test_cvbench_own_layout_loader(tmp_path):
    rows = [
        {
            "idx": 0,
            "type": "2D",
            "task": "Count",
            "image": {"bytes": png(), "path": "img/2D/count/a.png"},
            "question": "How many chairs are in the image?",
            "choices": ["2", "0", "1"],
            "answer": "(C)",
            "prompt": "How many chairs are in the image? Select from the following choices.\n(A) 2\n(B) 0\n(C) 1",
            "filename": "img/2D/count/a.png",
        },
        {
            "idx": 1200,
            "type": "3D",
            "task": "Depth",
            "image": {"bytes": png(), "path": "img/3D/depth/b.png"},
            "question": "Which is closer?",
            "choices": ["lamp", "desk"],
            "answer": "(B)",
            "prompt": "Which is closer?\n(A) lamp\n(B) desk",
            "filename": "img/3D/depth/b.png",
        },
    ]
    write_parquet(tmp_path / "cvbench/test_2d.parquet", rows[:1])
    write_parquet(tmp_path / "cvbench/test_3d.parquet", rows[1:])
    items = BENCHMARKS["cvbench"].load_items(tmp_path)
    assert [(i.id, i.subset, i.answer, i.options) for i in items] == [
        ("2D/0", "Count", "(C)", ("2", "0", "1")),
        ("3D/1200", "Depth", "(B)", ("lamp", "desk")),
    ]
    assert items[1].prompt == f"<image> Which is closer?\n(A) lamp\n(B) desk {prompts.THINK_INSTRUCTION}"
    assert items[0].images[0].bytes == rows[0]["image"]["bytes"]


def test_mathvista_loader_letters_multiple_choice_answers(tmp_path):
    rows = [
        {
            "pid": "1",
            "question": "Which is larger?",
            "image": "images/1.jpg",
            "decoded_image": {"bytes": png(), "path": None},
            "choices": ["3", "7"],
            "answer": "7",
            "question_type": "multi_choice",
            "answer_type": "text",
            "metadata": {"task": "figure question answering"},
        },
        {
            "pid": "2",
            "question": "What is x?",
            "image": "images/2.jpg",
            "decoded_image": None,
            "choices": None,
            "answer": "1.5",
            "question_type": "free_form",
            "answer_type": "float",
            "metadata": {"task": "math word problem"},
        },
    ]
    write_parquet(tmp_path / "mathvista/data/testmini-00000-of-00001.parquet", rows)
    place_image(tmp_path / "mathvista/images/2.jpg")
    first, second = BENCHMARKS["mathvista"].load_items(tmp_path)
    assert first.answer == "B" and first.options == ("3", "7")
    assert first.prompt == f"<image> Which is larger?\n(A) 3\n(B) 7 {prompts.THINK_INSTRUCTION}"
    assert second.options == () and second.answer == "1.5" and second.images[0].found
    assert (first.subset, second.subset) == ("figure question answering", "math word problem")


BOXED = (
    'Please solve the problem step by step and put your answer in one "\\boxed{}". If it is a multiple choice '
    'question, only one letter is allowed in the "\\boxed{}".\n'
)
NUMBER_ANSWER = (
    "Output the thinking process in <think> </think> and final answer (number) in <answer> </answer> tags."
)


def test_mathverse_loader_reads_the_first_repos_layout_and_ai4maths(tmp_path):
    # The first Ocean-R1 repository read xyliu6/mathverse_*: problem (choices inside), solution, image; the
    # prompt is the boxed-answer system text, the problem, a newline, its instruction, after the image.
    ocean_rows = [
        {"problem": "Find x.\nChoices:\nA:1\nB:2", "solution": "B", "image": {"bytes": png()}},
        {"problem": "Area?", "solution": "12", "image": {"bytes": png()}},
    ]
    write_parquet(tmp_path / "mathverse/data/train-00000-of-00001.parquet", ocean_rows)
    items = BENCHMARKS["mathverse"].load_items(tmp_path)
    assert [(i.id, i.answer) for i in items] == [("0", "B"), ("1", "12")]
    assert items[0].prompt == f"<image> {BOXED}Find x.\nChoices:\nA:1\nB:2\n{NUMBER_ANSWER}"
    # AI4Math's testmini layout still loads (a text-only version has no image and no marker).
    ai4math_rows = [
        {
            "sample_index": "2",
            "problem_version": "Text Only",
            "question": "Solve 2x = 4.",
            "image": None,
            "answer": "2",
        },
        {
            "sample_index": "3",
            "problem_version": "Vision Only",
            "question": "",
            "image": {"bytes": png()},
            "answer": "A",
        },
    ]
    write_parquet(tmp_path / "mathverse_vision_dominant/testmini.parquet", ai4math_rows)
    text_only, vision = BENCHMARKS["mathverse_vision_dominant"].load_items(tmp_path)
    assert (text_only.id, text_only.answer, text_only.images, text_only.subset) == ("2", "2", (), "Text Only")
    assert not text_only.prompt.startswith("<image>") and vision.prompt.startswith("<image> ")


def test_mathvision_loader_lists_options_only_when_they_are_not_the_bare_letters(tmp_path):
    # Ocean-R1: options "(A) x\n" ... "(E) y\n" only if there are options and they are not just "ABCDE";
    # input "{question}\n{options}" after "Question: "; the answer as given; the image first.
    rows = [
        {"id": "7", "question": "<image1> How many?", "options": ["1", "2", "3", "4", "5"], "answer": "C",
         "decoded_image": {"bytes": png()}, "image": "images/7.jpg", "subject": "counting"},
        {"id": "8", "question": "<image1> Area?", "options": [], "answer": "12",
         "decoded_image": {"bytes": png()}, "image": "images/8.jpg", "subject": "metric geometry - area"},
        {"id": "9", "question": "<image1> Which?", "options": ["A", "B", "C", "D", "E"], "answer": "D",
         "decoded_image": {"bytes": png()}, "image": "images/9.jpg", "subject": "logic"},
    ]  # fmt: skip
    write_parquet(tmp_path / "mathvision/data/test-00000-of-00001.parquet", rows)
    write_parquet(tmp_path / "mathvision/data/testmini-00000-of-00001.parquet", rows[:1])
    items = BENCHMARKS["mathvision"].load_items(tmp_path)
    assert [(i.id, i.answer, len(i.options)) for i in items] == [("7", "C", 5), ("8", "12", 0), ("9", "D", 0)]
    options = "(A) 1\n(B) 2\n(C) 3\n(D) 4\n(E) 5\n"
    assert items[0].prompt == f"<image> {BOXED}Question: <image1> How many?\n{options}\n{NUMBER_ANSWER}"
    assert items[1].prompt == f"<image> {BOXED}Question: <image1> Area?\n\n{NUMBER_ANSWER}"
    assert [i.id for i in BENCHMARKS["mathvision_testmini"].load_items(tmp_path)] == ["7"]


def test_olympiadbench_loader_joins_final_answers_and_puts_images_after_the_text(tmp_path):
    # Ocean-R1 (lmms-lab/OlympiadBench, test_en): rows without a final answer are skipped; context, a blank
    # line, the question, its instruction, then the images; the truth is ",".join(final_answer), as written.
    rows = [
        {"question_id": 3, "question": "Find the ratio.", "context": "A square.", "final_answer": ["$\\frac{1}{2}$", "$2$"],
         "images": [{"bytes": png()}, {"bytes": png((200, 0, 0))}], "subfield": "Geometry"},
        {"question_id": 4, "question": "Prove it.", "context": None, "final_answer": None, "images": [], "subfield": "Algebra"},
        {"question_id": 5, "question": "Compute 1+1.", "context": None, "final_answer": ["2"], "images": [], "subfield": "Algebra"},
    ]  # fmt: skip
    write_parquet(tmp_path / "olympiadbench/data/test_en-00000-of-00001.parquet", rows)
    first, second = BENCHMARKS["olympiadbench"].load_items(tmp_path)
    assert (first.id, first.answer, first.subset) == ("3", "$\\frac{1}{2}$,$2$", "Geometry")
    assert first.prompt == f"A square.\n\nFind the ratio.\n{NUMBER_ANSWER}<image><image>"
    assert [image.bytes for image in first.images] == [
        rows[0]["images"][0]["bytes"],
        rows[0]["images"][1]["bytes"],
    ]
    assert (second.id, second.prompt) == ("5", f"Compute 1+1.\n{NUMBER_ANSWER}")
    assert prompts.chat_messages(first.prompt)[0]["content"][0]["type"] == "text"  # the text comes first


MMMU_SYSTEM = (
    "Please solve the problem step by step and then answer it. If it is a multiple choice question, only "
    "provide the correct option letter, e.g., A, B, C, D, at the end.\n"
)


def test_mmmu_loader_writes_choices_lines_and_puts_the_images_after_the_text(tmp_path):
    # Ocean-R1: question + "\nChoices: " + "A. x\nB. y" when there are options; its system text, "Question: ",
    # its instruction; then image_1..image_7 in order; the answer as given.
    rows = [
        {"id": "validation_Art_Theory_1", "question": "Compare <image 1> with <image 2>.",
         "options": "['Baroque', 'Gothic', 'Rococo']", "answer": "B", "question_type": "multiple-choice",
         "image_1": {"bytes": png()}, "image_2": {"bytes": png((200, 0, 0))}, "image_3": None},
        {"id": "validation_Math_4", "question": "<image 1> What is 2+2?", "options": "[]", "answer": "4",
         "question_type": "open", "image_1": {"bytes": png()}, "image_2": None, "image_3": None},
    ]  # fmt: skip
    write_parquet(tmp_path / "mmmu/Art_Theory/validation-00000-of-00001.parquet", rows[:1])
    write_parquet(tmp_path / "mmmu/Math/validation-00000-of-00001.parquet", rows[1:])
    art, math = BENCHMARKS["mmmu"].load_items(tmp_path)
    assert art.prompt == (
        f"{MMMU_SYSTEM}Question: Compare <image 1> with <image 2>.\nChoices: A. Baroque\nB. Gothic\nC. Rococo\n"
        f"{NUMBER_ANSWER}<image><image>"
    )
    assert math.prompt == f"{MMMU_SYSTEM}Question: <image 1> What is 2+2?\n{NUMBER_ANSWER}<image>"
    assert [image.bytes for image in art.images] == [rows[0]["image_1"]["bytes"], rows[0]["image_2"]["bytes"]]
    assert (art.subset, art.answer, len(art.options), math.subset, math.options) == (
        "Art_Theory",
        "B",
        3,
        "Math",
        (),
    )

    rows[1]["options"] = "['unclosed"
    write_parquet(tmp_path / "mmmu/Math/validation-00000-of-00001.parquet", rows[1:])
    with pytest.raises(
        BenchmarkDataError, match=r"Math/validation-00000-of-00001.parquet: row 0 field 'options'"
    ):
        BENCHMARKS["mmmu"].load_items(tmp_path)


def test_ocrbench_loader_reads_vlmevalkits_tsv(tmp_path):
    # VLMEvalKit's OCRBench.tsv: index, base64 image, question, answers as a Python list literal, category.
    image = base64.b64encode(png()).decode()
    lines = [
        "index\timage\tquestion\tanswer\tcategory",
        f"7\t{image}\twhat is written?\t['CENTRE', 'centre']\tRegular Text Recognition",
    ]
    (tmp_path / "ocrbench").mkdir()
    (tmp_path / "ocrbench/OCRBench.tsv").write_text("\n".join(lines) + "\n")
    (item,) = BENCHMARKS["ocrbench"].load_items(tmp_path)
    assert (item.id, json.loads(item.answer), item.subset) == (
        "7",
        ["CENTRE", "centre"],
        "Regular Text Recognition",
    )
    assert item.prompt == "<image> what is written?" and item.images[0].bytes == png()


def test_rec_plain_variant_asks_the_bare_question_on_vlm_r1s_2000_item_sample(tmp_path):
    # VLM-R1's test_rec_baseline.py: random.seed(42); random.shuffle(data); data[:2000]; "{q} Please provide
    # the bounding box coordinate in JSON format."
    rows = [{"image": f"{k}.jpg", "problem": f"thing {k}", "solution": [0, 0, 10, 10]} for k in range(2100)]
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec/refcoco_val.json").write_text(json.dumps(rows))
    items = BENCHMARKS["refcoco_plain"].load_items(tmp_path)
    order = list(range(2100))
    random.Random(42).shuffle(order)
    assert [item.id for item in items] == [f"refcoco_val/{k}" for k in order[:2000]]
    k = order[0]
    assert items[0].prompt == f"<image> thing {k} Please provide the bounding box coordinate in JSON format."
    assert (
        BENCHMARKS["refcoco_plain"].box_frame == "model_input" and BENCHMARKS["refcoco"].box_frame == "image"
    )


def test_every_miniature_family_has_an_image_and_a_text_only_benchmark():
    minis = {name for name in BENCHMARKS if name.startswith("mini_")}
    families = ("counting", "geometry", "grounding", "spatial")
    assert minis == {f"mini_{f}{s}" for f in families for s in ("", "_text")}
    assert (
        BENCHMARKS["mini_grounding"].score is score_box
        and BENCHMARKS["mini_spatial"].score is score_option_math_verify
    )


def test_every_real_benchmark_names_its_protocol_and_reference_image_limits():
    for benchmark in BENCHMARKS.values():
        assert benchmark.protocol, benchmark.name
        if benchmark.home == "benchmarks":  # Qwen's processor defaults, or VLMEvalKit's own minimums
            assert benchmark.max_pixels == 16384 * 28 * 28
            expected_min = {"ocrbench": 100 * 28 * 28}.get(benchmark.name, 4 * 28 * 28)
            if benchmark.name.endswith(
                "_judge"
            ):  # VLMEvalKit's Qwen2.5-VL configuration, as the verl table ran
                expected_min = 1280 * 28 * 28
            assert benchmark.min_pixels == expected_min, benchmark.name
