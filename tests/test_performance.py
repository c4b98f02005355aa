"""Speed-ups of the GRPO step compute the same numbers as the plain code they replace.

The benchmark (``bench/grpo_step.py``) times them; these tests check them, on the real tiny model: a
left-padded batch with two image sizes and a text-only prompt, groups of three samples.
"""

from dataclasses import replace

import pytest
import torch
from conftest import mixed_prompts

from ocean_lib.base.schema import RolloutConfig
from ocean_lib.training.forward import completion_logprobs
from ocean_lib.training.models import load_policy
from ocean_lib.training.rollout import make_engine

GROUP = 3


@pytest.fixture(scope="module")
def sampled(tiny_model_dir):
    model, processor = load_policy(str(tiny_model_dir))
    prompts = mixed_prompts()
    engine = make_engine(model, processor, RolloutConfig(max_new_tokens=12, min_new_tokens=12))
    batch = engine.generate(prompts, n=GROUP, seeds=[1, 2, 3])
    # A random model seldom samples EOS: end some completions early by hand, so right padding is exercised.
    lengths = torch.tensor([12, 3, 7, 12, 5, 12, 1, 12, 9])
    kept = torch.arange(12) < lengths[:, None]
    completion_ids = batch.completion_ids.masked_fill(~kept, processor.tokenizer.pad_token_id)
    return model, replace(batch, completion_ids=completion_ids, completion_mask=kept.long())


def _one_row_at_a_time(model, batch, rows):
    """The plain forward: a single row shares its prompt with nobody, so each prompt runs once per sample."""
    width = int(batch.completion_mask[rows].sum(-1).max())
    logprobs = torch.zeros(len(rows), width)
    for i, row in enumerate(rows.tolist()):
        logp, _, _ = completion_logprobs(model, model, batch, torch.tensor([row]), temperature=1.0)
        logprobs[i, : logp.shape[1]] = logp
    return logprobs


@pytest.mark.parametrize(
    "rows",
    [
        torch.arange(3 * GROUP),
        torch.tensor([1, 2, 3, 4, 8]),
    ],  # whole groups; a micro-batch that splits groups
    ids=["whole-groups", "split-groups"],
)
@pytest.mark.trajectory
def test_prompt_once_forward_equals_the_plain_forward_in_value_and_gradient(sampled, rows):
    model, batch = sampled
    mask = batch.completion_mask[rows, : int(batch.completion_mask[rows].sum(-1).max())].float()

    model.zero_grad()
    plain = _one_row_at_a_time(model, batch, rows)
    (plain * mask).sum().backward()
    plain_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    model.zero_grad()
    shared, _, shared_mask = completion_logprobs(model, model, batch, rows, temperature=1.0)
    (shared * shared_mask).sum().backward()

    assert torch.equal(shared_mask, mask)
    assert ((shared - plain) * mask).abs().max() < 1e-5
    assert ((shared - batch.logprobs[rows, : mask.shape[1]]) * mask).abs().max() < 1e-5  # the sampler's too
    for name, p in model.named_parameters():
        scale = plain_grads[name].abs().max().clamp(min=1e-8)
        assert (p.grad - plain_grads[name]).abs().max() / scale < 1e-4, name
    # Every parameter learns through the shared path, the vision tower included (its images ran once).
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.visual.parameters())


@pytest.mark.parametrize("entropy", ["metric", "loss"])
def test_training_forward_projects_each_chunk_through_the_output_layer_once(sampled, entropy):
    """Log-probs and entropy of a micro-batch come from one matmul with the output layer per chunk of positions
    (the head is the costliest layer per position at a real vocabulary); counted as torch dispatches it."""
    from test_grpo import CountLinear

    model, batch = sampled
    rows = torch.arange(3 * GROUP)
    with CountLinear(model.get_output_embeddings().weight) as counted:
        logp, ent, _ = completion_logprobs(model, model, batch, rows, temperature=1.0, entropy=entropy)
    assert counted.calls == len(rows)  # 12 positions a row: one chunk each
    assert ent.shape == logp.shape and (ent.grad_fn is None) == (entropy == "metric")
