"""What every rollout engine is: the interface the trainer and the evaluation call, and the setup they share.

The trainer drives an engine through one cycle per step, and calls each part on every engine, whatever its
backend:

1. ``generate``: sample the group's completions;
2. ``after_generate()``: give back what sampling held that the update needs (vLLM sleeps, freeing its GPU
   memory); the HF engine shares the policy's weights and memory and has nothing to give back;
3. (the update: reference log-probs, loss, optimizer step)
4. ``after_update(model)``: make the sampler's weights the policy's new ones (vLLM receives a push); the HF
   engine samples from the policy itself, so it is current already.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ocean_lib.base.prompts import Prompt
from ocean_lib.base.schema import RolloutConfig
from ocean_lib.training.batch import RolloutBatch, stop_token_ids


class RolloutEngine(Protocol):
    def generate(
        self,
        prompts: list[Prompt],
        n: int = 1,
        *,
        greedy: bool = False,
        max_new_tokens: int | None = None,
        seeds: list[int] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        repetition_penalty: float = 1.0,
    ) -> RolloutBatch:
        """Sample ``n`` completions per prompt (greedy: the argmax path, repeated ``n`` times).

        ``seeds`` (one per prompt) makes each prompt's samples a function of its seed alone, whatever else
        is in the batch and however many processes share the work; without them the global RNG is used.
        ``stop_token_ids`` end a completion (default: ``<|im_end|>`` alone); ``repetition_penalty`` is
        transformers' (:func:`ocean_lib.training.rollout.apply_repetition_penalty`; 1.0 = none), which
        ``model.generate`` takes from the checkpoint's generation config: evaluation passes both, training leaves
        them at their defaults.
        """
        ...

    def after_generate(self) -> None:
        """Called once the step's completions are sampled, before the update (step 2 above)."""
        ...

    def after_update(self, model: Any) -> None:
        """Called on every process after each optimizer step with the policy (or its wrapper) (step 4 above)."""
        ...


class EngineSetup:
    """The setup every engine shares: the policy, its processor, the rollout knobs and the token ids that end,
    pad and are never sampled in a completion. Engines inherit it, and the lifecycle's no-op defaults."""

    def __init__(self, model: Any, processor: Any, cfg: RolloutConfig):
        from ocean_lib.training.models import vision_special_token_ids

        self.model, self.processor, self.cfg = model, processor, cfg
        self.eos_id: int = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.stop_ids: list[int] = stop_token_ids(model, processor, cfg.stop_tokens)  # rollout.stop_tokens
        self.pad_id: int = processor.tokenizer.pad_token_id
        # vision special tokens (<|image_pad|>, ...) are masked out of sampling: a completion never holds one
        self.suppressed: list[int] = vision_special_token_ids(processor)

    def after_generate(self) -> None:
        pass

    def after_update(self, model: Any) -> None:
        pass
