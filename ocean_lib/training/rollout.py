"""Rollout engine: sample ``n`` completions per prompt, with the log-probs the trainer will recompute.

One interface, two backends:

* ``hf`` (default, CPU and GPU): our own KV-cached decode loop over the transformers model. Each prompt (and
  its images) is encoded and prefilled **once**; the cache is then repeated ``n`` times for the group, so the
  vision tower never sees the same image twice in a rollout.
* ``vllm`` (GPU, ``gpu`` extra): see :mod:`ocean_lib.training.rollout_vllm`.

Both compute Qwen2.5-VL's 3-D rotary positions explicitly (:func:`ocean_lib.training.batch.mrope_positions`), as the
training forward does, so sampler and trainer log-probs agree to float precision (tested).

The log-probs returned are ``log softmax(logits / temperature)`` of the sampled token over the full
vocabulary: the policy's own probability, before top-k/top-p filtering and before the vision special tokens
are masked out. That is exactly what the trainer recomputes, so with one update per batch the PPO ratio of
the first update is exactly 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from ocean_lib.base.prompts import Prompt
from ocean_lib.base.schema import DataConfig, RolloutConfig
from ocean_lib.training.batch import RolloutBatch, encode_prompts, mrope_positions
from ocean_lib.training.engine import EngineSetup, RolloutEngine


def make_engine(
    model: Any,
    processor: Any,
    cfg: RolloutConfig,
    all_done: Callable[[bool], bool] | None = None,
    *,
    weights: Callable[[], AbstractContextManager[Any]] | None = None,
    dtype: str = "bfloat16",
    max_images_per_prompt: int = DataConfig().max_images_per_prompt,
) -> RolloutEngine:
    """The rollout engine the config selects. ``all_done``, ``weights`` (HF backend): see
    :class:`HFRolloutEngine`; ``dtype``
    (vLLM backend): the dtype of vLLM's copy of the weights (``model.inference_dtype``; the HF backend samples
    from the policy itself); ``max_images_per_prompt`` (vLLM): the most images a prompt will hold (vLLM refuses
    more)."""
    if cfg.backend == "hf":
        return HFRolloutEngine(model, processor, cfg, all_done, weights)
    if cfg.backend == "vllm":
        from ocean_lib.training.rollout_vllm import VLLMRolloutEngine

        return VLLMRolloutEngine(
            model, processor, cfg, dtype=dtype, max_images_per_prompt=max_images_per_prompt
        )
    raise ValueError(f"unknown rollout.backend {cfg.backend!r}; expected 'hf' or 'vllm'")


# ----------------------------------------------------------------------------------------------------------------
# The HF backend
# ----------------------------------------------------------------------------------------------------------------


class HFRolloutEngine(EngineSetup):
    """KV-cached sampling with transformers modules: prefill each prompt once, decode ``n`` samples per prompt.

    Under DeepSpeed ZeRO-3 one of two is given. ``weights()``: a context inside which the model holds its whole
    weights (:func:`ocean_lib.training.distributed.whole_weights_sampling`); each process samples on its own.
    ``all_done(this_process_done) -> bool``: every forward gathers weights from all processes, so a process that
    has finished keeps decoding (its rows padded) until every process has, so that all run the same forwards
    (``transformers``' ``synced_gpus``)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        cfg: RolloutConfig,
        all_done: Callable[[bool], bool] | None = None,
        weights: Callable[[], AbstractContextManager[Any]] | None = None,
    ):
        super().__init__(model, processor, cfg)
        self.all_done = all_done
        self.weights = weights or contextlib.nullcontext
        self.suppressed_ids = torch.tensor(
            self.suppressed, dtype=torch.long
        )  # indexed at every decoded token

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
        cfg, model = self.cfg, self.model
        max_new = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        device = next(model.parameters()).device
        stops = torch.tensor(self.stop_ids if stop_token_ids is None else list(stop_token_ids), device=device)
        inputs = {k: v.to(device) for k, v in encode_prompts(self.processor, prompts).items()}
        ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["mm_token_type_ids"]
        grid = inputs.get("image_grid_thw")
        pixels = inputs.get("pixel_values")

        # 1. Prefill each prompt once (this is where the images are encoded), then copy the cache n times.
        positions = mrope_positions(model, ids, mask, types, grid)
        with self.weights():  # under ZeRO-3: every weight here, gathered once (or per layer)
            was_training = model.training
            model.eval()
            from transformers import DynamicCache

            from ocean_lib.training.compat import kv_cache

            cache = DynamicCache(config=model.config)
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                pixel_values=pixels,
                image_grid_thw=grid,
                **kv_cache(model, cache),
                use_cache=True,
                logits_to_keep=1,
            )
            next_logits = out.logits[:, -1].float()
            if n > 1:
                cache.batch_repeat_interleave(n)
                next_logits = next_logits.repeat_interleave(n, 0)
            rows = len(prompts) * n
            mask = mask.repeat_interleave(n, 0)
            next_position = positions.amax(-1).repeat_interleave(n, 1) + 1  # [3, R]

            # 2. Decode: sample, record the policy log-prob, feed the token back.
            generators = None
            if seeds is not None and not greedy:
                if len(seeds) != len(prompts):
                    raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
                generators = [
                    torch.Generator(device).manual_seed(seed * 1_000 + j) for seed in seeds for j in range(n)
                ]
            tokens, logps = [], []
            done = torch.zeros(rows, dtype=torch.bool, device=device)
            seen = None  # [R, V] tokens in each sequence so far, prompt (padding included, as transformers) and all
            if repetition_penalty != 1.0:
                seen = torch.zeros(rows, next_logits.shape[-1], dtype=torch.bool, device=device)
                seen.scatter_(1, ids.repeat_interleave(n, 0), True)
            for step in range(max_new):
                if seen is not None:
                    next_logits = apply_repetition_penalty(next_logits, seen, repetition_penalty)
                token, logp = self._sample(
                    next_logits,
                    greedy=greedy,
                    allow_eos=step >= cfg.min_new_tokens,
                    generators=generators,
                    stops=stops,
                )
                token = torch.where(done, torch.full_like(token, self.pad_id), token)
                tokens.append(token)
                logps.append(torch.where(done, torch.zeros_like(logp), logp))
                stopped = torch.isin(token, stops)
                done |= stopped
                if seen is not None:
                    seen[torch.arange(rows, device=device), token] = True
                finished = bool(done.all()) or step == max_new - 1
                if self.all_done(finished) if self.all_done is not None else finished:
                    break
                mask = torch.cat([mask, (~done).long().unsqueeze(1) | stopped.long().unsqueeze(1)], 1)
                out = model(
                    input_ids=token.unsqueeze(1),
                    attention_mask=mask,
                    position_ids=next_position.unsqueeze(-1),
                    **kv_cache(model, cache),
                    use_cache=True,
                )
                next_logits = out.logits[:, -1].float()
                next_position = next_position + 1
            model.train(was_training)

        completion_ids = torch.stack(tokens, 1)
        completion_mask = _mask_through_eos(completion_ids, stops)
        texts = self.processor.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        images_per_prompt = [len(p.images) for p in prompts]
        return RolloutBatch(
            prompt_ids=ids.repeat_interleave(n, 0).cpu(),
            prompt_mask=inputs["attention_mask"].repeat_interleave(n, 0).cpu(),
            prompt_token_types=types.repeat_interleave(n, 0).cpu(),
            completion_ids=completion_ids.cpu(),
            completion_mask=completion_mask.cpu(),
            logprobs=torch.stack(logps, 1).float().cpu(),
            pixel_values=None if pixels is None else pixels.cpu(),
            image_grid_thw=None if grid is None else grid.cpu(),
            images_per_prompt=images_per_prompt,
            n=n,
            texts=texts,
            finished=torch.isin(completion_ids, stops).any(-1).tolist(),
        )

    def _sample(
        self,
        logits: torch.Tensor,
        *,
        greedy: bool,
        allow_eos: bool,
        generators: list[torch.Generator] | None = None,
        stops: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick the next token from [R, V] logits; return it and its log-prob under the (tempered) policy.

        Sampling is Gumbel-max (argmax of logits/T + Gumbel noise), which draws from softmax(logits/T) exactly
        and lets every row take its noise from its own generator.
        """
        cfg = self.cfg
        greedy = greedy or cfg.temperature == 0
        temperature = 1.0 if greedy else cfg.temperature
        policy_logp = torch.log_softmax(logits / temperature, dim=-1)
        allowed = logits.clone()
        allowed[:, self.suppressed_ids.to(logits.device)] = float("-inf")
        if not allow_eos:
            allowed[:, self.eos_id if stops is None else stops] = float("-inf")
        if greedy:
            token = allowed.argmax(-1)
        else:
            allowed = _filter_top_k_top_p(allowed / temperature, cfg.top_k, cfg.top_p)
            if generators is None:
                uniform = torch.rand_like(allowed)
            else:
                uniform = torch.stack(
                    [torch.rand(allowed.shape[1], generator=g, device=allowed.device) for g in generators]
                )
            gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
            token = (allowed + gumbel).argmax(-1)
        return token, policy_logp.gather(1, token.unsqueeze(1)).squeeze(1)


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set with probability >= top_p."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop_sorted = (
            cumulative - torch.softmax(sorted_logits, -1) >= top_p
        )  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _mask_through_eos(completion_ids: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
    """1 for every token up to and including the first stop token (all tokens if there is none), else 0."""
    is_eos = torch.isin(completion_ids, stops)
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after_eos).long()


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    r"""transformers' repetition penalty: for every token :math:`v` already in the row's sequence (``seen``,
    [R, V] bool), :math:`z_v \leftarrow z_v / p` if :math:`z_v > 0`, else :math:`z_v \cdot p`; other logits
    unchanged. With :math:`p > 1` a repeated token becomes less likely whatever the sign of its logit."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)
