"""The training forward: per-token log-probs of sampled completions, micro-batch by micro-batch.

Used by the trainer's GRPO and SFT updates, the KL reference, the walkthrough and the benchmarks, so that all of
them compute the log-probs the sampler's agree with (same images, token types and 3-D positions).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from ocean_lib import grpo
from ocean_lib.batch import RolloutBatch, mrope_positions, select_images
from ocean_lib.config import TrainConfig
from ocean_lib.lora import peft_model, unwrap_peft
from ocean_lib.models import activation_checkpointing, kv_cache

# Per micro-batch: (row ids of the batch, their positions within the rows being trained on).
MicroBatches = list[tuple[torch.Tensor, torch.Tensor]]


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
        logits = _logits_running_prompts_once(model, batch, rows, ids, mask, positions, width)
    else:
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            image_grid_thw=grid,
            pixel_values=None if pixel_values is None else pixel_values.to(device),
            logits_to_keep=width + 1,
        ).logits[:, :-1]
    temperature = temperature if temperature > 0 else 1.0
    logprobs = grpo.token_logprobs(logits, completion.to(device), temperature=temperature)
    entropies = None
    if entropy == "loss":
        entropies = grpo.token_entropy(logits, temperature=temperature)
    elif entropy == "metric":
        with torch.no_grad():
            entropies = grpo.token_entropy(logits.detach(), temperature=temperature)
    return logprobs, entropies, completion_mask.to(device).to(logprobs.dtype)


def _can_run_prompts_once(model: Any, prompt_index: torch.Tensor, width: int) -> bool:
    """Whether ``_logits_running_prompts_once`` applies: some rows share a prompt, the completions are longer
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


def _logits_running_prompts_once(
    model: Any,
    batch: RolloutBatch,
    rows: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """The completion logits [r, w, V] of ``completion_logprobs``, each distinct prompt run through the model once.

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
    # The bare module runs the prompts, so that a DDP wrapper sees one forward (the completions') per backward.
    prompt_logits = bare(
        input_ids=ids[first_row, :prompt_len],
        attention_mask=mask[first_row, :prompt_len],
        position_ids=positions[:, first_row, :prompt_len],
        pixel_values=None if pixel_values is None else pixel_values.to(device),
        image_grid_thw=None if grid is None else grid.to(device),
        **kv_cache(bare, cache),
        use_cache=True,
        logits_to_keep=1,
    ).logits
    cache.batch_select_indices(row_prompt)
    completion_logits = model(
        input_ids=ids[:, prompt_len:-1],
        attention_mask=mask[:, :-1],
        position_ids=positions[:, :, prompt_len:-1],
        **kv_cache(bare, cache),
        use_cache=True,
    ).logits
    # A prompt's last position predicts the first token of each of its completions.
    return torch.cat([prompt_logits[row_prompt], completion_logits], 1)


def reference_logprobs(
    model: Any,
    policy: Any,
    reference: Any | None,
    batch: RolloutBatch,
    micro_batches: MicroBatches,
    temperature: float,
) -> torch.Tensor:
    """Log-probs under the frozen initial policy: ``reference``, its own copy (on the training device, or on the
    CPU with ``model.reference_on_cpu``), or, when it is None (LoRA), the policy itself with its adapters off."""
    if reference is not None:
        return logprobs_no_grad(reference, reference, batch, micro_batches, temperature)
    with peft_model(model).disable_adapter():
        return logprobs_no_grad(model, policy, batch, micro_batches, temperature)


def logprobs_no_grad(
    model: Any, policy: Any, batch: RolloutBatch, micro_batches: MicroBatches, temperature: float
) -> torch.Tensor:
    """Log-probs of the micro-batches' rows under ``model`` without gradients, as one [rows, Lc] tensor (0-padded),
    row ``i`` holding position ``i`` of the micro-batches."""
    out = torch.zeros(sum(len(chunk) for chunk, _ in micro_batches), batch.completion_ids.shape[1])
    with torch.no_grad():
        for chunk, positions in micro_batches:
            logp, _, _ = completion_logprobs(model, policy, batch, chunk, temperature)
            out[positions, : logp.shape[1]] = logp.float().cpu()
    return out


def pack_micro_batches(lengths: list[int], size: int, max_tokens: int = 0) -> list[list[int]]:
    """Cut positions ``0..len(lengths)-1`` into micro-batches of at most ``size`` sequences.

    ``max_tokens == 0``: consecutive runs (a group's samples stay together, so its prompt runs once).
    ``max_tokens > 0``, length-bucketed: positions sorted longest first and packed greedily while
    ``sequences × longest length ≤ max_tokens`` (the padded cost of the forward); a longer sequence goes alone.
    Long responses then share micro-batches with long ones and short with short, instead of padding every short
    response to the longest in a mixed batch. Any partition gives the same gradient: the loss normalisers are
    global (see ``grpo_step``).
    """
    if max_tokens <= 0:
        return [list(range(start, min(start + size, len(lengths)))) for start in range(0, len(lengths), size)]
    chunks: list[list[int]] = []
    for position in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        chunk = chunks[-1] if chunks else None
        # Sorted longest first: the chunk's first sequence is its longest.
        if chunk and len(chunk) < size and (len(chunk) + 1) * lengths[chunk[0]] <= max_tokens:
            chunk.append(position)
        else:
            chunks.append([position])
    return chunks


def micro_batches(rows: torch.Tensor, batch: RolloutBatch, train: TrainConfig) -> MicroBatches:
    """(row ids, their positions within ``rows``) per micro-batch (:func:`pack_micro_batches`)."""
    chunks = pack_micro_batches(
        batch.lengths[rows].tolist(), train.micro_batch_size, train.micro_batch_tokens
    )
    return [(rows[chunk], torch.tensor(chunk)) for chunk in chunks]


def bare_model(model: Any) -> Any:
    """The transformers model inside DDP and PEFT wrappers (LoRA layers, injected in place, stay active).

    A DeepSpeed engine is returned as it is: it must see exactly one forward per backward."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return unwrap_peft(model)
