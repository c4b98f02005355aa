"""Speed-ups of the GRPO step compute the same numbers as the plain code they replace.

The benchmark (``bench/grpo_step.py``) times them; these tests check them, on the real tiny model: a
left-padded batch with two image sizes and a text-only prompt, groups of three samples.
"""

import contextlib
from dataclasses import replace

import pytest
import torch
from conftest import mixed_prompts

from ocean_lib.base.schema import RolloutConfig, TrainConfig
from ocean_lib.training import grpo
from ocean_lib.training.batch import group_rows, join_groups, select_groups
from ocean_lib.training.forward import completion_logprobs, micro_batches
from ocean_lib.training.models import load_policy
from ocean_lib.training.rollout import make_engine

GROUP = 3


def _sample(tiny_model_dir, lengths: list[int]):
    """The tiny model and a batch of its completions of ``mixed_prompts``, row ``i`` ``lengths[i]`` tokens long."""
    model, processor = load_policy(str(tiny_model_dir))
    longest = max(lengths)
    engine = make_engine(model, processor, RolloutConfig(max_new_tokens=longest, min_new_tokens=longest))
    batch = engine.generate(mixed_prompts(), n=GROUP, seeds=[1, 2, 3])
    # A random model seldom samples EOS: end some completions early by hand, so right padding is exercised.
    kept = torch.arange(longest) < torch.tensor(lengths)[:, None]
    completion_ids = batch.completion_ids.masked_fill(~kept, processor.tokenizer.pad_token_id)
    return model, replace(batch, completion_ids=completion_ids, completion_mask=kept.long())


@pytest.fixture(scope="module")
def sampled(tiny_model_dir):
    return _sample(tiny_model_dir, [12, 3, 7, 12, 5, 12, 1, 12, 9])


def _one_row_at_a_time(model, batch, rows):
    """The plain forward: prompt and completion of each row together, so each prompt runs once per sample."""
    width = int(batch.completion_mask[rows].sum(-1).max())
    logprobs = torch.zeros(len(rows), width)
    for i, row in enumerate(rows.tolist()):
        logp, _, _ = completion_logprobs(
            model, model, batch, torch.tensor([row]), temperature=1.0, prompt_once=False
        )
        logprobs[i, : logp.shape[1]] = logp
    return logprobs


@contextlib.contextmanager
def _text_forwards(model):
    """The batch size of each language-model forward inside this block, and how many times attention ran
    during backward (a checkpointed layer's replay)."""
    seen = {"batches": [], "replayed": 0}

    def forward(_module, args, kwargs):
        seen["batches"].append(kwargs["inputs_embeds"].shape[0])

    def attention(_module, _args, _output):
        # -1 outside backward (a private torch call; torch.utils.checkpoint relies on it the same way)
        seen["replayed"] += torch._C._current_graph_task_id() != -1

    attentions = [layer.self_attn for layer in model.model.language_model.layers]
    handles = [model.model.language_model.register_forward_pre_hook(forward, with_kwargs=True)]
    handles += [module.register_forward_hook(attention) for module in attentions]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _checkpointing(model, on):
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    try:
        yield
    finally:
        if on:
            model.gradient_checkpointing_disable()
            model.eval()


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize(
    "rows",
    [
        torch.arange(3 * GROUP),
        torch.tensor([1, 2, 3, 4, 8]),
        torch.tensor([6]),
    ],  # whole groups; a micro-batch that splits groups; a lone row of one token (text-only prompt)
    ids=["whole-groups", "split-groups", "one-token"],
)
@pytest.mark.trajectory
def test_prompt_once_forward_equals_the_plain_forward_in_value_and_gradient(sampled, rows, checkpointing):
    model, batch = sampled
    mask = batch.completion_mask[rows, : int(batch.completion_mask[rows].sum(-1).max())].float()
    layers = len(model.model.language_model.layers)
    prompts = len(batch.prompt_index[rows].unique())

    with _checkpointing(model, checkpointing):
        model.zero_grad()
        plain = _one_row_at_a_time(model, batch, rows)
        (plain * mask).sum().backward()
        plain_grads = {name: p.grad for name, p in model.named_parameters()}  # zero_grad sets p.grad to None

        model.zero_grad()
        with _text_forwards(model) as seen:
            shared, _, shared_mask = completion_logprobs(model, model, batch, rows, temperature=1.0)
            (shared * shared_mask).sum().backward()

    # The prompts ran once each, then the completions; under checkpointing both passes' layers were replayed.
    assert seen == {"batches": [prompts, len(rows)], "replayed": 2 * layers * checkpointing}
    assert torch.equal(shared_mask, mask)
    assert ((shared - plain) * mask).abs().max() < 1e-5
    assert ((shared - batch.logprobs[rows, : mask.shape[1]]) * mask).abs().max() < 1e-5  # the sampler's too
    for name, p in model.named_parameters():
        if plain_grads[name] is None:  # a text-only micro-batch: the vision tower takes no part
            assert p.grad is None, name
            continue
        scale = plain_grads[name].abs().max().clamp(min=1e-8)
        assert (p.grad - plain_grads[name]).abs().max() / scale < 1e-4, name
    # Every parameter learns through the shared path, the vision tower included (its images ran once).
    if any(batch.images_per_prompt[k] for k in batch.prompt_index[rows].tolist()):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.visual.parameters())


def test_groups_moved_to_another_batch_keep_their_log_probs(sampled, tiny_model_dir):
    """What ``train.balance_work`` sends (``batch.select_groups``: a group's rows trimmed to their own widths, its
    prompt's images) and how the receiver joins it to its own groups (``batch.join_groups``, re-padded): in a
    new order and among other groups' padding, each row's log-probs are the ones its own batch gave."""
    model, batch = sampled
    pad = load_policy(str(tiny_model_dir))[1].tokenizer.pad_token_id
    order = [2, 0, 1]  # the text-only group first, then the two image sizes
    parts = [select_groups(batch, [g]) for g in order]
    assert parts[0].prompt_ids.shape[1] < batch.prompt_ids.shape[1] and parts[0].pixel_values is None
    moved = join_groups(parts, pad)
    rows = group_rows(GROUP, order)
    assert moved.texts == [batch.texts[i] for i in rows] and moved.images_per_prompt == [0, 1, 1]
    assert torch.equal(moved.lengths, batch.lengths[rows])
    with torch.no_grad():
        before, _, mask = completion_logprobs(model, model, batch, rows, temperature=1.0)
        after, _, moved_mask = completion_logprobs(
            model, model, moved, torch.arange(len(rows)), temperature=1.0
        )
    assert torch.equal(mask, moved_mask)
    assert ((after - before) * mask).abs().max() < 1e-5
    assert ((after - moved.logprobs[:, : mask.shape[1]]) * mask).abs().max() < 1e-5  # the sampler's, carried


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


def _loss_and_gradients(model, batch, chunks, advantages):
    """GRPO's clipped loss of the whole batch, micro-batch by micro-batch under the global token count (as
    ``trainer.update``), and every parameter's gradient."""
    model.zero_grad()
    num_tokens, total = float(batch.completion_mask.sum()), 0.0
    for chunk in chunks:
        logp, _, mask = completion_logprobs(model, model, batch, chunk, temperature=1.0)
        loss, _ = grpo.policy_loss(
            logp, logp.detach(), advantages[chunk], mask, num_tokens=num_tokens, num_sequences=len(advantages)
        )
        loss.backward()
        total += float(loss.detach())
    return total, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.trajectory
def test_prompt_once_packing_takes_the_step_of_consecutive_micro_batches(tiny_model_dir):
    """The token budget's packing (groups bin-packed, one split, prompts counted once) gives the loss and
    gradient of consecutive micro-batches of one group each, on the real tiny model. Prompts of 59, 76 and 42
    tokens; completions long enough that a group can be split while two others share a micro-batch."""
    model, batch = _sample(tiny_model_dir, [40, 30, 3, 5, 3, 2, 1, 40, 9])
    rows = torch.arange(len(batch.texts))
    groups = batch.prompt_index.tolist()

    def packed(budget):
        train = TrainConfig(micro_batch_size=GROUP, micro_batch_tokens=budget)
        return [chunk for chunk, _ in micro_batches(rows, batch, train, prompt_once=True)]

    def split_and_shared(chunks):  # some group over two micro-batches, and some micro-batch with two groups
        spread = [
            {k for k, chunk in enumerate(chunks) if g in batch.prompt_index[chunk]} for g in set(groups)
        ]
        return any(len(s) > 1 for s in spread) and any(
            len(batch.prompt_index[c].unique()) > 1 for c in chunks
        )

    longest = int(batch.lengths.max())
    chunks = next(packed(b) for b in range(longest, 4 * GROUP * longest) if split_and_shared(packed(b)))
    consecutive = [chunk for chunk, _ in micro_batches(rows, batch, TrainConfig(micro_batch_size=GROUP))]
    assert [c.tolist() for c in consecutive] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    advantages = torch.linspace(-1.0, 1.0, len(rows))
    loss, grads = _loss_and_gradients(model, batch, chunks, advantages)
    expected, expected_grads = _loss_and_gradients(model, batch, consecutive, advantages)
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        scale = expected_grads[name].abs().max().clamp(min=1e-8)
        assert (grad - expected_grads[name]).abs().max() / scale < 1e-4, name
