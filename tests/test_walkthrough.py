"""The teaching notebook's single GRPO update: its pieces agree with each other and with the trainer's maths."""

import pytest
import torch

from ocean_lib.base.config import load_config
from ocean_lib.data import read_records
from ocean_lib.study.walkthrough import group_update
from ocean_lib.training import grpo
from ocean_lib.training.models import load_policy


@pytest.mark.trajectory
def test_group_update_unrolls_one_grpo_step(tiny_model_dir, mini_data_dir):
    cfg = load_config(
        None,
        [
            "rollout.n=6",
            "rollout.max_new_tokens=10",
            "train.lr=1e-2",
            "data.min_pixels=3136",
            "data.max_pixels=200704",
        ],
    )
    model, processor = load_policy(str(tiny_model_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = read_records(mini_data_dir / "train" / "counting.parquet", cfg.data)[0]
    update = group_update(model, processor, record, cfg, seed=3)

    assert len(update.table()) == 6 and update.ground_truth == record.ground_truth
    assert torch.equal(update.rewards, torch.tensor([s.overall for s in update.scores]))
    assert torch.equal(update.advantages, grpo.group_advantages(update.rewards, 6, eps=cfg.algorithm.adv_eps))
    # The "before" log-probs are the sampler's own, summed over each answer.
    sampled = (update.batch.logprobs * update.batch.completion_mask).sum(-1)
    assert update.logprob_before == pytest.approx(sampled, abs=1e-4)
    assert update.metrics["ratio/mean"] == pytest.approx(1.0)
    # One optimizer step happened and moved the answers' probabilities.
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.allclose(update.logprob_after, update.logprob_before)
