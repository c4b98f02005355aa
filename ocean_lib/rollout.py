"""Rollout engine: sample ``n`` completions per prompt, with the log-probs the trainer will recompute.

One interface, two backends:

* ``hf`` (default, CPU and GPU): our own KV-cached decode loop over the transformers model. Each prompt (and
  its images) is encoded and prefilled **once**; the cache is then repeated ``n`` times for the group, so the
  vision tower never sees the same image twice in a rollout.
* ``vllm`` (GPU, ``gpu`` extra): see :mod:`ocean_lib.rollout_vllm`.

Qwen2.5-VL places tokens with 3-D rotary positions (M-RoPE: time, height, width for image tokens; equal for
text). transformers can only build them when it is given ``mm_token_type_ids``; without them it silently
falls back to 1-D positions and log-probs drift by 0.02-0.1 nats. We therefore compute positions ourselves,
with :func:`mrope_positions`, and pass them explicitly to both the sampler and the training forward, so the
two agree to float precision (tested).

The log-probs returned are ``log softmax(logits / temperature)`` of the sampled token over the full
vocabulary: the policy's own probability, before top-k/top-p filtering and before the vision special tokens
are masked out. That is exactly what the trainer recomputes, so with one update per batch the PPO ratio of
the first update is exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ocean_lib.config import RolloutConfig
from ocean_lib.prompts import Prompt, chat_messages, split_image_markers


@dataclass
class RolloutBatch:
    """``n`` completions for each of ``P`` prompts, rows grouped by prompt (row ``i`` answers prompt ``i // n``).

    Shapes: ``R = P * n`` rows; ``Lp`` prompt tokens (left-padded); ``Lc`` completion tokens (right-padded).
    """

    prompt_ids: torch.Tensor  # [R, Lp] long, left-padded
    prompt_mask: torch.Tensor  # [R, Lp] long, 1 = real token
    prompt_token_types: torch.Tensor  # [R, Lp] int, 0 text / 1 image, the processor's mm_token_type_ids
    completion_ids: torch.Tensor  # [R, Lc] long, pad after EOS
    completion_mask: torch.Tensor  # [R, Lc] long, 1 up to and including EOS
    logprobs: torch.Tensor  # [R, Lc] float32, sampler log-probs (0 where masked)
    pixel_values: torch.Tensor | None  # [sum of patches of the P prompts' images, patch_dim]
    image_grid_thw: torch.Tensor | None  # [images of the P prompts, 3]
    images_per_prompt: list[int]  # [P]
    n: int
    texts: list[str]  # [R] decoded completions, special tokens removed
    finished: list[bool]  # [R] ended with EOS (False = cut at max_new_tokens)

    @property
    def completion_lengths(self) -> list[int]:
        return self.completion_mask.sum(-1).tolist()

    @property
    def lengths(self) -> torch.Tensor:
        """[R] real tokens of each row, its prompt's (padding excluded) plus its completion's."""
        return self.prompt_mask.sum(-1) + self.completion_mask.sum(-1)

    @property
    def prompt_index(self) -> torch.Tensor:
        return torch.arange(len(self.texts)) // self.n


class RolloutEngine(Protocol):
    def generate(
        self,
        prompts: list[Prompt],
        n: int = 1,
        *,
        greedy: bool = False,
        max_new_tokens: int | None = None,
        seeds: list[int] | None = None,
    ) -> RolloutBatch:
        """Sample ``n`` completions per prompt (greedy: the argmax path, repeated ``n`` times).

        ``seeds`` (one per prompt) makes each prompt's samples a function of its seed alone, whatever else
        is in the batch and however many processes share the work; without them the global RNG is used.
        """
        ...


def make_engine(model: Any, processor: Any, cfg: RolloutConfig) -> RolloutEngine:
    """The rollout engine the config selects."""
    if cfg.backend == "hf":
        return HFRolloutEngine(model, processor, cfg)
    if cfg.backend == "vllm":
        from ocean_lib.rollout_vllm import VLLMRolloutEngine

        return VLLMRolloutEngine(model, processor, cfg)
    raise ValueError(f"unknown rollout.backend {cfg.backend!r}; expected 'hf' or 'vllm'")


# ----------------------------------------------------------------------------------------------------------------
# Shared with the trainer: inputs, positions, image selection
# ----------------------------------------------------------------------------------------------------------------


def prompt_text(processor: Any, prompt: Prompt) -> str:
    """The chat-templated text of a prompt, one ``<|vision_start|><|image_pad|><|vision_end|>`` per image."""
    return processor.apply_chat_template(
        chat_messages(prompt.content), add_generation_prompt=True, tokenize=False
    )


def encode_prompts(processor: Any, prompts: list[Prompt]) -> dict[str, torch.Tensor]:
    """Chat-template and tokenize prompts (left-padded), encoding each image once."""
    texts = [prompt_text(processor, p) for p in prompts]
    for p in prompts:
        n_markers, _ = split_image_markers(p.content)
        if n_markers != len(p.images):
            raise ValueError(
                f"prompt has {n_markers} <image> markers but {len(p.images)} images: {p.content[:80]!r}"
            )
    images = [image for p in prompts for image in p.images]
    inputs = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    if "mm_token_type_ids" not in inputs:  # text-only batches: every token is text
        inputs["mm_token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    return dict(inputs)


def mrope_positions(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_types: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
) -> torch.Tensor:
    """Qwen2.5-VL's 3-D rotary positions, shape [3, B, L] (padding positions are 0).

    Text tokens advance all three axes together; the tokens of an image take (t, h, w) grid positions. With no
    image in the batch this reduces to ordinary positions counted over the attention mask.
    """
    if image_grid_thw is None or not bool(token_types.any()):
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions.unsqueeze(0).expand(3, -1, -1)
    positions, _ = model.model.get_rope_index(
        input_ids, mm_token_type_ids=token_types, image_grid_thw=image_grid_thw, attention_mask=attention_mask
    )
    return positions


def select_images(
    pixel_values: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
    images_per_prompt: list[int],
    prompt_indices: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gather the image patches (and grids) of the given prompts, in order, repeating a prompt as often as listed.

    ``pixel_values`` is flat over patches: image ``k`` owns ``prod(image_grid_thw[k])`` consecutive rows.
    """
    if pixel_values is None or image_grid_thw is None:
        return None, None
    patches = image_grid_thw.prod(-1)
    image_blocks = list(torch.split(pixel_values, patches.tolist()))
    first_image = [0]
    for count in images_per_prompt:
        first_image.append(first_image[-1] + count)
    picked = [k for p in prompt_indices.tolist() for k in range(first_image[p], first_image[p + 1])]
    if not picked:
        return None, None
    return torch.cat([image_blocks[k] for k in picked]), image_grid_thw[picked]


# ----------------------------------------------------------------------------------------------------------------
# The HF backend
# ----------------------------------------------------------------------------------------------------------------


class HFRolloutEngine:
    """KV-cached sampling with transformers modules: prefill each prompt once, decode ``n`` samples per prompt."""

    def __init__(self, model: Any, processor: Any, cfg: RolloutConfig):
        from ocean_lib.models import vision_special_token_ids

        self.model, self.processor, self.cfg = model, processor, cfg
        tokenizer = processor.tokenizer
        self.eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = tokenizer.pad_token_id
        self.suppressed = torch.tensor(vision_special_token_ids(processor), dtype=torch.long)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[Prompt],
        n: int = 1,
        *,
        greedy: bool = False,
        max_new_tokens: int | None = None,
        seeds: list[int] | None = None,
    ) -> RolloutBatch:
        cfg, model = self.cfg, self.model
        max_new = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in encode_prompts(self.processor, prompts).items()}
        ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["mm_token_type_ids"]
        grid = inputs.get("image_grid_thw")
        pixels = inputs.get("pixel_values")

        # 1. Prefill each prompt once (this is where the images are encoded), then copy the cache n times.
        positions = mrope_positions(model, ids, mask, types, grid)
        was_training = model.training
        model.eval()
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            pixel_values=pixels,
            image_grid_thw=grid,
            cache=cache,
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
        for step in range(max_new):
            token, logp = self._sample(
                next_logits, greedy=greedy, allow_eos=step >= cfg.min_new_tokens, generators=generators
            )
            token = torch.where(done, torch.full_like(token, self.pad_id), token)
            tokens.append(token)
            logps.append(torch.where(done, torch.zeros_like(logp), logp))
            done |= token == self.eos_id
            if bool(done.all()) or step == max_new - 1:
                break
            mask = torch.cat(
                [mask, (~done).long().unsqueeze(1) | (token == self.eos_id).long().unsqueeze(1)], 1
            )
            out = model(
                input_ids=token.unsqueeze(1),
                attention_mask=mask,
                position_ids=next_position.unsqueeze(-1),
                cache=cache,
                use_cache=True,
            )
            next_logits = out.logits[:, -1].float()
            next_position = next_position + 1
        model.train(was_training)

        completion_ids = torch.stack(tokens, 1)
        completion_mask = _mask_through_eos(completion_ids, self.eos_id, self.pad_id)
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
            finished=(completion_ids == self.eos_id).any(-1).tolist(),
        )

    def _sample(
        self,
        logits: torch.Tensor,
        *,
        greedy: bool,
        allow_eos: bool,
        generators: list[torch.Generator] | None = None,
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
        allowed[:, self.suppressed.to(logits.device)] = float("-inf")
        if not allow_eos:
            allowed[:, self.eos_id] = float("-inf")
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


def _mask_through_eos(completion_ids: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """1 for every token up to and including the first EOS (all tokens if there is none), else 0."""
    is_eos = completion_ids == eos_id
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after_eos).long()
