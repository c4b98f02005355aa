"""The memory of one training process, by component: the model behind docs/real_scale.md's table.

For a policy of ``P`` parameters (text width ``H``, ``L`` decoder layers, MLP width ``I``, vocabulary ``V``)
trained by ``W`` processes on a micro-batch of ``T`` tokens, ``C`` of them completion tokens, with gradient
checkpointing, in bytes:

=================  ==============================================================================================
weights            ``w·P`` (no sharding, ZeRO-1/2); ZeRO-3: ``w·P/W`` plus the weights gathered at once,
                   at most ``w·min(P, max_live)`` (``stage3_max_live_parameters``)
master weights     ``4·P/W`` when the weights are bf16 (DeepSpeed's fp32 copy; fp32 weights are their own master)
optimizer          ``8·P`` (AdamW's two fp32 moments), ``/W`` from ZeRO-1
gradients          ``4·P`` (fp32: ``grad_accum_dtype``, or fp32 weights), ``/W`` from ZeRO-2
reference          ``r·P`` on the device; ``r·P/W`` as a ZeRO-3 engine; 0 offloaded to host memory, or on the CPU
checkpoints        ``T·H·a·L``: each decoder layer's input, kept for the backward's recomputation
layer              ``T·(8·H + 6·I)·a``: one decoder layer's activations and their gradients while it is recomputed
logits             ``c·V·(a + 8) + C·H·a``: one chunk of ``c`` positions' logits and two fp32 temporaries (the
                   upcast, temperature-scaled logits and ``logsumexp``'s exponentials, or their gradient), and the
                   completion positions' final hidden states (:func:`ocean_lib.training.grpo.token_logprobs`)
head gradient      ``2·V·H·4``: the output layer's weight gradient of one chunk and the sum it is added to
=================  ==============================================================================================

Before the chunks, a micro-batch's full-vocabulary logits and their gradient were held at once:
``2·C·V·a``, 20 GB at 7B for 8 sequences of 4,096 completion tokens in bf16.

``w``, ``r``, ``a``: bytes per weight, reference weight and activation (2 for bf16, 4 for fp32). The layer
coefficient counts a Qwen2 decoder layer's saved tensors (norm outputs, q/k/v, attention output: ~6 H; gate, up,
activation, product: 4 I) plus the gradients alive while it is differentiated (~2 H, 2 I). Flash attention needs
no ``T × T`` scores. ``tests/test_memory.py`` checks the activation terms against the peak measured on CPU for a
small model; ``gpu-check`` prints the estimate next to the measured GPU peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

GiB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know about a policy."""

    params: float
    hidden: int
    layers: int
    intermediate: int
    vocab: int

    @classmethod
    def of_config(cls, config: Any, params: float) -> ModelShape:
        text = config.get_text_config()
        return cls(params, text.hidden_size, text.num_hidden_layers, text.intermediate_size, text.vocab_size)

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        return cls.of_config(model.config, float(sum(p.numel() for p in model.parameters())))


# Qwen2.5-VL's published text configurations (config.json of the hub repositories) and parameter counts;
# ocean_lib.cli.gpu_check builds the whole models from them (tested against the counts).
QWEN25_VL_WIDTHS = {
    "3B": dict(
        params=3_754_622_976,
        hidden=2048,
        intermediate=11008,
        layers=36,
        heads=16,
        kv_heads=2,
        vocab=151936,
        tied=True,
    ),
    "7B": dict(
        params=8_292_166_656,
        hidden=3584,
        intermediate=18944,
        layers=28,
        heads=28,
        kv_heads=4,
        vocab=152064,
        tied=False,
    ),
}
QWEN25_VL = {
    size: ModelShape(w["params"], w["hidden"], w["layers"], w["intermediate"], w["vocab"])
    for size, w in QWEN25_VL_WIDTHS.items()
}


def activation_bytes(
    shape: ModelShape, tokens: int, completion_tokens: int, chunk: int, dtype_bytes: int = 2
) -> dict[str, float]:
    """The micro-batch's share: checkpoints, one recomputed layer, the log-probs' logits and the output layer's
    gradient (see the module)."""
    a = dtype_bytes
    return {
        "checkpoints": tokens * shape.hidden * a * shape.layers,
        "layer": tokens * (8 * shape.hidden + 6 * shape.intermediate) * a,
        "logits": min(chunk, completion_tokens) * shape.vocab * (a + 8)
        + completion_tokens * shape.hidden * a,
        "head_gradient": 2 * shape.vocab * shape.hidden * 4,
    }


def per_process_bytes(
    shape: ModelShape,
    *,
    world: int,
    zero_stage: int,
    tokens: int,
    completion_tokens: int,
    chunk: int = 256,
    weight_bytes: int = 2,
    reference: Literal["device", "sharded", "offload", "none"] = "sharded",
    reference_bytes: int = 2,
    max_live_params: float = 1e9,
    gradient_bytes: int = 4,
) -> dict[str, float]:
    """Peak bytes of one training process during a training micro-batch, by component (see the module).
    ``gradient_bytes``: 4 under DeepSpeed (``grad_accum_dtype: fp32``) or with fp32 weights; 2 for a plain bf16
    model, whose gradients take its dtype."""
    p = shape.params
    weights = weight_bytes * p
    if zero_stage >= 3:
        weights = weight_bytes * (p / world + min(p, max_live_params))
    return {
        "weights": weights,
        "master_weights": 4 * p / world if weight_bytes == 2 else 0.0,
        "optimizer": 8 * p / (world if zero_stage >= 1 else 1),
        "gradients": gradient_bytes * p / (world if zero_stage >= 2 else 1),
        "reference": {"device": reference_bytes * p, "sharded": reference_bytes * p / world}.get(
            reference, 0.0
        ),
        **activation_bytes(shape, tokens, completion_tokens, chunk, dtype_bytes=weight_bytes),
    }
