"""The tiny Qwen2.5-VL: built offline, saved, and loaded back through the loader the real 3B model uses."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

from ocean_lib.base.prompts import chat_messages, reference_completion, user_text
from ocean_lib.base.schema import TinyModelConfig
from ocean_lib.training.models import (
    REASONING_TAGS,
    SPECIAL_TOKENS,
    STOCK_PROCESSOR_CLASS,
    VISION_SPECIAL_TOKENS,
    Qwen2_5_VLImageTextProcessor,
    build_tiny_model,
    build_tokenizer,
    count_parameters,
    load_policy,
    tiny_model_config,
    vision_special_token_ids,
)

COLOURS = ("red", "blue", "green", "yellow")
CORPUS = [
    user_text(f"How many {colour} objects are there?", "acc", 1)
    + reference_completion(f"I count the {colour} shapes from left to right: {n}.", str(n))
    for n in range(1, 13)
    for colour in COLOURS
]
MIN_PIXELS, MAX_PIXELS = 56 * 56, 224 * 224


def gray_image(side: int) -> Image.Image:
    """A mid-gray square near the image processor's mean, as the synthetic tasks draw backgrounds."""
    return Image.new("RGB", (side, side), (123, 117, 104))


def prompt_text(processor, question: str) -> str:
    return processor.apply_chat_template(
        chat_messages(user_text(question, "acc", 1)), add_generation_prompt=True, tokenize=False
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(
        TinyModelConfig(), CORPUS, tmp_path_factory.mktemp("models") / "tiny", MIN_PIXELS, MAX_PIXELS
    )


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return load_policy(str(tiny_dir))


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS, vocab_size=512)


def test_build_save_load_chat_and_generate(tiny_dir, policy):
    model, processor = policy
    assert type(processor) is Qwen2_5_VLImageTextProcessor
    assert _named_processor_classes(tiny_dir) == {STOCK_PROCESSOR_CLASS}

    text = prompt_text(processor, "How many red objects are there?")
    assert text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many red objects are there?\n"
    )
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")

    inputs = processor(text=[text], images=[gray_image(112)], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 16
    assert inputs["mm_token_type_ids"].sum() == 16

    suppressed = vision_special_token_ids(processor)
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=True, suppress_tokens=suppressed)
    completion = out[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(completion) <= 6
    assert not set(completion.tolist()) & set(suppressed)
    assert isinstance(processor.decode(completion), str)


def test_special_token_ids_follow_qwens_order(policy):
    model, processor = policy
    tok = processor.tokenizer
    ids = dict(zip(SPECIAL_TOKENS, tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)), strict=True))
    assert list(ids.values()) == list(range(len(SPECIAL_TOKENS)))
    assert (tok.pad_token, tok.eos_token, tok.padding_side) == ("<|endoftext|>", "<|im_end|>", "left")
    assert vision_special_token_ids(processor) == [ids[t] for t in VISION_SPECIAL_TOKENS]
    config = model.config
    assert (config.image_token_id, config.video_token_id) == (ids["<|image_pad|>"], ids["<|video_pad|>"])
    assert (config.vision_start_token_id, config.vision_end_token_id) == (
        ids["<|vision_start|>"],
        ids["<|vision_end|>"],
    )
    assert model.generation_config.eos_token_id == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert model.generation_config.pad_token_id == ids["<|endoftext|>"]
    assert config.text_config.vocab_size == len(tok)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_tokenizer_round_trips_any_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text


def test_reasoning_tags_are_single_tokens_that_survive_decoding(tokenizer):
    completion = reference_completion("3 red, 2 blue", "5")
    pieces = tokenizer.tokenize(completion)
    for tag in REASONING_TAGS:
        assert pieces.count(tag) == 1
    ids = tokenizer.encode("<|vision_start|><|image_pad|><|vision_end|>" + completion + "<|im_end|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == completion


def test_build_is_deterministic_for_a_seed(tiny_dir, tmp_path):
    again = build_tiny_model(TinyModelConfig(), CORPUS, tmp_path / "again", MIN_PIXELS, MAX_PIXELS)
    other = build_tiny_model(TinyModelConfig(seed=1), CORPUS, tmp_path / "other", MIN_PIXELS, MAX_PIXELS)
    assert (again / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    first, second = load_file(tiny_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    reseeded = load_file(other / "model.safetensors")
    # Saved under the hub checkpoints' names (transformers 5 maps them back on save).
    for name in ("model.embed_tokens.weight", "visual.patch_embed.proj.weight"):
        assert not torch.equal(first[name], reseeded[name])


def test_build_refuses_to_overwrite(tiny_dir):
    before = sorted(p.name for p in tiny_dir.parent.iterdir())
    with pytest.raises(FileExistsError, match="already exists"):
        build_tiny_model(TinyModelConfig(), CORPUS, tiny_dir, MIN_PIXELS, MAX_PIXELS)
    assert sorted(p.name for p in tiny_dir.parent.iterdir()) == before  # no staging directory left behind


def test_rope_theta_decides_whether_image_columns_have_positions(tokenizer):
    """M-RoPE gives an image token's width position the lowest rotary frequencies: at the 3B's base (1e6) one
    column turns the width section by under 2e-4 rad, so the language model cannot tell a 4x4 grid's columns
    apart by position; a base of 10 turns it by ~0.24 rad per column."""
    for theta, low, high in ((1e6, 0.0, 2e-4), (10.0, 0.2, 0.3)):
        config = tiny_model_config(TinyModelConfig(rope_theta=theta), tokenizer)
        model = Qwen2_5_VLForConditionalGeneration(config)
        section = config.text_config.rope_parameters["mrope_section"]
        width = model.model.language_model.rotary_emb.inv_freq[sum(section[:2]) :]
        assert low < float(width.max()) < high, theta


def test_parameter_count(tiny_dir, policy):
    model, _ = policy
    saved = load_file(tiny_dir / "model.safetensors")
    # Tied embeddings are one tensor on disk and must count once.
    assert count_parameters(model) == sum(t.numel() for t in saved.values())
    # The issue asks for "about 5-30M"; the default shape with a full 1,024-token vocabulary gives ~4.5M.
    assert 4_000_000 <= count_parameters(model) <= 30_000_000


def test_training_forward_reproduces_generation_logprobs(policy):
    """The trainer's forward must see generation's 3-D M-RoPE positions, via mm_token_type_ids."""
    model, processor = policy
    texts = [prompt_text(processor, "Count."), prompt_text(processor, "How many red objects are there?")]
    inputs = processor(
        text=texts, images=[gray_image(112), gray_image(168)], padding=True, return_tensors="pt"
    )
    assert inputs["attention_mask"][0, 0] == 0  # the shorter prompt (16 image tokens, not 36) is left-padded
    suppressed = vision_special_token_ids(processor)
    torch.manual_seed(0)
    out = model.generate(
        **inputs,
        max_new_tokens=8,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        suppress_tokens=suppressed,
        output_logits=True,
        output_scores=True,
        return_dict_in_generate=True,
    )
    prompt_len = inputs["input_ids"].shape[1]
    completion = out.sequences[:, prompt_len:]

    def completion_logprobs(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits.float(), -1).gather(-1, completion[..., None])[..., 0]

    generated = completion_logprobs(torch.stack(out.logits, 1))  # raw logits: the model's distribution
    sampled_from = completion_logprobs(torch.stack(out.scores, 1))  # after suppression: what was sampled

    zeros = torch.zeros_like(completion)
    batch = dict(
        input_ids=out.sequences,
        attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(completion)], 1),
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"],
    )
    with torch.no_grad():
        logits = model(**batch, mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"], zeros], 1)).logits
        logits_1d = model(**batch).logits
    logits = logits[:, prompt_len - 1 : -1]
    torch.testing.assert_close(completion_logprobs(logits), generated, atol=1e-5, rtol=0)
    # Suppressed tokens leave the sampling distribution: mask them to match what generate sampled from.
    torch.testing.assert_close(
        completion_logprobs(logits.index_fill(-1, torch.tensor(suppressed), float("-inf"))),
        sampled_from,
        atol=1e-5,
        rtol=0,
    )
    # The trap: without mm_token_type_ids the model silently uses 1-D positions.
    assert (completion_logprobs(logits_1d[:, prompt_len - 1 : -1]) - generated).abs().max() > 1e-3


def test_loads_a_directory_in_qwens_stock_format(tiny_dir, tmp_path):
    """Qwen's hub layout names the stock processor (which needs torchvision) and keeps pixel limits top-level."""
    stock = _stock_layout(tiny_dir, tmp_path / "stock")
    template = (stock / "chat_template.json").read_text()
    template = json.loads(template)["chat_template"]

    _, processor = load_policy(str(stock))
    assert type(processor) is Qwen2_5_VLImageTextProcessor
    assert processor.chat_template == template

    def image_tokens(proc) -> int:
        inputs = proc(text=[prompt_text(proc, "Count.")], images=[gray_image(224)], return_tensors="pt")
        return int((inputs["input_ids"] == proc.image_token_id).sum())

    assert image_tokens(processor) == 16  # max_pixels from the file: 224 px scaled down to 112 px
    _, wider = load_policy(str(stock), min_pixels=MIN_PIXELS, max_pixels=224 * 224)
    assert image_tokens(wider) == 64


def _stock_layout(tiny_dir: Path, stock: Path) -> Path:
    """A copy of ``tiny_dir`` in the layout of Qwen2.5-VL-3B-Instruct's hub files."""
    shutil.copytree(tiny_dir, stock)
    processor_config = json.loads((stock / "processor_config.json").read_text())
    (stock / "processor_config.json").unlink()
    image_config = processor_config["image_processor"] | {
        "min_pixels": MIN_PIXELS,
        "max_pixels": 112 * 112,
        "processor_class": "Qwen2_5_VLProcessor",
    }
    del image_config["size"]
    (stock / "preprocessor_config.json").write_text(json.dumps(image_config))
    template = (stock / "chat_template.jinja").read_text()
    (stock / "chat_template.jinja").unlink()
    (stock / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    tokenizer_config = json.loads((stock / "tokenizer_config.json").read_text())
    (stock / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config | {"processor_class": "Qwen2_5_VLProcessor"})
    )
    return stock


def _named_processor_classes(directory: Path) -> set[str]:
    """The processor classes a saved directory names (transformers and vLLM read these fields)."""
    names = set()
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if (directory / name).is_file():
            names.add(json.loads((directory / name).read_text()).get("processor_class"))
    return names - {None}


def test_a_checkpoint_of_a_stock_qwen_directory_names_classes_vllm_and_autoprocessor_load(tiny_dir, tmp_path):
    """Stage 2 and evaluation (vLLM included) load stage 1's final/: it must name what Qwen's own files name."""
    stock = _stock_layout(tiny_dir, tmp_path / "stock")
    model, processor = load_policy(str(stock))
    saved = tmp_path / "final"
    model.save_pretrained(saved)  # what every checkpoint does (trainer.save_checkpoint)
    processor.save_pretrained(saved)
    assert _named_processor_classes(saved) == {STOCK_PROCESSOR_CLASS}
    # vLLM builds transformers' Qwen2_5_VLProcessor from these files: its image processor must be one of
    # transformers' Qwen2.5-VL image processors.
    saved_config = json.loads((saved / "processor_config.json").read_text())
    image_processor, video_processor = saved_config["image_processor"], saved_config["video_processor"]
    backends = IMAGE_PROCESSOR_MAPPING_NAMES["qwen2_5_vl"]
    known = set(backends.values()) if isinstance(backends, dict) else {backends}
    assert image_processor["image_processor_type"] in known
    # The stock processor also loads a video processor; Qwen's files leave it to the image settings.
    assert video_processor["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert video_processor["size"] == image_processor["size"]
    # AutoProcessor, without ocean_lib: the stock class where torchvision is installed (GPU environments),
    # a loud error without it; never the bare tokenizer.
    code = (
        "import sys; from transformers import AutoProcessor\n"
        "try: print('LOADED', type(AutoProcessor.from_pretrained(sys.argv[1])).__name__)\n"
        "except (OSError, ImportError) as error: print('RAISED', error)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(saved)], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.startswith(f"LOADED {STOCK_PROCESSOR_CLASS}") or (
        done.stdout.startswith("RAISED") and "requires the Torchvision library" in done.stdout
    ), done.stdout
    # ... and this project loads it back unchanged.
    _, again = load_policy(str(saved))
    text = prompt_text(processor, "Count.")
    assert torch.equal(
        processor(text=[text], images=[gray_image(224)], return_tensors="pt")["input_ids"],
        again(text=[text], images=[gray_image(224)], return_tensors="pt")["input_ids"],
    )


@pytest.mark.parametrize("typed", ["{tmp}/runs/grpo_vsi/final", "./runs_typo/final", "runs/grpo_vsi"])
def test_mistyped_model_directory_is_named_without_a_hub_download(tmp_path, monkeypatch, typed):
    # Before: "not a local directory, and the Hugging Face hub did not provide it ... hf download <path>".
    (tmp_path / "runs" / "grpo_vis" / "final").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    typed = typed.format(tmp=tmp_path)
    with pytest.raises(
        FileNotFoundError, match=f"cannot load the model {re.escape(repr(typed))}: no such dir"
    ) as e:
        load_policy(typed)
    assert "hub" not in str(e.value) and "download" not in str(e.value)
    if "grpo_vsi" in typed:
        assert str(e.value).endswith(f"{tmp_path / 'runs'} has grpo_vis")


def test_hub_id_loads_from_the_cache_offline_and_says_what_to_place_where_when_absent(tiny_dir, tmp_path):
    """Offline, a hub id resolves through the Hugging Face cache; absent from it, the error says what to do."""
    revision = "0" * 40  # the cache layout: refs/main names the snapshot directory
    cached = tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-3B-Instruct"
    shutil.copytree(tiny_dir, cached / "snapshots" / revision)
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text(revision)
    code = (
        "import sys; from ocean_lib.training.models import load_policy; "
        "print('LOADED', type(load_policy(sys.argv[1])[1]).__name__); load_policy(sys.argv[2])"
    )
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}  # no network, a cache of our own
    result = subprocess.run(
        [sys.executable, "-c", code, "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "LOADED Qwen2_5_VLImageTextProcessor" in result.stdout, result.stderr
    assert result.returncode != 0
    assert "FileNotFoundError: cannot load the model 'Qwen/Qwen2.5-VL-7B-Instruct'" in result.stderr
    assert "hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir DIR" in result.stderr


def test_kept_whitespace_renders_as_verl_substitutes_images(tiny_dir):
    from ocean_lib.base.prompts import R1_SYSTEM_PROMPT, V1_INSTRUCTIONS, v1_user_text

    _, processor = load_policy(str(tiny_dir))
    content = user_text("How many red objects are there?", "acc", 1)  # "<image> How many ..."

    def render(messages):
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    # verl: the chat template over the raw user string, then <image> replaced where it stands (space kept)
    verl = render([{"role": "user", "content": content}]).replace(
        "<image>", "<|vision_start|><|image_pad|><|vision_end|>"
    )
    assert render(chat_messages(content, keep_whitespace=True)) == verl
    assert "<|vision_end|> How many" in verl
    assert "<|vision_end|>How many" in render(chat_messages(content))  # ours: the space is dropped
    # the first recipe: its image-then-text message, and R1's system turn before a text-only problem
    problem = "How many red objects are there?"
    trl = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": f"{problem}\n{V1_INSTRUCTIONS['acc']}"}],
        }
    ]
    assert render(chat_messages(v1_user_text(problem, "acc", True), keep_whitespace=True)) == render(trl)
    text_only = [
        {"role": "system", "content": R1_SYSTEM_PROMPT},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    ours = chat_messages(v1_user_text("What is 2 + 3?", "acc", False), R1_SYSTEM_PROMPT, keep_whitespace=True)
    assert render(ours) == render(text_only)
    assert render(ours).startswith("<|im_start|>system\nA conversation between User and Assistant.")
