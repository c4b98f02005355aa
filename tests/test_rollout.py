"""The HF rollout engine: shared prefill, suppressed vision tokens, and log-probs the trainer reproduces."""

import pytest
import torch
from conftest import mixed_prompts

from ocean_lib.base.prompts import Prompt
from ocean_lib.base.schema import RolloutConfig
from ocean_lib.training.batch import encode_prompts, mrope_positions, select_images
from ocean_lib.training.models import load_policy, vision_special_token_ids
from ocean_lib.training.rollout import (
    _filter_top_k_top_p,
    _mask_through_eos,
    apply_repetition_penalty,
    make_engine,
)


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


@pytest.mark.trajectory
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


@pytest.mark.trajectory
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


def test_completion_mask_runs_through_the_first_stop_token():
    ids = torch.tensor([[5, 9, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0], [5, 4, 9, 0]])
    assert _mask_through_eos(ids, torch.tensor([9])).tolist() == [
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 0, 0, 0],
        [1, 1, 1, 0],
    ]
    # Several stop tokens (Qwen's <|im_end|> and <|endoftext|>): the first of any ends the completion.
    assert _mask_through_eos(ids, torch.tensor([9, 4])).tolist()[3] == [1, 1, 0, 0]


def test_stop_tokens_are_im_end_or_the_generation_configs(tiny_model_dir):
    from ocean_lib.training.batch import stop_token_ids

    model, processor = load_policy(str(tiny_model_dir))
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    endoftext = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert stop_token_ids(model, processor, "im_end") == [im_end]
    assert stop_token_ids(model, processor, "generation_config") == [im_end, endoftext]  # as Qwen2.5-VL's
    engine = make_engine(model, processor, RolloutConfig(stop_tokens="generation_config"))
    assert engine.stop_ids == [im_end, endoftext]


def test_repetition_penalty_is_transformers_own():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=generator)
    sequences = torch.randint(0, 50, (3, 7), generator=generator)
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter(1, sequences, True)
    expected = RepetitionPenaltyLogitsProcessor(1.05)(sequences, logits.clone())
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.05), expected)
    assert apply_repetition_penalty(
        torch.tensor([[2.0, -2.0, 3.0]]), torch.tensor([[True, True, False]]), 2.0
    ).tolist() == [[1.0, -4.0, 3.0]]


def test_stop_tokens_and_repetition_penalty_reach_generation(tiny_model_dir):
    model, processor = load_policy(str(tiny_model_dir))
    engine = make_engine(model, processor, RolloutConfig(max_new_tokens=8))
    plain = engine.generate(mixed_prompts(), n=1, greedy=True)
    # A stop set holding each row's first greedy token ends every completion after one token.
    firsts = plain.completion_ids[:, 0].tolist()
    stopped = engine.generate(mixed_prompts(), n=1, greedy=True, stop_token_ids=[engine.eos_id, *firsts])
    assert stopped.completion_lengths == [1] * len(firsts) and all(stopped.finished)
    # A strong penalty changes the greedy path of a model that repeats itself (the tiny model does).
    penalised = engine.generate(mixed_prompts(), n=1, greedy=True, repetition_penalty=100.0)
    assert penalised.texts != plain.texts
    repeats = [len(row) - len(set(row)) for row in plain.completion_ids.tolist()]
    repeats_penalised = [len(row) - len(set(row)) for row in penalised.completion_ids.tolist()]
    assert sum(repeats_penalised) < sum(repeats)


@pytest.mark.trajectory
def test_seeded_samples_do_not_depend_on_the_rest_of_the_batch(tiny_model_dir):
    model, processor = load_policy(str(tiny_model_dir))
    engine = make_engine(model, processor, RolloutConfig(max_new_tokens=12, temperature=1.0))
    a, b = mixed_prompts()[:2]
    forward = engine.generate([a, b], n=2, seeds=[5, 6])
    backward = engine.generate([b, a], n=2, seeds=[6, 5])
    assert forward.texts == backward.texts[2:] + backward.texts[:2]
    other_seed = engine.generate([a, b], n=2, seeds=[7, 6])
    assert other_seed.texts[2:] == forward.texts[2:] and other_seed.texts[:2] != forward.texts[:2]


def test_left_truncation_keeps_each_prompts_last_tokens_and_refuses_to_cut_images(tiny_model_dir):
    from ocean_lib.training.batch import truncate_prompts_left
    from ocean_lib.training.forward import completion_logprobs

    model, processor = load_policy(str(tiny_model_dir))
    engine = make_engine(model, processor, RolloutConfig(max_new_tokens=6))
    text_only = [Prompt("How many cubes? " * 12, []), Prompt("How many?", [])]
    batch = engine.generate(text_only, n=2, seeds=[0, 1])
    long, short = (int(batch.prompt_mask[i].sum()) for i in (0, 2))
    keep = (long + short) // 2  # between the two: only the first prompt is cut
    cut, rows = truncate_prompts_left(batch, keep)
    assert rows == 2 and cut.prompt_ids.shape[1] == keep
    # TRL's prompt_ids[:, -keep:] row by row: the long prompt's last tokens, the short one untouched
    assert cut.prompt_ids[0].tolist() == batch.prompt_ids[0][batch.prompt_mask[0].bool()][-keep:].tolist()
    assert (
        cut.prompt_ids[2][cut.prompt_mask[2].bool()].tolist()
        == batch.prompt_ids[2][batch.prompt_mask[2].bool()].tolist()
    )
    assert truncate_prompts_left(batch, long) == (batch, 0)
    # The learner's log-probs of the long prompt's completions now differ (a shorter context); the short one's do not.
    before = completion_logprobs(model, model, batch, torch.arange(4), 1.0)[0]
    after = completion_logprobs(model, model, cut, torch.arange(4), 1.0)[0]
    assert not torch.allclose(before[:2], after[:2]) and torch.allclose(before[2:], after[2:], atol=1e-5)
    # A cut through image tokens is refused, naming the row.
    pictured = engine.generate([mixed_prompts()[0]], n=1, seeds=[0])
    with pytest.raises(
        ValueError, match="row 0: keeping the last 5 prompt tokens .* would cut its image tokens"
    ):
        truncate_prompts_left(pictured, 5)


def test_reward_text_with_special_tokens_ends_where_the_mask_ends(tiny_model_dir):
    from ocean_lib.base.prompts import reference_completion
    from ocean_lib.training.batch import teacher_forced_batch, texts_with_special_tokens

    model, processor = load_policy(str(tiny_model_dir))
    # Finished completions (the reference answers, each closed by <|im_end|>): verl's decode keeps the stop token.
    answers = [
        reference_completion("I count 3.", "3"),
        reference_completion("Left.", "(A)"),
        "<think>x</think>",
    ]
    finished = teacher_forced_batch(processor, mixed_prompts(), answers)
    assert texts_with_special_tokens(processor.tokenizer, finished) == [a + "<|im_end|>" for a in answers]
    # Completions cut at the length limit have no stop token to keep.
    cut = make_engine(model, processor, RolloutConfig(max_new_tokens=8)).generate(
        mixed_prompts(), n=2, seeds=[0, 1, 2]
    )
    assert not any(cut.finished)
    assert not any(
        text.endswith("<|im_end|>") for text in texts_with_special_tokens(processor.tokenizer, cut)
    )
