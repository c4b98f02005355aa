"""The training forward: per-token log-probs of sampled completions, micro-batch by micro-batch.

Used by the trainer's GRPO and SFT updates, the KL reference, the walkthrough and the benchmarks, so that all of
them compute the log-probs the sampler's agree with (same images, token types and 3-D positions).

Memory: the forward returns the final hidden states, and the output layer turns them into log-probs chunk by
chunk (:func:`ocean_lib.training.grpo.token_logprobs` with ``head``): no full-vocabulary logits of a whole micro-batch
exist (about 18 GiB with their gradient at 7B for 8 sequences of 4k completion tokens).

Under DeepSpeed ZeRO-3 every forward gathers weights from all processes, so every process must run as many
forwards as the others: :func:`forward_passes` adds filler passes to the processes with fewer micro-batches.
Before the update, :func:`balance_work` moves whole groups between processes so that each has about the same
work (:func:`balance_groups`), and fewer fillers are needed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer

from ocean_lib.base.schema import TrainConfig
from ocean_lib.training import distributed, grpo
from ocean_lib.training.batch import (
    RolloutBatch,
    group_rows,
    join_groups,
    mrope_positions,
    select_groups,
    select_images,
)
from ocean_lib.training.compat import kv_cache
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
    prompt_once: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-token log-probs (and entropies) of the completions of ``rows``, trimmed to the rows' longest one.

    ``entropy``: "none" skips it; "metric" computes it without gradient (for logging); "loss" keeps its graph.
    ``prompt_once``: run each distinct prompt once and the completions on its keys and values
    (:func:`_hidden_running_prompts_once`) where the model supports it (:func:`runs_prompts_once`); else the
    plain forward of prompt and completion per row.

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
    if prompt_once and runs_prompts_once(policy):
        hidden = _hidden_running_prompts_once(model, policy, batch, rows, ids, mask, positions, width)
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


def runs_prompts_once(policy: Any) -> bool:
    """Whether :func:`_hidden_running_prompts_once` applies to ``policy`` (the bare transformers model): its
    attention reads a left-padded cache, which sdpa and eager do. Flash-attention 2 (its varlen path over a
    cache longer than the queries) is untested here and keeps the plain forward."""
    return policy.config._attn_implementation in ("sdpa", "eager")


class _SharedPromptCache(DynamicCache):
    """The prompts' keys and values, written once by the prompts' pass and read by every completion row.

    Built with ``row_prompt=None`` it records: ``update`` keeps each layer's keys and values and returns them
    unchanged. :meth:`for_rows` then gives the completions' cache: its ``update`` returns, for row ``i``, the
    keys and values of prompt ``row_prompt[i]`` followed by the new ones, and stores nothing. Neither ever
    appends, so a layer that gradient checkpointing replays in backward sees exactly the cache its forward saw
    (transformers drops a cache under checkpointing because a replayed ``DynamicCache.update`` appends a second
    time); the replay recomputes saved values only, and gradients flow through the graph of the first forward.
    The row-by-row copy of a prompt's keys happens inside the layer, so checkpointing frees it with the
    layer's other activations: what stays alive is one copy per distinct prompt.

    Why a cache and not the decoder layers run by hand with the keys and values passed along: the model's own
    forward then keeps building the masks, the rotary positions and the image splicing, which differ between
    transformers versions; only ``update``'s signature has to stay put (it has, 5.16.1 to 5.24)."""

    def __init__(self, config: Any, row_prompt: torch.Tensor | None = None):
        super().__init__(config=config)
        self.model_config = config
        self.row_prompt = row_prompt
        # Recording until for_rows; None after, so that replays in backward keep nothing.
        self.recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {}

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.row_prompt is None:
            if self.recorded is not None:
                self.recorded[layer_idx] = (keys, values)
            return keys, values
        prompt = self.layers[layer_idx]
        return (
            torch.cat([prompt.keys[self.row_prompt], keys], -2),
            torch.cat([prompt.values[self.row_prompt], values], -2),
        )

    def for_rows(self, row_prompt: torch.Tensor) -> _SharedPromptCache:
        """The completions' cache: row ``i`` reads the recorded prompt ``row_prompt[i]``."""
        shared = _SharedPromptCache(self.model_config, row_prompt)
        for layer_idx in sorted(self.recorded):
            # DynamicCache's own update fills its layers (a copy), so that the masks see the prompts' length.
            DynamicCache.update(shared, *self.recorded[layer_idx], layer_idx)
        self.recorded = None
        return shared


@contextlib.contextmanager
def _checkpointed_layers_keep_cache(policy: Any) -> Iterator[None]:
    """Inside this block, layers under gradient checkpointing keep their cache argument (transformers'
    ``_can_checkpoint_with_cache``, which exists from 5.16 to 5.24) and checkpoint with torch's non-reentrant
    ``checkpoint``: the reentrant one would run the layer without autograd, cutting the gradient that flows
    from the completions into the prompts' keys and values. One layer's activations at a time, as before."""
    layers = [
        m for m in policy.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
    ]
    saved = [layer._gradient_checkpointing_func for layer in layers]
    for layer in layers:
        layer._can_checkpoint_with_cache = True  # an instance attribute over the class's False
        layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
    try:
        yield
    finally:
        for layer, func in zip(layers, saved, strict=True):
            del layer._can_checkpoint_with_cache
            layer._gradient_checkpointing_func = func


def _hidden_running_prompts_once(
    model: Any,
    policy: Any,
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
    times. Here the distinct prompts run first (the bare ``policy``) and record their keys and values with
    their autograd graph; then the completions run (through ``model``, the wrapper the backward belongs to)
    on their prompt's keys and values (:class:`_SharedPromptCache`): the same maths (equal to float rounding,
    tested with and without gradient checkpointing), with the prompt's and the vision tower's work done once
    per group. ``ids``, ``mask`` and ``positions`` are the plain forward's inputs (prompt columns, then
    ``width`` completion columns).

    Always two forwards, whatever the rows (a micro-batch whose rows share no prompt, a one-token completion):
    under ZeRO-3 every forward gathers weights from all processes, so every process must run as many. The
    completions' pass runs up to the last token but one (the last predicts nothing), and for one-token
    completions that one token (a forward of no tokens is not a forward).
    """
    device = ids.device
    # Row i answers prompts[row_prompt[i]]; first_row[k] is a row of prompt k.
    prompts, row_prompt = batch.prompt_index[rows].unique(return_inverse=True)
    first_row = torch.tensor([row_prompt.tolist().index(k) for k in range(len(prompts))], device=device)
    row_prompt = row_prompt.to(device)
    pixel_values, grid = select_images(
        batch.pixel_values, batch.image_grid_thw, batch.images_per_prompt, prompts
    )
    prompt_len = ids.shape[1] - width
    recorder = _SharedPromptCache(policy.config)
    with _final_hidden_states(policy) as captured, _checkpointed_layers_keep_cache(policy):
        # The bare module runs the prompts, so that a DDP wrapper sees one forward (the completions') per backward.
        policy(
            input_ids=ids[first_row, :prompt_len],
            attention_mask=mask[first_row, :prompt_len],
            position_ids=positions[:, first_row, :prompt_len],
            pixel_values=None if pixel_values is None else pixel_values.to(device),
            image_grid_thw=None if grid is None else grid.to(device),
            **kv_cache(policy, recorder),
            logits_to_keep=1,
        )
        end = max(ids.shape[1] - 1, prompt_len + 1)
        model(
            input_ids=ids[:, prompt_len:end],
            attention_mask=mask[:, :end],
            position_ids=positions[:, :, prompt_len:end],
            **kv_cache(policy, recorder.for_rows(row_prompt)),
            logits_to_keep=1,
        )
    prompt_hidden, completion_hidden = captured
    # A prompt's last position predicts the first token of each of its completions.
    return torch.cat([prompt_hidden[row_prompt, -1:], completion_hidden[:, : width - 1]], 1)


def reference_logprobs(
    model: Any,
    policy: Any,
    reference: Any | None,
    batch: RolloutBatch,
    passes: Passes,
    temperature: float,
    prompt_once: bool = True,
) -> torch.Tensor:
    """Log-probs under the frozen initial policy: ``reference``, its own copy (under DeepSpeed a ZeRO-3 engine,
    :func:`ocean_lib.training.distributed.deepspeed_reference`; else on the training device, or on the CPU with
    ``model.reference_on_cpu``), or, when it is None (LoRA), the policy itself with its adapters off."""
    if reference is not None:
        bare = getattr(reference, "module", reference)  # the model inside a DeepSpeed engine
        return logprobs_no_grad(reference, bare, batch, passes, temperature, prompt_once)
    with peft_model(model).disable_adapter():
        return logprobs_no_grad(model, policy, batch, passes, temperature, prompt_once)


def logprobs_no_grad(
    model: Any, policy: Any, batch: RolloutBatch, passes: Passes, temperature: float, prompt_once: bool = True
) -> torch.Tensor:
    """Log-probs of the passes' rows under ``model`` without gradients, as one [rows, Lc] tensor (0-padded),
    row ``i`` holding position ``i`` of the micro-batches (filler passes run and are discarded)."""
    out = torch.zeros(sum(len(chunk) for chunk, _, real in passes if real), batch.completion_ids.shape[1])
    with torch.no_grad():
        for chunk, positions, real in passes:
            logp, _, _ = completion_logprobs(
                model, policy, batch, chunk, temperature, prompt_once=prompt_once
            )
            if real:
                out[positions, : logp.shape[1]] = logp.float().cpu()
    return out


def pack_micro_batches(
    prompt_lengths: list[int],
    completion_lengths: list[int],
    size: int,
    max_tokens: int = 0,
    groups: list[int] | None = None,
) -> list[list[int]]:
    """Cut positions ``0..len(prompt_lengths)-1`` into micro-batches.

    ``max_tokens == 0``: consecutive runs of ``size`` (a group's samples stay together, so its prompt runs once).
    ``max_tokens > 0``: micro-batches of at most ``max_tokens`` tokens by :func:`micro_batch_cost` (a lone row
    that costs more goes alone). ``groups`` (the prompt each position answers, when the forward runs each distinct
    prompt once) costs each micro-batch's distinct prompts once and cuts each group into the pieces that cost
    least (:func:`_split_group`): a group stays whole unless it does not fit, or padding its short completions to
    its longest costs more than running its prompt again. Without ``groups`` every row is its own piece, costed
    with its prompt. The pieces, widest rows first (longest completion; prompt plus completion without groups), go
    first fit into micro-batches: long completions with long ones and short with short, instead of padding every
    short one to the longest (without groups this is the length bucketing the trainer used before prompt-once).
    The budget alone decides: ``size`` does not cap a micro-batch (``train.micro_batch_size`` keeps its meaning in
    verl's per-micro-batch token mean, which does not depend on how rows are computed). Any partition gives the
    same gradient: the loss normalisers are global or per row (see ``trainer.update``).
    """
    count = len(prompt_lengths)
    if max_tokens <= 0:
        return [list(range(start, min(start + size, count))) for start in range(0, count, size)]

    def cost(positions: list[int]) -> int:
        return micro_batch_cost(prompt_lengths, completion_lengths, positions, groups)

    def width(i: int) -> int:  # the columns row i is padded over apart from a shared prompt
        return completion_lengths[i] + (0 if groups else prompt_lengths[i])

    members: dict[int, list[int]] = {}
    for position in range(count):
        members.setdefault(position if groups is None else groups[position], []).append(position)
    pieces = [
        piece
        for rows in members.values()
        for piece in _split_group(sorted(rows, key=lambda i: (-width(i), i)), cost, max_tokens)
    ]
    chunks: list[list[int]] = []
    for piece in sorted(pieces, key=lambda p: (-width(p[0]), p[0])):  # a piece's first row is its widest
        fits = next((chunk for chunk in chunks if cost(chunk + piece) <= max_tokens), None)
        if fits is None:
            chunks.append(piece)
        else:
            fits.extend(piece)
    return chunks


def _split_group(rows: list[int], cost: Callable[[list[int]], int], max_tokens: int) -> list[list[int]]:
    """The runs of ``rows`` (one group's, widest first) with the least total cost, each within ``max_tokens`` or a
    lone row. Runs of the sorted rows suffice: a piece's cost depends on its widest row and its row count, so a
    narrow row never gains from a piece that skips a wider one. Equal costs keep the fewest pieces. At the 3B
    shape (~700 prompt tokens, completions long-tailed around 330) this cuts off a group's long completions and
    computes a third fewer tokens than keeping every group that fits whole (docs/performance.md)."""
    best: list[tuple[int, int]] = [(0, 0)]  # per prefix length: (least cost, start of its last piece)
    for end in range(1, len(rows) + 1):
        options = [
            (best[start][0] + cost(rows[start:end]), start)
            for start in range(end)
            if end - start == 1 or cost(rows[start:end]) <= max_tokens
        ]
        best.append(min(options))  # ties: the earliest start, the longest last piece
    pieces, end = [], len(rows)
    while end:
        start = best[end][1]
        pieces.insert(0, rows[start:end])
        end = start
    return pieces


def micro_batch_cost(
    prompt_lengths: list[int],
    completion_lengths: list[int],
    positions: list[int],
    groups: list[int] | None = None,
) -> int:
    """Tokens the forward of ``positions`` runs, padding included (as :func:`completion_logprobs` pads: prompts
    to the longest prompt, completions to the longest completion). With ``groups`` (prompt-once) each distinct
    prompt runs once, then every row's completion: ``prompts × longest prompt + rows × longest completion``
    (the completions' attention also reads the prompts' keys, not counted here); without, every row runs its
    prompt and completion: ``rows × longest prompt + completion``."""
    if groups is None:
        return len(positions) * max(prompt_lengths[i] + completion_lengths[i] for i in positions)
    prompts = len({groups[i] for i in positions})
    return prompts * max(prompt_lengths[i] for i in positions) + len(positions) * max(
        completion_lengths[i] for i in positions
    )


def group_costs(batch: RolloutBatch, rows: torch.Tensor, train: TrainConfig, prompt_once: bool) -> list[int]:
    """The update's work on each group (prompt) of ``batch``, counting only its rows among ``rows`` (the rows
    trained on; a group with none costs 0). Under a token budget (``train.micro_batch_tokens``) the tokens its
    forward runs as :func:`pack_micro_batches` cuts it (:func:`micro_batch_cost` of each piece): under
    prompt-once the pieces of :func:`_split_group` (its prompt once per piece, its completions padded to the
    piece's longest), else every row alone (its prompt and completion). With micro-batches of
    ``train.micro_batch_size`` rows the pass count follows the rows, so the cost is the row count."""
    prompt_lengths = batch.prompt_mask.sum(-1).tolist()
    completion_lengths = batch.completion_mask.sum(-1).tolist()
    prompt_of_row = batch.prompt_index.tolist()
    members: list[list[int]] = [[] for _ in batch.images_per_prompt]
    for row in rows.tolist():
        members[prompt_of_row[row]].append(row)

    def cost(positions: list[int]) -> int:
        return micro_batch_cost(prompt_lengths, completion_lengths, positions, prompt_of_row)

    def group_cost(group: list[int]) -> int:
        if not group or not train.micro_batch_tokens:
            return len(group)
        if not prompt_once:
            return sum(micro_batch_cost(prompt_lengths, completion_lengths, [row]) for row in group)
        widest_first = sorted(group, key=lambda i: (-completion_lengths[i], i))
        return sum(cost(piece) for piece in _split_group(widest_first, cost, train.micro_batch_tokens))

    return [group_cost(group) for group in members]


def balance_groups(costs: list[list[int]]) -> list[list[int]]:
    """Where each group goes so that every process has about the same work: ``costs[r][g]`` is the cost of
    group ``g`` sampled on process ``r``; the answer's ``[r][g]`` is the process that trains on it.

    The rule: with ``L_p`` the summed cost of the groups now on process ``p``, take the heaviest process ``h``
    and the lightest ``l`` (the lowest rank among equals) and the gap ``L_h - L_l``; among the groups on ``h``
    whose cost ``c`` has ``0 < c < gap``, move to ``l`` the one that minimises ``max(L_h - c, L_l + c)`` (``c``
    nearest ``gap / 2``; equals: the lowest (sampling rank, index)); repeat until no group qualifies. Each move
    lowers ``sum(L_p^2)`` by ``2c(gap - c) > 0``, so it ends; at the end every group left on the heaviest
    process costs 0 or at least the gap: the heaviest exceeds the lightest by at most its smallest group. Groups
    move whole (prompt-once runs a group's prompt once), a group of cost 0 (trained on nowhere) never moves,
    and already even costs move nothing. A pure function of ``costs``: every process computes the same plan."""
    where = [[rank] * len(row) for rank, row in enumerate(costs)]
    load = [sum(row) for row in costs]
    while True:
        heaviest = max(range(len(load)), key=lambda p: (load[p], -p))
        lightest = min(range(len(load)), key=lambda p: (load[p], p))
        gap = load[heaviest] - load[lightest]
        candidates = [
            (abs(gap - 2 * cost), rank, g)
            for rank, row in enumerate(costs)
            for g, cost in enumerate(row)
            if where[rank][g] == heaviest and 0 < cost < gap
        ]
        if not candidates:
            return where
        _, rank, g = min(candidates)
        where[rank][g] = lightest
        load[heaviest] -= costs[rank][g]
        load[lightest] += costs[rank][g]


def balance_work(
    batch: RolloutBatch,
    per_row: dict[str, torch.Tensor],
    kept_rows: torch.Tensor,
    train: TrainConfig,
    prompt_once: bool,
    pad_id: int,
) -> tuple[RolloutBatch, dict[str, torch.Tensor], dict[str, float]]:
    """This process's batch once whole groups have moved between processes so that each trains on about the
    same work: :func:`balance_groups` over every process's :func:`group_costs` of its ``kept_rows``. It keeps
    its groups that stay, then appends those it receives (by sending rank), each re-padded with ``pad_id``
    (:func:`ocean_lib.training.batch.join_groups`). A moved group travels with all its rows hold: the batch's
    fields (its prompt's images included) and ``per_row``'s tensors (``[rows, ...]``), which come back in the
    new row order. Only the moved groups travel, each point to point to its one destination.

    Also returns the step's ``work_imbalance_before`` and ``work_imbalance`` (the busiest process's cost over
    the mean, as sampled and after the moves) and ``moved_groups``: the same on every process. A collective:
    every process calls it."""
    me, world = torch.distributed.get_rank(), range(torch.distributed.get_world_size())
    costs = distributed.gather_lists(group_costs(batch, kept_rows, train, prompt_once))
    where = balance_groups(costs)

    def part(prompts: list[int]) -> tuple[RolloutBatch, dict[str, torch.Tensor]]:
        rows = group_rows(batch.n, prompts)
        return select_groups(batch, prompts), {key: value[rows] for key, value in per_row.items()}

    def going(source: int, destination: int) -> list[int]:
        return [g for g, there in enumerate(where[source]) if there == destination]

    transfers = [(src, dst) for src in world for dst in world if src != dst and going(src, dst)]
    received = distributed.exchange_objects(
        transfers, {dst: part(going(me, dst)) for src, dst in transfers if src == me}
    )
    parts = [part(going(me, me)), *(received[src] for src in sorted(received))]
    joined = join_groups([p[0] for p in parts], pad_id)
    rows = {key: torch.cat([p[1][key] for p in parts]) for key in per_row}

    def imbalance(placed: list[list[int]]) -> float:  # the busiest process's cost over the mean
        loads = [0] * len(costs)
        for source, row in enumerate(costs):
            for g, cost in enumerate(row):
                loads[placed[source][g]] += cost
        return max(loads) * len(loads) / max(sum(loads), 1)

    stats = {
        "work_imbalance_before": imbalance([[source] * len(row) for source, row in enumerate(costs)]),
        "work_imbalance": imbalance(where),
        "moved_groups": float(sum(there != source for source, row in enumerate(where) for there in row)),
    }
    return joined, rows, stats


def micro_batches(
    rows: torch.Tensor,
    batch: RolloutBatch,
    train: TrainConfig,
    no_grad: bool = False,
    prompt_once: bool = False,
) -> MicroBatches:
    """(row ids, their positions within ``rows``) per micro-batch (:func:`pack_micro_batches`); none if no rows.
    ``no_grad``: for a forward without gradient, under ``train.forward_micro_batch_tokens`` when it is set.
    ``prompt_once``: the forward runs each distinct prompt once (the groups stay together, costed so)."""
    budget = train.forward_micro_batch_tokens if no_grad and train.forward_micro_batch_tokens else 0
    chunks = pack_micro_batches(
        batch.prompt_mask[rows].sum(-1).tolist(),
        batch.completion_mask[rows].sum(-1).tolist(),
        train.micro_batch_size,
        budget or train.micro_batch_tokens,
        groups=batch.prompt_index[rows].tolist() if prompt_once else None,
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
