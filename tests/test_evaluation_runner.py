"""The evaluation runner end to end with the real tiny model: real annotation files with placeholder images, the
miniature's parquet splits, the missing-image stop, sharding, and resuming after a kill."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ANNOTATIONS, grey_image
from safetensors.torch import load_file, save_file

from ocean_lib.base.config import load_config
from ocean_lib.base.io import read_jsonl
from ocean_lib.data import ImageRef, read_records, rescale_box_truth, synthetic, write_records
from ocean_lib.evaluation import BENCHMARKS, MissingImagesError, SettingsMismatchError, rescore, run
from ocean_lib.evaluation.runner import most_images, plan_benchmarks
from ocean_lib.training.models import load_policy

OVERRIDES = {
    "eval.batch_size": 2,
    "eval.bootstrap_samples": 200,
    "data.min_pixels": 3136,
    "data.max_pixels": 112 * 112,
    "data.synthetic.families": ["counting", "grounding"],
    "data.synthetic.text_only": True,
    "data.synthetic.n_train": 4,
    "data.synthetic.n_test": 12,
    "rollout.max_new_tokens": 24,
    "logging.progress": False,
}


def config(tmp_path: Path, **extra):
    values = {
        **OVERRIDES,
        "eval.data_root": str(tmp_path / "bench"),
        "eval.output_dir": str(tmp_path / "eval"),
        "data.synthetic.output_dir": str(tmp_path / "mini"),
        **extra,
    }
    return load_config(None, [f"{key}={json.dumps(value)}" for key, value in values.items()])


def check_rows_against_items(rows, items, benchmark, cap):
    """Each line belongs to its item, holds the output, and carries the verdict of the benchmark's own rule."""
    assert [row["id"] for row in rows] == [item.id for item in items]
    for row, item in zip(rows, items, strict=True):
        assert row["prompt"] == item.prompt and row["answer"] == item.answer
        assert 1 <= row["n_tokens"] <= cap
        verdict = BENCHMARKS[benchmark].score(row["output"], item)
        assert (row["correct"], row["extracted"]) == (verdict.correct, verdict.extracted)


@pytest.mark.skipif(not ANNOTATIONS.is_dir(), reason=f"real annotation files not present at {ANNOTATIONS}")
def test_real_annotations_evaluate_end_to_end_with_placeholder_images(tmp_path, tiny_model_dir):
    root = tmp_path / "bench"
    layout = {
        "superclevr": "super_clevr_test_5k.jsonl",
        "geoqa": "geoqa_test_prompts.jsonl",
        "cvbench": "cvbench_test.parquet",
    }
    for directory, name in layout.items():
        (root / directory).mkdir(parents=True)
        (root / directory / name).symlink_to(ANNOTATIONS / name)
    names = ["superclevr", "geoqa", "cvbench_parquet"]
    for name in names:  # mid-grey placeholders for the first three items, found by their file names
        benchmark = BENCHMARKS[name]
        (root / benchmark.image_root).mkdir(parents=True, exist_ok=True)
        for item in benchmark.load_items(root)[:3]:
            grey_image(56).save(root / benchmark.image_root / Path(item.images[0].source).name)

    cfg = config(tmp_path)
    summary = run(tiny_model_dir, names, cfg, max_new_tokens_cap=8, max_items=3)

    for name in names:
        items = BENCHMARKS[name].load_items(root)[:3]
        rows = list(read_jsonl(tmp_path / "eval/tiny" / f"{name}.jsonl"))
        check_rows_against_items(rows, items, name, cap=8)
        entry = summary["benchmarks"][name]
        assert (entry["n"], entry["complete"], entry["settings"]["max_new_tokens"]) == (3, True, 8)
        assert entry["accuracy"] == sum(row["correct"] for row in rows) / 3
        assert entry["ci95"][0] <= entry["accuracy"] <= entry["ci95"][1]
        assert entry["format_rate"] == sum(row["format_ok"] for row in rows) / 3
        assert entry["mean_output_tokens"] == sum(row["n_tokens"] for row in rows) / 3
    assert set(summary["benchmarks"]["cvbench_parquet"]["per_subset"]) <= {
        "Count",
        "Relation",
        "Depth",
        "Distance",
    }
    assert json.loads((tmp_path / "eval/tiny/summary.json").read_text()) == summary


def test_missing_images_stop_the_run_before_the_model_is_loaded(tmp_path):
    images = tmp_path / "bench/superclevr/images"
    images.mkdir(parents=True)
    rows = [{"image_path": f"{name}.png", "question": "How many?", "ground_truth": 1} for name in "abcd"]
    (images.parent / "super_clevr_test_5k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    grey_image(28).save(images / "a.png")
    (images / "b.png").write_bytes(b"not a png")

    # The model path does not exist: reaching the model loader would raise a different error.
    with pytest.raises(MissingImagesError) as caught:
        run(tmp_path / "no-such-model", ["superclevr"], config(tmp_path))
    message = str(caught.value)
    assert "superclevr: 3 of 4 images missing or unreadable" in message
    assert str(images.resolve()) in message
    assert (
        "b.png (unreadable" in message and "c.png (not found)" in message and "d.png (not found)" in message
    )
    assert not list((tmp_path / "eval").rglob("*.jsonl"))
    assert not list((tmp_path / "eval").rglob("*.settings.json"))  # no settings recorded without answers


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The miniature's held-out parquet splits, written by the real builder."""
    tmp_path = tmp_path_factory.mktemp("mini")
    synthetic.build(config(tmp_path))
    return tmp_path


def test_miniature_image_and_text_only_benchmarks_with_resized_grounding_images(
    mini, tiny_model_dir, tmp_path
):
    # 112-px pictures and max_pixels 56x56: images are halved, so the boxes scored against must be halved too.
    cfg = config(mini, **{"eval.output_dir": str(tmp_path), "data.max_pixels": 56 * 56})
    summary = run(
        tiny_model_dir,
        ["mini_grounding", "mini_counting_text"],
        cfg,
        max_new_tokens_cap=6,
        max_items=4,
        model_name="tiny_small_images",
    )
    records = read_records(mini / "mini/test/grounding.parquet", cfg.data)[:4]
    rows = list(read_jsonl(tmp_path / "tiny_small_images/mini_grounding.jsonl"))
    assert [row["answer"] for row in rows] == [
        rescale_box_truth(r.ground_truth, (112, 112), (56, 56)) for r in records
    ]
    text_rows = list(read_jsonl(tmp_path / "tiny_small_images/mini_counting_text.jsonl"))
    assert len(text_rows) == 4 and all("<image>" not in row["prompt"] for row in text_rows)
    assert summary["benchmarks"]["mini_grounding"]["settings"]["max_pixels"] == 56 * 56


def test_shards_are_merged_into_one_summary(mini, tiny_model_dir):
    cfg = config(mini)
    for index in (0, 1):
        summary = run(
            tiny_model_dir,
            ["mini_counting"],
            cfg,
            max_new_tokens_cap=4,
            max_items=6,
            model_name="sharded",
            shard=(index, 2),
        )
    directory = mini / "eval/sharded"
    assert [len(list(read_jsonl(directory / f"mini_counting.shard-{k}-of-2.jsonl"))) for k in (0, 1)] == [
        3,
        3,
    ]
    entry = summary["benchmarks"]["mini_counting"]
    assert (entry["n"], entry["complete"]) == (6, True)
    items = BENCHMARKS["mini_counting"].load_items(mini / "mini")[:6]
    rows = {
        row["id"]: row
        for k in (0, 1)
        for row in read_jsonl(directory / f"mini_counting.shard-{k}-of-2.jsonl")
    }
    check_rows_against_items([rows[item.id] for item in items], items, "mini_counting", cap=4)


def test_a_killed_evaluation_resumes_without_recomputing_finished_items(mini, tiny_model_dir, tmp_path):
    params = tmp_path / "params.yaml"
    values = {
        **OVERRIDES,
        "eval.batch_size": 1,
        "eval.data_root": str(mini / "bench"),
        "eval.output_dir": str(tmp_path / "eval"),
        "data.synthetic.output_dir": str(mini / "mini"),
    }
    tree: dict = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    params.write_text(yaml.safe_dump(tree))
    command = [
        sys.executable,
        "-m",
        "ocean_lib",
        "eval",
        "--model",
        str(tiny_model_dir),
        "--params",
        str(params),
        "--benchmarks",
        "mini_counting",
        "--max-new-tokens",
        "12",
        "--max-items",
        "10",
    ]
    output = tmp_path / "eval/tiny/mini_counting.jsonl"
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if output.exists() and len(output.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, (
        f"evaluation ended before it could be killed: {process.stderr.read()[-2000:]}"
    )
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = list(read_jsonl(output))
    assert 3 <= len(before) < 10

    cfg = load_config(params, [])
    summary = run(tiny_model_dir, ["mini_counting"], cfg, max_new_tokens_cap=12, max_items=10)
    after = list(read_jsonl(output))
    assert after[: len(before)] == before  # finished items were kept, not regenerated
    assert len(after) == 10 and len({row["id"] for row in after}) == 10
    assert (
        summary["benchmarks"]["mini_counting"]["n"],
        summary["benchmarks"]["mini_counting"]["complete"],
    ) == (10, True)

    # Resuming with another generation budget would mix two settings in one file: refused.
    with pytest.raises(SettingsMismatchError, match="max_new_tokens: 12 -> 5"):
        run(tiny_model_dir, ["mini_counting"], cfg, max_new_tokens_cap=5, max_items=10)


def test_answers_of_a_model_retrained_in_place_are_not_reused(mini, tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = config(mini, **{"eval.output_dir": str(tmp_path / "eval")})
    run(model, ["mini_counting"], cfg, max_new_tokens_cap=4, max_items=2, model_name="m")
    run(model, ["mini_counting"], cfg, max_new_tokens_cap=4, max_items=2, model_name="m")  # untouched: reused
    weights = model / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3  # a new training run's save: same path, other weights
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(SettingsMismatchError, match="weights: '[0-9a-f]+' -> '[0-9a-f]+'"):
        run(model, ["mini_counting"], cfg, max_new_tokens_cap=4, max_items=2, model_name="m")


def copy_of_mini(mini: Path, tmp_path: Path) -> Path:
    """A private copy of the miniature's test splits, to edit."""
    shutil.copytree(mini / "mini/test", tmp_path / "mini/test")
    return tmp_path / "mini"


def test_an_edited_ground_truth_is_rescored_and_an_edited_prompt_regenerated(mini, tiny_model_dir, tmp_path):
    home = copy_of_mini(mini, tmp_path)
    cfg = config(mini, **{"eval.output_dir": str(tmp_path / "eval"), "data.synthetic.output_dir": str(home)})
    run(tiny_model_dir, ["mini_grounding"], cfg, max_new_tokens_cap=6, max_items=4, model_name="m")
    output = tmp_path / "eval/m/mini_grounding.jsonl"
    first = list(read_jsonl(output))
    assert len(first) == 4

    # Edit item 1's truth box (as a corrected annotation would) and item 2's question.
    path = home / "test/grounding.parquet"
    records = read_records(path, cfg.data)
    records[1] = dataclasses.replace(records[1], ground_truth="[1, 2, 3, 4]")
    records[2] = dataclasses.replace(records[2], content=records[2].content + " Please.")
    write_records(records, path)
    summary = run(tiny_model_dir, ["mini_grounding"], cfg, max_new_tokens_cap=6, max_items=4, model_name="m")
    second = list(read_jsonl(output))
    assert second[:4] == first and [row["id"] for row in second[4:]] == ["1", "2"]
    rescored, regenerated = second[4:]
    assert rescored["output"] == first[1]["output"] and rescored["answer"] == "[1, 2, 3, 4]"
    assert rescored["n_tokens"] == first[1]["n_tokens"] and rescored["input_fp"] == first[1]["input_fp"]
    assert regenerated["prompt"].endswith(" Please.") and regenerated["input_fp"] != first[2]["input_fp"]
    assert summary["benchmarks"]["mini_grounding"]["n"] == 4

    # Nothing changed since: nothing is appended.
    run(tiny_model_dir, ["mini_grounding"], cfg, max_new_tokens_cap=6, max_items=4, model_name="m")
    assert len(list(read_jsonl(output))) == 6


def test_an_item_that_cannot_be_run_is_reported_and_skipped_by_name(mini, tiny_model_dir, tmp_path, capsys):
    """An image 250 times wider than high opens, but Qwen2.5-VL's processor refuses it (aspect ratio over 200):
    the engine raises on that item, as vLLM raises on a prompt over its image limit or context length. The
    evaluation goes on without it, names it, and a later run tries it again."""
    home = copy_of_mini(mini, tmp_path)
    cfg = config(mini, **{"eval.output_dir": str(tmp_path / "eval"), "data.synthetic.output_dir": str(home)})
    path = home / "test/counting.parquet"
    records = read_records(path, cfg.data)
    sliver = io.BytesIO()
    grey_image(1).resize((1000, 4)).save(sliver, format="PNG")
    records[1] = dataclasses.replace(records[1], images=[ImageRef(bytes=sliver.getvalue())])
    write_records(records, path)
    summary = run(tiny_model_dir, ["mini_counting"], cfg, max_new_tokens_cap=4, max_items=4, model_name="m")
    entry = summary["benchmarks"]["mini_counting"]
    assert (entry["n"], entry["complete"]) == (3, False)
    assert list(entry["skipped"]) == ["1"] and "aspect ratio" in entry["skipped"]["1"]
    assert [row["id"] for row in read_jsonl(tmp_path / "eval/m/mini_counting.jsonl")] == ["0", "2", "3"]
    assert "mini_counting: item 1 skipped, it cannot be run: ValueError" in capsys.readouterr().err

    # Fixed at the source, the item is run by the next evaluation and leaves the skipped list.
    write_records(read_records(mini / "mini/test/counting.parquet", cfg.data), path)
    summary = run(tiny_model_dir, ["mini_counting"], cfg, max_new_tokens_cap=4, max_items=4, model_name="m")
    entry = summary["benchmarks"]["mini_counting"]
    assert (entry["n"], entry["complete"], entry["skipped"]) == (4, True, {})


def test_a_vllm_evaluation_takes_the_items_real_image_count_and_holds_no_weights(mini, tiny_model_dir):
    """vLLM refuses a prompt with more images than its limit_mm_per_prompt (MMMU has items of 7): the limit is the
    run's maximum over all shards' items. vLLM loads the weights itself: the policy beside it is configs only."""
    cfg = config(mini)
    plans = plan_benchmarks(
        tiny_model_dir, ["mini_counting", "mini_counting_text"], cfg, mini / "eval/x", 4, 3, (1, 2)
    )
    assert most_images(plans) == 1
    seven = dataclasses.replace(plans[0].items[0], images=plans[0].items[0].images * 7)
    plans[1].items.append(seven)  # another shard's item counts too: every shard builds the same engine
    assert most_images(plans) == 7 and most_images([]) == 1
    model, _ = load_policy(str(tiny_model_dir), weights=False)
    loaded, _ = load_policy(str(tiny_model_dir))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model.generation_config.to_dict() == loaded.generation_config.to_dict()
    assert model.config.to_dict() == loaded.config.to_dict()


def test_scorer_fingerprints_tell_scorers_apart_and_are_stable_across_processes():
    from ocean_lib.evaluation.runner import scorer_fingerprint

    assert scorer_fingerprint("mmmu") != scorer_fingerprint("mmmu_strict")
    assert scorer_fingerprint("mmmu") == scorer_fingerprint("mathvision")  # the same rule
    code = "from ocean_lib.evaluation.runner import scorer_fingerprint; print(scorer_fingerprint('mmmu'))"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert other.stdout.strip() == scorer_fingerprint("mmmu")


def test_rescore_scores_another_harness_outputs_without_a_model(mini, tmp_path):
    cfg = config(mini, **{"eval.output_dir": str(tmp_path / "eval")})
    items = BENCHMARKS["mini_counting"].load_items(mini / "mini")[:3]
    directory = tmp_path / "theirs"
    directory.mkdir()
    outputs = [f"<think>count</think><answer>{item.answer}</answer>" for item in items[:2]]
    outputs[1] = "<think>count</think><answer>99</answer>"
    lines = [{"id": item.id, "output": output} for item, output in zip(items, outputs, strict=False)]
    (directory / "mini_counting.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    summary = rescore(directory, ["mini_counting"], cfg)
    entry = summary["benchmarks"]["mini_counting"]
    n_items = len(BENCHMARKS["mini_counting"].load_items(mini / "mini"))
    assert (entry["n"], entry["complete"], entry["accuracy"], entry["n_items"]) == (2, False, 0.5, n_items)
    assert entry["protocol"] == BENCHMARKS["mini_counting"].protocol
    rows = list(read_jsonl(directory / "mini_counting.jsonl"))[2:]  # appended after the foreign lines
    assert [(row["id"], row["correct"], row["format_ok"]) for row in rows] == [
        (items[0].id, True, True),
        (items[1].id, False, True),
    ]


def test_decoding_follows_the_checkpoints_generation_config_as_generate_does(tiny_model_dir):
    from ocean_lib.evaluation.runner import decoding_of
    from ocean_lib.training.models import load_policy
    from ocean_lib.training.rollout import make_engine

    model, processor = load_policy(str(tiny_model_dir))
    engine = make_engine(model, processor, load_config(None, []).rollout)
    tokenizer = processor.tokenizer
    both = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    assert decoding_of(engine, BENCHMARKS["superclevr"]) == {
        "stop_token_ids": both,
        "repetition_penalty": 1.0,
    }
    model.generation_config.repetition_penalty = 1.05  # Qwen2.5-VL-3B-Instruct's value
    assert decoding_of(engine, BENCHMARKS["mmmu"])["repetition_penalty"] == 1.05
    assert decoding_of(engine, BENCHMARKS["ocrbench"])["repetition_penalty"] == 1.0  # VLMEvalKit passes 1.0


def test_images_are_prepared_at_each_benchmarks_reference_limits(tmp_path):
    from ocean_lib.evaluation.runner import prepare, run_settings

    images = tmp_path / "bench/superclevr/images"
    images.mkdir(parents=True)
    grey_image(200).save(images / "a.png")
    rows = [{"image_path": "a.png", "question": "How many?", "ground_truth": 1}]
    (images.parent / "super_clevr_test_5k.jsonl").write_text(json.dumps(rows[0]) + "\n")
    cfg = config(tmp_path)  # training limits of 112 x 112 pixels
    (item,) = BENCHMARKS["superclevr"].load_items(tmp_path / "bench")
    prompt, _ = prepare(item, BENCHMARKS["superclevr"], cfg)
    assert prompt.images[0].size == (200, 200)  # Ocean-R1's processor default allows 12,845,056 pixels
    settings = run_settings(BENCHMARKS["superclevr"], "m", cfg, None)
    assert (settings["min_pixels"], settings["max_pixels"]) == (3136, 12845056)
    assert run_settings(BENCHMARKS["mini_counting"], "m", cfg, None)["max_pixels"] == 112 * 112  # the run's


def test_plain_rec_truth_is_mapped_into_the_processors_grid(tmp_path):
    from ocean_lib.evaluation.runner import prepare

    (tmp_path / "bench/rec").mkdir(parents=True)
    (tmp_path / "bench/coco/train2014").mkdir(parents=True)
    grey_image(100).save(tmp_path / "bench/coco/train2014/x.jpg")  # 100 px -> the grid's 112 px (4 x 28)
    rows = [{"image": "x.jpg", "problem": "the cat", "solution": [10, 20, 50, 60]}]
    (tmp_path / "bench/rec/refcoco_val.json").write_text(json.dumps(rows))
    cfg = config(tmp_path)
    for name, truth in (("refcoco", [10, 20, 50, 60]), ("refcoco_plain", [11, 22, 56, 67])):
        (item,) = BENCHMARKS[name].load_items(tmp_path / "bench")
        assert json.loads(prepare(item, BENCHMARKS[name], cfg)[1].answer) == truth


def test_eval_rescore_command_prints_the_table_without_a_model(mini, tmp_path):
    items = BENCHMARKS["mini_counting"].load_items(mini / "mini")[:2]
    directory = tmp_path / "outputs"
    directory.mkdir()
    lines = [{"id": item.id, "output": f"<think>x</think><answer>{item.answer}</answer>"} for item in items]
    (directory / "mini_counting.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    command = [sys.executable, "-m", "ocean_lib", "eval", "rescore", "--outputs", str(directory),
               "--set", f"data.synthetic.output_dir={mini / 'mini'}", "--set", "logging.progress=false"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| outputs | 100.0 ± 0.0 |" in done.stdout  # the benchmark found from the files there, both right
    assert "Protocols: miniature counting (image): miniature" in done.stdout
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["benchmarks"]["mini_counting"]["n"] == 2
    missing = subprocess.run(
        [sys.executable, "-m", "ocean_lib", "eval"], capture_output=True, text=True, timeout=300
    )
    assert missing.returncode == 2 and "eval needs --model" in missing.stderr


def test_eval_refuses_unknown_benchmarks_and_rescoring_no_known_id_before_writing(mini, tmp_path):
    directory = tmp_path / "foreign"
    directory.mkdir()
    lines = [{"id": f"other-harness-{i}", "output": "<answer>3</answer>"} for i in range(3)]
    (directory / "mini_counting.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    common = ["--set", f"data.synthetic.output_dir={mini / 'mini'}", "--set", "logging.progress=false"]
    rescored = subprocess.run(
        [sys.executable, "-m", "ocean_lib", "eval", "rescore", "--outputs", str(directory), *common],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # Before: exit 0, an empty table, and summary.json written beside the other harness's file.
    assert rescored.returncode == 1, rescored.stderr[-2000:]
    assert (
        "no output to score: its 3 ids (such as 'other-harness-0') match none of mini_counting"
        in rescored.stderr
    )
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    misspelt = subprocess.run(
        [sys.executable, "-m", "ocean_lib", "eval", "--model", "m", "--benchmarks", "mini_countign", *common],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert misspelt.returncode == 2, misspelt.stderr[-2000:]  # before: 1, as a failure, not a bad argument
    assert "unknown benchmark 'mini_countign'; did you mean mini_counting" in misspelt.stderr


def test_eval_without_params_loads_the_model_in_bf16_as_ocean_r1(mini, tiny_model_dir, tmp_path):
    command = [sys.executable, "-m", "ocean_lib", "eval", "--model", str(tiny_model_dir), "--benchmarks",
               "mini_counting", "--max-items", "1", "--max-new-tokens", "2",
               "--set", f"data.synthetic.output_dir={mini / 'mini'}", "--set", f"eval.output_dir={tmp_path}",
               "--set", "logging.progress=false"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    settings = json.loads((tmp_path / "tiny/mini_counting.settings.json").read_text())
    assert settings["dtype"] == "bfloat16"


def test_a_sharded_evaluation_with_less_items_than_processes_loads_the_engine_on_every_process(
    mini, tiny_model_dir, tmp_path
):
    """Creating a vLLM engine is a collective over the processes: one with nothing to generate (--max-items 1 on
    2 processes) must join it, or the other waits forever. On CPU the HF engine runs; the code path that decides
    who builds the engine is the same, and each process says when it builds it."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "ocean_lib", "eval", "--model", str(tiny_model_dir), "--benchmarks", "mini_counting",
               "--max-items", "1", "--max-new-tokens", "2", "--model-name", "two",
               "--set", f"data.synthetic.output_dir={mini / 'mini'}", "--set", f"eval.output_dir={tmp_path}",
               "--set", "logging.progress=false"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "evaluation shard 0 of 2: loading" in done.stdout and "(1 items to generate)" in done.stdout
    assert "evaluation shard 1 of 2: loading" in done.stdout and "(0 items to generate)" in done.stdout
    summary = json.loads((tmp_path / "two/summary.json").read_text())
    assert (
        summary["benchmarks"]["mini_counting"]["n"],
        summary["benchmarks"]["mini_counting"]["complete"],
    ) == (
        1,
        True,
    )


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_study_reuses_its_answers(how, mini, tiny_model_dir, tmp_path):
    """The cache is keyed by what the weights are, not where they are: a study moved or copied to another
    directory (its model and its answers with it; a copy as `cp -r` makes it, with new modification times) is
    not evaluated again."""
    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old / "model")
    cfg = config(mini, **{"eval.output_dir": str(old / "eval")})
    run(old / "model", ["mini_counting"], cfg, max_new_tokens_cap=4, max_items=2, model_name="m")
    new = tmp_path / "new"
    if how == "moved":
        shutil.move(old, new)
    else:
        shutil.copytree(old, new, copy_function=shutil.copyfile)
        assert (new / "model/model.safetensors").stat().st_mtime_ns != (
            old / "model/model.safetensors"
        ).stat().st_mtime_ns
    answers = new / "eval/m/mini_counting.jsonl"
    before = (answers.read_bytes(), answers.stat().st_mtime_ns)
    moved = config(mini, **{"eval.output_dir": str(new / "eval")})
    summary = run(new / "model", ["mini_counting"], moved, max_new_tokens_cap=4, max_items=2, model_name="m")
    assert (answers.read_bytes(), answers.stat().st_mtime_ns) == before
    assert summary["benchmarks"]["mini_counting"]["n"] == 2
