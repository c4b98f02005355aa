"""LoRA for users with fewer GPUs: low-rank adapters on the language model's linear layers (PEFT).

With ``model.lora_rank > 0`` the trainer freezes the policy's weights and trains, for each targeted linear layer
``W``, two small matrices ``A`` (r × in) and ``B`` (out × r), ``B`` starting at zero:

    W' = W + (lora_alpha / r) · B A

What changes elsewhere, and why:

* The KL reference needs no second copy of the model: it *is* the policy with its adapters switched off.
* Checkpoints hold the merged weights ``W'`` in the plain Hugging Face layout (so evaluation, stage 2 and vLLM
  load them like any checkpoint) and the adapter itself under ``adapter/`` (PEFT's format), from which a killed
  run resumes exactly: the frozen weights come from ``model.name_or_path`` again.
* Adapter dropout is fixed at 0: dropout would make the training forward differ from the sampler's, and the
  importance ratio of the first update would no longer be 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

ADAPTER_DIR = "adapter"
"""A checkpoint's subdirectory holding the LoRA adapter (PEFT's ``save_pretrained`` layout)."""

_PEFT_PREFIX = "base_model.model."


def attach_lora(model: Any, rank: int, alpha: float, target_modules: str, adapter: Path | None = None) -> Any:
    """Wrap ``model`` in a PEFT model whose only trainable parameters are the adapters.

    ``adapter``: a checkpoint's ``adapter/`` directory to resume from; otherwise fresh adapters (``B = 0``, so
    the wrapped model computes exactly what ``model`` does; ``A`` is drawn from torch's global generator).
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter is not None:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=target_modules, lora_dropout=0.0, bias="none"
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # PEFT's message does not say which knob to change
        raise ValueError(f"model.lora_target_modules={target_modules!r}: {error}") from error


def peft_model(model: Any) -> Any | None:
    """The PEFT model inside DDP/DeepSpeed wrappers, or None when the policy has no adapters."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model if _is_peft(model) else None


def unwrap_peft(model: Any) -> Any:
    """The transformers model inside ``model`` if ``model`` itself is a PEFT model (its LoRA layers, injected in
    place, stay active), else ``model`` unchanged. Other wrappers, such as a DeepSpeed engine, are not looked into."""
    return model.get_base_model() if _is_peft(model) else model


def _is_peft(model: Any) -> bool:
    # Only attach_lora makes PEFT models, after importing peft: runs without LoRA never pay for that import.
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def merged_state_dict(weights: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A PEFT model's state dict → the plain model's, with ``W + scaling · B A`` in place of each adapted ``W``.

    Pure tensor work on a full (for ZeRO-3: gathered) state dict; the live model is not touched, so saving never
    perturbs the frozen weights (merging into them and subtracting again would not round-trip exactly).
    """
    merged: dict[str, torch.Tensor] = {}
    for name, value in weights.items():
        if ".lora_" in name:
            continue
        plain = name.removeprefix(_PEFT_PREFIX)
        if ".base_layer." in plain:
            layer = name[: name.index(".base_layer.")]
            plain = plain.replace(".base_layer.", ".")
            if plain.endswith(".weight"):
                down = weights[f"{layer}.lora_A.default.weight"].float()
                up = weights[f"{layer}.lora_B.default.weight"].float()
                value = (value.float() + scaling * (up @ down)).to(value.dtype)
        merged[plain] = value
    return merged
