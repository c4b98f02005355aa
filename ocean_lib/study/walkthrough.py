"""One GRPO update on one prompt, with every intermediate kept: what ``00_grpo_walkthrough`` shows.

It is the trainer's step (:func:`ocean_lib.training.trainer.grpo_step`) reduced to a single group and unrolled, so a
reader can look at each quantity: the sampled answers, their reward breakdowns, the group-normalised
advantages, the clipped loss and its KL term, and how the update moved each answer's probability.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from ocean_lib.base.prompts import Prompt
from ocean_lib.base.schema import RunConfig
from ocean_lib.data import Record
from ocean_lib.rewards import RewardBreakdown, score_batch
from ocean_lib.training import grpo
from ocean_lib.training.batch import RolloutBatch
from ocean_lib.training.forward import completion_logprobs
from ocean_lib.training.rollout import make_engine
from ocean_lib.training.run_state import loss_settings, make_optimizer
from ocean_lib.training.trainer import prompt_of


@dataclass
class GroupUpdate:
    prompt: Prompt
    ground_truth: str
    batch: RolloutBatch
    scores: list[RewardBreakdown]
    rewards: torch.Tensor  # [n]
    advantages: torch.Tensor  # [n]
    loss: float
    metrics: dict[str, float]
    logprob_before: torch.Tensor  # [n] summed log-prob of each completion before the update
    logprob_after: torch.Tensor  # [n] the same after one optimizer step

    def table(self) -> list[dict[str, Any]]:
        """One row per sampled completion: text, reward parts, advantage and log-prob change."""
        return [
            {
                "completion": text,
                "accuracy": s.accuracy,
                "format": s.format,
                "reward": s.overall,
                "advantage": float(a),
                "log p before": float(b),
                "log p after": float(c),
                "change": float(c - b),
            }
            for text, s, a, b, c in zip(
                self.batch.texts,
                self.scores,
                self.advantages,
                self.logprob_before,
                self.logprob_after,
                strict=True,
            )
        ]


def group_update(model: Any, processor: Any, record: Record, cfg: RunConfig, seed: int = 0) -> GroupUpdate:
    """Sample ``cfg.rollout.n`` answers to ``record``, score them, and take one GRPO step on ``model``."""
    alg, n = cfg.algorithm, cfg.rollout.n
    reference = copy.deepcopy(model).requires_grad_(False).eval()

    # 1. Sample a group of n answers to one prompt.
    prompt, truth = prompt_of(record, cfg)
    batch = make_engine(model, processor, cfg.rollout).generate([prompt], n=n, seeds=[seed])
    rows = torch.arange(n)

    # 2. Score them with the rule-based reward; 3. normalise within the group.
    scores = score_batch(batch.texts, [truth] * n, [record.reward_func] * n, cfg.reward)
    rewards = torch.tensor([s.overall for s in scores])
    advantages = grpo.group_advantages(rewards, n, eps=alg.adv_eps, scale=alg.scale_rewards)

    # 4. The clipped policy loss with its KL term, then one optimizer step.
    optimizer = make_optimizer(model, cfg.train)
    logp, entropy, mask = completion_logprobs(
        model, model, batch, rows, cfg.rollout.temperature, entropy="loss"
    )
    with torch.no_grad():
        ref_logp, _, _ = completion_logprobs(reference, reference, batch, rows, cfg.rollout.temperature)
    loss, stats = grpo.policy_loss(
        logp,
        logp.detach(),
        advantages,
        mask,
        ref_logprobs=ref_logp,
        entropy=entropy,
        **loss_settings(cfg),
    )
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    # 5. How the update moved each answer's probability (up for positive advantages, down for negative).
    with torch.no_grad():
        after, _, _ = completion_logprobs(model, model, batch, rows, cfg.rollout.temperature)
    return GroupUpdate(
        prompt=prompt,
        ground_truth=truth,
        batch=batch,
        scores=scores,
        rewards=rewards,
        advantages=advantages,
        loss=float(loss.detach()),
        metrics=grpo.stat_values(stats),
        logprob_before=(logp.detach() * mask).sum(-1),
        logprob_after=(after * mask).sum(-1),
    )
