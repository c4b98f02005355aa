"""The HF rollout engine: shared prefill, suppressed vision tokens, and log-probs the trainer reproduces."""

import torch
from conftest import mixed_prompts

from ocean_lib.batch import encode_prompts, mrope_positions, select_images
from ocean_lib.config import RolloutConfig
from ocean_lib.models import load_policy, vision_special_token_ids
from ocean_lib.rollout import _filter_top_k_top_p, _mask_through_eos, make_engine


def _forward_logprobs(model, batch, with_positions=True):
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], 1)
    types = torch.cat([batch.prompt_token_types, torch.zeros_like(batch.completion_ids)], 1)
    pixels, grid = select_images(
        batch.pixel_values, batch.image_grid_thw, batch.images_per_prompt, batch.prompt_index
    )
    positions = mrope_positions(model, ids, mask, types, grid) if with_positions else None
    width = batch.completion_ids.shape[1]
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            pixel_values=pixels,
            image_grid_thw=grid,
            logits_to_keep=width + 1,
        ).logits[:, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)


def test_training_forward_reproduces_sampler_logprobs(tiny_model_dir):
    model, processor = load_policy(str(tiny_model_dir))
    engine = make_engine(model, processor, RolloutConfig(max_new_tokens=12, temperature=1.0))
    torch.manual_seed(0)
    batch = engine.generate(mixed_prompts(), n=3)
    assert len(batch.texts) == 9 and batch.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Each row's length counts its own prompt's tokens (three prompt lengths here) and its own completion's.
    alone = [int(encode_prompts(processor, [p])["attention_mask"].sum()) for p in mixed_prompts()]
    assert len(set(alone)) == 3
    expected = [alone[i // 3] + batch.completion_lengths[i] for i in range(9)]
    assert batch.lengths.tolist() == expected
    mask = batch.completion_mask.bool()
    gap = (_forward_logprobs(model, batch) - batch.logprobs)[mask].abs().max()
    assert gap < 1e-5
    # The trap the explicit positions avoid: without them the forward falls back to 1-D positions.
    drift = (_forward_logprobs(model, batch, with_positions=False) - batch.logprobs)[mask].abs().max()
    assert drift > 1e-3


def test_vision_tokens_are_never_sampled_and_groups_share_one_prefill(tiny_model_dir):
    model, processor = load_policy(str(tiny_model_dir))
    engine = make_engine(model, processor, RolloutConfig(max_new_tokens=16, temperature=2.0))
    torch.manual_seed(1)
    batch = engine.generate(mixed_prompts()[:2], n=4)
    banned = set(vision_special_token_ids(processor))
    assert banned.isdisjoint(batch.completion_ids[batch.completion_mask.bool()].tolist())
    # The images were encoded once per prompt, not once per sample.
    assert batch.image_grid_thw.shape[0] == 2
    assert batch.pixel_values.shape[0] == int(batch.image_grid_thw.prod(-1).sum())
    # Samples within a group differ (sampling, not copies).
    assert len(set(batch.texts[:4])) > 1


def test_greedy_group_equals_single_greedy_and_min_new_tokens_holds(tiny_model_dir):
    model, processor = load_policy(str(tiny_model_dir))
    engine = make_engine(model, processor, RolloutConfig(max_new_tokens=10, min_new_tokens=10))
    one = engine.generate(mixed_prompts(), n=1, greedy=True)
    three = engine.generate(mixed_prompts(), n=3, greedy=True)
    assert three.texts == [t for t in one.texts for _ in range(3)]
    assert three.completion_lengths == [10] * 9


def test_top_k_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(_filter_top_k_top_p(logits, 2, 1.0)).tolist() == [[True, True, False, False]]
    # top_p = 0.7: 0.5 alone is not enough, 0.5 + 0.3 crosses it -> keep two.
    assert torch.isfinite(_filter_top_k_top_p(logits, 0, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(_filter_top_k_top_p(logits, 0, 0.5)).tolist() == [[True, False, False, False]]


def test_completion_mask_runs_through_the_first_eos():
    eos, pad = 9, 0
    ids = torch.tensor([[5, 9, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0]])
    assert _mask_through_eos(ids, eos, pad).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_seeded_samples_do_not_depend_on_the_rest_of_the_batch(tiny_model_dir):
    model, processor = load_policy(str(tiny_model_dir))
    engine = make_engine(model, processor, RolloutConfig(max_new_tokens=12, temperature=1.0))
    a, b = mixed_prompts()[:2]
    forward = engine.generate([a, b], n=2, seeds=[5, 6])
    backward = engine.generate([b, a], n=2, seeds=[6, 5])
    assert forward.texts == backward.texts[2:] + backward.texts[:2]
    other_seed = engine.generate([a, b], n=2, seeds=[7, 6])
    assert other_seed.texts[2:] == forward.texts[2:] and other_seed.texts[:2] != forward.texts[:2]
