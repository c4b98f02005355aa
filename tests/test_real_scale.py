"""The real-scale recipes run through the same launcher and trainer as the miniature.

``params/qwen25vl_3b_stage1.yaml`` (the verl recipe) and ``params/qwen25vl_3b_v1.yaml`` (the first recipe) with only
the model, the sizes and the data swapped for the tiny model and a few procedural records: two GRPO steps (bf16,
gradient checkpointing, KL and entropy terms, validation) in a real ``accelerate launch`` subprocess on CPU. Kept:
every algorithmic value of the recipe.
"""

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import v1_features
from safetensors import safe_open

from ocean_lib.base.config import load_config
from ocean_lib.base.run_dir import RunDir
from ocean_lib.training import launch
from ocean_lib.training.models import load_policy

PARAMS = Path(__file__).resolve().parents[1] / "params" / "qwen25vl_3b_stage1.yaml"
V1_PARAMS = PARAMS.with_name("qwen25vl_3b_v1.yaml")


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
        "algorithm.balance_ranks=2",  # verl's micro-batches: 8 sequences over 2 ranks instead of 4,096 over 8
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
    # the recipe itself is untouched
    assert (cfg.algorithm, cfg.reward) == (
        dataclasses.replace(recipe.algorithm, balance_ranks=2),
        recipe.reward,
    )
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.grad_clip) == (1e-6, 0.01, 1.0)
    assert (cfg.model.train_precision, cfg.model.inference_dtype, cfg.model.gradient_checkpointing) == (
        "bfloat16",
        "bfloat16",
        True,
    )

    metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == [0, 1, 2]  # verl validates before training (step 0)...
    for m in metrics[1:]:
        assert m["kl/mean"] >= 0 and m["entropy/mean"] > 0
        assert 0.0 <= m["reward/overall"] <= 1.0 + cfg.reward.format_weight
    assert ["val/accuracy" in m for m in metrics] == [True, False, True]  # ...and at its last step
    assert [m["lr"] for m in metrics[1:]] == [0.0, 1e-6]  # verl's constant schedule: step 1 at lr 0
    assert final == run.final and run.is_finished()
    # bf16 compute keeps fp32 master weights, and checkpoints save them: a resumed run continues exactly.
    with safe_open(str(final / "model.safetensors"), "pt") as weights:
        names = weights.keys()
        assert {weights.get_tensor(name).dtype for name in names} == {torch.float32}
    _, processor = load_policy(str(final))  # the checkpoint loads as evaluation will load it
    assert type(processor).__name__ == "Qwen2_5_VLImageTextProcessor"


def _v1_dataset(mini_data_dir: Path, out: Path) -> Path:
    """The first recipe's layout (problem, solution, image, has_image, reward_func) written with the datasets
    library, from procedural records: pictured counting and grounding rows and their text-only twins."""
    import datasets

    from ocean_lib.data import read_records

    rows = []
    for name, split, count in (
        ("counting", "train", 4),
        ("grounding", "train", 2),
        ("counting", "train_text", 2),
    ):
        for record in read_records(mini_data_dir / split / f"{name}.parquet", load_config(None).data)[:count]:
            image = {"bytes": record.images[0].bytes, "path": None} if record.images else None
            rows.append(
                {
                    "problem": record.question,
                    "solution": f"<answer> {record.ground_truth} </answer>",
                    "image": image,
                    "has_image": image is not None,
                    "reward_func": record.reward_func,
                }
            )
    features = v1_features()
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(out))
    return out


@pytest.mark.slow
def test_3b_first_recipe_runs_two_steps_on_cpu_with_the_tiny_model(tiny_model_dir, mini_data_dir, tmp_path):
    from ocean_lib.data import read_records
    from ocean_lib.training.batch import encode_prompts
    from ocean_lib.training.trainer import prompt_of

    data = _v1_dataset(mini_data_dir, tmp_path / "v1.parquet")
    recipe = load_config(V1_PARAMS)
    # A prompt limit that cuts the text-only rows (R1's long system prompt) but no pictured row, as TRL cut them.
    processor = load_policy(str(tiny_model_dir))[1]
    length = {True: 0, False: 0}  # the longest prompt, in tokens, with and without a picture
    for record in read_records(data, recipe.data):
        tokens = int(encode_prompts(processor, [prompt_of(record, recipe)[0]])["attention_mask"].sum())
        length[bool(record.images)] = max(length[bool(record.images)], tokens)
    assert length[False] > length[True]
    overrides = [
        f"model.name_or_path={tiny_model_dir}",
        "model.attn_implementation=sdpa",
        "rollout.backend=hf",
        # 4 prompts x 7 samples (Ocean-R1's group) x 16 new tokens instead of 28 x 7 x 2048, on 1 process
        "train.prompts_per_step=4",
        "rollout.max_new_tokens=16",
        "train.max_steps=2",
        f"data.max_prompt_tokens={length[True]}",
        "data.shuffle=false",  # step 1: 4 pictured rows; step 2: 2 pictured (grounding), 2 text-only
        f"data.train_files=[{data}]",
        f"logging.output_dir={tmp_path}",
    ]
    final = launch.train(V1_PARAMS, overrides)

    run = RunDir(tmp_path / recipe.logging.run_name)
    cfg = load_config(run.config)
    assert (cfg.algorithm, cfg.reward) == (recipe.algorithm, recipe.reward)  # the recipe itself is untouched
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.rollout.n) == (1e-6, 0.0, 7)
    metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == [1, 2]  # no validation in the first recipe
    assert [m["lr"] for m in metrics] == [1e-6, 1e-6]  # constant from step 1
    for m in metrics:
        assert m["kl/mean"] >= 0 and 0.0 <= m["reward/overall"] <= 2.0  # accuracy + 1.0 x format
    assert [m["prompt/truncated_fraction"] for m in metrics] == [
        0.0,
        0.5,
    ]  # step 2: 2 of its 4 prompts are text
    assert final == run.final and run.is_finished()
    # The processor keeps the first recipe's limits, the images were not resized before it.
    size = load_policy(str(final))[1].image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (3136, 501760)
