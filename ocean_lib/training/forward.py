"""The training forward: per-token log-probs of sampled completions, micro-batch by micro-batch.

Used by the trainer's GRPO and SFT updates, the KL reference, the walkthrough and the benchmarks, so that all of
them compute the log-probs the sampler's agree with (same images, token types and 3-D positions).

Memory: the forward returns the final hidden states, and the output layer turns them into log-probs chunk by
chunk (:func:`ocean_lib.training.grpo.token_logprobs` with ``head``): no full-vocabulary logits of a whole micro-batch
exist (about 18 GiB with their gradient at 7B for 8 sequences of 4k completion tokens).

Under DeepSpeed ZeRO-3 every forward gathers weights from all processes, so every process must run as many
forwards as the others: :func:`forward_passes` adds filler passes to the processes with fewer micro-batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from ocean_lib.base.schema import TrainConfig
from ocean_lib.training import distributed, grpo
from ocean_lib.training.batch import RolloutBatch, mrope_positions, select_images
from ocean_lib.training.compat import activation_checkpointing, bare_model, kv_cache
from ocean_lib.training.lora import peft_model

# Per micro-batch: (row ids of the batch, their positions within the rows being trained on).
MicroBatches = list[tuple[torch.Tensor, torch.Tensor]]
# Per forward pass: a micro-batch, and whether it counts (False: a filler, see forward_passes).
Passes = list[tuple[torch.Tensor, torch.Tensor, bool]]


def completion_logprobs(
    model: Any,
    policy: Any,
    batch: RolloutBatch,
    rows: torch.Tensor,
    temperature: float,
    entropy: Literal["none", "metric", "loss"] = "none",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-token log-probs (and entropies) of the completions of ``rows``, trimmed to the rows' longest one.

    ``entropy``: "none" skips it; "metric" computes it without gradient (for logging); "loss" keeps its graph.

    Returns ``(logprobs [r, w], entropy [r, w] or None, mask [r, w])`` with ``w`` the longest completion among
    ``rows``. The forward sees exactly what the sampler saw: the same images, token types and 3-D positions
    (``model`` may be DDP-wrapped; ``policy`` is the bare model used to compute positions).
    """
    prompt_mask = batch.prompt_mask[rows]
    first = int((prompt_mask.sum(0) > 0).nonzero()[0])  # drop columns that are padding in every row
    width = int(batch.completion_mask[rows].sum(-1).max())
    completion = batch.completion_ids[rows, :width]
    completion_mask = batch.completion_mask[rows, :width]
    ids = torch.cat([batch.prompt_ids[rows, first:], completion], 1)
    mask = torch.cat([prompt_mask[:, first:], completion_mask], 1)
    types = torch.cat([batch.prompt_token_types[rows, first:], torch.zeros_like(completion)], 1)
    pixel_values, grid = select_images(
        batch.pixel_values, batch.image_grid_thw, batch.images_per_prompt, batch.prompt_index[rows]
    )
    device = next(policy.parameters()).device
    ids, mask, types = ids.to(device), mask.to(device), types.to(device)
    grid = None if grid is None else grid.to(device)
    positions = mrope_positions(policy, ids, mask, types, grid)
    if _can_run_prompts_once(model, batch.prompt_index[rows], width):
        hidden = _hidden_running_prompts_once(model, batch, rows, ids, mask, positions, width)
    else:
        with _final_hidden_states(policy) as captured:
            model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                image_grid_thw=grid,
                pixel_values=None if pixel_values is None else pixel_values.to(device),
                logits_to_keep=1,  # the log-probs come from the hidden states, chunk by chunk
            )
        hidden = captured[0][:, -(width + 1) : -1]
    logprobs, entropies = _logprobs_through_head(policy, hidden, completion.to(device), temperature, entropy)
    return logprobs, entropies, completion_mask.to(device).to(logprobs.dtype)


@contextlib.contextmanager
def _final_hidden_states(policy: Any) -> Iterator[list[torch.Tensor]]:
    """The language model's final (normed) hidden states of each forward inside this block, in call order."""
    captured: list[torch.Tensor] = []
    handle = policy.model.register_forward_hook(
        lambda _m, _a, output: captured.append(output.last_hidden_state)
    )
    try:
        yield captured
    finally:
        handle.remove()


def _logprobs_through_head(
    policy: Any,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float,
    entropy: Literal["none", "metric", "loss"],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token log-probs (and entropies) from the final hidden states [r, w, H], the output layer applied chunk by
    chunk, once for both (:func:`ocean_lib.training.grpo.token_logprobs_and_entropy`).

    The computation runs as the output layer's forward: under ZeRO-3 DeepSpeed gathers a layer's weight only
    while that layer runs, in forward and, through the hooks it puts on the layer's outputs, in backward, where
    the chunks' logits are recomputed."""
    head = policy.get_output_embeddings()
    temperature = temperature if temperature > 0 else 1.0

    def forward(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return grpo.token_logprobs_and_entropy(
            h, tokens, temperature=temperature, head=head.weight, entropy=entropy
        )

    head.forward = forward  # an instance attribute: the module's hooks still run around it
    try:
        return head(hidden)
    finally:
        del head.forward


def _can_run_prompts_once(model: Any, prompt_index: torch.Tensor, width: int) -> bool:
    """Whether ``_hidden_running_prompts_once`` applies: some rows share a prompt, the completions are longer
    than one token, the model keeps a KV cache in a training forward (gradient checkpointing drops it), its
    attention reads a left-padded cache (sdpa, eager), and it is a plain module or DDP-wrapped (a DeepSpeed
    engine must see exactly one forward per backward)."""
    bare = bare_model(model)
    return (
        width > 1
        and len(prompt_index.unique()) < len(prompt_index)
        and isinstance(bare, PreTrainedModel)
        and not activation_checkpointing(bare)
        and bare.config._attn_implementation in ("sdpa", "eager")
    )


def _hidden_running_prompts_once(
    model: Any,
    batch: RolloutBatch,
    rows: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """The final hidden states [r, w, H] predicting the completion tokens of ``completion_logprobs``, each
    distinct prompt run through the model once.

    A GRPO group is n completions of one prompt, so the plain forward encodes every image and prompt token n
    times. Here the distinct prompts fill a KV cache (keeping its autograd graph), each row reads its prompt's
    keys and values, and only the completions run per row: the same maths (equal to float rounding, tested),
    with the prompt's and the vision tower's work done once per group. ``ids``, ``mask`` and ``positions`` are
    the plain forward's inputs (prompt columns, then ``width`` completion columns).
    """
    from transformers import DynamicCache

    bare = bare_model(model)
    device = ids.device
    # Row i answers prompts[row_prompt[i]]; first_row[k] is a row of prompt k.
    prompts, row_prompt = batch.prompt_index[rows].unique(return_inverse=True)
    first_row = torch.tensor([row_prompt.tolist().index(k) for k in range(len(prompts))], device=device)
    row_prompt = row_prompt.to(device)
    pixel_values, grid = select_images(
        batch.pixel_values, batch.image_grid_thw, batch.images_per_prompt, prompts
    )
    prompt_len = ids.shape[1] - width
    cache = DynamicCache(config=bare.config)
    with _final_hidden_states(bare) as captured:
        # The bare module runs the prompts, so that a DDP wrapper sees one forward (the completions') per backward.
        bare(
            input_ids=ids[first_row, :prompt_len],
            attention_mask=mask[first_row, :prompt_len],
            position_ids=positions[:, first_row, :prompt_len],
            pixel_values=None if pixel_values is None else pixel_values.to(device),
            image_grid_thw=None if grid is None else grid.to(device),
            **kv_cache(bare, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_select_indices(row_prompt)
        model(
            input_ids=ids[:, prompt_len:-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :, prompt_len:-1],
            **kv_cache(bare, cache),
            use_cache=True,
            logits_to_keep=1,
        )
    prompt_hidden, completion_hidden = captured
    # A prompt's last position predicts the first token of each of its completions.
    return torch.cat([prompt_hidden[row_prompt, -1:], completion_hidden], 1)


def reference_logprobs(
    model: Any,
    policy: Any,
    reference: Any | None,
    batch: RolloutBatch,
    passes: Passes,
    temperature: float,
) -> torch.Tensor:
    """Log-probs under the frozen initial policy: ``reference``, its own copy (under DeepSpeed a ZeRO-3 engine,
    :func:`ocean_lib.training.distributed.deepspeed_reference`; else on the training device, or on the CPU with
    ``model.reference_on_cpu``), or, when it is None (LoRA), the policy itself with its adapters off."""
    if reference is not None:
        bare = getattr(reference, "module", reference)  # the model inside a DeepSpeed engine
        return logprobs_no_grad(reference, bare, batch, passes, temperature)
    with peft_model(model).disable_adapter():
        return logprobs_no_grad(model, policy, batch, passes, temperature)


def logprobs_no_grad(
    model: Any, policy: Any, batch: RolloutBatch, passes: Passes, temperature: float
) -> torch.Tensor:
    """Log-probs of the passes' rows under ``model`` without gradients, as one [rows, Lc] tensor (0-padded),
    row ``i`` holding position ``i`` of the micro-batches (filler passes run and are discarded)."""
    out = torch.zeros(sum(len(chunk) for chunk, _, real in passes if real), batch.completion_ids.shape[1])
    with torch.no_grad():
        for chunk, positions, real in passes:
            logp, _, _ = completion_logprobs(model, policy, batch, chunk, temperature)
            if real:
                out[positions, : logp.shape[1]] = logp.float().cpu()
    return out


def pack_micro_batches(lengths: list[int], size: int, max_tokens: int = 0) -> list[list[int]]:
    """Cut positions ``0..len(lengths)-1`` into micro-batches.

    ``max_tokens == 0``: consecutive runs of ``size`` (a group's samples stay together, so its prompt runs once).
    ``max_tokens > 0``, length-bucketed: positions sorted longest first and packed greedily while
    ``sequences × longest length ≤ max_tokens`` (the padded cost of the forward); a longer sequence goes alone.
    Long responses then share micro-batches with long ones and short with short, instead of padding every short
    response to the longest in a mixed batch. The budget alone decides: ``size`` does not cap a bucket, so
    short sequences fill a forward however many they are (``train.micro_batch_size`` keeps its meaning in verl's
    per-micro-batch token mean, which does not depend on how rows are computed). Any partition gives the same
    gradient: the loss normalisers are global or per row (see ``trainer.update``).
    """
    if max_tokens <= 0:
        return [list(range(start, min(start + size, len(lengths)))) for start in range(0, len(lengths), size)]
    chunks: list[list[int]] = []
    for position in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        chunk = chunks[-1] if chunks else None
        # Sorted longest first: the chunk's first sequence is its longest.
        if chunk and (len(chunk) + 1) * lengths[chunk[0]] <= max_tokens:
            chunk.append(position)
        else:
            chunks.append([position])
    return chunks


def micro_batches(
    rows: torch.Tensor, batch: RolloutBatch, train: TrainConfig, no_grad: bool = False
) -> MicroBatches:
    """(row ids, their positions within ``rows``) per micro-batch (:func:`pack_micro_batches`); none if no rows.
    ``no_grad``: for a forward without gradient, under ``train.forward_micro_batch_tokens`` when it is set."""
    budget = train.forward_micro_batch_tokens if no_grad and train.forward_micro_batch_tokens else 0
    chunks = pack_micro_batches(
        batch.lengths[rows].tolist(), train.micro_batch_size, budget or train.micro_batch_tokens
    )
    return [(rows[chunk], torch.tensor(chunk)) for chunk in chunks]


def forward_passes(accelerator: Any, micro_batches: MicroBatches, batch: RolloutBatch) -> Passes:
    """The micro-batches, then as many filler passes as make every process run the same number of forwards.

    Under ZeRO-3 every forward and backward gathers weights from all processes, so a process that runs fewer
    micro-batches (length buckets, dynamic sampling) leaves the others waiting forever. The count is agreed
    over processes; a filler repeats this process's cheapest micro-batch (row 0 of the batch if it has none),
    its log-probs are discarded and its loss is multiplied by 0, so it changes no gradient."""
    (count,) = distributed.all_reduce(accelerator, [float(len(micro_batches))], "max")
    if micro_batches:
        filler = min(micro_batches, key=lambda mb: len(mb[0]) * int(batch.lengths[mb[0]].max()))
    else:
        filler = (torch.tensor([0]), torch.tensor([0]))
    real = [(rows, positions, True) for rows, positions in micro_batches]
    return real + [(*filler, False)] * (int(count) - len(micro_batches))
