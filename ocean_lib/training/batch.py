"""The batch a rollout engine hands the trainer, and the encoding both sides share.

A :class:`RolloutBatch` holds ``n`` sampled completions per prompt with everything the training forward needs to
see exactly what the sampler saw: the chat-templated prompt tokens, the processor's token types, the image
patches (each prompt's images once) and the sampler's log-probs. Both rollout engines (:mod:`ocean_lib.training.rollout`,
:mod:`ocean_lib.training.rollout_vllm`) build one; the training forward (:mod:`ocean_lib.training.forward`) reads it; supervised
warm-start steps build one from reference completions (:func:`teacher_forced_batch`).

Qwen2.5-VL places tokens with 3-D rotary positions (M-RoPE: time, height, width for image tokens; equal for
text). transformers can only build them when it is given ``mm_token_type_ids``; without them it silently
falls back to 1-D positions and log-probs drift by 0.02-0.1 nats. We therefore compute positions ourselves,
with :func:`mrope_positions`, and pass them explicitly to both the sampler and the training forward, so the
two agree to float precision (tested).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ocean_lib.base.prompts import Prompt, chat_messages, split_image_markers


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


def prompt_text(processor: Any, prompt: Prompt) -> str:
    """The chat-templated text of a prompt, one ``<|vision_start|><|image_pad|><|vision_end|>`` per image."""
    return processor.apply_chat_template(
        chat_messages(prompt.content, prompt.system, prompt.keep_whitespace),
        add_generation_prompt=True,
        tokenize=False,
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


def group_rows(n: int, prompts: list[int]) -> torch.Tensor:
    """The rows of the groups of ``prompts``, in that order (row ``i`` answers prompt ``i // n``)."""
    return torch.tensor([p * n + j for p in prompts for j in range(n)], dtype=torch.long)


def select_groups(batch: RolloutBatch, prompts: list[int]) -> RolloutBatch:
    """The batch of the groups of ``prompts`` alone (their rows, their prompts' images), its columns trimmed to
    those rows' longest prompt and completion: what another process needs to train on them."""
    rows = group_rows(batch.n, prompts)
    prompt_width = int(batch.prompt_mask[rows].sum(-1).max()) if len(rows) else 0
    width = int(batch.completion_mask[rows].sum(-1).max()) if len(rows) else 0
    start = batch.prompt_ids.shape[1] - prompt_width  # left-padded: a prompt's tokens are its last columns
    pixel_values, grid = select_images(
        batch.pixel_values,
        batch.image_grid_thw,
        batch.images_per_prompt,
        torch.tensor(prompts, dtype=torch.long),
    )
    return RolloutBatch(
        prompt_ids=batch.prompt_ids[rows, start:],
        prompt_mask=batch.prompt_mask[rows, start:],
        prompt_token_types=batch.prompt_token_types[rows, start:],
        completion_ids=batch.completion_ids[rows, :width],
        completion_mask=batch.completion_mask[rows, :width],
        logprobs=batch.logprobs[rows, :width],
        pixel_values=pixel_values,
        image_grid_thw=grid,
        images_per_prompt=[batch.images_per_prompt[p] for p in prompts],
        n=batch.n,
        texts=[batch.texts[i] for i in rows.tolist()],
        finished=[batch.finished[i] for i in rows.tolist()],
    )


def join_groups(parts: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """One batch of the groups of ``parts`` in order (the same ``n``): prompts left-padded and completions
    right-padded with ``pad_id`` (mask 0) to the longest, image patches concatenated in prompt order."""

    def padded(tensors: list[torch.Tensor], value: float, left: bool) -> torch.Tensor:
        width = max(t.shape[1] for t in tensors)
        out = []
        for t in tensors:
            pad = t.new_full((t.shape[0], width - t.shape[1]), value)
            out.append(torch.cat([pad, t] if left else [t, pad], 1))
        return torch.cat(out)

    with_images = [p for p in parts if p.pixel_values is not None]
    return RolloutBatch(
        prompt_ids=padded([p.prompt_ids for p in parts], pad_id, left=True),
        prompt_mask=padded([p.prompt_mask for p in parts], 0, left=True),
        prompt_token_types=padded([p.prompt_token_types for p in parts], 0, left=True),
        completion_ids=padded([p.completion_ids for p in parts], pad_id, left=False),
        completion_mask=padded([p.completion_mask for p in parts], 0, left=False),
        logprobs=padded([p.logprobs for p in parts], 0.0, left=False),
        pixel_values=torch.cat([p.pixel_values for p in with_images]) if with_images else None,
        image_grid_thw=torch.cat([p.image_grid_thw for p in with_images]) if with_images else None,
        images_per_prompt=[count for p in parts for count in p.images_per_prompt],
        n=parts[0].n,
        texts=[text for p in parts for text in p.texts],
        finished=[done for p in parts for done in p.finished],
    )


def stop_token_ids(model: Any, processor: Any, which: Literal["im_end", "generation_config"]) -> list[int]:
    """The token ids that end a completion: ``<|im_end|>`` alone, or every eos id of the model's generation config
    (Qwen2.5-VL: ``<|im_end|>`` and ``<|endoftext|>``; vLLM stops at these by default, and verl masks through the
    first of either). The first id is ``<|im_end|>``, the turn's end."""
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    if which == "im_end":
        return [im_end]
    if which != "generation_config":
        raise ValueError(f"unknown stop tokens {which!r}; expected 'im_end' or 'generation_config'")
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return [im_end, *(i for i in eos if i != im_end)]


def texts_with_special_tokens(tokenizer: Any, batch: RolloutBatch) -> list[str]:
    """Each completion's tokens up to and including its stop token, decoded with special tokens kept: the text
    verl's reward manager scores (``tokenizer.decode(valid_response_ids)``: a finished one ends in ``<|im_end|>``)."""
    return [
        tokenizer.decode(ids[:length].tolist(), skip_special_tokens=False)
        for ids, length in zip(batch.completion_ids, batch.completion_lengths, strict=True)
    ]


def truncate_prompts_left(batch: RolloutBatch, max_tokens: int) -> tuple[RolloutBatch, int]:
    """The batch as the training forward sees it when every prompt keeps only its last ``max_tokens`` tokens, and
    how many rows were cut: TRL 0.14's ``prompt_ids[:, -max_prompt_length:]`` (Ocean-R1's first recipe), where
    the sampler had seen the whole prompt. Left padding makes it a cut of leading columns. A cut through image
    tokens raises ``ValueError`` (the original's forward failed on it too: its image features no longer fit)."""
    width = batch.prompt_ids.shape[1]
    if width <= max_tokens:
        return batch, 0
    drop = width - max_tokens
    cut_rows = batch.prompt_mask[:, :drop].any(-1)
    cut_images = (batch.prompt_mask[:, :drop] * batch.prompt_token_types[:, :drop]).any(-1)
    if cut_images.any():
        row = int(cut_images.nonzero()[0])
        raise ValueError(
            f"row {row}: keeping the last {max_tokens} prompt tokens (data.max_prompt_tokens) would cut its image "
            f"tokens ({int(batch.prompt_mask[row].sum())} prompt tokens); raise the limit or drop such prompts"
        )
    truncated = dataclasses.replace(
        batch,
        prompt_ids=batch.prompt_ids[:, drop:],
        prompt_mask=batch.prompt_mask[:, drop:],
        prompt_token_types=batch.prompt_token_types[:, drop:],
    )
    return truncated, int(cut_rows.sum())


def teacher_forced_batch(processor: Any, prompts: list[Prompt], completions: list[str]) -> RolloutBatch:
    """A RolloutBatch (n = 1) holding given completions, so SFT uses the same forward as GRPO."""
    inputs = encode_prompts(processor, prompts)
    tokenizer = processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text in completions]
    width = max(map(len, ids))
    completion_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        completion_ids[i, : len(row)] = torch.tensor(row)
        completion_mask[i, : len(row)] = 1
    return RolloutBatch(
        prompt_ids=inputs["input_ids"],
        prompt_mask=inputs["attention_mask"],
        prompt_token_types=inputs["mm_token_type_ids"],
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=torch.zeros(completion_ids.shape),
        pixel_values=inputs.get("pixel_values"),
        image_grid_thw=inputs.get("image_grid_thw"),
        images_per_prompt=[len(p.images) for p in prompts],
        n=1,
        texts=completions,
        finished=[True] * len(completions),
    )
