"""The policy: load Qwen2.5-VL (the real 3B or the tiny one) and build the tiny one offline.

One loader, :func:`load_policy`, serves ``Qwen/Qwen2.5-VL-3B-Instruct`` (hub id or local directory) and the
miniature built by :func:`build_tiny_model`; the miniature is a real Qwen2.5-VL architecture with random weights,
a byte-level BPE tokenizer trained on the synthetic corpus and Qwen2-VL's chat format.

Facts about transformers 5.x that the rest of the project depends on (supported: 5.16.1, vLLM 0.33's floor, to
5.24; CI runs the suite on both ends):

* The stock ``Qwen2_5_VLProcessor`` insists on a video processor, and Qwen's video processor requires
  torchvision, which has no CPU build beside our CPU torch. :class:`Qwen2_5_VLImageTextProcessor` is the same
  processor without videos; :func:`load_policy` loads every directory through it. It saves itself under the
  stock name, as Qwen's own files do, so that a checkpoint loads wherever Qwen2.5-VL-3B-Instruct loads: in vLLM
  (which builds ``Qwen2_5_VLProcessor`` from the files) and with ``AutoProcessor`` where torchvision is installed
  (every GPU environment: vLLM requires it). Without torchvision ``AutoProcessor`` raises (no video processor);
  a custom class name in the files would be worse: transformers 5.16 hands back the bare tokenizer, no error.

* What differs between the supported transformers versions is bridged in :mod:`ocean_lib.training.compat`.

* A training forward that reproduces generation's log-probs (to ~1e-6) needs, besides ``input_ids`` and
  ``attention_mask`` (left padding, extended with ones over the completion), ``pixel_values``,
  ``image_grid_thw`` and **``mm_token_type_ids``**: the processor's per-token modality ids (0 text, 1 image,
  2 video), extended with zeros over the completion. The model builds its 3-D M-RoPE positions from them;
  without them it silently falls back to 1-D positions and log-probs drift by 0.01-0.1 nats.
  (``generate`` also records ``model.model.rope_deltas``; a later forward with ``input_ids`` and no cache
  recomputes the positions, so that state does not leak into training.)

* ``generate(output_scores=True)`` returns logits after the logits processors (suppressed vision tokens at
  -inf, temperature, top-k/p): their log-softmax is the distribution sampled from, not the model's.
  ``output_logits=True`` gives the raw logits, which the training forward reproduces; masking the suppressed
  tokens in the forward's logits reproduces the scores.
"""

from __future__ import annotations

import difflib
import itertools
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
)
from transformers.image_utils import SizeDict

from ocean_lib.base.io import make_readable
from ocean_lib.base.paths import HUB_FILE_PATTERNS
from ocean_lib.base.schema import TinyModelConfig

# Qwen's special tokens, in Qwen's order; <|endoftext|> pads, <|im_end|> ends a turn.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"
# Tokens a policy must never sample: each one changes how the next forward splices image features.
VISION_SPECIAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
# The output format's tags, one token each. They are ordinary added tokens (not special), so decoding with
# skip_special_tokens keeps them for the reward parser. BPE alone could not merge them: the byte-level
# pre-tokenizer splits "<think>" into "<", "think", ">" before any merge is learned.
REASONING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
BYTE_ALPHABET_SIZE = 256

# Qwen2-VL's chat format, written for this project: a default system turn unless the conversation starts with
# one, each turn wrapped in <|im_start|>role ... <|im_end|>, and every image part rendered as the vision
# placeholder the processor expands to one <|image_pad|> per merged patch. Parts keep the caller's order
# (ocean_lib.base.prompts.chat_messages puts images before the text, as Ocean-R1 did).
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}"
    "{% else %}"
    "{{ raise_exception('unsupported message part type: ' ~ part['type']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

QWEN2_5_VL_MODEL_TYPE = "qwen2_5_vl"


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer and processor
# ----------------------------------------------------------------------------------------------------------------


def build_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` with Qwen's special tokens, chat template and left padding.

    ``vocab_size`` counts everything: 256 byte symbols, Qwen's 7 special tokens, the 4 reasoning tags and the
    learned merges. A corpus with few distinct pairs may stop short of it; the result is then smaller.
    Digits are split one per token (as Qwen does), so numbers tokenise the same wherever they appear; unlike
    Qwen's, merges may span words (see below).
    """
    fixed = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS) + len(REASONING_TAGS)
    if vocab_size <= fixed:
        raise ValueError(
            f"vocab_size={vocab_size} must exceed {fixed} (bytes, special tokens and reasoning tags)"
        )
    bpe = Tokenizer(models.BPE())
    # No word-splitting regex: merges may cross spaces, so the corpus' recurring phrases (the instruction,
    # the system turn, "objects left to right") become a few tokens each. For a model this small, short
    # sequences are most of the speed. Digits stay one per token.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(REASONING_TAGS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The chat template's own words occur in every prompt: let BPE see them as often as the corpus' lines.
    template_words = ["system\nYou are a helpful assistant.", "\nuser\n", "\nassistant\n"]
    lines = list(corpus)
    bpe.train_from_iterator(itertools.chain(lines, template_words * max(1, len(lines) // 3)), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",  # generation appends on the right, so prompts line up on the right
        clean_up_tokenization_spaces=False,  # decode(encode(text)) must give the text back
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.add_tokens(list(REASONING_TAGS))
    return tokenizer


# The processor class Qwen's checkpoints name (processor_config.json / preprocessor_config.json, tokenizer_config.json).
STOCK_PROCESSOR_CLASS = Qwen2_5_VLProcessor.__name__
STOCK_VIDEO_PROCESSOR_CLASS = (
    "Qwen2VLVideoProcessor"  # transformers' Qwen2.5-VL video processor (torchvision)
)


class Qwen2_5_VLImageTextProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor for images and text only: no video processor, hence no torchvision.

    Saved directories name the stock class (see the module docstring), like Qwen's own files.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop(
            "video_processor", None
        )  # a saved directory's video settings (see to_dict): no videos here
        super().__init__(
            image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs
        )

    def to_dict(self) -> dict[str, Any]:
        """What ``save_pretrained`` writes to processor_config.json: the stock class's name, and video settings.

        The stock processor loads a video processor too. Qwen's files have no video config, and transformers then
        reads the image processor's ``preprocessor_config.json`` for videos; ours are nested in
        processor_config.json, so the same image settings are written for videos (without them vLLM fails on
        the directory: "Can't load video processor").
        """
        output = super().to_dict()
        video = {k: v for k, v in output["image_processor"].items() if k != "image_processor_type"}
        return output | {
            "processor_class": STOCK_PROCESSOR_CLASS,
            "video_processor": video | {"video_processor_type": STOCK_VIDEO_PROCESSOR_CLASS},
        }

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> list[str]:
        files = super().save_pretrained(save_directory, **kwargs)
        # The tokenizer was saved naming this class; save it again naming the stock one.
        self.tokenizer._set_processor_class(STOCK_PROCESSOR_CLASS)
        self.tokenizer.save_pretrained(save_directory)
        return files


def vision_special_token_ids(processor: Any) -> list[int]:
    """Ids of ``<|image_pad|>``, ``<|video_pad|>``, ``<|vision_start|>``, ``<|vision_end|>`` (never to be sampled)."""
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids(list(VISION_SPECIAL_TOKENS))
    missing = [
        token
        for token, i in zip(VISION_SPECIAL_TOKENS, ids, strict=True)
        if i in (None, tokenizer.unk_token_id)
    ]
    if missing:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} lacks Qwen's vision tokens {missing}")
    return ids


# ----------------------------------------------------------------------------------------------------------------
# The tiny model
# ----------------------------------------------------------------------------------------------------------------


def tiny_model_config(tiny: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of the given shape, laid out like the 3B's.

    Like the 3B: tied input/output embeddings, RMSNorm eps 1e-6, rope theta 1e6, a vision tower with 14-px
    patches, 2x2 patch merging, temporal patch 2 and 112-px attention windows whose last block attends
    globally, projecting into the text width. M-RoPE splits the rotary half-dimension (head_dim / 2) into
    temporal/height/width sections in the 3B's proportions 1/4, 3/8, 3/8 ([16, 24, 24] for head_dim 128).
    The vision MLP is 4x its width (a standard ViT ratio; the 3B's is 2.7x). The text vocabulary is the
    tokenizer's exact size, so a randomly initialised model cannot sample an id the tokenizer cannot decode.
    """
    if tiny.hidden_size % tiny.num_heads or (tiny.hidden_size // tiny.num_heads) % 2:
        raise ValueError(
            f"hidden_size={tiny.hidden_size} must split into num_heads={tiny.num_heads} heads of even size"
        )
    if tiny.num_heads % tiny.num_kv_heads:
        raise ValueError(f"num_heads={tiny.num_heads} is not divisible by num_kv_heads={tiny.num_kv_heads}")
    if tiny.vision_hidden_size % tiny.vision_heads:
        raise ValueError(
            f"vision_hidden_size={tiny.vision_hidden_size} is not divisible by vision_heads={tiny.vision_heads}"
        )
    rotary_half = tiny.hidden_size // tiny.num_heads // 2
    temporal = rotary_half // 4
    height = (rotary_half - temporal) // 2
    mrope_section = [temporal, height, rotary_half - temporal - height]
    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)), strict=True))
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": tiny.hidden_size,
        "intermediate_size": tiny.intermediate_size,
        "num_hidden_layers": tiny.num_layers,
        "num_attention_heads": tiny.num_heads,
        "num_key_value_heads": tiny.num_kv_heads,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": tiny.rope_theta,
            "mrope_section": mrope_section,
        },
        "bos_token_id": ids[PAD_TOKEN],
        "eos_token_id": ids[EOS_TOKEN],
        "pad_token_id": ids[PAD_TOKEN],
    }
    vision_config = {
        "depth": tiny.vision_depth,
        "hidden_size": tiny.vision_hidden_size,
        "intermediate_size": 4 * tiny.vision_hidden_size,
        "num_heads": tiny.vision_heads,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [tiny.vision_depth - 1],
        "out_hidden_size": tiny.hidden_size,
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def build_tiny_model(
    tiny: TinyModelConfig, corpus: Iterable[str], out_dir: str | Path, min_pixels: int, max_pixels: int
) -> Path:
    """Build the miniature Qwen2.5-VL (tokenizer, processor, random weights) and save it to ``out_dir``.

    The same ``tiny`` (its seed included) and corpus give the same files. The directory appears complete or
    not at all: everything is written to a sibling temporary directory that is then renamed. An existing
    ``out_dir`` is an error, never overwritten.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it to build the tiny model again")
    tokenizer = build_tokenizer(corpus, tiny.vocab_size)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    processor = Qwen2_5_VLImageTextProcessor(
        image_processor, tokenizer, chat_template=tokenizer.chat_template
    )
    config = tiny_model_config(tiny, tokenizer)
    with torch.random.fork_rng(devices=[]):  # seed the initial weights without touching the caller's RNG
        torch.manual_seed(tiny.seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    # Like Qwen's: a turn ends at <|im_end|>; <|endoftext|> also stops and pads finished sequences.
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        make_readable(staging)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def load_policy(
    name_or_path: str,
    *,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    weights: bool = True,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLImageTextProcessor]:
    """Load a Qwen2.5-VL policy and its processor from a local directory or a hub id.

    ``weights=False``: the model's structure, config and generation config on the meta device, no weights (an
    evaluation with vLLM, which loads the weights itself, keeps no second copy on the GPU or in host memory).

    A hub id is taken from the Hugging Face cache when present, otherwise downloaded. ``min_pixels`` and
    ``max_pixels`` (when given) override the image processor's resize limits: images are scaled, aspect
    kept, so that their pixel count lies within them.
    """
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype name such as 'float32' or 'bfloat16'")
    model_dir = _local_model_dir(name_or_path)
    if weights:
        model = AutoModelForImageTextToText.from_pretrained(
            model_dir, dtype=torch_dtype, attn_implementation=attn_implementation
        )
    else:
        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config, dtype=torch_dtype)
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    if model.config.model_type != QWEN2_5_VL_MODEL_TYPE:
        raise ValueError(
            f"{name_or_path}: model_type is {model.config.model_type!r}; this project trains Qwen2.5-VL "
            f"({QWEN2_5_VL_MODEL_TYPE!r}) models"
        )
    # Not AutoProcessor: the directory names the stock processor, which needs torchvision (see top).
    processor = Qwen2_5_VLImageTextProcessor.from_pretrained(model_dir)
    vision_special_token_ids(processor)  # a tokenizer without Qwen's vision tokens cannot place images
    if min_pixels is not None or max_pixels is not None:
        size = processor.image_processor.size
        processor.image_processor.size = SizeDict(
            shortest_edge=size.shortest_edge if min_pixels is None else min_pixels,
            longest_edge=size.longest_edge if max_pixels is None else max_pixels,
        )
    return model, processor


def _looks_like_a_path(name_or_path: str) -> bool:
    """True for what cannot be a hub id (``org/name``): an absolute or ./ ~ path, more than one ``/``, or a first
    component that is a local directory (``outputs/final``)."""
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path:
        return True
    return "/" in name_or_path and Path(name_or_path.split("/")[0]).is_dir()


def _local_model_dir(name_or_path: str) -> Path:
    """The local directory holding ``name_or_path``: itself, or the hub id's snapshot (cached or downloaded)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if _looks_like_a_path(name_or_path):  # a mistyped directory: the hub has nothing to do with it
        parent = next(p for p in path.absolute().parents if p.is_dir())
        near = difflib.get_close_matches(
            path.absolute().relative_to(parent).parts[0], [c.name for c in parent.iterdir() if c.is_dir()]
        )
        hint = (
            f"; {parent} has {', '.join(near)}" if near else f"; the deepest existing directory is {parent}"
        )
        raise FileNotFoundError(f"cannot load the model {name_or_path!r}: no such directory{hint}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=HUB_FILE_PATTERNS))
    # HFValidationError: neither a directory nor a valid repo id; OSError: offline, unreachable or not found.
    except (HFValidationError, OSError) as error:
        raise FileNotFoundError(
            f"cannot load the model {name_or_path!r}: it is not a local directory, and the Hugging Face hub did "
            f"not provide it ({type(error).__name__}: {error}). Without network access, download it elsewhere "
            f"(`hf download {name_or_path} --local-dir DIR`), copy DIR to this machine and set "
            "model.name_or_path to DIR, or put the download in this machine's Hugging Face cache (HF_HOME)."
        ) from error
