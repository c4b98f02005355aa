"""The real-scale recipe runs through the same launcher and trainer as the miniature.

``params/qwen25vl_3b_stage1.yaml`` with only the model, the sizes and the data swapped for the tiny model and a few
procedural records: two GRPO steps (bf16, gradient checkpointing, KL and entropy terms, validation) in a real
``accelerate launch`` subprocess on CPU. Kept: every algorithmic value of the recipe.
"""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ocean_lib import launch
from ocean_lib.config import load_config
from ocean_lib.models import load_policy
from ocean_lib.run_dir import RunDir

PARAMS = Path(__file__).resolve().parents[1] / "params" / "qwen25vl_3b_stage1.yaml"


@pytest.mark.slow
def test_3b_stage1_recipe_runs_two_steps_on_cpu_with_the_tiny_model(tiny_model_dir, mini_data_dir, tmp_path):
    overrides = [
        # the model: the tiny Qwen2.5-VL instead of the 3B; no flash-attention and no vLLM on CPU
        f"model.name_or_path={tiny_model_dir}",
        "model.attn_implementation=sdpa",
        "rollout.backend=hf",
        # the sizes: 2 prompts x 4 samples x 16 new tokens instead of 256 x 16 x 4096
        "train.prompts_per_step=2",
        "rollout.n=4",
        "train.micro_batch_size=4",
        "rollout.max_new_tokens=16",
        "train.max_steps=2",
        "train.save_every=1",
        "train.val_every=2",
        "eval.batch_size=8",
        # the data: procedural records in Ocean-R1's schema instead of Ocean_R1_visual_data_stage1
        f"data.train_files=[{mini_data_dir}/train]",
        f"data.val_files=[{mini_data_dir}/test/geometry.parquet]",
        f"logging.output_dir={tmp_path}",
    ]
    final = launch.train(PARAMS, overrides)

    recipe = load_config(PARAMS)
    run = RunDir(tmp_path / recipe.logging.run_name)
    cfg = load_config(run.config)
    assert (cfg.algorithm, cfg.reward) == (recipe.algorithm, recipe.reward)  # the recipe itself is untouched
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.grad_clip) == (1e-6, 0.01, 1.0)
    assert (cfg.model.dtype, cfg.model.gradient_checkpointing) == ("bfloat16", True)

    metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["kl/mean"] >= 0 and m["entropy/mean"] > 0
        assert 0.0 <= m["reward/overall"] <= 1.0 + cfg.reward.format_weight
    assert "val/accuracy" in metrics[1] and "val/accuracy" not in metrics[0]
    assert final == run.final and run.is_finished()
    # bf16 compute keeps fp32 master weights, and checkpoints save them: a resumed run continues exactly.
    with safe_open(str(final / "model.safetensors"), "pt") as weights:
        names = weights.keys()
        assert {weights.get_tensor(name).dtype for name in names} == {torch.float32}
    _, processor = load_policy(str(final))  # the checkpoint loads as evaluation will load it
    assert type(processor).__name__ == "Qwen2_5_VLImageTextProcessor"
