"""Records in Ocean-R1's parquet schema: round trip, the real annotation files, bad rows, images and boxes."""

from __future__ import annotations

import io
import json
import logging
import random
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ANNOTATIONS, needs_shared, v1_features
from PIL import Image, ImageDraw

from ocean_lib.base.prompts import INSTRUCTIONS
from ocean_lib.base.schema import DataConfig
from ocean_lib.data import (
    DataError,
    ImageRef,
    Record,
    fit_pixels,
    load_example,
    load_images,
    parse_box,
    read_records,
    write_records,
)
from ocean_lib.data.records import HUB_PROBE_TIMEOUT_S, reachable


def png(size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> bytes:
    """A grey PNG, with a red rectangle filling ``box`` (x2, y2 exclusive) if given."""
    image = Image.new("RGB", size, (123, 117, 104))
    if box:
        ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(255, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_records() -> list[Record]:
    return [
        Record.from_question(
            data_source="toy_counting",
            question="How many red objects are there?",
            answer="3",
            reward_func="acc",
            index=0,
            images=[ImageRef(bytes=png((28, 28)))],
            ability="counting",
            reasoning="red objects left to right: circle, square, circle. 3 in total.",
        ),
        Record.from_question(
            data_source="toy_grounding",
            question="Find the red square and give its bounding box in pixels.",
            answer=json.dumps({"bbox_2d": [2, 2, 26, 26]}),
            ground_truth="[2, 2, 26, 26]",  # the reward's truth is the bare box (the answer is the object)
            reward_func="iou",
            index=1,
            images=[ImageRef(bytes=png((28, 28), (2, 2, 26, 26)), path="toy/1.png")],
        ),
        Record.from_question(
            data_source="toy_text",
            question="Angle 1 = 50°. Angle 2 is vertical to it. What is angle 2?",
            answer="50°",
            reward_func="acc",
            index=2,
        ),
    ]


def red_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The pixel box (x2, y2 exclusive) of the clearly red pixels."""
    mask = Image.eval(image.convert("RGB").split()[0], lambda v: 255 if v > 200 else 0)
    return mask.getbbox()


# ----------------------------------------------------------------------------------------------------------------
# Round trip and sources
# ----------------------------------------------------------------------------------------------------------------


def test_write_then_read_gives_equal_records(tmp_path):
    records = sample_records()
    path = write_records(records, tmp_path / "toy.parquet")
    loaded = read_records(path, DataConfig())
    assert list(loaded) == records
    assert loaded.report.loaded == 3 and loaded.report.skipped == 0
    assert loaded[0].completion == (
        "<think>red objects left to right: circle, square, circle. 3 in total.</think><answer>3</answer>"
    )
    assert loaded[2].content.count("<image>") == 0 and loaded[0].content.startswith("<image> How many")
    assert loaded[0].content.endswith("\n" + INSTRUCTIONS["acc"])


def test_reasoning_column_only_written_when_present(tmp_path):
    without = [r for r in sample_records() if r.reasoning is None]
    schema = pq.read_schema(write_records(without, tmp_path / "plain.parquet"))
    assert "reasoning" not in schema.field("extra_info").type.names
    schema = pq.read_schema(write_records(sample_records(), tmp_path / "with.parquet"))
    assert "reasoning" in schema.field("extra_info").type.names


def test_directory_of_parquet_files_reads_in_name_order(tmp_path):
    records = sample_records()
    write_records(records[1:], tmp_path / "b.parquet")
    write_records(records[:1], tmp_path / "a.parquet")
    loaded = read_records(tmp_path, DataConfig())
    assert list(loaded) == records


def test_datasets_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = sample_records()
    path = write_records(records, tmp_path / "toy.parquet")
    dataset = datasets.Dataset(pq.read_table(path))
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert list(read_records(tmp_path / "saved", DataConfig())) == records
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match="holds splits \\['train'\\]"):
        read_records(tmp_path / "dict", DataConfig())


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        read_records(tmp_path / "nope.parquet", DataConfig())


@pytest.mark.skipif(reachable("https://huggingface.co", HUB_PROBE_TIMEOUT_S), reason="the hub is reachable")
def test_hub_id_fails_fast_and_clearly_offline():
    start = time.monotonic()
    with pytest.raises(DataError, match="not reachable.*save_to_disk directory"):
        read_records("someone/some-dataset", DataConfig())
    assert time.monotonic() - start < HUB_PROBE_TIMEOUT_S + 2


# ----------------------------------------------------------------------------------------------------------------
# The real annotation files
# ----------------------------------------------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("name, rows", [("cvbench_test", 2638), ("geoqa_test", 740)])
def test_real_annotation_files_load_with_fields_intact(name, rows):
    path = ANNOTATIONS / f"{name}.parquet"
    raw = pq.read_table(path).to_pylist()
    loaded = read_records(path, DataConfig(), check_images=False)
    assert len(loaded) == len(raw) == rows
    assert [record.to_row() for record in loaded] == raw
    assert not loaded.report.images_checked and "images not checked" in loaded.report.summary()


@needs_shared
@pytest.mark.parametrize("name, rows", [("cvbench_test", 2638), ("geoqa_test", 740)])
def test_real_annotation_files_report_their_missing_images(name, rows, caplog):
    path = ANNOTATIONS / f"{name}.parquet"
    first_paths = [row["images"][0]["path"] for row in pq.read_table(path).slice(0, 2).to_pylist()]

    with pytest.raises(DataError) as error:
        read_records(path, DataConfig())
    message = str(error.value)
    assert f"{path}: row 0, field images[0].path: file not found: {first_paths[0]}" in message
    assert f"{rows - 1} more bad rows" in message and "--set data.on_bad_row=skip" in message
    assert "check_images" not in message  # the hint names only what the command line can set

    with caplog.at_level(logging.WARNING, logger="ocean_lib.data.records"):
        loaded = read_records(path, DataConfig(on_bad_row="skip"))
    assert len(loaded) == 0
    report = loaded.report
    assert (report.rows, report.loaded, report.skipped) == (rows, 0, rows)
    assert report.bad_by_kind == {"missing_image": rows}
    assert report.missing_images[:2] == first_paths
    assert f"missing_image {rows}" in caplog.text and first_paths[0] in caplog.text


# ----------------------------------------------------------------------------------------------------------------
# Bad rows
# ----------------------------------------------------------------------------------------------------------------


def write_rows(rows: list[dict], path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def good_row(index: int) -> dict:
    row = sample_records()[0].to_row()  # fresh dicts on every call, safe to mutate
    row["extra_info"]["index"] = index
    return row


def broken(mutate) -> dict:
    row = good_row(1)
    mutate(row)
    return row


MALFORMED = {
    "prompt[0].content": lambda r: r["prompt"][0].update(
        content=r["prompt"][0]["content"].replace("<image> ", "")
    ),
    "extra_info.reward_func": lambda r: r["extra_info"].update(reward_func="f1"),
    "reward_model.ground_truth": lambda r: r["reward_model"].update(ground_truth="  "),
    "prompt[0].role": lambda r: r["prompt"][0].update(role="assistant"),
    "images": lambda r: r.update(
        images=r["images"] * 5, prompt=[{"role": "user", "content": "<image> " * 5 + "q"}]
    ),
}


@pytest.mark.parametrize("field", MALFORMED)
def test_malformed_row_names_file_row_and_field(tmp_path, field):
    path = write_rows([good_row(0), broken(MALFORMED[field]), good_row(2)], tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=re.escape(f"{path}: row 1, field {field}:")):
        read_records(path, DataConfig())
    loaded = read_records(path, DataConfig(on_bad_row="skip"))
    assert [record.index for record in loaded] == [0, 2]
    assert loaded.report.bad_by_kind == {"malformed": 1} and loaded.report.bad_rows[0].field == field


def test_iou_row_needs_a_box(tmp_path):
    record = sample_records()[1]
    record.ground_truth = "the top-left square"
    path = write_records([record], tmp_path / "box.parquet")
    with pytest.raises(DataError, match="row 0, field reward_model.ground_truth: not a JSON box"):
        read_records(path, DataConfig())
    # The answer's object form is not a ground truth: the iou reward reads a bare list and would score 0.
    record.ground_truth = json.dumps({"bbox_2d": [2, 2, 26, 26]})
    path = write_records([record], tmp_path / "object.parquet")
    with pytest.raises(DataError, match=r"row 0, field reward_model.ground_truth: expected a bare \[x1"):
        read_records(path, DataConfig())


def noisy_jpeg(side: int) -> bytes:
    """A JPEG of noise: its scan fills most of the file, so cutting the file cuts the scan."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(0).randbytes(3 * side * side)).save(
        buffer, format="JPEG"
    )
    return buffer.getvalue()


DAMAGED = {
    "garbage": lambda: b"not an image",
    "truncated": lambda: png((28, 28))[: len(png((28, 28))) // 2],
    # PIL's verify() passes a JPEG cut at 90% (it reads headers only); training then failed when it drew the row.
    "truncated_jpeg": lambda: noisy_jpeg(64)[: len(noisy_jpeg(64)) * 9 // 10],
}


@pytest.mark.parametrize("damage", DAMAGED)
@pytest.mark.parametrize("stored", ["bytes", "path"])
def test_corrupt_image_is_a_bad_row(tmp_path, damage, stored):
    records = sample_records()
    data = DAMAGED[damage]()
    if stored == "bytes":
        records[1].images = [ImageRef(bytes=data)]
    else:
        (tmp_path / "damaged.jpg").write_bytes(data)
        records[1].images = [ImageRef(path=str(tmp_path / "damaged.jpg"))]
    path = write_records(records, tmp_path / "corrupt.parquet")
    with pytest.raises(
        DataError, match=re.escape(f"{path}: row 1, field images[0].{stored}: not a decodable image")
    ):
        read_records(path, DataConfig())
    loaded = read_records(path, DataConfig(on_bad_row="skip"))
    assert [record.index for record in loaded] == [0, 2]
    assert loaded.report.bad_by_kind == {"corrupt_image": 1}
    assert len(read_records(path, DataConfig(), check_images=False)) == 3  # the check is what catches it


def test_image_paths_on_disk_are_checked_and_loaded(tmp_path):
    (tmp_path / "ok.png").write_bytes(png((40, 30)))
    records = sample_records()[:1]
    records[0].images = [ImageRef(path=str(tmp_path / "ok.png"))]
    missing = Record.from_question(
        data_source="toy", question="q", answer="1", reward_func="acc", index=1,
        images=[ImageRef(path=str(tmp_path / "gone.png"))],
    )  # fmt: skip
    path = write_records([*records, missing], tmp_path / "paths.parquet")
    loaded = read_records(path, DataConfig(on_bad_row="skip"))
    assert len(loaded) == 1 and loaded.report.missing_images == [str(tmp_path / "gone.png")]
    assert load_images(loaded[0], DataConfig(min_pixels=1))[0].size == (40, 30)


# ----------------------------------------------------------------------------------------------------------------
# Images and boxes
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, min_pixels, max_pixels",
    [
        ((200, 100), 100, 5000),
        ((20, 10), 3136, 1003520),
        ((56, 56), 3136, 1003520),
        ((3000, 1000), 10, 1003520),
    ],
)
def test_fit_pixels_keeps_aspect_and_limits(size, min_pixels, max_pixels):
    width, height = fit_pixels(*size, min_pixels, max_pixels)
    assert abs(width / height - size[0] / size[1]) < 2 / min(width, height)
    assert width * height <= max_pixels
    if size[0] * size[1] >= min_pixels:
        assert width * height >= min(size[0] * size[1], max_pixels) * 0.97
    else:
        assert min_pixels * 0.9 <= width * height <= min_pixels


@pytest.mark.parametrize(
    "size, box, limits",
    [((200, 120), (40, 20, 120, 80), {"max_pixels": 6000}), ((24, 16), (4, 2, 12, 10), {"min_pixels": 3136})],
)
@pytest.mark.parametrize("form", ["bbox_2d", "list"])
def test_boxes_are_rescaled_with_their_image(size, box, limits, form):
    truth = json.dumps({"bbox_2d": list(box)} if form == "bbox_2d" else list(box))
    record = Record.from_question(
        data_source="toy", question="Find the red box.", answer=truth, reward_func="iou", index=0,
        images=[ImageRef(bytes=png(size, box))],
    )  # fmt: skip
    cfg = DataConfig(**limits)
    (image,), new_truth = load_example(record, cfg)
    assert image.size == fit_pixels(*size, cfg.min_pixels, cfg.max_pixels) != size
    assert image.mode == "RGB"
    assert isinstance(json.loads(new_truth), dict if form == "bbox_2d" else list)  # the form is kept
    scaled = parse_box(new_truth)
    drawn = red_box(image)  # where the box's content actually lies after resizing
    assert all(abs(a - b) <= 2 for a, b in zip(scaled, drawn, strict=True)), (scaled, drawn)
    unscaled = parse_box(truth)
    assert any(abs(a - b) > 2 for a, b in zip(unscaled, drawn, strict=True))  # the old box would be wrong


def test_accuracy_truth_is_untouched_by_resizing():
    record = sample_records()[0]
    images, truth = load_example(record, DataConfig(min_pixels=112 * 112))
    assert images[0].size == (112, 112) and truth == "3"


# --------------------------------------------------------------------------------------------------------------
# The first recipe's layout: problem, solution, image, has_image, reward_func (a Hugging Face dataset)
# --------------------------------------------------------------------------------------------------------------


def v1_dataset():
    """A small dataset in the first recipe's layout, written with the datasets library as the hub's is."""
    import datasets

    picture = Image.open(io.BytesIO(png((56, 84))))
    features = v1_features()
    return datasets.Dataset.from_dict(
        {
            "problem": ["How many cubes are there?", "Locate the red box.", "What is 2 + 3?"],
            "solution": ["<answer> 3 </answer>", "<answer>[10, 20, 30, 40]</answer>", "<answer> 5 </answer>"],
            "image": [picture, picture, None],
            "has_image": [True, True, False],
            "reward_func": ["acc", "iou", "acc"],
        },
        features=features,
    )


@pytest.mark.parametrize("form", ["save_to_disk", "parquet"])
def test_v1_layout_reads_as_the_first_recipe_prompted(tmp_path, form):
    from ocean_lib.base.prompts import V1_INSTRUCTIONS

    if form == "save_to_disk":
        v1_dataset().save_to_disk(str(tmp_path / "v1"))
        source = tmp_path / "v1"
    else:
        v1_dataset().to_parquet(str(tmp_path / "v1.parquet"))
        source = tmp_path / "v1.parquet"
    records = read_records(source, DataConfig())
    counting, grounding, text = records
    # image rows: the image, then problem + newline + the first recipe's instruction (no space after <image>)
    assert counting.content == "<image>How many cubes are there?\n" + V1_INSTRUCTIONS["acc"]
    assert V1_INSTRUCTIONS["acc"].endswith("final answer (number) in <answer> </answer> tags.")
    assert grounding.content == "<image>Locate the red box.\n" + V1_INSTRUCTIONS["iou"]
    assert text.content == "What is 2 + 3?" and text.images == []  # text-only: the raw problem
    assert [r.ground_truth for r in records] == [
        "<answer> 3 </answer>",
        "<answer>[10, 20, 30, 40]</answer>",
        "<answer> 5 </answer>",
    ]
    assert [r.answer for r in records] == ["3", "[10, 20, 30, 40]", "5"]
    assert [r.reward_func for r in records] == ["acc", "iou", "acc"]
    assert [r.data_source for r in records] == ["v1"] * 3 and [r.index for r in records] == [0, 1, 2]
    assert load_images(counting, DataConfig())[0].size == (56, 84)
    # the verl recipe's template over the same rows
    verl = read_records(source, DataConfig(prompt_template="ocean_r1"))
    assert verl[0].content == "<image> How many cubes are there?\n" + INSTRUCTIONS["acc"]
    assert verl[2].content == "What is 2 + 3?\n" + INSTRUCTIONS["acc"]


def test_v1_rows_whose_has_image_disagrees_are_bad_rows(tmp_path):
    import datasets

    dataset = v1_dataset()
    rows = dataset.to_list()
    rows[0]["has_image"] = False  # an image its prompt has no slot for
    rows[2]["has_image"] = True  # a slot without an image
    rows[1]["reward_func"] = "ocr"
    datasets.Dataset.from_list(rows, features=dataset.features).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(
        DataError, match=r"bad.parquet: row 0, field has_image: is False but the row has 1 image"
    ):
        read_records(tmp_path / "bad.parquet", DataConfig())
    records = read_records(tmp_path / "bad.parquet", DataConfig(on_bad_row="skip"))
    assert len(records) == 0
    assert [(bad.row, bad.field) for bad in records.report.bad_rows] == [
        (0, "has_image"),
        (1, "reward_func"),
        (2, "has_image"),
    ]


def test_overlong_prompts_are_counted_as_verl_counts_them_and_dropped(tiny_model_dir, tmp_path):
    from ocean_lib.data.records import drop_overlong_prompts, verl_prompt_tokens
    from ocean_lib.training.models import load_policy

    tokenizer = load_policy(str(tiny_model_dir))[1].tokenizer
    image = ImageRef(bytes=png((112, 112)))
    short = Record.from_question(
        data_source="d", question="How many?", answer="3", reward_func="acc", index=0
    )
    long = Record.from_question(
        data_source="d", question="How many? " * 40, answer="3", reward_func="acc", index=1, images=[image]
    )
    write_records([short, long], tmp_path / "r.parquet")
    records = read_records(tmp_path / "r.parquet", DataConfig())

    def by_hand(content: str) -> int:  # verl: the chat template over the stored user string, then tokens
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        assert "<image>" in text or "<image>" not in content  # the marker stays literal text
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    lengths = [verl_prompt_tokens(r, tokenizer) for r in records]
    assert lengths == [by_hand(short.content), by_hand(long.content)] and lengths[0] < lengths[1]
    kept = drop_overlong_prompts(records, tokenizer, max_tokens=lengths[1] - 1)
    assert [r.index for r in kept] == [0] and kept.report.loaded == 1
    assert [(b.row, b.field, b.kind) for b in kept.report.bad_rows] == [(1, "prompt", "overlong_prompt")]
    assert f"{lengths[1]} tokens > data.max_prompt_tokens={lengths[1] - 1}" in kept.report.summary()
    assert len(drop_overlong_prompts(records, tokenizer, max_tokens=lengths[1])) == 2  # "at most" the limit


def test_two_image_rows_are_left_out_and_counted_under_the_verl_recipes_limit(tmp_path):
    # Ocean-R1's LIMIT_IMAGE_NUM=1 made vLLM refuse two-image prompts, so its runs trained on single-image rows:
    # the verl params set max_images_per_prompt=1 with on_bad_row=skip.
    from ocean_lib.base.config import load_config
    from ocean_lib.base.paths import PROJECT_ROOT

    recipe = load_config(PROJECT_ROOT / "params" / "qwen25vl_3b_stage1.yaml").data
    assert (recipe.max_images_per_prompt, recipe.on_bad_row) == (1, "skip")
    one, two = ImageRef(bytes=png((28, 28))), ImageRef(bytes=png((56, 28)))
    records = [
        Record.from_question(
            data_source="d", question="Q", answer="3", reward_func="acc", index=0, images=[one]
        ),
        Record.from_question(
            data_source="d", question="Q", answer="3", reward_func="acc", index=1, images=[one, two]
        ),
    ]
    write_records(records, tmp_path / "r.parquet")
    loaded = read_records(tmp_path / "r.parquet", recipe)
    assert [r.index for r in loaded] == [0]
    assert [(b.row, b.field) for b in loaded.report.bad_rows] == [(1, "images")]
    assert "2 images > data.max_images_per_prompt=1" in loaded.report.summary()
