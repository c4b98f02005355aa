"""The memory model of docs/real_scale.md (``ocean_lib.training.memory``) against the peak measured on CPU.

A small Qwen2.5-VL (2 layers, width 128) with a 32k vocabulary, so that the output layer weighs as it does at 3B/7B
scale, runs one training micro-batch's forward and backward (``forward.completion_logprobs``, gradient
checkpointing, 8 sequences of ~300 tokens) in a fresh process. Measured: the peak resident memory it adds (Linux
``VmHWM``, reset before the micro-batch; glibc's mmap threshold pinned so that freed tensors leave at once). The
model must predict it within a factor of 1.5 either way; and the micro-batch's full-vocabulary logits, as the
trainer formed them before, must cost at least the two fp32 copies (logits and gradient) that the chunks save.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ocean_lib.training.memory import QWEN25_VL, GiB, ModelShape, activation_bytes, per_process_bytes

MEASURE = textwrap.dedent(
    """
    import json, re, sys
    from pathlib import Path
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from ocean_lib.training import grpo
    from ocean_lib.training.batch import teacher_forced_batch
    from ocean_lib.training.forward import completion_logprobs
    from ocean_lib.training.models import load_policy
    from ocean_lib.base.prompts import Prompt, user_text

    def resident(field):
        return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    def peak_added(run):
        Path("/proc/self/clear_refs").write_text("5")
        before = resident("VmRSS")
        run()
        return resident("VmHWM") - before

    torch.set_num_threads(1)
    _, processor = load_policy(sys.argv[1])
    config = load_policy(sys.argv[1])[0].config
    text = config.text_config
    text.vocab_size, text.hidden_size, text.intermediate_size = 32768, 128, 256
    text.num_attention_heads, text.num_key_value_heads = 2, 1
    text.rope_parameters["mrope_section"] = [8, 12, 12]  # sums to head_dim / 2 = 32
    config.vision_config.out_hidden_size = 128
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    answers = [" ".join(str((i * k) % 10) for k in range(280)) for i in range(8)]
    batch = teacher_forced_batch(processor, [Prompt(user_text("Count.", "acc", 0), [])] * 8, answers)

    def chunked():
        logp, _, mask = completion_logprobs(model, model, batch, torch.arange(8), temperature=1.0)
        (logp * mask).sum().backward()

    def full_logits():  # the whole micro-batch's logits at once, as the trainer formed them before
        ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
        mask = torch.cat([batch.prompt_mask, batch.completion_mask], 1)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=batch.completion_ids.shape[1] + 1).logits
        grpo.token_logprobs(logits[:, :-1], batch.completion_ids).sum().backward()

    measured = {"chunked": peak_added(chunked)}
    model.zero_grad(set_to_none=True)
    measured["full_logits"] = peak_added(full_logits)
    text = model.config.get_text_config()
    json.dump({
        **measured,
        "params": sum(p.numel() for p in model.parameters()),
        "hidden": text.hidden_size, "layers": text.num_hidden_layers,
        "intermediate": text.intermediate_size, "vocab": text.vocab_size,
        "tokens": int(batch.lengths.max()) * 8, "completion": int(batch.completion_mask.sum(-1).max()) * 8,
    }, sys.stdout)
    """
)


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak memory"
)
def test_the_memory_model_predicts_the_peak_of_a_training_micro_batch(tiny_model_dir):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tiny_model_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    shape = ModelShape(run["params"], run["hidden"], run["layers"], run["intermediate"], run["vocab"])
    grads = 4 * shape.params  # the first backward allocates every .grad
    predicted = grads + sum(
        activation_bytes(shape, run["tokens"], run["completion"], 256, dtype_bytes=4).values()
    )
    assert predicted / 1.5 < run["chunked"] < predicted * 1.5, (run, predicted)
    full_logits_and_gradient = 2 * run["completion"] * shape.vocab * 4
    assert run["full_logits"] > grads + full_logits_and_gradient > 3 * run["chunked"], run


@pytest.mark.parametrize(
    ("size", "zero_stage", "reference", "total_gib"),
    [
        ("3B", 3, "sharded", 22.9),
        ("3B", 2, "sharded", 27.2),
        ("7B", 3, "offload", 38.7),
        ("7B", 2, "offload", 50.3),
    ],
)
def test_the_docs_memory_table_is_what_the_model_computes(size, zero_stage, reference, total_gib):
    """docs/real_scale.md, "The memory of one GPU", rows "as shipped": 8 GPUs, micro-batches of at most 32,768
    tokens, 8 responses of 4,096 tokens."""
    parts = per_process_bytes(
        QWEN25_VL[size],
        world=8,
        zero_stage=zero_stage,
        tokens=32768,
        completion_tokens=8 * 4096,
        reference=reference,
    )
    assert round(sum(parts.values()) / GiB, 1) == total_gib
