"""One GRPO update on one prompt, with every intermediate kept: what ``00_grpo_walkthrough`` shows.

It runs the trainer's own step functions (:func:`ocean_lib.training.trainer.sample_groups` and
:func:`~ocean_lib.training.trainer.update`, as :func:`~ocean_lib.training.trainer.grpo_step` does) on a single
group in one process, and keeps what they compute, so a reader can look at each quantity: the sampled answers,
their reward breakdowns, the group-normalised advantages, the clipped loss and its KL term, and how the update
moved each answer's probability.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from ocean_lib.base.prompts import Prompt
from ocean_lib.base.schema import RunConfig
from ocean_lib.data import Record
from ocean_lib.rewards import RewardBreakdown
from ocean_lib.training import trainer
from ocean_lib.training.batch import RolloutBatch
from ocean_lib.training.forward import completion_logprobs
from ocean_lib.training.metrics import POLICY_METRICS, Tally
from ocean_lib.training.rollout import make_engine
from ocean_lib.training.run_state import TrainState, make_optimizer, make_schedule


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
    """Sample ``cfg.rollout.n`` answers to ``record``, score them, and take one GRPO step on ``model``, through
    the trainer's own steps 1-4 (:func:`~ocean_lib.training.trainer.sample_groups`) and 5-6
    (:func:`~ocean_lib.training.trainer.update`), in one process."""
    from accelerate import Accelerator

    reference = copy.deepcopy(model).requires_grad_(False).eval()  # the KL reference: the weights before
    optimizer = make_optimizer(model, cfg.train)
    state = TrainState(
        Accelerator(cpu=not torch.cuda.is_available()),
        model,
        reference,
        processor,
        optimizer,
        make_schedule(optimizer, cfg.train),
        cfg,
        run=None,  # nothing is written: the notebook shows what the step computes
    )
    state.engine = make_engine(model, processor, cfg.rollout)
    tally = Tally()

    # 1-4. Sample a group of n answers to one prompt, score them, normalise within the group.
    groups = trainer.sample_groups(state, [record], step=1, seeds=[seed], tally=tally)
    # 5-6. Reference log-probs, the clipped policy loss with its KL term, one optimizer step.
    trainer.update(state, groups, tally)

    # How the update moved each answer's probability (up for positive advantages, down for negative).
    batch, rows = groups.batch, torch.arange(len(groups.batch.texts))
    with torch.no_grad():
        after, _, mask = completion_logprobs(model, model, batch, rows, cfg.rollout.temperature)
    metrics = tally.reduce(state.accelerator)  # the trainer's metrics of this step; the loss's are shown
    return GroupUpdate(
        prompt=groups.prompts[0],
        ground_truth=groups.truths[0],
        batch=batch,
        scores=groups.scores,
        rewards=groups.rewards,
        advantages=groups.advantages,
        loss=metrics["loss/total"],
        metrics={k: metrics[k] for k in POLICY_METRICS.values() if k in metrics},
        logprob_before=(batch.logprobs[:, : mask.shape[1]] * mask).sum(-1),  # the sampler's own log-probs
        logprob_after=(after * mask).sum(-1),
    )
