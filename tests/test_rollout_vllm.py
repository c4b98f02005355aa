"""The vLLM backend's pure parts, without vLLM: requests, sampling arguments, weight names, output conversion.

vLLM's outputs are stood in for by small dataclasses with the fields of ``vllm.RequestOutput`` /
``CompletionOutput`` / ``Logprob`` that the conversion reads (a test double of vLLM, not of our code).
"""

import importlib.util
from dataclasses import dataclass

import pytest
import torch
from conftest import grey_image
from safetensors import safe_open

from ocean_lib.base.prompts import Prompt, user_text
from ocean_lib.base.schema import RolloutConfig
from ocean_lib.training.batch import encode_prompts
from ocean_lib.training.models import load_policy, vision_special_token_ids
from ocean_lib.training.rollout import make_engine
from ocean_lib.training.rollout_vllm import (
    ColocatedEngine,
    RolloutMismatch,
    VLLMRolloutEngine,
    checkpoint_tensor_names,
    mm_processor_kwargs,
    pixel_limits,
    policy_weights,
    prompt_text,
    rollout_batch_from_outputs,
    sampling_kwargs,
    tensor_parallel_groups,
    unloaded_weights,
    vllm_param_name,
    vllm_requests,
    weight_groups,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]]
    finish_reason: str


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_policy(str(tiny_model_dir), min_pixels=3136, max_pixels=200_704)


def _prompts():
    return [
        Prompt(user_text("Which is larger?", "acc", 2), [grey_image(112), grey_image(168, shade=20)]),
        Prompt(user_text("How many cubes?", "acc", 0), []),
        Prompt(user_text("Find the red cube.", "iou", 1), [grey_image(140, shade=10)]),
    ]


def _decode(processor):
    return lambda ids: processor.tokenizer.batch_decode(ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------------------------
# Installation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_selecting_vllm_without_it_fails_at_once_naming_the_gpu_extra(policy):
    model, processor = policy
    with pytest.raises(ImportError, match=r"make install-gpu.*vllm"):
        VLLMRolloutEngine(model, processor, RolloutConfig(backend="vllm"))
    with pytest.raises(ImportError, match=r"rollout\.backend=vllm"):
        make_engine(model, processor, RolloutConfig(backend="vllm"))


# ----------------------------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------------------------


def test_requests_carry_one_placeholder_per_image_and_the_images_in_order(policy):
    _, processor = policy
    prompts = _prompts()
    requests = vllm_requests([prompt_text(processor, p) for p in prompts], prompts)
    placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    assert [r["prompt"].count(placeholder) for r in requests] == [2, 0, 1]
    assert requests[0]["multi_modal_data"]["image"] == prompts[0].images  # same objects, same order
    assert "multi_modal_data" not in requests[1]
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in requests)
    with pytest.raises(ValueError, match="2 texts for 3 prompts"):
        vllm_requests(["a", "b"], prompts)


def test_request_text_expands_to_exactly_the_tokens_training_uses(policy):
    # What vLLM does with a request (its HF processor expands each placeholder for its image) must give the
    # prompt tokens encode_prompts gives the trainer.
    _, processor = policy
    encoded = encode_prompts(processor, _prompts())
    for p, prompt in enumerate(_prompts()):
        alone = processor(
            text=[prompt_text(processor, prompt)], images=prompt.images or None, return_tensors="pt"
        )
        ours = encoded["input_ids"][p][encoded["attention_mask"][p].bool()]
        assert torch.equal(alone["input_ids"][0], ours)


def test_vllm_resizes_images_with_the_training_pixel_limits(tiny_model_dir):
    _, processor = load_policy(str(tiny_model_dir), min_pixels=4096, max_pixels=50_176)
    assert pixel_limits(processor) == (4096, 50_176)
    assert mm_processor_kwargs(processor) == {"size": {"shortest_edge": 4096, "longest_edge": 50_176}}


def test_sampling_arguments_follow_the_config():
    cfg = RolloutConfig(temperature=0.7, top_p=0.9, top_k=0, min_new_tokens=3)
    sample = sampling_kwargs(
        cfg, 16, greedy=False, max_new_tokens=64, stop_token_ids=[5], suppressed_token_ids=[7, 8], seed=11
    )
    assert sample == {
        "n": 16,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": -1,
        "max_tokens": 64,
        "min_tokens": 3,
        "stop_token_ids": [5],
        "repetition_penalty": 1.0,  # none unless evaluation asks (the checkpoint's generation config)
        "logit_bias": {7: -100.0, 8: -100.0},
        "logprobs": 0,
        "detokenize": False,
        "seed": 11,
    }
    greedy = sampling_kwargs(
        cfg, 16, greedy=True, max_new_tokens=2, stop_token_ids=[5], suppressed_token_ids=[], seed=11
    )
    assert (greedy["n"], greedy["temperature"], greedy["top_p"], greedy["seed"]) == (1, 0.0, 1.0, None)
    assert greedy["min_tokens"] == 2  # never more than max_tokens
    top_k = sampling_kwargs(
        RolloutConfig(top_k=20),
        2,
        greedy=False,
        max_new_tokens=8,
        stop_token_ids=[],
        suppressed_token_ids=[],
        seed=None,
    )
    assert top_k["top_k"] == 20
    penalised = sampling_kwargs(
        cfg, 1, greedy=True, max_new_tokens=8, stop_token_ids=[5, 6], suppressed_token_ids=[], seed=None,
        repetition_penalty=1.05,
    )  # fmt: skip
    assert (penalised["stop_token_ids"], penalised["repetition_penalty"]) == ([5, 6], 1.05)


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------


def test_parameter_names_map_to_the_checkpoint_names_vllm_loads(policy, tiny_model_dir):
    model, _ = policy
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as checkpoint:
        saved = set(checkpoint.keys())  # the hub layout: model.layers.*, visual.*
    mapped = {vllm_param_name(name) for name, _ in model.named_parameters()}
    assert mapped == saved
    assert vllm_param_name("module.model.language_model.layers.0.mlp.up_proj.weight") == (
        "model.layers.0.mlp.up_proj.weight"
    )
    assert vllm_param_name("_orig_mod.model.visual.blocks.1.attn.qkv.bias") == "visual.blocks.1.attn.qkv.bias"
    assert vllm_param_name("module.lm_head.weight") == "lm_head.weight"


def test_lora_names_map_to_the_base_weights_and_adapters_are_skipped(tiny_model_dir):
    peft = pytest.importorskip("peft")
    model, _ = load_policy(str(tiny_model_dir))
    plain = {vllm_param_name(name) for name, _ in model.named_parameters()}
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    names = [name for name, _ in lora.named_parameters()]
    assert any(".lora_A." in name for name in names) and any(".base_layer." in name for name in names)
    assert {vllm_param_name(name) for name in names} - {None} == plain


def test_weight_groups_are_whole_layers_in_order(policy):
    model, _ = policy
    names = [name for name, _ in model.named_parameters()]
    groups = weight_groups(names)
    assert [name for group in groups for name in group] == names
    layer_groups = [g for g in groups if ".layers." in g[0]]
    assert len(layer_groups) == model.config.text_config.num_hidden_layers
    assert all(len({n.split(".")[3] for n in g}) == 1 for g in layer_groups)  # one layer index per group
    assert ["model.visual.patch_embed.proj.weight"] in groups  # a layerless weight stands alone


class LLM:
    """Stands in for ``vllm.LLM`` (0.33): the methods ColocatedEngine calls, each call recorded; its weights
    under checkpoint names, rewritten by the worker's ``reload_weights`` from the iterator it is given."""

    def __init__(self, shapes: dict[str, torch.Size]):
        self.weights = {name: torch.full(shape, float("nan")) for name, shape in shapes.items()}
        self.calls, self.released = [], set()
        self.llm_engine = self  # LLMEngine.reset_encoder_cache lives on llm.llm_engine

    def collective_rpc(self, method, kwargs):
        assert method == "reload_weights" and kwargs["is_checkpoint_format"]
        assert "weights" not in self.released, "vLLM's weights were written while asleep"
        self.calls.append(method)
        for name, tensor in kwargs["weights_iterator"]:
            self.weights[name].copy_(tensor)

    def sleep(self, level):
        self.calls.append(f"sleep({level})")
        self.released = {"weights", "kv_cache"}

    def wake_up(self, tags):
        self.calls.append(f"wake_up({','.join(tags)})")
        self.released -= set(tags)

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def reset_encoder_cache(self):
        self.calls.append("reset_encoder_cache")

    def generate(self, requests, params, use_tqdm):
        assert not self.released, f"generated with {self.released} released"
        self.calls.append("generate")
        return [f"output of {r}" for r in requests]


def _vllm_side(policy_model, tiny_model_dir, **engine_args) -> tuple[LLM, ColocatedEngine]:
    llm = LLM({vllm_param_name(n): p.shape for n, p in policy_model.named_parameters()})
    return llm, ColocatedEngine(llm, checkpoint_tensor_names(tiny_model_dir), **engine_args)


def test_pushing_the_policy_writes_every_checkpoint_tensor_then_resets_the_caches(policy, tiny_model_dir):
    model, _ = policy
    llm, engine = _vllm_side(model, tiny_model_dir)
    engine.load(policy_weights(model))
    for name, parameter in model.named_parameters():
        assert torch.equal(llm.weights[vllm_param_name(name)], parameter.detach()), name
    assert llm.calls == ["reload_weights", "reset_prefix_cache", "reset_encoder_cache"]


def test_sleep_discards_the_weights_and_generation_waits_for_the_next_push(policy, tiny_model_dir):
    model, _ = policy
    llm, engine = _vllm_side(model, tiny_model_dir)
    assert engine.generate(["a"], [None]) == ["output of a"]  # weights as loaded from disk
    engine.release_memory()
    engine.release_memory()  # already asleep: nothing more to free
    assert llm.calls == ["generate", "sleep(2)"]
    with pytest.raises(RuntimeError, match="discarded while it slept.*after_update"):
        engine.generate(["b"], [None])
    llm.calls.clear()
    engine.load(policy_weights(model))
    assert engine.generate(["b"], [None]) == ["output of b"]
    assert llm.calls[:2] == ["wake_up(weights)", "reload_weights"]
    assert llm.calls[-2:] == ["wake_up(kv_cache)", "generate"]


def test_without_sleep_mode_nothing_is_released(policy, tiny_model_dir):
    model, _ = policy
    llm, engine = _vllm_side(model, tiny_model_dir, sleep=False)
    engine.release_memory()
    assert engine.generate(["a"], [None]) == ["output of a"] and llm.calls == ["generate"]


def test_a_push_that_misses_a_checkpoint_tensor_is_refused(policy, tiny_model_dir):
    model, _ = policy
    llm, engine = _vllm_side(model, tiny_model_dir)
    engine.checkpoint_names.add("model.extra_projection.weight")  # a tensor the policy lacks
    with pytest.raises(
        RuntimeError, match=r"left 1 tensors of vLLM's checkpoint unwritten.*extra_projection"
    ):
        engine.load(policy_weights(model))
    assert unloaded_weights({"a", "b", "c"}, {"b"}) == ["a", "c"]
    assert checkpoint_tensor_names(tiny_model_dir) == {
        vllm_param_name(n) for n, _ in model.named_parameters()
    }
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        checkpoint_tensor_names(tiny_model_dir.parent)


def test_tensor_parallel_groups_are_consecutive_ranks():
    assert tensor_parallel_groups(8, 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert tensor_parallel_groups(4, 1) == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="vllm_tensor_parallel_size=4 must be >= 1 and divide the 6"):
        tensor_parallel_groups(6, 4)


# ----------------------------------------------------------------------------------------------------------------
# Outputs -> RolloutBatch
# ----------------------------------------------------------------------------------------------------------------


def _as_vllm_outputs(batch, encoded):
    """The HF engine's samples, dressed as vLLM RequestOutputs."""
    outputs = []
    for p in range(len(batch.images_per_prompt)):
        completions = []
        for r in range(p * batch.n, (p + 1) * batch.n):
            length = int(batch.completion_mask[r].sum())
            tokens = batch.completion_ids[r, :length].tolist()
            logprobs = [
                {t: Logprob(float(lp))} for t, lp in zip(tokens, batch.logprobs[r, :length], strict=True)
            ]
            completions.append(CompletionOutput(tokens, logprobs, "stop" if batch.finished[r] else "length"))
        prompt_ids = encoded["input_ids"][p][encoded["attention_mask"][p].bool()].tolist()
        outputs.append(RequestOutput(prompt_ids, completions))
    return outputs


def test_vllm_outputs_become_the_batch_the_hf_engine_builds(policy):
    model, processor = policy
    prompts = _prompts()
    hf = make_engine(model, processor, RolloutConfig(max_new_tokens=10)).generate(
        prompts, n=3, seeds=[1, 2, 3]
    )
    encoded = encode_prompts(processor, prompts)
    converted = rollout_batch_from_outputs(
        _as_vllm_outputs(hf, encoded),
        encoded,
        [2, 0, 1],
        3,
        processor.tokenizer.pad_token_id,
        _decode(processor),
    )
    for name in ("prompt_ids", "prompt_mask", "prompt_token_types", "pixel_values", "image_grid_thw"):
        assert torch.equal(getattr(converted, name), getattr(hf, name)), name
    assert converted.completion_ids.shape == hf.completion_ids.shape
    assert torch.equal(converted.completion_mask, hf.completion_mask)
    assert torch.equal(
        converted.completion_ids * converted.completion_mask, hf.completion_ids * hf.completion_mask
    )
    assert torch.allclose(converted.logprobs, hf.logprobs)
    assert converted.texts == hf.texts and converted.finished == hf.finished
    assert converted.images_per_prompt == [2, 0, 1] and converted.n == 3


def test_conversion_pads_masks_and_groups_completions(policy):
    _, processor = policy
    prompts = _prompts()[:2]
    encoded = encode_prompts(processor, prompts)
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = processor.tokenizer.pad_token_id

    def completion(tokens, reason):
        return CompletionOutput(tokens, [{t: Logprob(-0.5 - i)} for i, t in enumerate(tokens)], reason)

    ids = [encoded["input_ids"][p][encoded["attention_mask"][p].bool()].tolist() for p in range(2)]
    outputs = [
        RequestOutput(
            ids[0], [completion([300, 301, eos], "stop"), completion([302, 303, 304, 305], "length")]
        ),
        RequestOutput(ids[1], [completion([eos], "stop"), completion([310, eos], "stop")]),
    ]
    batch = rollout_batch_from_outputs(outputs, encoded, [2, 0], 2, pad, _decode(processor))
    assert batch.completion_ids.tolist() == [
        [300, 301, eos, pad],
        [302, 303, 304, 305],
        [eos, pad, pad, pad],
        [310, eos, pad, pad],
    ]
    assert batch.completion_mask.sum(-1).tolist() == [3, 4, 1, 2]
    assert batch.logprobs[1].tolist() == [-0.5, -1.5, -2.5, -3.5]
    assert batch.logprobs[2].tolist() == [-0.5, 0.0, 0.0, 0.0]  # 0 where masked
    assert batch.finished == [True, False, True, True]
    assert batch.prompt_index.tolist() == [0, 0, 1, 1]
    assert torch.equal(batch.prompt_ids[2], batch.prompt_ids[3]) and torch.equal(
        batch.prompt_ids[0], encoded["input_ids"][0]
    )

    greedy = rollout_batch_from_outputs(
        [
            RequestOutput(ids[0], [completion([300, eos], "stop")]),
            RequestOutput(ids[1], [completion([eos], "stop")]),
        ],
        encoded,
        [2, 0],
        3,
        pad,
        _decode(processor),
    )
    assert greedy.completion_ids[:3].tolist() == [[300, eos]] * 3 and len(greedy.texts) == 6


def test_a_prompt_vllm_tokenized_differently_stops_the_run(policy):
    _, processor = policy
    prompts = _prompts()[:1]
    encoded = encode_prompts(processor, prompts)
    ids = encoded["input_ids"][0][encoded["attention_mask"][0].bool()].tolist()
    image_pad = vision_special_token_ids(processor)[0]
    fewer_image_tokens = ids[:]
    fewer_image_tokens.remove(image_pad)  # as if vLLM had resized an image to one patch fewer
    output = RequestOutput(fewer_image_tokens, [CompletionOutput([5], [{5: Logprob(-1.0)}], "stop")])
    with pytest.raises(
        RolloutMismatch, match=r"prompt 0: vLLM tokenized it into \d+ tokens, training into \d+"
    ):
        rollout_batch_from_outputs([output], encoded, [2], 1, 0, _decode(processor))
    missing_logprobs = RequestOutput(ids, [CompletionOutput([5, 6], None, "stop")])
    with pytest.raises(ValueError, match="no per-token log-probs"):
        rollout_batch_from_outputs([missing_logprobs], encoded, [2], 1, 0, _decode(processor))
