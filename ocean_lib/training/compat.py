"""What the rest of the training code needs from transformers and its wrappers, the same on every supported
version (transformers 5.16.1, vLLM 0.33's floor, to 5.24; CI runs the suite on both ends). Each shim names the
versions it bridges; when the floor moves past them, the shim goes.

* The KV-cache argument of a model's forward is ``cache`` in transformers 5.24 and ``past_key_values`` in 5.20
  and earlier; the forward's ``**kwargs`` swallows the other name and runs without the cache, silently
  (:func:`kv_cache`).
* ``is_activation_checkpointing`` is 5.24's name for 5.20's ``is_gradient_checkpointing``
  (:func:`activation_checkpointing` reads the layers' own flag, which both set).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ocean_lib.training.lora import unwrap_peft


def kv_cache(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """``{argument name: cache}`` for the forward of ``model`` (a transformers model, or a PEFT model around one):
    ``cache`` (transformers 5.24) or ``past_key_values`` (5.20 and earlier), read from the signature because the
    wrong name is swallowed without an error."""
    parameters = inspect.signature(unwrap_peft(model).forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return {name: cache}
    raise TypeError(f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`")


def activation_checkpointing(model: torch.nn.Module) -> bool:
    """Whether any layer of ``model`` recomputes its activations in backward (transformers' own test, which
    5.24 calls ``is_activation_checkpointing`` and 5.20 ``is_gradient_checkpointing``)."""
    return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())
