"""GRPO maths: group advantages, token log-probs, KL estimators, loss aggregation and the clipped policy loss.

Pure tensor functions with no model and no optimizer: the trainer calls them and the walkthrough notebook shows
them. Shapes: B sequences (groups x group_size, each group's samples contiguous), T response positions, V
vocabulary; ``mask`` is 1 on response tokens that count and 0 on padding.

Gradient accumulation. A loss that averages over a batch does not split into micro-batches by itself: the mean
of micro-batch means is not the batch mean when micro-batches hold different numbers of tokens. So every
normaliser a loss divides by can be passed in (``num_tokens``, ``num_sequences``, ``max_len``). Count them once
over the whole batch and pass the same values to every micro-batch: the micro-batch losses then SUM to the batch
loss, and their gradients to the batch gradient. Left as None they are counted from the tensors given, which is
right for a batch processed in one piece. Under DDP, which averages gradients over W processes, pass the
all-process counts divided by W.

Metrics come back as ``Stats`` (name -> ``Stat(total, count, reduce)``), never as bare means: merge the Stats of
every micro-batch and every process with ``merge_stats``, then read ``stat_values``. A mean of means would weigh
a short micro-batch like a long one. Stats hold plain floats, so ``gather_object`` moves them between processes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "k3", "k3_unclamped"]
EqualGroups = Literal["zero", "computed"]
Entropy = Literal["none", "metric", "loss"]

# verl's bounds: exp() of a log-ratio beyond +-20 overflows the useful range of fp32 long before it means anything,
# and one token the reference finds absurd must not dominate the KL term.
LOG_RATIO_CLAMP = 20.0
KL_CLAMP = 10.0


# ----------------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------------


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """rewards [B] -> [B / group_size, group_size], with a clear error when the shapes do not fit."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (GRPO compares samples of one prompt), got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.reshape(-1, group_size)


def zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Which groups have all rewards equal (so no learning signal): rewards [B] -> bool [B / group_size].

    Exact equality, not ``std < tol``: these are the groups dynamic sampling drops and the metric counts.
    """
    groups = _groups(rewards, group_size)
    return (groups == groups[:, :1]).all(dim=1)


def group_advantages(
    rewards: Tensor, group_size: int, eps: float, scale: bool = True, equal_groups: EqualGroups = "zero"
) -> Tensor:
    """GRPO advantage of each sample relative to the other samples of its prompt.

        A_i = (r_i - mean_g) / (std_g + eps)     scale=True  (GRPO; std unbiased, as verl and TRL)
        A_i =  r_i - mean_g                      scale=False (Dr. GRPO: no std division)

    rewards: [B] with B = groups x group_size, the samples of one prompt contiguous. Returns [B] (float).

    A group whose rewards are all equal carries no signal, but its mean is not computed exactly in floating
    point. ``equal_groups="zero"`` (ours) forces its advantages to exactly 0. ``"computed"`` computes every group
    as verl's ``compute_grpo_outcome_advantage`` does (Ocean-R1): one group at a time, ``torch.mean`` and
    ``torch.std`` of a 1-D fp32 tensor, so a group all at 1.05 is off by one ulp in the mean and, with eps 1e-6,
    every sample gets about -0.106 (reductions over a 2-D tensor round differently: hence one group at a time).
    """
    groups = _groups(rewards, group_size)
    groups = groups if groups.is_floating_point() else groups.float()
    if equal_groups == "computed":
        rows = []
        for group in groups.unbind(0):
            centred = group - group.mean()
            rows.append(centred / (group.std() + eps) if scale else centred)
        return torch.stack(rows).reshape(-1)
    if equal_groups != "zero":
        raise ValueError(f"equal_groups must be one of {get_args(EqualGroups)}, got {equal_groups!r}")
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + eps)
    flat = zero_variance_groups(rewards, group_size)[:, None]
    return torch.where(flat, 0.0, advantages).reshape(-1)


# ----------------------------------------------------------------------------------------------------------------
# Per-token quantities from logits
# ----------------------------------------------------------------------------------------------------------------


def _per_position(
    fn: Callable[..., Tensor],
    inputs: Tensor,
    *others: Tensor,
    temperature: float,
    chunk_size: int,
    head: Tensor | None = None,
) -> Tensor:
    """Apply ``fn(z [n, V] fp32, *others [n]) -> ([n], ...)`` to chunks of at most ``chunk_size`` positions;
    returns its outputs, each [B, T].

    ``inputs`` are logits [B, T, V], or with ``head`` [V, H] hidden states [B, T, H] whose logits
    ``z = h @ head^T`` are computed chunk by chunk. Each chunk is projected, upcast and divided by the temperature
    inside a checkpoint, so forward holds one chunk's logits at a time and backward recomputes them instead of
    keeping all of them. Rows are walked one by one so a non-contiguous view such as ``logits[:, :-1]`` is never
    copied whole.
    """

    def fp32_fn(chunk: Tensor, *chunk_others: Tensor) -> Tensor:
        logits = chunk if head is None else torch.nn.functional.linear(chunk, head)
        return fn(logits.float() / temperature, *chunk_others)

    rows = []
    for row, *row_others in zip(inputs.unbind(0), *(o.unbind(0) for o in others), strict=True):
        chunks = zip(row.split(chunk_size), *(o.split(chunk_size) for o in row_others), strict=True)
        outputs = zip(*(checkpoint(fp32_fn, *chunk, use_reentrant=False) for chunk in chunks), strict=True)
        rows.append([torch.cat(pieces) for pieces in outputs])
    return tuple(torch.stack(output) for output in zip(*rows, strict=True))


def _check_shapes(inputs: Tensor, head: Tensor | None, tokens: Tensor | None = None) -> None:
    width = inputs.shape[-1] if inputs.dim() == 3 else None
    if inputs.dim() != 3 or (tokens is not None and tokens.shape != inputs.shape[:2]):
        raise ValueError(
            f"need logits [B, T, V] (or hidden [B, T, H] with a head) and tokens [B, T], got {tuple(inputs.shape)}"
            f" and {None if tokens is None else tuple(tokens.shape)}"
        )
    if head is not None and (head.dim() != 2 or head.shape[1] != width):
        raise ValueError(f"head must be [V, H] with H = {width}, got {tuple(head.shape)}")


def token_logprobs(
    logits: Tensor,
    tokens: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    head: Tensor | None = None,
) -> Tensor:
    """Log-probability of each sampled token: ``token_logprobs_and_entropy`` without the entropy."""
    return token_logprobs_and_entropy(
        logits, tokens, temperature=temperature, chunk_size=chunk_size, head=head, entropy="none"
    )[0]


def token_logprobs_and_entropy(
    logits: Tensor,
    tokens: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    head: Tensor | None = None,
    entropy: Entropy = "loss",
) -> tuple[Tensor, Tensor | None]:
    """Log-probability of each sampled token, log p(y_t) = z_t[y_t] - logsumexp_v z_t[v], and the entropy of each
    position's next-token distribution, H_t = logsumexp(z_t) - sum_v softmax(z_t)_v z_t[v]; z = logits / temperature.

    logits: [B, T, V] (any float dtype; computed in fp32), tokens: long [B, T]. Returns fp32 ([B, T], [B, T]).
    ``entropy``: "none" returns None for it; "metric" computes it without gradient; "loss" with its gradient.
    Exact (the same maths as ``log_softmax(z).gather(y)``) without a full-vocabulary fp32 copy of the logits:
    at most ``chunk_size`` positions are upcast at once, in forward and in backward. With ``head`` (the output
    layer's weight, [V, H]) ``logits`` are the final hidden states [B, T, H] and no full-vocabulary logits of the
    whole batch exist at any time: z_t = h_t @ head^T is formed chunk by chunk, once for both quantities (at a
    real vocabulary the projection is the costly part: 152k x H multiply-adds per position).
    """
    _check_shapes(logits, head, tokens)
    if entropy not in get_args(Entropy):
        raise ValueError(f"entropy must be one of {get_args(Entropy)}, got {entropy!r}")

    def logprob_and_entropy(z: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        normaliser = z.logsumexp(-1)
        logprob = z.gather(-1, y[:, None]).squeeze(-1) - normaliser
        if entropy == "none":
            return (logprob,)
        with torch.set_grad_enabled(torch.is_grad_enabled() and entropy == "loss"):
            return logprob, normaliser - (z.softmax(-1) * z).sum(-1)

    if logits.shape[0] == 0:
        empty = logits.new_zeros(logits.shape[:2], dtype=torch.float32)
        return empty, None if entropy == "none" else empty.clone()
    outputs = _per_position(
        logprob_and_entropy, logits, tokens, temperature=temperature, chunk_size=chunk_size, head=head
    )
    return outputs[0], None if entropy == "none" else outputs[1]


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) at the sampled tokens (Schulman, "Approximating KL divergence").

        k1 = log p - log p_ref                                   unbiased, can be negative
        k3 = exp(d) - d - 1,  d = log p_ref - log p              "low_var_kl": unbiased, >= 0, lower variance

    ``k3`` clamps as verl's low_var_kl (Ocean-R1's verl recipe): d to [-20, 20], the result to [-10, 10].
    ``k3_unclamped`` is the same formula without bounds, as TRL 0.14 (Ocean-R1's first recipe). Inputs any equal
    shape; same out.
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        d = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return (d.exp() - d - 1).clamp(-KL_CLAMP, KL_CLAMP)
    if estimator == "k3_unclamped":
        d = ref_logprobs - logprobs
        return d.exp() - d - 1
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {get_args(KLEstimator)}")


# ----------------------------------------------------------------------------------------------------------------
# Aggregation and the policy loss
# ----------------------------------------------------------------------------------------------------------------


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: LossAgg,
    *,
    num_tokens: float | Tensor | None = None,
    num_sequences: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Turn per-token values [B, T] into one scalar, over the tokens where ``mask`` [B, T] is set.

        token-mean               sum_{i,t} m x / N_tok                     DAPO, TRL's "dapo"
                                 sum_i (sum_t m x) / N_tok,i               verl (Ocean-R1), N_tok per sequence
        seq-mean-token-mean      sum_i (sum_t m x / sum_t m) / N_seq       original GRPO, TRL 0.14, Ocean-R1 v1
        seq-mean-token-sum-norm  sum_{i,t} m x / (N_seq L_max)             Dr. GRPO (TRL's "dr_grpo")

    N_tok = ``num_tokens``: a number (default: sum of the mask), or a [B] tensor giving each sequence its own
    denominator (verl's token-mean is a masked mean per micro-batch, averaged over micro-batches: see
    :func:`verl_token_mean_denominators`). N_seq = ``num_sequences`` (default: B, sequences with no token
    included), L_max = ``max_len``, the constant generation budget (required for Dr. GRPO). verl's
    seq-mean-token-sum-norm divides each micro-batch's token sum by the response width (L_max when responses are
    padded to it) and averages over micro-batches: N_seq / (sequences per micro-batch) times this value. Pass
    whole-batch values when ``values`` is a micro-batch (see the module docstring); a normaliser the mode does
    not use is ignored, so callers may always pass all three. Masked positions never leak, even if they hold nan.
    """
    if values.shape != mask.shape or values.dim() != 2:
        raise ValueError(
            f"need values and mask of one shape [B, T], got {tuple(values.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    masked = torch.where(mask, values, 0.0)
    n_seq = values.shape[0] if num_sequences is None else num_sequences
    if mode == "token-mean":
        if isinstance(num_tokens, Tensor):
            if num_tokens.shape != values.shape[:1]:
                raise ValueError(
                    f"per-sequence num_tokens must be [B] = {values.shape[0]}, got {num_tokens.shape}"
                )
            return (masked.sum(-1) / num_tokens.to(masked)).sum()
        return masked.sum() / (mask.sum().clamp(min=1) if num_tokens is None else num_tokens)
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / n_seq
    if mode == "seq-mean-token-sum-norm":
        if max_len is None:
            raise ValueError(
                "loss_agg 'seq-mean-token-sum-norm' (Dr. GRPO) needs max_len, the max new tokens"
            )
        return masked.sum() / (n_seq * max_len)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {get_args(LossAgg)}")


def balanced_partitions(lengths: list[int], k: int) -> list[list[int]]:
    """verl's ``balance_batch``: positions ``0..len(lengths)-1`` cut into ``k`` parts of equal size whose summed
    lengths are close, each part's positions ascending; part ``r`` is what rank ``r`` trains on.

    The largest differencing method (Karmarkar-Karp) as verl implements it, tie-breaking included, so the
    parts are verl's: sort (length, position) ascending; every run of ``k`` consecutive items becomes a state of
    ``k`` one-item parts; repeatedly pop the two states of largest spread (max minus min part sum; ties: the one
    whose largest part is larger) from a heap and merge them, joining the largest part of one with the smallest
    of the other; the parts of the last state, largest first.
    """
    if k < 1 or len(lengths) % k:
        raise ValueError(f"{len(lengths)} sequences do not split into {k} parts of equal size")
    runs = sorted((length, position) for position, length in enumerate(lengths))
    heap = [
        _Split([[(position, length)] for length, position in runs[i : i + k]]) for i in range(0, len(runs), k)
    ]
    heapq.heapify(heap)
    while len(heap) > 1:
        first, second = heapq.heappop(heap), heapq.heappop(heap)
        heapq.heappush(heap, first.merged(second))
    return [sorted(position for position, _ in part) for part in heap[0].parts]


class _Split:
    """A state of :func:`balanced_partitions`: parts (lists of (position, length)), largest first."""

    def __init__(self, parts: list[list[tuple[int, int]]]):
        self.parts = sorted(parts, key=_part_order, reverse=True)
        self.spread = _part_order(self.parts[0])[0] - _part_order(self.parts[-1])[0]

    def merged(self, other: _Split) -> _Split:
        return _Split([a + b for a, b in zip(self.parts, reversed(other.parts), strict=True)])

    def __lt__(self, other: _Split) -> bool:  # the heap pops the largest spread first
        if self.spread != other.spread:
            return self.spread > other.spread
        return _part_order(self.parts[0]) > _part_order(other.parts[0])


def _part_order(part: list[tuple[int, int]]) -> tuple[int, int, list[tuple[int, int]]]:
    """How verl orders parts: by summed length, then item count, then the (position, length) items."""
    return sum(length for _, length in part), len(part), part


def verl_token_mean_denominators(
    completion_lengths: list[int], total_lengths: list[int], ranks: int, micro_batch_size: int
) -> list[float]:
    """Each sequence's token-mean denominator N_tok,i in verl's loss (for :func:`aggregate`), whole step.

    verl (Ocean-R1's run) balances the step's sequences over ``ranks`` by prompt + completion tokens
    (:func:`balanced_partitions` of ``total_lengths``), cuts each rank's part into micro-batches of
    ``micro_batch_size`` consecutive sequences, takes a masked token mean per micro-batch, divides it by the
    micro-batches per rank (gradient accumulation) and averages over ranks. A sequence in micro-batch b therefore
    weighs 1 / (M T_b) per token, with M the micro-batches of the whole step and T_b the completion tokens of b:

        N_tok,i = M * T_b(i),   M = len(completion_lengths) / micro_batch_size

    ``completion_lengths``/``total_lengths``: every sequence of the step, in step order (rank by rank, the
    samples of a prompt together, as verl's batch before balancing).
    """
    n = len(completion_lengths)
    if len(total_lengths) != n:
        raise ValueError(f"{n} completion lengths but {len(total_lengths)} total lengths")
    if micro_batch_size < 1 or n % (ranks * micro_batch_size):
        raise ValueError(
            f"{n} sequences do not split into {ranks} ranks x micro-batches of {micro_batch_size} (as verl requires)"
        )
    micro_batches = n // micro_batch_size
    denominators = [0.0] * n
    for part in balanced_partitions(total_lengths, ranks):
        for start in range(0, len(part), micro_batch_size):
            members = part[start : start + micro_batch_size]
            tokens = sum(completion_lengths[i] for i in members)
            for i in members:
                denominators[i] = float(micro_batches * tokens)
    return denominators


@dataclass(frozen=True)
class Stat:
    """One metric in a form that reduces exactly over micro-batches and processes.

    reduce="mean": ``total`` is a sum and the value is total / count. reduce="min"/"max": ``total`` is the
    extreme itself. ``count`` is how many tokens the metric was taken over (value is nan when it is 0).
    """

    total: float
    count: float
    reduce: Literal["mean", "min", "max"] = "mean"

    def __add__(self, other: Stat) -> Stat:
        if other.reduce != self.reduce:
            raise ValueError(f"cannot merge a {self.reduce} stat with a {other.reduce} stat")
        combine = {"mean": float.__add__, "min": min, "max": max}[self.reduce]
        return Stat(combine(float(self.total), float(other.total)), self.count + other.count, self.reduce)

    @property
    def value(self) -> float:
        if self.count == 0:
            return math.nan
        return self.total / self.count if self.reduce == "mean" else self.total


Stats = dict[str, Stat]


def merge_stats(*parts: Stats) -> Stats:
    """Combine the Stats of several micro-batches or processes (keys missing from some parts are fine)."""
    merged: Stats = {}
    for part in parts:
        for name, stat in part.items():
            merged[name] = merged[name] + stat if name in merged else stat
    return merged


def stat_values(stats: Stats) -> dict[str, float]:
    """The number each Stat stands for: {name: mean, min or max}."""
    return {name: stat.value for name, stat in stats.items()}


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 0.0,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    loss_agg: LossAgg = "token-mean",
    num_tokens: float | None = None,
    num_sequences: float | None = None,
    max_len: int | None = None,
) -> tuple[Tensor, Stats]:
    """GRPO's clipped surrogate with the KL penalty in the loss (not in the reward) and an entropy bonus.

        r_t   = exp(log p_t - log p_old,t)                          log-ratio clamped to [-20, 20] as verl
        pg_t  = max(-A r_t, -A clip(r_t, 1 - clip_low, 1 + clip_high))       clip-higher when clip_high > clip_low
        pg_t  = min(pg_t, -A c)   where A < 0, if dual_clip = c > 1          dual clip (Ye et al. 2020)
        l_t   = pg_t + kl_coef KL_t - entropy_coef H_t                        KL_t = kl_penalty(log p, log p_ref)
        loss  = aggregate(l, mask, loss_agg, normalisers)

    logprobs, old_logprobs, mask, ref_logprobs, entropy: [B, T]; advantages: [B] (one per sequence). Gradients
    flow through ``logprobs`` and ``entropy`` only (old/ref log-probs and advantages are constants). With one
    update per rollout batch pass ``old_logprobs = logprobs.detach()`` (the ratio is then 1). The normalisers are
    those of ``aggregate``.

    Stats (all over the masked tokens): pg_loss (mean pg_t), ratio_mean/min/max, clipfrac_low (A < 0 and
    r < 1 - clip_low), clipfrac_high (A > 0 and r > 1 + clip_high), clipfrac_dual (A < 0 and r > c), clipfrac
    (any of the three: the tokens whose pg_t has no gradient), and kl / entropy when those inputs are given.
    """
    shape = logprobs.shape
    named = {"old_logprobs": old_logprobs, "mask": mask, "ref_logprobs": ref_logprobs, "entropy": entropy}
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, logprobs {tuple(shape)}")
    if advantages.shape != shape[:1]:
        raise ValueError(f"advantages must be [B] = {tuple(shape[:1])}, got {tuple(advantages.shape)}")
    if dual_clip and dual_clip <= 1:
        raise ValueError(f"dual_clip must be 0 (off) or > 1, got {dual_clip}")
    if kl_coef and ref_logprobs is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logprobs")
    if entropy_coef and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs the per-token entropy")

    adv = advantages.detach()[:, None].to(logprobs.dtype)
    ratio = (logprobs - old_logprobs.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_low, 1 + clip_high))
    if dual_clip:
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip), pg)
    per_token = pg
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs.detach(), kl_estimator)
        per_token = per_token + kl_coef * kl
    if entropy is not None:
        per_token = per_token - entropy_coef * entropy
    loss = aggregate(
        per_token, mask, loss_agg, num_tokens=num_tokens, num_sequences=num_sequences, max_len=max_len
    )

    with torch.no_grad():
        m = mask.bool()
        low = (adv < 0) & (ratio < 1 - clip_low)
        high = (adv > 0) & (ratio > 1 + clip_high)
        dual = (adv < 0) & (ratio > dual_clip) if dual_clip else torch.zeros_like(m)
        sums = {
            "pg_loss": pg,
            "ratio_mean": ratio,
            "clipfrac_low": low,
            "clipfrac_high": high,
            "clipfrac": low | high | dual,
            "clipfrac_dual": dual,
        }
        if ref_logprobs is not None:
            sums["kl"] = kl
        if entropy is not None:
            sums["entropy"] = entropy
        totals = [torch.where(m, x, 0).sum().float() for x in sums.values()]
        totals += [
            torch.where(m, ratio, math.inf).min().float(),
            torch.where(m, ratio, -math.inf).max().float(),
        ]
        totals.append(m.sum().float())
        *means, ratio_min, ratio_max, count = torch.stack(totals).tolist()  # one device sync
    stats = {name: Stat(total, count) for name, total in zip(sums, means, strict=True)}
    stats["ratio_min"] = Stat(ratio_min, count, "min")
    stats["ratio_max"] = Stat(ratio_max, count, "max")
    return loss, stats
