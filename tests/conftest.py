"""Shared fixtures: a real tiny Qwen2.5-VL built offline once per test session."""

from pathlib import Path

import pytest
from PIL import Image

from ocean_lib.config import TinyModelConfig
from ocean_lib.models import build_tiny_model
from ocean_lib.prompts import reference_completion, user_text

SHARED = Path(__file__).resolve().parents[2] / "shared"
ANNOTATIONS = SHARED / "benchmark_annotations"

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
