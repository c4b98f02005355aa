"""The schema of a run: one typed config tree, every knob a dataclass field with a type, a default and a
one-line ``help`` (unit; Ocean-R1's value where ours differs), and the cross-field invariants
(:meth:`RunConfig.validate`). Reading params files into it is :mod:`ocean_lib.base.config`'s job.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A params file or override that does not describe a valid run."""


def knob(default: Any, help: str) -> Any:  # noqa: A002 - "help" mirrors TRL/argparse naming
    """A config field: its default and one line saying what it is (unit; Ocean-R1's value if different)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class SyntheticConfig:
    """What ``python -m ocean_lib data build`` generates for the miniature study."""

    families: list[str] = knob(
        ["counting", "geometry", "grounding", "spatial"], "procedural task families to generate"
    )
    text_only: bool = knob(False, "also write the text-only twin of every split (the GRPO-text ablation)")
    n_train: int = knob(2000, "training records per family")
    n_train_by_family: dict[str, int] = knob(
        {}, "training records of a family where it differs from n_train, e.g. {locate: 9600}"
    )
    n_test: int = knob(500, "held-out test records per family (scenes disjoint from train)")
    difficulty: int = knob(1, "difficulty level 1-3 (more objects, more distractors, smaller targets)")
    image_size: int = knob(112, "side of the square images, pixels (multiple of 28)")
    seed: int = knob(0, "base seed; train and test use disjoint seed ranges derived from it")
    background: Literal["flat", "gradient", "cells", "tiles"] = knob(
        "flat",
        "flat (mean grey), gradient (red rises left to right, blue top to bottom: where a patch is), cells "
        "(the same ramps in steps, one colour per grid cell: which cell an object's margin is in) or tiles "
        "(the cells colours under objects only, empty cells flat: only an object's own token says where it is)",
    )
    reflective: float = knob(
        0.0,
        "share of training traces that check or revise their work in words (half each; data.synthetic docs)",
    )
    output_dir: str = knob("outputs/data/mini", "directory the parquet splits and preview.png are written to")

    def train_records(self, family: str) -> int:
        """How many training records ``family`` gets."""
        return self.n_train_by_family.get(family, self.n_train)


@dataclass
class DataConfig:
    train_files: list[str] = knob([], "training parquet files/directories, or HF datasets dirs/hub ids")
    val_files: list[str] = knob([], "validation records in the same format (scored during training)")
    min_pixels: int = knob(3136, "images with fewer pixels are scaled up, aspect kept (Ocean-R1: 3,136)")
    max_pixels: int = knob(
        1003520, "images with more pixels are scaled down, aspect kept (Ocean-R1: 1,003,520)"
    )
    pre_resize: bool = knob(
        True,
        "apply min/max_pixels with PIL before the processor (verl's process_image); false: the processor alone "
        "resizes (first recipe)",
    )
    processor_min_pixels: int = knob(
        0, "the image processor's own lower limit; 0 = data.min_pixels (Ocean-R1: 3,136)"
    )
    processor_max_pixels: int = knob(
        0,
        "the image processor's own upper limit; 0 = data.max_pixels (Ocean-R1 left Qwen's default, 12,845,056; "
        "first recipe: 501,760)",
    )
    max_images_per_prompt: int = knob(
        4,
        "rows with more images are bad rows (Ocean-R1's scripts capped at 1, dropping stage-1 two-image samples)",
    )
    on_bad_row: Literal["error", "skip"] = knob(
        "error", "a malformed row or unreadable image: stop with an error, or skip it and count it"
    )
    shuffle: bool = knob(True, "shuffle the training records each epoch (seeded by train.seed)")
    max_prompt_tokens: int = knob(
        8192,
        "longest prompt, tokens; drop counts it as verl did, each image as the literal <image> text (Ocean-R1: "
        "8192; first recipe: 1024)",
    )
    overlong_prompts: Literal["drop", "truncate_left"] = knob(
        "drop",
        "longer prompts: drop them, counted (verl's filter_overlong_prompts), or keep the last max_prompt_tokens "
        "tokens in the training forward while sampling sees the whole prompt (TRL 0.14, first recipe)",
    )
    prompt_template: Literal["ocean_r1", "ocean_r1_v1"] = knob(
        "ocean_r1_v1",
        "user turn of rows in the first recipe's problem/solution layout: its own templates (ocean_r1_v1), or the "
        "verl recipe's '<image> ' + question + newline + instruction (ocean_r1); prompts.py",
    )
    system_prompt: str = knob("", "system turn of every prompt; empty keeps the chat template's default")
    text_only_system_prompt: str = knob(
        "",
        "system turn of prompts without an image, if not empty (first recipe: R1's, prompts.R1_SYSTEM_PROMPT)",
    )
    keep_prompt_whitespace: bool = knob(
        False,
        "render the user text exactly, the space after <image> included, as verl substitutes images in place "
        "(Ocean-R1); false strips each text piece (ours)",
    )
    synthetic: SyntheticConfig = field(
        default_factory=SyntheticConfig, metadata={"help": "procedural data for the miniature study"}
    )


@dataclass
class TinyModelConfig:
    """Shape of the miniature Qwen2.5-VL built offline by ``python -m ocean_lib model build-tiny``."""

    vocab_size: int = knob(1024, "byte-level BPE vocabulary size, special tokens included")
    hidden_size: int = knob(256, "text decoder width")
    num_layers: int = knob(4, "text decoder layers")
    num_heads: int = knob(4, "attention heads (head_dim = hidden_size / num_heads)")
    num_kv_heads: int = knob(2, "key/value heads (grouped-query attention)")
    intermediate_size: int = knob(768, "text MLP width")
    vision_hidden_size: int = knob(128, "vision tower width")
    vision_depth: int = knob(2, "vision tower blocks")
    vision_heads: int = knob(4, "vision tower attention heads")
    rope_theta: float = knob(
        1e6,
        "text decoder rotary base (M-RoPE); the 3B's 1e6 leaves a 4x4 grid's cells nearly the same position",
    )
    seed: int = knob(0, "seed of the random initial weights and of the tokenizer corpus")


LANGUAGE_MODEL_LINEARS = (
    r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)
"""LoRA's default targets: every linear layer of the language model's blocks (not the vision tower or LM head)."""


@dataclass
class ModelConfig:
    name_or_path: str = knob(
        "Qwen/Qwen2.5-VL-3B-Instruct", "HF hub id or local directory of the policy's initial weights"
    )
    train_precision: Literal["float32", "bfloat16"] = knob(
        "float32",
        "training compute: bfloat16 keeps fp32 master weights and computes under bf16 (accelerate's mixed "
        "precision, DeepSpeed's bf16); the policy is always loaded in fp32 (Ocean-R1: bfloat16)",
    )
    inference_dtype: Literal["float32", "bfloat16"] = knob(
        "float32",
        "parameter dtype of the frozen copies: the KL reference, evaluation's model and vLLM's sampling "
        "weights (Ocean-R1: bfloat16)",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = knob(
        "sdpa", "attention kernel (Ocean-R1: flash_attention_2)"
    )
    gradient_checkpointing: bool = knob(False, "recompute activations in backward (Ocean-R1: true)")
    freeze_vision_tower: bool = knob(False, "train the language model only")
    lora_rank: int = knob(
        0, "LoRA adapter rank; 0 trains all weights (Ocean-R1: 0). See ocean_lib/training/lora.py"
    )
    lora_alpha: float = knob(
        32.0, "LoRA scale numerator: adapter updates are scaled by lora_alpha / lora_rank"
    )
    lora_target_modules: str = knob(
        LANGUAGE_MODEL_LINEARS,
        "regex (full match) of the module names given adapters; default: the LM's linears",
    )
    reference_on_cpu: bool = knob(
        False, "keep the frozen KL reference on the CPU and run it there (slower; frees accelerator memory)"
    )
    reference_offload: bool = knob(
        False,
        "DeepSpeed: keep the reference's ZeRO-3 shards in host memory between uses, computing on the accelerator",
    )
    tiny: TinyModelConfig = field(
        default_factory=TinyModelConfig, metadata={"help": "shape of the offline-built miniature model"}
    )


@dataclass
class RolloutConfig:
    backend: Literal["hf", "vllm"] = knob(
        "hf", "generation engine: transformers generate, or vLLM (GPU, gpu extra)"
    )
    n: int = knob(16, "completions sampled per prompt, the GRPO group size")
    temperature: float = knob(1.0, "sampling temperature")
    top_p: float = knob(1.0, "nucleus sampling mass; 1.0 disables it")
    top_k: int = knob(0, "sample from the k most likely tokens; 0 disables it")
    max_new_tokens: int = knob(4096, "response length limit, tokens")
    min_new_tokens: int = knob(0, "force at least this many new tokens (benchmarks use it to equalise work)")
    stop_tokens: Literal["im_end", "generation_config"] = knob(
        "im_end",
        "what ends a completion: <|im_end|> only (ours), or every eos id of the model's generation config "
        "(<|im_end|> and <|endoftext|>: vLLM's default, Ocean-R1)",
    )
    gather_weights: bool = knob(
        True,
        "hf backend under ZeRO-3: gather the whole policy once per generation (TRL's ds3_gather_for_generation) "
        "instead of each layer at every decoded token; each device then holds all the weights while sampling",
    )
    vllm_gpu_memory_utilization: float = knob(0.5, "fraction of GPU memory vLLM may take when colocated")
    vllm_tensor_parallel_size: int = knob(1, "GPUs per vLLM engine")
    vllm_max_model_len: int = knob(12288, "vLLM context length, tokens (prompt + response)")
    vllm_sleep_between_rollouts: bool = knob(
        True, "free vLLM's KV cache and weights while training (sleep level 2; the weight sync reloads them)"
    )
    sampler_gap_warn: float = knob(
        0.1,
        "warn when response/sampler_logprob_gap (mean |sampler - trainer log p|, nats/token) exceeds this; 0: off",
    )
    sampler_gap_stop: float = knob(
        0.5, "stop the run when the sampler gap exceeds this for sampler_gap_steps steps in a row; 0: off"
    )
    sampler_gap_steps: int = knob(3, "consecutive steps past sampler_gap_stop that stop the run")


@dataclass
class AlgorithmConfig:
    adv_eps: float = knob(1e-6, "epsilon in (r - mean) / (std + eps) (verl 1e-6, TRL 1e-4)")
    scale_rewards: bool = knob(True, "divide advantages by the group std (false = Dr. GRPO)")
    clip_low: float = knob(0.2, "PPO clip range below 1 (ratio >= 1 - clip_low)")
    clip_high: float = knob(0.2, "PPO clip range above 1 (ratio <= 1 + clip_high); > clip_low = clip-higher")
    dual_clip: float = knob(0.0, "dual-clip bound c > 1 for negative advantages; 0 disables it")
    kl_coef: float = knob(0.001, "weight of KL(policy || reference) in the loss; 0 skips the reference model")
    kl_estimator: Literal["k1", "k3", "k3_unclamped"] = knob(
        "k3",
        "KL estimator: k1 = log-ratio, k3 = low_var_kl clamped as verl (Ocean-R1), k3_unclamped = TRL 0.14's (v1)",
    )
    entropy_coef: float = knob(0.001, "entropy bonus weight (Ocean-R1: 0.001)")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = knob(
        "token-mean", "how per-token losses become one number (Ocean-R1: token-mean, v1: seq-mean-token-mean)"
    )
    token_mean_over: Literal["batch", "micro_batch"] = knob(
        "batch",
        "token-mean's denominator: the step's completion tokens (ours: every token weighs the same), or verl's "
        "masked mean per micro-batch of train.micro_batch_size after balance_batch, averaged (Ocean-R1)",
    )
    balance_ranks: int = knob(
        0,
        "ranks verl's balance_batch spreads a step over (token_mean_over=micro_batch; Ocean-R1: 8); 0 = processes",
    )
    equal_reward_groups: Literal["zero", "computed"] = knob(
        "zero",
        "advantage of a group whose rewards are all equal: exactly 0 (ours), or computed in fp32 like any group, "
        "one-ulp error of the mean included (verl, Ocean-R1: a stage-2 group all at 1.05 gets -0.106)",
    )
    updates_per_batch: int = knob(1, "optimizer passes over each rollout batch (Ocean-R1: 1)")
    dynamic_sampling: bool = knob(False, "drop groups whose rewards are all equal before the update")


@dataclass
class RewardConfig:
    mode: Literal["ocean_r1", "ocean_r1_v1", "strict"] = knob(
        "ocean_r1",
        "scoring rules: Ocean-R1's verl recipe, its first (TRL) recipe, or our stricter variant (rewards/rules.py)",
    )
    format_weight: float = knob(
        0.1, "overall = accuracy + format_weight * format (Ocean-R1: 0.1 stage 1, 0.05 stage 2)"
    )
    keep_special_tokens: bool = knob(
        False,
        "score the completion decoded with its special tokens, e.g. the final <|im_end|> (verl's reward "
        "manager, Ocean-R1); false: without (TRL, ours)",
    )
    timeout_s: float = knob(2.0, "wall-clock limit for scoring one completion, seconds")
    num_workers: int = knob(0, "scoring processes for large batches; 0 picks from the CPU count")


@dataclass
class TrainConfig:
    objective: Literal["grpo", "sft"] = knob(
        "grpo", "GRPO, or supervised warm-start on the reference answers"
    )
    prompts_per_step: int = knob(256, "prompts per rollout batch, all processes together (Ocean-R1: 256)")
    micro_batch_size: int = knob(
        4,
        "sequences per forward/backward on one process when micro_batch_tokens is 0; always the micro-batch of "
        "verl's per-micro-batch token mean (algorithm.token_mean_over=micro_batch)",
    )
    micro_batch_tokens: int = knob(
        0,
        "if > 0, micro-batches of up to this many padded tokens (however many sequences): under prompt-once each "
        "distinct prompt counted once, groups kept whole unless splitting costs less; else sequences sorted by "
        "length (forward.pack_micro_batches)",
    )
    forward_micro_batch_tokens: int = knob(
        0,
        "token budget of the forwards without gradient (reference, old log-probs; they keep no activations for a "
        "backward, so can take more): packed like micro_batch_tokens; 0: the update's micro-batches",
    )
    prompt_once: bool = knob(
        True,
        "training forwards run each distinct prompt (and its images) of a micro-batch once and its completions on "
        "its keys and values (exact); false: every row runs its prompt, as verl and TRL do",
    )
    balance_work: bool = knob(
        True,
        "with several processes, move whole groups between them before the update so each trains on about the "
        "same work (forward.balance_groups; exact: the loss is unchanged); false: each trains on its own samples",
    )
    num_processes: int = knob(1, "training processes the run expects (accelerate launch --num_processes)")
    lr: float = knob(1e-6, "AdamW learning rate (Ocean-R1: 1e-6)")
    vision_lr_scale: float = knob(
        1.0,
        "the vision tower's learning rate as a fraction of lr (its own AdamW parameter group; 0 freezes it, as "
        "model.freeze_vision_tower does)",
    )
    warmup_steps: int = knob(0, "linear warm-up from 0 to lr over this many steps, then constant")
    lr_schedule: Literal["constant", "verl_constant"] = knob(
        "constant",
        "step s (from 1) runs at lr x min(1, s / W) (constant; full rate from step 1 without warm-up), or "
        "min(1, (s - 1) / max(1, W)) (verl's, Ocean-R1: step 1 at lr 0, only Adam's moments move)",
    )
    weight_decay: float = knob(0.01, "AdamW weight decay")
    adam_beta1: float = knob(0.9, "AdamW beta1")
    adam_beta2: float = knob(0.999, "AdamW beta2")
    grad_clip: float = knob(1.0, "max global gradient norm; 0 disables clipping")
    epochs: int = knob(2, "passes over the training data (Ocean-R1: 2)")
    max_steps: int = knob(0, "stop after this many optimizer steps; 0 means run all epochs")
    seed: int = knob(42, "seed of data order, sampling and initialisation")
    save_every: int = knob(
        50, "checkpoint every this many steps (Ocean-R1: 50); 0 saves only the final weights"
    )
    keep_last: int = knob(2, "checkpoints kept on disk (older ones are deleted)")
    val_every: int = knob(20, "score val_files greedily every this many steps (Ocean-R1: 20); 0 disables")
    val_at_start: bool = knob(
        False, "also score val_files before the first step, logged as step 0 (Ocean-R1)"
    )
    val_at_end: bool = knob(False, "also score val_files at the last step (Ocean-R1)")
    deterministic: bool = knob(False, "deterministic kernels (CPU runs then resume bit-exactly)")


@dataclass
class EvalConfig:
    benchmarks: list[str] = knob(
        ["superclevr", "geoqa", "refcoco", "refcocop", "refcocog", "cvbench"],
        "benchmark names to evaluate (all three RefCOCO splits make the table's RefCOCO/+/g average)",
    )
    data_root: str = knob("data/benchmarks", "root directory holding each benchmark's annotations and images")
    batch_size: int = knob(8, "prompts per generation batch (HF engine; validation during training)")
    vllm_batch_size: int = knob(
        1024,
        "prompts per vLLM generate call in evaluation (vLLM schedules them; a crash loses one call's answers)",
    )
    max_items: int = knob(0, "evaluate only the first N items of each benchmark; 0 means all")
    output_dir: str = knob("outputs/eval", "where <model>/<benchmark>.jsonl and summary.json are written")
    bootstrap_samples: int = knob(1000, "bootstrap resamples for the 95% confidence interval")
    bootstrap_unit: Literal["item", "image"] = knob(
        "item", "what the bootstrap resamples: items, or images (the items sharing an image go together)"
    )
    seed: int = knob(0, "seed of the bootstrap")
    judge_url: str = knob(
        "",
        "OpenAI-compatible endpoint of the model judge for the *_judge benchmarks, up to /v1 (e.g. vllm serve)",
    )
    judge_model: str = knob("", "model name the judge endpoint serves (eval judge; '' : no judge)")
    judge_timeout_s: float = knob(120.0, "seconds one judge request may take")
    published_table: Literal["v1", "verl", "none"] = knob(
        "v1",
        "Ocean-R1's published table the results are set beside: v1 (first repository, TRL recipe), verl (the verl "
        "repository's), none",
    )


@dataclass
class LoggingConfig:
    output_dir: str = knob("outputs/runs", "parent directory of run directories")
    run_name: str = knob("run", "this run's directory name under output_dir")
    rollouts_per_step: int = knob(-1, "sampled completions written to rollouts.jsonl per step; -1 writes all")
    progress: bool = knob(True, "show a progress bar on stderr")
    peak_flops_per_s: float = knob(
        0.0,
        "one device's peak FLOP/s for throughput/mfu; 0: the GPU's bf16 dense peak by name (H100, H200, A100), "
        "else unknown and MFU not logged",
    )


@dataclass
class StageConfig:
    """One training stage of the study: the weights it starts from, the knobs it sets, the row it becomes."""

    starts_from: str = knob(
        "",
        "the stage whose final weights this stage starts from ('': the model.name_or_path of its set, else the "
        "params')",
    )
    row: str = knob("", "the result-table row that evaluates this stage's final weights ('': none)")
    set: dict[str, Any] = knob(
        {}, "knobs this stage sets on the study's params, as a nested mapping, e.g. {train: {max_steps: 40}}"
    )

    def overrides(self) -> list[str]:
        """``set`` as ``section.key=value`` override strings (values written as JSON, which YAML reads back)."""

        def leaves(tree: dict[str, Any], prefix: str) -> list[str]:
            out = []
            for key, value in tree.items():
                if isinstance(value, dict):
                    out += leaves(value, f"{prefix}{key}.")
                else:
                    out.append(f"{prefix}{key}={json.dumps(value)}")
            return out

        return leaves(self.set, "")


def _in_run_order(stages: dict[str, StageConfig]) -> tuple[dict[str, StageConfig], list[str]]:
    """``stages`` in the order they run: as written, but each after the stage it starts from; and the stages
    that cannot run (their ``starts_from`` names no stage, or a cycle), left at the end in written order."""
    ordered: dict[str, StageConfig] = {}
    pending = dict(stages)
    while ready := [name for name, stage in pending.items() if stage.starts_from in ("", *ordered)]:
        ordered[ready[0]] = pending.pop(ready[0])
    return {**ordered, **pending}, list(pending)


@dataclass
class StudyConfig:
    """The study that ``python -m ocean_lib reproduce`` runs: its training stages, evaluated rows and notebooks.

    Each stage is this params file plus the stage's ``set``; the pipeline adds the run name, the output
    directory and the initial weights (the final weights of ``starts_from``). Stages run in the order written,
    except that a stage runs after the one it starts from (validation puts ``stages`` in that order), so a params
    file that ``extends:`` another can add a stage that the other's first stage then starts from.
    """

    output_dir: str = knob(
        "outputs/mini", "directory of the study: data, model, runs, eval, notebooks, report"
    )
    stages: dict[str, StageConfig] = knob({}, "the training stages, in order: name -> stage")
    benchmarks: list[str] = knob([], "benchmarks of the result table (the miniature's held-out splits)")
    notebook_timeout_s: int = knob(3600, "longest a single notebook cell may run, seconds")


@dataclass
class RunConfig:
    data: DataConfig = field(
        default_factory=DataConfig, metadata={"help": "training records and image limits"}
    )
    model: ModelConfig = field(
        default_factory=ModelConfig, metadata={"help": "policy weights and memory knobs"}
    )
    rollout: RolloutConfig = field(
        default_factory=RolloutConfig, metadata={"help": "sampling of completions"}
    )
    algorithm: AlgorithmConfig = field(
        default_factory=AlgorithmConfig, metadata={"help": "GRPO advantages and loss"}
    )
    reward: RewardConfig = field(default_factory=RewardConfig, metadata={"help": "rule-based reward"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation and checkpoints"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "benchmark evaluation"})
    logging: LoggingConfig = field(
        default_factory=LoggingConfig, metadata={"help": "run directory and progress"}
    )
    study: StudyConfig = field(default_factory=StudyConfig, metadata={"help": "the stages of a reproduction"})

    @property
    def run_dir(self) -> Path:
        return Path(self.logging.output_dir) / self.logging.run_name

    @property
    def balance_ranks(self) -> int:
        """The ranks verl's balance_batch spreads a step over: ``algorithm.balance_ranks``, or with 0 the
        processes of the launch, all machines together (``launch`` sets ``train.num_processes`` to them), as
        verl's world size is n_gpus_per_node x nnodes."""
        return self.algorithm.balance_ranks or self.train.num_processes

    def validate(self) -> RunConfig:
        """Check cross-field invariants; raise ConfigError naming the values involved."""
        d, r, a, t = self.data, self.rollout, self.algorithm, self.train
        checks = [
            (
                d.min_pixels <= d.max_pixels,
                f"data.min_pixels={d.min_pixels} > data.max_pixels={d.max_pixels}",
            ),
            (r.n >= 1, f"rollout.n={r.n} must be >= 1"),
            (
                r.sampler_gap_warn >= 0 and r.sampler_gap_stop >= 0 and r.sampler_gap_steps >= 1,
                f"rollout.sampler_gap_warn={r.sampler_gap_warn} and sampler_gap_stop={r.sampler_gap_stop} must be "
                f">= 0 (0: off), sampler_gap_steps={r.sampler_gap_steps} >= 1",
            ),
            (r.n >= 2 or t.objective != "grpo", f"rollout.n={r.n}: GRPO needs a group of at least 2 samples"),
            (r.max_new_tokens >= 1, f"rollout.max_new_tokens={r.max_new_tokens} must be >= 1"),
            (r.temperature >= 0, f"rollout.temperature={r.temperature} must be >= 0"),
            (0 < r.top_p <= 1, f"rollout.top_p={r.top_p} must be in (0, 1]"),
            (
                r.min_new_tokens <= r.max_new_tokens,
                f"rollout.min_new_tokens={r.min_new_tokens} > rollout.max_new_tokens={r.max_new_tokens}",
            ),
            (
                a.clip_low >= 0 and a.clip_high >= 0,
                f"algorithm.clip_low={a.clip_low} and algorithm.clip_high={a.clip_high} must be >= 0",
            ),
            (
                a.dual_clip == 0 or a.dual_clip > 1,
                f"algorithm.dual_clip={a.dual_clip} must be 0 (off) or > 1",
            ),
            (a.updates_per_batch >= 1, f"algorithm.updates_per_batch={a.updates_per_batch} must be >= 1"),
            (
                a.balance_ranks >= 0,
                f"algorithm.balance_ranks={a.balance_ranks} must be >= 0 (0: the processes)",
            ),
            (
                a.token_mean_over == "batch" or (a.loss_agg == "token-mean" and not a.dynamic_sampling),
                f"algorithm.token_mean_over=micro_batch (verl's) needs loss_agg=token-mean and no dynamic_sampling, "
                f"got loss_agg={a.loss_agg}, dynamic_sampling={a.dynamic_sampling}",
            ),
            (
                a.token_mean_over == "batch"
                or t.objective != "grpo"
                or (t.prompts_per_step * r.n) % (self.balance_ranks * t.micro_batch_size) == 0,
                f"algorithm.token_mean_over=micro_batch: train.prompts_per_step x rollout.n = "
                f"{t.prompts_per_step * r.n} sequences must split into {self.balance_ranks} ranks x "
                f"micro-batches of train.micro_batch_size={t.micro_batch_size}, as verl requires",
            ),
            (t.prompts_per_step >= 1, f"train.prompts_per_step={t.prompts_per_step} must be >= 1"),
            (t.epochs >= 1, f"train.epochs={t.epochs} must be >= 1"),
            (t.max_steps >= 0, f"train.max_steps={t.max_steps} must be >= 0 (0: all epochs)"),
            (t.num_processes >= 1, f"train.num_processes={t.num_processes} must be >= 1"),
            (
                t.prompts_per_step % t.num_processes == 0,
                f"train.prompts_per_step={t.prompts_per_step} is not divisible by train.num_processes={t.num_processes}",
            ),
            (t.micro_batch_size >= 1, f"train.micro_batch_size={t.micro_batch_size} must be >= 1"),
            (
                t.forward_micro_batch_tokens >= 0,
                f"train.forward_micro_batch_tokens={t.forward_micro_batch_tokens} must be >= 0 (0: as the update's)",
            ),
            (
                t.micro_batch_tokens >= 0,
                f"train.micro_batch_tokens={t.micro_batch_tokens} must be >= 0 (0: off)",
            ),
            (
                not (self.model.reference_on_cpu and self.model.reference_offload),
                "model.reference_on_cpu and model.reference_offload exclude each other (run on the CPU, or "
                "offload between uses and compute on the accelerator)",
            ),
            (
                self.logging.run_name.strip() not in ("", ".", ".."),
                f"logging.run_name={self.logging.run_name!r} must name a directory of its own under "
                "logging.output_dir",
            ),
            (self.model.lora_rank >= 0, f"model.lora_rank={self.model.lora_rank} must be >= 0 (0: no LoRA)"),
            (self.model.lora_alpha > 0, f"model.lora_alpha={self.model.lora_alpha} must be > 0"),
            (t.lr > 0, f"train.lr={t.lr} must be > 0"),
            (t.vision_lr_scale >= 0, f"train.vision_lr_scale={t.vision_lr_scale} must be >= 0 (0: frozen)"),
            (t.keep_last >= 1, f"train.keep_last={t.keep_last} must be >= 1"),
            (
                d.processor_min_pixels <= (d.processor_max_pixels or d.max_pixels),
                f"data.processor_min_pixels={d.processor_min_pixels} > the processor's upper limit",
            ),
            (d.max_prompt_tokens >= 1, f"data.max_prompt_tokens={d.max_prompt_tokens} must be >= 1"),
            (
                self.model.tiny.hidden_size % self.model.tiny.num_heads == 0,
                f"model.tiny.hidden_size={self.model.tiny.hidden_size} is not divisible by "
                f"model.tiny.num_heads={self.model.tiny.num_heads}",
            ),
            (
                set(d.synthetic.n_train_by_family) <= set(d.synthetic.families),
                f"data.synthetic.n_train_by_family names families that are not generated: "
                f"{sorted(set(d.synthetic.n_train_by_family) - set(d.synthetic.families))}",
            ),
            (
                d.synthetic.image_size % 28 == 0,
                f"data.synthetic.image_size={d.synthetic.image_size} must be a multiple of 28 (patch 14 x merge 2)",
            ),
        ]
        stages, unordered = _in_run_order(self.study.stages)
        self.study.stages = stages
        for name in unordered:
            chain = [name]
            while (
                parent := self.study.stages[chain[-1]].starts_from
            ) in self.study.stages and parent not in chain:
                chain.append(parent)
            path = " -> ".join([*chain, parent if parent in chain else repr(parent)])
            why = (
                "goes round in a cycle"
                if parent in chain
                else "names no stage of the study ('' starts from the params' weights)"
            )
            checks.append((False, f"study.stages.{name} cannot run: its starts_from chain {path} {why}"))
        for name, stage in self.study.stages.items():
            checks.append(("study" not in stage.set, f"study.stages.{name}.set cannot set study knobs"))
            checks.append(
                (
                    not (stage.starts_from and "name_or_path" in (stage.set.get("model") or {})),
                    f"study.stages.{name} sets model.name_or_path and starts_from={stage.starts_from!r}: a stage "
                    "starts from one set of weights; keep one of the two",
                )
            )
        rows = [stage.row for stage in self.study.stages.values() if stage.row]
        checks.append(
            (len(rows) == len(set(rows)), f"study.stages: two stages are evaluated as one row ({rows})")
        )
        errors = [message for ok, message in checks if not ok]
        if errors:
            raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
        return self


def field_docs(cls: type = RunConfig, prefix: str = "") -> dict[str, str]:
    """Every leaf knob's dotted name and help line (empty string where a help line is missing)."""
    docs: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            docs.update(field_docs(hints[f.name], prefix=name + "."))
        else:
            docs[name] = f.metadata.get("help", "")
    return docs
