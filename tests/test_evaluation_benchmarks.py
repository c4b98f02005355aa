"""Benchmark loaders and scoring rules: the real annotation files parse with every field intact, each published
layout loads from a small file written here, and every scoring rule behaves as Ocean-R1's evaluation scripts do."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ANNOTATIONS, needs_shared
from PIL import Image

from ocean_lib import prompts
from ocean_lib.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkDataError,
    Item,
    get_benchmark,
    resolve_image,
    score_box,
    score_counting,
    score_math_answer,
    score_option_exact,
    score_whole_output_math,
)

THINK = "<think>I look at the picture.</think>"


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


@needs_shared
@pytest.mark.parametrize(
    ("benchmark", "file", "count"),
    [
        ("superclevr", "super_clevr_test_5k.jsonl", 5000),
        ("superclevr200", "superclevr_test200_counting_problems.jsonl", 200),
        ("geoqa", "geoqa_test_prompts.jsonl", 754),
    ],
)
def test_real_question_files_parse_with_fields_intact(real_root, benchmark, file, count):
    items = BENCHMARKS[benchmark].load_items(real_root)
    rows = jsonl_rows(file)
    assert len(items) == len(rows) == count
    for item, row in zip(items, rows, strict=True):
        assert item.prompt == prompts.user_text(row["question"], "acc", 1, style="eval")
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
        assert item.prompt == row["prompt"][0]["content"]
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


def test_mathverse_loader_keeps_text_only_items_without_images(tmp_path):
    rows = [
        {
            "sample_index": "1",
            "problem_version": "Vision Only",
            "question": "",
            "image": {"bytes": png(), "path": "x"},
            "answer": "A",
            "question_type": "multi-choice",
        },
        {
            "sample_index": "2",
            "problem_version": "Text Only",
            "question": "Solve 2x = 4.\nChoices:\nA:1\nB:2",
            "image": None,
            "answer": "B",
            "question_type": "multi-choice",
        },
        {
            "sample_index": "3",
            "problem_version": "Text Dominant",
            "question": "Find x.",
            "image": {"bytes": png()},
            "answer": "5",
            "question_type": "free-form",
        },
    ]
    write_parquet(tmp_path / "mathverse/testmini-00000-of-00001.parquet", rows)
    items = BENCHMARKS["mathverse"].load_items(tmp_path)
    assert [len(item.images) for item in items] == [1, 0, 1]
    assert [item.prompt.count("<image>") for item in items] == [1, 0, 1]
    assert [item.answer for item in items] == ["A", "B", "5"]
    assert items[1].subset == "Text Only"


def test_mathvision_loader(tmp_path):
    rows = [
        {
            "id": "7",
            "question": "<image1> How many?",
            "options": ["1", "2", "3", "4", "5"],
            "answer": "C",
            "decoded_image": {"bytes": png()},
            "image": "images/7.jpg",
            "subject": "counting",
        },
        {
            "id": "8",
            "question": "<image1> Area?",
            "options": [],
            "answer": "12",
            "decoded_image": {"bytes": png()},
            "image": "images/8.jpg",
            "subject": "metric geometry - area",
        },
    ]
    write_parquet(tmp_path / "mathvision/data/test-00000-of-00001.parquet", rows)
    write_parquet(
        tmp_path / "mathvision/data/testmini-00000-of-00001.parquet", rows[:1]
    )  # not the test split
    items = BENCHMARKS["mathvision"].load_items(tmp_path)
    assert [(i.id, i.answer, len(i.options)) for i in items] == [
        ("7", "C", 5),
        ("8", "12", 0),
    ]
    assert "\n(E) 5 " in items[0].prompt


def test_olympiadbench_loader_scores_the_first_final_answer(tmp_path):
    rows = [
        {
            "id": 3,
            "question": "Find the ratio. <image_1> <image_2>",
            "context": None,
            "final_answer": ["$\\frac{1}{2}$"],
            "image_1": {"bytes": png()},
            "image_2": {"bytes": png()},
            "image_3": None,
            "image_4": None,
            "image_5": None,
        }
    ]
    write_parquet(tmp_path / "olympiadbench/OE_MM_maths_en_COMP/train.parquet", rows)
    (item,) = BENCHMARKS["olympiadbench"].load_items(tmp_path)
    assert (
        item.answer == "\\frac{1}{2}" and len(item.images) == 2 and item.prompt.startswith("<image> <image> ")
    )
    assert item.id == "train/3"


def test_mmmu_loader_puts_every_image_first_and_keeps_the_references(tmp_path):
    rows = [
        {
            "id": "validation_Art_Theory_1",
            "question": "Compare <image 1> with <image 2>.",
            "options": "['Baroque', 'Gothic', 'Rococo']",
            "answer": "B",
            "question_type": "multiple-choice",
            "image_1": {"bytes": png()},
            "image_2": {"bytes": png((200, 0, 0))},
            "image_3": None,
        },
        {
            "id": "validation_Math_4",
            "question": "<image 1> What is 2+2?",
            "options": "[]",
            "answer": "4",
            "question_type": "open",
            "image_1": {"bytes": png()},
            "image_2": None,
            "image_3": None,
        },
    ]
    write_parquet(tmp_path / "mmmu/Art_Theory/validation-00000-of-00001.parquet", rows[:1])
    write_parquet(tmp_path / "mmmu/Math/validation-00000-of-00001.parquet", rows[1:])
    art, math = BENCHMARKS["mmmu"].load_items(tmp_path)
    assert art.prompt.startswith("<image> <image> Compare <image 1> with <image 2>.\n(A) Baroque\n(B) Gothic")
    assert [image.bytes for image in art.images] == [rows[0]["image_1"]["bytes"], rows[0]["image_2"]["bytes"]]
    assert (art.subset, len(art.options), math.subset, len(math.options)) == (
        "Art_Theory",
        3,
        "Math",
        0,
    )

    rows[1]["options"] = "['unclosed"
    write_parquet(tmp_path / "mmmu/Math/validation-00000-of-00001.parquet", rows[1:])
    with pytest.raises(
        BenchmarkDataError, match=r"Math/validation-00000-of-00001.parquet: row 0 field 'options'"
    ):
        BENCHMARKS["mmmu"].load_items(tmp_path)


def test_every_miniature_family_has_an_image_and_a_text_only_benchmark():
    minis = {name for name in BENCHMARKS if name.startswith("mini_")}
    families = ("counting", "geometry", "grounding", "spatial")
    assert minis == {f"mini_{f}{s}" for f in families for s in ("", "_text")}
    assert (
        BENCHMARKS["mini_grounding"].score is score_box
        and BENCHMARKS["mini_spatial"].score is score_option_exact
    )


# ----------------------------------------------------------------------------------------------------------------
# Scoring rules, table-driven
# ----------------------------------------------------------------------------------------------------------------


def item(answer: str, **fields) -> Item:
    return Item(id="0", prompt="", answer=answer, **fields)


def ans(text: str) -> str:
    """A well-formed output answering ``text``."""
    return f"{THINK}<answer>{text}</answer>"


@pytest.mark.parametrize(
    ("output", "truth", "correct"),
    [
        (f"{THINK}<answer>3</answer>", "3", True),
        (f"{THINK}<answer>3 objects</answer>", "3", False),  # the integer must stand alone in the span
        (f"{THINK}<answer> 3\n</answer>", "3", True),  # whitespace around it is allowed
        (f"{THINK}<answer>4</answer>", "3", False),
        (f"{THINK}<answer>3.0</answer>", "3", False),  # not an integer
        ("3", "3", False),  # no answer tags: nothing is read
        ("<think>3</think><answer>three</answer>", "3", False),  # a number only in <think> does not count
        ("<answer>three</answer><answer>3</answer>", "3", True),  # the first span that holds a lone integer
        (f"{THINK}<answer>0</answer>", "0", True),
    ],
)
def test_counting_rule(output, truth, correct):
    assert score_counting(output, item(truth)).correct is correct


BOX = json.dumps([10, 10, 50, 50])


@pytest.mark.parametrize(
    ("output", "correct"),
    [
        ('<answer>{"bbox_2d": [10, 10, 50, 50], "label": "cat"}</answer>', True),
        ("<answer>[12, 11, 52, 49]</answer>", True),  # IoU ~0.86
        (
            "<answer>[10.5, 10.0, 50.2, 50.1]</answer>",
            False,
        ),  # float coordinates are not matched -> [0,0,0,0]
        ("<answer>[30, 10, 70, 50]</answer>", False),  # shifted by half: IoU ~0.34
        ("<think>[10, 10, 50, 50]</think><answer>none</answer>", False),  # only the answer span is read
        ("<answer>[10, 10, 50, 50]</answer><answer>[0, 0, 1, 1]</answer>", True),  # the first span
        ("<answer>[0, 0, 1, 1]</answer><answer>[10, 10, 50, 50]</answer>", False),
        ("[10, 10, 50, 50]", False),  # no answer span
    ],
)
def test_rec_rule(output, correct):
    assert score_box(f"{THINK}{output}", item(BOX)).correct is correct


def test_rec_rule_reports_the_zero_box_when_nothing_is_read():
    assert json.loads(score_box("<answer>[1.5, 2, 3, 4]</answer>", item(BOX)).extracted) == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("output", "correct"),
    [
        ("The answer is 140°", True),  # math-verify reads the whole output
        (ans(" 140° "), True),
        (ans(" $140^{\\circ}$ "), True),
        (ans(" 140 "), True),  # the degree sign is optional
        (ans("140°"), False),  # quirk kept: a number glued to a tag is not extracted
        (
            "<think>The angle is 140°.</think><answer>40</answer>",
            True,
        ),  # quirk kept: a number in <think> counts
        (ans(" 40° "), False),
        ("I cannot tell.", False),
    ],
)
def test_geoqa_rule_parses_the_whole_output(output, correct):
    assert score_whole_output_math(output, item("140°")).correct is correct


CVBENCH_ITEM = item("(A)", options=("left", "right"))


@pytest.mark.parametrize(
    ("output", "correct"),
    [
        (ans("A"), True),  # the letter
        (ans("(A)"), True),
        (ans("a"), True),  # lower-case letter
        (ans("(a)"), True),
        (ans("left"), True),  # the option text
        (ans(" left "), True),  # stripped
        (ans("Left"), False),  # option text only as written or lower-case: "Left" is neither
        (ans("B"), False),
        (ans("right"), False),
        (ans("The answer is A"), False),  # an exact rule, not extraction from prose
        ("A", True),  # no answer span: the whole output (here just the letter)
        (f"{THINK}<answer>B</answer><answer>A</answer>", False),  # the first span
    ],
)
def test_cvbench_rule(output, correct):
    assert score_option_exact(output, CVBENCH_ITEM).correct is correct


MC_ITEM = item("B", options=("3", "4", "5"))


@pytest.mark.parametrize(
    ("output", "truth_item", "correct"),
    [
        ("<answer>B</answer>", MC_ITEM, True),
        ("<answer>(B) 4</answer>", MC_ITEM, True),  # a leading letter picks the option
        ("<answer>B. 4</answer>", MC_ITEM, True),
        ("<answer>4</answer>", MC_ITEM, True),  # the option text picks the option
        ("<answer>C</answer>", MC_ITEM, False),
        ("<answer>b</answer>", MC_ITEM, True),  # lower-case letter
        ("<answer>B. 5</answer>", MC_ITEM, False),  # a letter with another option's text
        ("<answer>Because</answer>", MC_ITEM, False),  # a word is not the letter B
        ("<answer>B</answer>", item("B"), True),  # letter-only sets (MathVerse)
        ("<answer>0.5</answer>", item("\\frac{1}{2}"), True),  # math-verify equivalence
        ("<answer>$\\frac{2}{4}$</answer>", item("0.5"), True),
        ("<answer>1/3</answer>", item("0.5"), False),
        ("<answer>12 cm</answer>", item("12"), True),  # one trailing unit is dropped
        ("<answer>40</answer>", item("40°"), True),  # degree marks are dropped
        ("The result is 12.", item("12"), False),  # no answer span: wrong (the whole output is not searched)
    ],
)
def test_math_and_general_rule_is_the_strict_reward_on_the_answer_span(output, truth_item, correct):
    assert score_math_answer(f"{THINK}{output}", truth_item).correct is correct
