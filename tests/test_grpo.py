"""GRPO maths: hand-computed cases, invariances, exactness of the chunked log-probs, and micro-batch accumulation."""

import math
import typing

import pytest
import torch

from ocean_lib.base.schema import AlgorithmConfig
from ocean_lib.training.grpo import (
    KLEstimator,
    LossAgg,
    Stat,
    aggregate,
    balanced_partitions,
    group_advantages,
    kl_penalty,
    merge_stats,
    policy_loss,
    stat_values,
    token_logprobs,
    token_logprobs_and_entropy,
    verl_token_mean_denominators,
    zero_variance_groups,
)

MODES = typing.get_args(LossAgg)
LN2 = math.log(2)


def test_config_offers_exactly_the_modes_and_estimators_grpo_implements():
    hints = typing.get_type_hints(AlgorithmConfig)
    assert typing.get_args(hints["loss_agg"]) == MODES
    assert typing.get_args(hints["kl_estimator"]) == typing.get_args(KLEstimator)


# ----------------------------------------------------------------------------------------------------------------
# Advantages: 2 prompts x 3 samples
# ----------------------------------------------------------------------------------------------------------------

# Group 1: r = [1, 0, 0]. mean = 1/3, deviations [2/3, -1/3, -1/3],
#   unbiased var = (4/9 + 1/9 + 1/9) / 2 = 1/3, std = 1/sqrt(3) = 0.57735,
#   A = deviation * sqrt(3) = [1.15470, -0.57735, -0.57735]   (a biased std, sqrt(2/9) = 0.4714, gives 1.4142)
# Group 2: r = [2, 4, 6]. mean = 4, deviations [-2, 0, 2], unbiased var = 8 / 2 = 4, std = 2, A = [-1, 0, 1].
REWARDS = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0, 6.0])


def test_group_advantages_by_hand():
    s3 = math.sqrt(3)
    expected = torch.tensor([2 / 3 * s3, -1 / 3 * s3, -1 / 3 * s3, -1.0, 0.0, 1.0])
    torch.testing.assert_close(group_advantages(REWARDS, 3, eps=0.0), expected)


def test_eps_is_added_to_the_std_not_the_variance():
    # Group 2 with eps = 1: [-2, 0, 2] / (2 + 1) = [-2/3, 0, 2/3]  (sqrt(var + eps) would give /sqrt(5))
    got = group_advantages(REWARDS, 3, eps=1.0)[3:]
    torch.testing.assert_close(got, torch.tensor([-2 / 3, 0.0, 2 / 3]))


def test_dr_grpo_skips_the_std_division():
    # Deviations from the group mean only: [2/3, -1/3, -1/3] and [-2, 0, 2].
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, -2.0, 0.0, 2.0])
    torch.testing.assert_close(group_advantages(REWARDS, 3, eps=1e-6, scale=False), expected)


def test_zero_variance_group_gets_exactly_zero():
    # Three rewards of 0.9: in float32 their mean is off by 6e-8, and (r - mean) / (std + 1e-6) would give every
    # sample a spurious advantage of 0.056. Same for Ocean-R1's n = 16 with sixteen partial-credit rewards of 0.1.
    rewards = torch.tensor([0.9, 0.9, 0.9, 1.0, 0.0, 1.0])
    for scale in (True, False):
        adv = group_advantages(rewards, 3, eps=1e-6, scale=scale)
        assert adv[:3].tolist() == [0.0, 0.0, 0.0]
        assert adv[3:].abs().min() > 0.1
    assert group_advantages(torch.full((16,), 0.1), 16, eps=1e-6).tolist() == [0.0] * 16
    assert zero_variance_groups(rewards, 3).tolist() == [True, False]
    assert zero_variance_groups(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2).tolist() == [True, True]


@pytest.mark.parametrize("seed", range(3))
def test_advantages_ignore_a_constant_added_to_a_group(seed):
    torch.manual_seed(seed)
    rewards = torch.rand(12)
    shift = torch.tensor([5.0, -2.0, 0.5]).repeat_interleave(4)
    for scale in (True, False):
        torch.testing.assert_close(
            group_advantages(rewards + shift, 4, 1e-6, scale),
            group_advantages(rewards, 4, 1e-6, scale),
            atol=1e-5,
            rtol=0,
        )


@pytest.mark.parametrize("seed", range(3))
def test_reward_scale_cancels_with_std_and_passes_through_without(seed):
    torch.manual_seed(seed)
    rewards = torch.rand(12)
    base = group_advantages(rewards, 4, eps=0.0)
    torch.testing.assert_close(group_advantages(7.0 * rewards, 4, eps=0.0), base)
    torch.testing.assert_close(
        group_advantages(7.0 * rewards, 4, 1e-6, scale=False),
        7.0 * group_advantages(rewards, 4, 1e-6, scale=False),
    )


def test_advantages_reject_shapes_that_are_not_whole_groups():
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        group_advantages(torch.zeros(6), 4, 1e-6)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(torch.zeros(6), 1, 1e-6)
    with pytest.raises(ValueError, match=r"1-D \[B\]"):
        zero_variance_groups(torch.zeros(2, 3), 3)


# ----------------------------------------------------------------------------------------------------------------
# Token log-probs and entropy
# ----------------------------------------------------------------------------------------------------------------


def reference_logprobs(logits, tokens):
    return logits.float().log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)


def token_entropy(logits, **kwargs):
    tokens = torch.zeros(logits.shape[:2], dtype=torch.long)
    return token_logprobs_and_entropy(logits, tokens, **kwargs)[1]


@pytest.mark.parametrize("chunk_size", [1, 3, 256])
def test_token_logprobs_equal_log_softmax_gather_in_value_and_gradient(chunk_size):
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 8, 50)).requires_grad_()
    tokens = torch.randint(0, 50, (3, 8))
    view = logits[:, 1:-1]  # what a trainer slices out of a forward: not contiguous
    got = token_logprobs(view, tokens[:, 1:-1], chunk_size=chunk_size)
    want = reference_logprobs(view, tokens[:, 1:-1])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    weights = torch.randn_like(want)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), logits)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), logits)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert token_logprobs(logits, tokens, chunk_size=chunk_size).grad_fn is None


def test_token_logprobs_on_bf16_logits_compute_in_fp32():
    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 5, 64)).bfloat16().requires_grad_()
    tokens = torch.randint(0, 64, (2, 5))
    got = token_logprobs(logits, tokens, chunk_size=2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference_logprobs(logits, tokens), atol=1e-6, rtol=0)
    got.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    (want_grad,) = torch.autograd.grad(reference_logprobs(logits, tokens).sum(), logits)
    torch.testing.assert_close(logits.grad, want_grad)


def test_temperature_divides_the_logits():
    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 4, 9), torch.randint(0, 9, (2, 4))
    torch.testing.assert_close(
        token_logprobs(logits, tokens, temperature=0.7),
        reference_logprobs(logits / 0.7, tokens),
        atol=1e-6,
        rtol=0,
    )


def tensors_saved_for_backward(compute):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        compute()
    return saved


def test_backward_keeps_no_fp32_copy_of_the_logits():
    """Everything autograd saves for backward is the inputs themselves, not an fp32 copy of [B, T, V]."""
    logits = torch.randn(2, 32, 500).bfloat16().requires_grad_()
    tokens = torch.randint(0, 500, (2, 32))
    inputs = {logits.untyped_storage().data_ptr(), tokens.untyped_storage().data_ptr()}
    for compute in (
        lambda: token_logprobs(logits, tokens, chunk_size=8),
        lambda: token_logprobs_and_entropy(logits, tokens, chunk_size=8),
    ):
        saved = tensors_saved_for_backward(compute)
        assert saved and {t.untyped_storage().data_ptr() for t in saved} <= inputs
    # The naive form would fail the assertion above: it saves an fp32 copy.
    naive = tensors_saved_for_backward(lambda: reference_logprobs(logits, tokens))
    assert any(t.dtype == torch.float32 and t.shape == logits.shape for t in naive)


def test_token_entropy_by_hand_and_against_the_definition():
    # Uniform over V = 8: H = log 8 at every position, whatever the temperature.
    flat = torch.zeros(1, 3, 8)
    torch.testing.assert_close(token_entropy(flat, temperature=0.5), torch.full((1, 3), math.log(8)))
    torch.manual_seed(0)
    logits = (2 * torch.randn(2, 5, 30)).requires_grad_()
    p = logits.softmax(-1)
    want = -(p * p.log()).sum(-1)
    got = token_entropy(logits, chunk_size=2)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    (got_grad,) = torch.autograd.grad(got.sum(), logits)
    (want_grad,) = torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-6, rtol=0)
    bf16 = logits.detach().bfloat16()
    torch.testing.assert_close(token_entropy(bf16), token_entropy(bf16.float()), atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 3, 256])
def test_log_probs_from_hidden_states_and_head_equal_those_from_the_full_logits(chunk_size):
    """The training forward passes the final hidden states and the output layer's weight, so that no
    full-vocabulary logits of a whole micro-batch exist: same values and gradients as from the logits."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    head = torch.randn(11, 8, requires_grad=True)
    tokens = torch.randint(0, 11, (2, 5))
    for fn, args in ((token_logprobs, (tokens,)), (token_entropy, ())):
        got = fn(hidden, *args, temperature=0.7, chunk_size=chunk_size, head=head)
        want = fn(hidden @ head.T, *args, temperature=0.7, chunk_size=256)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        got_grads = torch.autograd.grad(got.square().sum(), (hidden, head))
        want_grads = torch.autograd.grad(want.square().sum(), (hidden, head))
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"head must be \[V, H\] with H = 8"):
        token_logprobs(hidden, tokens, head=torch.zeros(11, 7))


class CountLinear(torch.overrides.TorchFunctionMode):
    """Counts the calls of ``F.linear`` with a given weight on a chunk of positions [n, H], as torch dispatches them
    (no mock: every call runs). A model's own output layer call, on [B, T, H], is not counted."""

    def __init__(self, weight):
        super().__init__()
        self.weight, self.calls = weight, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.linear and args[1] is self.weight and args[0].dim() == 2:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("entropy", ["metric", "loss"])
def test_one_projection_gives_log_probs_and_entropy_as_separately_computed(entropy):
    """Log-probs and entropy from one projection of each chunk: the values and gradients of computing each from
    its own projection (the definitions, on the full logits), and the head's matmul runs once per chunk."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 8, requires_grad=True)
    head = torch.randn(11, 8, requires_grad=True)
    tokens = torch.randint(0, 11, (2, 7))
    with CountLinear(head) as counted:
        logp, ent = token_logprobs_and_entropy(
            hidden, tokens, temperature=0.7, chunk_size=3, head=head, entropy=entropy
        )
    assert counted.calls == 2 * 3  # 2 rows of 7 positions in chunks of 3: 3 chunks a row, one matmul each
    z = (hidden @ head.T) / 0.7
    want_logp = reference_logprobs(z, tokens)
    want_ent = -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(logp, want_logp, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent, want_ent, atol=1e-6, rtol=1e-6)
    weights = torch.randn_like(want_logp), torch.randn_like(want_logp)
    if entropy == "metric":  # a logged number: no gradient, and the log-probs' gradient unchanged
        assert ent.grad_fn is None
        got, want = (logp * weights[0]).sum(), (want_logp * weights[0]).sum()
    else:
        got = (logp * weights[0] + ent * weights[1]).sum()
        want = (want_logp * weights[0] + want_ent * weights[1]).sum()
    got_grads = torch.autograd.grad(got, (hidden, head))
    for g, w in zip(got_grads, torch.autograd.grad(want, (hidden, head)), strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_logprob_inputs_are_checked():
    with pytest.raises(ValueError, match=r"tokens \[B, T\]"):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------------
# KL estimators
# ----------------------------------------------------------------------------------------------------------------


def _verl_advantages(rewards: list[float], group_size: int, eps: float = 1e-6) -> list[float]:
    """verl's compute_grpo_outcome_advantage (Ocean-R1's verl), step by step: fp32 0-d scores collected per
    prompt, torch.mean of torch.tensor(list), torch.std of torch.tensor([list]), (score - mean) / (std + eps)."""
    scores = [torch.tensor(r, dtype=torch.float32) for r in rewards]
    out = []
    for start in range(0, len(scores), group_size):
        group = scores[start : start + group_size]
        mean, std = torch.mean(torch.tensor(group)), torch.std(torch.tensor([group]))
        out += [((score - mean) / (std + eps)).item() for score in group]
    return out


def test_equal_groups_computed_reproduce_verls_fp32_arithmetic():
    # Stage 2's correct and well-formed group: 1 + 0.05 = 1.05 sixteen times. In fp32 the mean is one ulp above
    # 1.05 (1.2e-7) and the std is 1.2e-7, not 0: every sample gets (-1.2e-7) / (1.2e-7 + 1e-6) = -0.106.
    groups = [[1.05] * 16, [0.1] * 16, [0.15] * 16, [1.1] * 16, [0.0, 1.0, 0.1, 1.05] * 4]
    rewards = torch.tensor([r for group in groups for r in group])
    got = group_advantages(rewards, 16, eps=1e-6, equal_groups="computed")
    assert got.tolist() == _verl_advantages(rewards.tolist(), 16)  # bit for bit
    assert got[0].item() == pytest.approx(-0.106, abs=5e-4) and len(set(got[:16].tolist())) == 1
    assert got[16].item() == pytest.approx(-0.0074, abs=5e-5)  # 0.1: a small push down
    assert got[32].item() == pytest.approx(0.0147, abs=5e-5)  # 0.15: a push up
    assert got[48:64].tolist() == [0.0] * 16  # 1.1 happens to average exactly
    assert group_advantages(rewards, 16, eps=1e-6).tolist()[:64] == [0.0] * 64  # ours: exactly 0
    # A group with signal gets the same values either way (to float rounding).
    torch.testing.assert_close(got[64:], group_advantages(rewards, 16, eps=1e-6)[64:])


def test_equal_groups_computed_without_std_division():
    got = group_advantages(torch.tensor([1.05] * 4), 4, eps=1e-6, scale=False, equal_groups="computed")
    mean = torch.tensor([1.05] * 4).mean()
    assert got.tolist() == [(torch.tensor(1.05) - mean).item()] * 4


# (log p, log p_ref, k1, k3) with d = log p_ref - log p and k3 = e^d - d - 1:
KL_CASES = [
    (math.log(0.5), math.log(0.25), LN2, 0.5 + LN2 - 1),  # d = -ln 2: 0.5 + 0.6931 - 1 = 0.1931
    (math.log(0.25), math.log(0.5), -LN2, 2 - LN2 - 1),  # d = +ln 2: 2 - 0.6931 - 1 = 0.3069 (k1 < 0, k3 > 0)
    (-1.3, -1.3, 0.0, 0.0),  # same distribution
    (0.0, -5.0, 5.0, math.exp(-5) + 4),  # d = -5: 4.0067, below the clamp
    (0.0, 3.0, -3.0, 10.0),  # d = 3: e^3 - 4 = 16.09, result clamped to 10
    (0.0, 30.0, -30.0, 10.0),  # d clamped to 20, result clamped to 10 (k1 is never clamped)
    (0.0, -30.0, 30.0, 10.0),  # d clamped to -20: e^-20 + 19 = 19, result clamped to 10
]


@pytest.mark.parametrize(("logp", "ref", "k1", "k3"), KL_CASES)
def test_kl_estimators_by_hand(logp, ref, k1, k3):
    logp, ref = torch.tensor([logp]), torch.tensor([ref])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(k1, abs=1e-6)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(k3, abs=1e-5)


def test_unclamped_k3_is_the_formula_without_bounds():
    # TRL 0.14 (Ocean-R1's first recipe): d = 3 gives e^3 - 3 - 1 = 16.0855 (k3 clamps it to 10); d = -30 gives
    # e^-30 + 29 = 29 (k3: 10); d = 25 gives e^25 - 26 = 7.2e10; small d equal k3.
    logp, ref = torch.tensor([0.0, 0.0, 0.0, math.log(0.5)]), torch.tensor([3.0, -30.0, 25.0, math.log(0.25)])
    got = kl_penalty(logp, ref, "k3_unclamped")
    expected = [math.exp(3) - 4, math.exp(-30) + 29, math.exp(25) - 26, 0.5 + LN2 - 1]
    for value, want in zip(got.tolist(), expected, strict=True):
        assert value == pytest.approx(want, rel=1e-5)
    assert kl_penalty(logp, ref, "k3").tolist()[:3] == [10.0, 10.0, 10.0]


def test_unknown_kl_estimator_is_an_error():
    with pytest.raises(ValueError, match="unknown KL estimator 'k2'"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k2")


# ----------------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------------

# Row 0 keeps 3 tokens (1, 2, 3), row 1 keeps 1 (4); the masked 5 and nan must not count.
VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, math.nan]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])
AGG_CASES = [
    ("token-mean", {}, (1 + 2 + 3 + 4) / 4),  # 2.5
    ("token-mean", {"num_tokens": 8}, 10 / 8),
    ("seq-mean-token-mean", {}, ((1 + 2 + 3) / 3 + 4 / 1) / 2),  # (2 + 4) / 2 = 3
    ("seq-mean-token-mean", {"num_sequences": 4}, (2 + 4) / 4),
    ("seq-mean-token-sum-norm", {"max_len": 4}, (6 + 4) / (2 * 4)),  # 1.25
    ("seq-mean-token-sum-norm", {"max_len": 5, "num_sequences": 4}, 10 / (4 * 5)),
    # per-sequence denominators: row 0's sum 6 over 3, row 1's 4 over 8 → 2 + 0.5
    ("token-mean", {"num_tokens": torch.tensor([3.0, 8.0])}, 6 / 3 + 4 / 8),
]


@pytest.mark.parametrize(("mode", "normalisers", "expected"), AGG_CASES)
def test_aggregation_by_hand(mode, normalisers, expected):
    assert aggregate(VALUES, MASK, mode, **normalisers).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_a_sequence_without_tokens_adds_zero_not_nan(mode):
    assert aggregate(torch.tensor([[7.0]]), torch.tensor([[0]]), mode).item() == 0.0


def test_balanced_partitions_by_hand():
    # Lengths [1, 2, 3, 4] over 2 ranks. Sorted runs of 2: {1, 2} and {3, 4}, each a state of spread 1; the tie
    # goes to the state with the larger biggest part ({4}), popped first; merging joins 4 with 1 and 3 with 2:
    # parts {4, 1} (sum 5) and {3, 2} (sum 5); the first is larger by its items ((3, 4) > (2, 3)).
    assert balanced_partitions([1, 2, 3, 4], 2) == [[0, 3], [1, 2]]
    # Four equal lengths: runs {0, 1} and {2, 3}, spread 0 each; ties between parts go by position, so the
    # second run pops first (its largest part is position 3) and pairs 3 with 0 and 2 with 1.
    assert balanced_partitions([5, 5, 5, 5], 2) == [[0, 3], [1, 2]]
    # [7, 1, 1, 7, 1, 1] over 3: runs {1, 2, 4} (all 1, spread 0) and {5, 0, 3} (1, 7, 7, spread 6, popped
    # first); 7 (3) joins 1 (1), 7 (0) joins 1 (2), 1 (5) joins 1 (4): sums 8, 8, 2, largest first.
    assert balanced_partitions([7, 1, 1, 7, 1, 1], 3) == [[1, 3], [0, 2], [4, 5]]
    with pytest.raises(ValueError, match="5 sequences do not split into 2 parts"):
        balanced_partitions([1] * 5, 2)


def test_verl_denominators_by_hand():
    # 4 sequences, completion tokens [3, 1, 2, 5], prompt + completion [1, 2, 3, 4] (balancing uses these):
    # ranks {0, 3} and {1, 2}; one micro-batch of 2 per rank, so M = 2 micro-batches in the step.
    # Micro-batch {0, 3} holds 3 + 5 = 8 tokens -> N_0 = N_3 = 2 * 8; {1, 2} holds 3 -> N_1 = N_2 = 2 * 3.
    assert verl_token_mean_denominators([3, 1, 2, 5], [1, 2, 3, 4], 2, 2) == [16.0, 6.0, 6.0, 16.0]
    # One sequence per micro-batch: every sequence is its own mean, i.e. seq-mean-token-mean.
    assert verl_token_mean_denominators([3, 1, 2, 5], [1, 2, 3, 4], 2, 1) == [12.0, 4.0, 8.0, 20.0]
    with pytest.raises(ValueError, match="do not split into 2 ranks x micro-batches of 3"):
        verl_token_mean_denominators([1] * 4, [1] * 4, 2, 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_verl_denominators_give_verls_loss(seed):
    # verl's actor, written out: balance the batch over W ranks, each rank cuts micro-batches of m, takes the
    # masked mean of each, divides by its micro-batch count, backward; ranks average (FSDP).
    generator = torch.Generator().manual_seed(seed)
    ranks, m, n, width = 2, 3, 12, 9
    completion = torch.randint(1, width + 1, (n,), generator=generator)
    prompt = torch.randint(5, 40, (n,), generator=generator)
    values = torch.randn(n, width, generator=generator, dtype=torch.float64)
    mask = (torch.arange(width)[None] < completion[:, None]).long()
    verl_loss = 0.0
    for part in balanced_partitions((prompt + completion).tolist(), ranks):
        micro = [part[i : i + m] for i in range(0, len(part), m)]
        rank_loss = sum((values[b] * mask[b]).sum() / mask[b].sum() / len(micro) for b in micro)
        verl_loss += rank_loss / ranks
    denominators = verl_token_mean_denominators(completion.tolist(), (prompt + completion).tolist(), ranks, m)
    ours = aggregate(values, mask, "token-mean", num_tokens=torch.tensor(denominators, dtype=torch.float64))
    assert ours.item() == pytest.approx(float(verl_loss), rel=1e-12)
    # ...which is not the whole-batch token mean: sequences weigh differently.
    assert aggregate(values, mask, "token-mean").item() != pytest.approx(float(verl_loss), rel=1e-6)


def test_aggregation_errors_name_the_problem():
    with pytest.raises(ValueError, match="needs max_len"):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="unknown loss aggregation 'seq-sum'"):
        aggregate(VALUES, MASK, "seq-sum")
    with pytest.raises(ValueError, match="one shape"):
        aggregate(VALUES, MASK[:, :2], "token-mean")


# ----------------------------------------------------------------------------------------------------------------
# Policy loss: which tokens are clipped
# ----------------------------------------------------------------------------------------------------------------

# clip_low 0.2, clip_high 0.28 (clip-higher), dual clip c = 3. pg = max(-A r, -A clip(r, 0.8, 1.28)):
#   A = +1, r = [0.5, 1.0, 1.25, 1.5] -> [-0.5, -1.0, -1.25, -1.28]   only r = 1.5 clipped (high)
#   A = -1, r = [0.5, 0.9, 1.5, 4.0]  -> [ 0.8,  0.9,  1.5,  3.0 ]    r = 0.5 clipped (low), r = 4 by the dual clip
# token-mean = (-4.03 + 6.2) / 8 = 0.27125; d pg / d log p = -A r where unclipped, 0 where clipped.
ADVANTAGES = torch.tensor([1.0, -1.0])
RATIOS = torch.tensor([[0.5, 1.0, 1.25, 1.5], [0.5, 0.9, 1.5, 4.0]])


def clipped_loss(clip_high, dual_clip):
    logprobs = RATIOS.log().requires_grad_()
    loss, stats = policy_loss(
        logprobs,
        torch.zeros(2, 4),
        ADVANTAGES,
        torch.ones(2, 4),
        clip_low=0.2,
        clip_high=clip_high,
        dual_clip=dual_clip,
    )
    (grad,) = torch.autograd.grad(loss, logprobs)
    return loss.item(), grad * 8, stat_values(stats)


def test_clip_low_high_and_dual_by_hand():
    loss, grad, stats = clipped_loss(clip_high=0.28, dual_clip=3.0)
    assert loss == pytest.approx(0.27125)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -1.0, -1.25, 0.0], [0.0, 0.9, 1.5, 0.0]]))
    assert (
        stats["clipfrac_low"] == 1 / 8 and stats["clipfrac_high"] == 1 / 8 and stats["clipfrac_dual"] == 1 / 8
    )
    assert stats["clipfrac"] == 3 / 8
    assert stats["pg_loss"] == pytest.approx(0.27125)
    assert stats["ratio_mean"] == pytest.approx(11.15 / 8)
    assert (stats["ratio_min"], stats["ratio_max"]) == (pytest.approx(0.5), pytest.approx(4.0))


def test_symmetric_clip_also_clips_the_r_1_25_token():
    # clip_high 0.2: for A = +1, r = 1.25 > 1.2 is clipped to -1.2 and loses its gradient.
    loss, grad, stats = clipped_loss(clip_high=0.2, dual_clip=3.0)
    assert loss == pytest.approx((-0.5 - 1.0 - 1.2 - 1.2 + 0.8 + 0.9 + 1.5 + 3.0) / 8)
    assert grad[0, 2] == 0.0 and stats["clipfrac_high"] == 2 / 8


def test_without_dual_clip_a_negative_advantage_token_is_unbounded():
    # A = -1, r = 4: loss 4 with gradient -A r = 4 (total (-4.03 + 0.8 + 0.9 + 1.5 + 4) / 8 = 0.39625).
    loss, grad, stats = clipped_loss(clip_high=0.28, dual_clip=0.0)
    assert loss == pytest.approx(0.39625)
    assert grad[1, 3].item() == pytest.approx(4.0)
    assert stats["clipfrac_dual"] == 0.0 and stats["clipfrac"] == 2 / 8


def test_kl_and_entropy_terms_by_hand():
    # Ratio 1 and A = 0, so pg = 0. log p = ln 0.5, log p_ref = ln 0.25 -> k3 = 0.19315 per token.
    # Entropies 1 and 2. loss = 0.1 * 0.19315 - 0.01 * 1.5 = 0.0043147.
    # d loss / d log p = 0.1 * (1 - e^d) / 2 = 0.1 * 0.5 / 2 = 0.025 per token; d loss / d H = -0.01 / 2.
    logprobs = torch.full((1, 2), math.log(0.5), requires_grad=True)
    entropy = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss, stats = policy_loss(
        logprobs,
        logprobs.detach(),
        torch.zeros(1),
        torch.ones(1, 2),
        ref_logprobs=torch.full((1, 2), math.log(0.25)),
        kl_coef=0.1,
        entropy=entropy,
        entropy_coef=0.01,
    )
    assert loss.item() == pytest.approx(0.1 * (0.5 + LN2 - 1) - 0.01 * 1.5)
    grad_logp, grad_entropy = torch.autograd.grad(loss, (logprobs, entropy))
    torch.testing.assert_close(grad_logp, torch.full((1, 2), 0.025))
    torch.testing.assert_close(grad_entropy, torch.full((1, 2), -0.005))
    values = stat_values(stats)
    assert values["kl"] == pytest.approx(0.5 + LN2 - 1) and values["entropy"] == pytest.approx(1.5)


def test_policy_loss_rejects_inconsistent_settings():
    x, a, m = torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3)
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        policy_loss(x, x, a, m, kl_coef=0.1)
    with pytest.raises(ValueError, match="needs the per-token entropy"):
        policy_loss(x, x, a, m, entropy_coef=0.1)
    with pytest.raises(ValueError, match="dual_clip must be 0"):
        policy_loss(x, x, a, m, dual_clip=0.9)
    with pytest.raises(ValueError, match=r"advantages must be \[B\]"):
        policy_loss(x, x, torch.zeros(2, 3), m)
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        policy_loss(x, x[:, :2], a, m)


# ----------------------------------------------------------------------------------------------------------------
# Stats and gradient accumulation
# ----------------------------------------------------------------------------------------------------------------


def test_stats_merge_as_sums_and_extremes():
    merged = merge_stats(
        {"kl": Stat(3.0, 2), "r_min": Stat(1.0, 2, "min")},
        {"kl": Stat(5.0, 6), "r_min": Stat(0.5, 6, "min"), "only_here": Stat(1.0, 1)},
    )
    # kl: (3 + 5) / (2 + 6) = 1, not the mean of means (1.5 + 0.833) / 2 = 1.17
    assert stat_values(merged) == {"kl": 1.0, "r_min": 0.5, "only_here": 1.0}
    assert math.isnan(Stat(0.0, 0).value)
    with pytest.raises(ValueError, match="cannot merge"):
        Stat(1.0, 1, "min") + Stat(1.0, 1, "max")


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_with_batch_normalisers_sum_to_the_full_batch(mode):
    """Uneven micro-batches, each padded only to its own longest response, give the full batch's loss, gradient
    and metrics when every micro-batch gets the whole batch's normalisers."""
    torch.manual_seed(0)
    batch, width, dim, vocab = 6, 7, 5, 11
    lengths = torch.tensor([7, 2, 5, 1, 6, 3])
    mask = torch.arange(width) < lengths[:, None]
    features, tokens = torch.randn(batch, width, dim), torch.randint(0, vocab, (batch, width))
    head = torch.nn.Linear(dim, vocab)
    with (
        torch.no_grad()
    ):  # old and reference policies away from the current one, so clipping and KL are active
        old = token_logprobs(head(features), tokens) + 0.3 * torch.randn(batch, width)
        ref = old + 0.2 * torch.randn(batch, width)
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.5, 1.0, 0.0]), 3, eps=1e-6)

    def step(rows, **normalisers):
        rows = torch.tensor(rows)
        cols = slice(0, int(lengths[rows].max()))
        logits = head(features[rows, cols])
        loss, stats = policy_loss(
            token_logprobs(logits, tokens[rows, cols]),
            old[rows, cols],
            advantages[rows],
            mask[rows, cols],
            clip_low=0.2,
            clip_high=0.28,
            dual_clip=3.0,
            ref_logprobs=ref[rows, cols],
            kl_coef=0.1,
            entropy=token_entropy(logits),
            entropy_coef=0.01,
            loss_agg=mode,
            max_len=width,
            **normalisers,
        )
        return loss, torch.autograd.grad(loss, list(head.parameters())), stats

    full_loss, full_grads, full_stats = step(range(batch))
    micro_batches = ([0], [1, 2, 3], [4, 5])
    batch_normalisers = {"num_tokens": mask.sum().item(), "num_sequences": batch}
    parts = [step(rows, **batch_normalisers) for rows in micro_batches]
    torch.testing.assert_close(sum(loss for loss, _, _ in parts), full_loss, atol=1e-6, rtol=0)
    for i, full_grad in enumerate(full_grads):
        torch.testing.assert_close(sum(grads[i] for _, grads, _ in parts), full_grad, atol=1e-6, rtol=0)
    merged = stat_values(merge_stats(*(stats for _, _, stats in parts)))
    assert merged == pytest.approx(stat_values(full_stats))
    assert 0 < merged["clipfrac"] < 1  # the clipped branches took part

    # Each micro-batch normalised by its own counts does not add up: the normalisers are what make this work.
    naive = sum(step(rows)[0] for rows in micro_batches) / len(micro_batches)
    assert abs(naive.item() - full_loss.item()) > 1e-3
