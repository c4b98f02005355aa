"""Shared fixtures: a real tiny Qwen2.5-VL built offline once per test session."""

from pathlib import Path

import pytest
from PIL import Image

from ocean_lib.base.prompts import Prompt, reference_completion, user_text
from ocean_lib.base.schema import TinyModelConfig
from ocean_lib.training.models import build_tiny_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
ANNOTATIONS = SHARED / "benchmark_annotations"
needs_shared = pytest.mark.skipif(
    not ANNOTATIONS.is_dir(),
    reason=f"real annotation files not present at {ANNOTATIONS} (../shared is optional)",
)


def pytest_report_header() -> str:
    """Which CPU kernels torch runs (ATEN_CPU_CAPABILITY lowers them; `make test-cpu-kinds`)."""
    import torch

    return f"torch CPU kernels: {torch.backends.cpu.get_cpu_capability()}"


# Small enough to build in about a second, the real architecture all the same.
TINY = TinyModelConfig(
    vocab_size=600,
    hidden_size=64,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=128,
    vision_hidden_size=32,
    vision_depth=1,
    vision_heads=2,
    seed=0,
)


def tiny_corpus() -> list[str]:
    lines = []
    for i in range(200):
        for reward_func in ("acc", "iou"):
            lines.append(user_text(f"How many red cubes are there? Case {i}.", reward_func, 1))
        lines.append(reference_completion(f"red blue green {i}", str(i % 9)))
    return lines


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(TINY, tiny_corpus(), tmp_path_factory.mktemp("models") / "tiny", 3136, 200_704)


def grey_image(size: int, shade: int = 0) -> Image.Image:
    """A mid-grey image near the processor's mean colour (a white background stops the vision tower learning)."""
    return Image.new("RGB", (size, size), (123 - shade, 117 - shade, 104 - shade))


def mixed_prompts() -> list[Prompt]:
    """Two image sizes (16 and 36 image tokens) and a text-only prompt: every row of a batch of them is
    left-padded differently and the 3-D positions differ per row."""
    return [
        Prompt(user_text("How many red cubes are there?", "acc", 1), [grey_image(112)]),
        Prompt(user_text("How many red cubes are there? Case 7.", "acc", 1), [grey_image(168, shade=20)]),
        Prompt(user_text("How many cubes?", "acc", 0), []),
    ]


@pytest.fixture(scope="session")
def mini_data_dir(tmp_path_factory) -> Path:
    """The procedural tasks, a few records per family (train/test, pictures and text twins)."""
    from ocean_lib.base.config import load_config
    from ocean_lib.data import synthetic

    out = tmp_path_factory.mktemp("data") / "mini"
    cfg = load_config(
        None,
        [
            f"data.synthetic.output_dir={out}",
            "data.synthetic.n_train=16",
            "data.synthetic.n_test=8",
            "data.synthetic.text_only=true",
        ],
    )
    synthetic.build(cfg)
    return out


def tiny_overrides(model_dir: Path, data_dir: Path, run_root: Path, name: str = "run") -> list[str]:
    """A GRPO run small enough for a test: 4 prompts x 4 samples, 16 new tokens, 2 steps."""
    return [
        f"model.name_or_path={model_dir}",
        f"data.train_files=[{data_dir}/train]",
        "data.min_pixels=3136",
        "data.max_pixels=200704",
        "train.prompts_per_step=4",
        "rollout.n=4",
        "train.micro_batch_size=8",
        "rollout.max_new_tokens=16",
        "train.max_steps=2",
        "train.save_every=1",
        "train.lr=1e-3",
        "train.deterministic=true",
        f"logging.output_dir={run_root}",
        f"logging.run_name={name}",
        "logging.progress=false",
    ]


def v1_features():
    """The columns of the first recipe's Hugging Face dataset (problem, solution, image, has_image, reward_func)."""
    import datasets

    return datasets.Features(
        {
            "problem": datasets.Value("string"),
            "solution": datasets.Value("string"),
            "image": datasets.Image(),
            "has_image": datasets.Value("bool"),
            "reward_func": datasets.Value("string"),
        }
    )
