"""Every metric key a run writes to ``metrics.jsonl``, with one line of meaning.

The trainer refuses to log a key that is not registered here (tested), so a notebook reading
``metrics.jsonl`` can rely on this table. Keys ending in ``/<task>`` are per-data-source families.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ocean_lib.training import grpo

METRICS: dict[str, str] = {
    "step": "optimizer steps completed (1-based)",
    "epoch": "pass over the training data this step's prompts came from (0-based)",
    "lr": "learning rate used for this step's update",
    # reward
    "reward/overall": "mean overall reward (accuracy + format_weight * format) over all sampled completions",
    "reward/accuracy": "mean accuracy reward over all sampled completions",
    "reward/format": "mean format reward over all sampled completions",
    "reward/std_in_group": "mean over groups of the standard deviation of overall rewards within the group",
    "reward/timeouts": "fraction of completions whose scoring hit the reward timeout (scored 0)",
    "reward/unknown_reward_func": "fraction of completions whose record named an unknown reward_func (scored 0)",
    "accuracy/": "mean accuracy reward of the completions of one data source (key suffix = data_source)",
    # groups and advantages
    "groups/zero_variance_fraction": "fraction of groups whose rewards are all equal (advantage 0; dropped by "
    "dynamic sampling when it is on)",
    "advantage/mean": "mean advantage over sampled completions (0 up to float error when std-scaled)",
    "advantage/abs_mean": "mean absolute advantage over sampled completions",
    # responses
    "response/length_mean": "mean completion length, tokens (EOS included)",
    "response/length_max": "longest completion, tokens",
    "response/clipped_fraction": "fraction of completions cut at max_new_tokens without EOS",
    "response/sampler_logprob_gap": "mean |sampler log-prob - trainer log-prob| over completion tokens, nats",
    "prompt/truncated_fraction": "fraction of sequences whose prompt the training forward cut to its last "
    "data.max_prompt_tokens tokens (overlong_prompts=truncate_left)",
    # loss
    "loss/total": "the optimised loss (policy + kl_coef * KL - entropy_coef * entropy), aggregated per loss_agg",
    "loss/policy": "the clipped policy-gradient term",
    "loss/sft": "teacher-forced cross-entropy per completion token (objective = sft)",
    "kl/mean": "mean per-token KL(policy || reference) estimate over completion tokens",
    "entropy/mean": "mean per-token entropy of the policy over completion tokens, nats",
    "clip/fraction": "fraction of completion tokens whose ratio was clipped (either side)",
    "clip/low_fraction": "fraction of tokens clipped at 1 - clip_low (negative advantage)",
    "clip/high_fraction": "fraction of tokens clipped at 1 + clip_high (positive advantage)",
    "clip/dual_fraction": "fraction of tokens bounded by the dual clip",
    "ratio/mean": "mean importance ratio pi / pi_old over completion tokens",
    "ratio/min": "smallest importance ratio in the batch",
    "ratio/max": "largest importance ratio in the batch",
    "grad/norm": "global gradient norm before clipping",
    # micro-batches
    "micro_batch/count": "micro-batches trained on, all processes together (per update pass)",
    "micro_batch/filler_passes": "forward passes run only so that every process runs as many as the busiest one "
    "(ZeRO-3 gathers weights in every forward); their loss is multiplied by 0",
    "micro_batch/padding_fraction": "fraction of the token slots of the training forwards that are padding "
    "(under prompt-once each distinct prompt's slots once)",
    "micro_batch/work_imbalance": "the update's work (forward.group_costs) of the busiest process over the mean "
    "of all processes, after train.balance_work moved groups (1: even; logged with several processes)",
    "micro_batch/work_imbalance_before": "micro_batch/work_imbalance as sampled, before any group moved",
    "micro_batch/moved_groups": "groups (prompt with its completions) trained on by another process than the one "
    "that sampled them (train.balance_work)",
    "micro_batch/prompt_once": "1 if the training forwards ran each distinct prompt of a micro-batch once "
    "(train.prompt_once, sdpa or eager attention), 0 if every row ran its prompt",
    # validation
    "val/accuracy": "greedy accuracy on the validation records",
    "val/format": "format compliance of greedy validation outputs",
    "val/accuracy/": "greedy validation accuracy of one data source (key suffix = data_source)",
    "val/test_score/": "verl's validation metric of one data source (key suffix = data_source): the mean overall "
    "reward, accuracy + format_weight * format, of its greedy outputs (Ocean-R1's verl ray_trainer._validate)",
    # time
    "time/step_s": "wall-clock seconds of the whole step (the slowest process)",
    "time/generate_s": "seconds spent sampling completions",
    "time/reward_s": "seconds spent scoring completions",
    "time/reference_s": "seconds spent on reference-model log-probs",
    "time/update_s": "seconds spent in forward, backward and optimizer step",
    "time/weight_sync_s": "seconds spent bringing the sampler's weights to the policy's after the update (vLLM's "
    "push; 0 for the hf engine, which samples from the policy itself)",
    # throughput
    "tokens/prompt": "prompt tokens (image tokens included) of the sequences trained on, all processes",
    "tokens/completion": "completion tokens trained on, all processes",
    "throughput/prompt_tokens_per_s": "tokens/prompt per second of the whole step (time/step_s)",
    "throughput/completion_tokens_per_s": "tokens/completion per second of the whole step (time/step_s)",
    "flops/step": "model FLOPs of the step's work, all processes: one forward per forward-only pass "
    "(generation, reference, old log-probs), three per update, each prompt as often as it runs (metrics.step_flops)",
    "throughput/model_flops_per_s": "flops/step per second of the whole step (time/step_s)",
    "throughput/mfu": "model FLOPs utilisation: throughput/model_flops_per_s over the processes' summed peak "
    "(logging.peak_flops_per_s, or the GPU's bf16 dense peak by name); absent when the peak is unknown",
    "time/validate_s": "seconds spent on validation this step",
}


def is_registered(key: str) -> bool:
    """A key is registered if listed, or if it extends a listed family prefix ending in '/'."""
    if key in METRICS:
        return True
    return any(prefix.endswith("/") and key.startswith(prefix) and key != prefix for prefix in METRICS)


def check_registered(keys: list[str] | set[str]) -> None:
    unknown = sorted(k for k in keys if not is_registered(k))
    if unknown:
        raise KeyError(f"metric keys not registered in ocean_lib/training/metrics.py: {unknown}")


# grpo.policy_loss's statistic names -> registered metric keys.
POLICY_METRICS = {
    "pg_loss": "loss/policy",
    "kl": "kl/mean",
    "entropy": "entropy/mean",
    "clipfrac": "clip/fraction",
    "clipfrac_low": "clip/low_fraction",
    "clipfrac_high": "clip/high_fraction",
    "clipfrac_dual": "clip/dual_fraction",
    "ratio_mean": "ratio/mean",
    "ratio_min": "ratio/min",
    "ratio_max": "ratio/max",
}


@dataclass
class Tally:
    """A step's metrics as grpo.Stats (sums and counts, minima, maxima), reduced exactly over processes."""

    stats: grpo.Stats = field(default_factory=dict)

    def add(self, key: str, value: float, count: float = 1.0, reduce: str = "mean") -> None:
        self.stats = grpo.merge_stats(self.stats, {key: grpo.Stat(float(value), float(count), reduce)})

    def merge(self, stats: grpo.Stats, rename: dict[str, str]) -> None:
        self.stats = grpo.merge_stats(self.stats, {rename[k]: v for k, v in stats.items()})

    @contextlib.contextmanager
    def timer(self, key: str):
        """Seconds spent in the block; over processes the slowest one counts."""
        t0 = time.perf_counter()
        yield
        self.add(key, time.perf_counter() - t0, reduce="max")

    def reduce(self, accelerator: Any) -> dict[str, float]:
        parts = [self.stats]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object([self.stats])
        return grpo.stat_values(grpo.merge_stats(*parts))


def tally_rewards(tally: Tally, scores, rows, rewards, advantages, flat_groups, batch: Any, n: int) -> None:
    """Add a GRPO step's reward, group, advantage and response-length metrics to ``tally``."""
    for score, record in zip(scores, rows, strict=True):
        tally.add("reward/overall", score.overall)
        tally.add("reward/accuracy", score.accuracy)
        tally.add("reward/format", score.format)
        tally.add(f"accuracy/{record.data_source}", score.accuracy)
        tally.add("reward/timeouts", float(score.timed_out))
        tally.add("reward/unknown_reward_func", float(score.unknown_reward_func))
    groups = rewards.view(-1, n)
    tally.add("reward/std_in_group", float(groups.std(-1, unbiased=True).sum()), count=len(groups))
    tally.add("groups/zero_variance_fraction", float(flat_groups.sum()), count=len(flat_groups))
    tally.add("advantage/mean", float(advantages.sum()), count=len(advantages))
    tally.add("advantage/abs_mean", float(advantages.abs().sum()), count=len(advantages))
    lengths = batch.completion_mask.sum(-1).float()
    tally.add("response/length_mean", float(lengths.sum()), count=len(lengths))
    tally.add("response/length_max", float(lengths.max()), reduce="max")
    tally.add("response/clipped_fraction", float(sum(not f for f in batch.finished)), count=len(lengths))


def tally_validation(tally: Tally, scores: Any, records: Any) -> None:
    """Add greedy validation scores: accuracy and format apart (ours), and per data source verl's
    ``val/test_score/<data_source>``, the mean of the reward verl's validation logs, accuracy + w * format, so a
    curve can be set beside Ocean-R1's on its own scale."""
    for score, record in zip(scores, records, strict=True):
        tally.add("val/accuracy", score.accuracy)
        tally.add(f"val/accuracy/{record.data_source}", score.accuracy)
        tally.add("val/format", score.format)
        tally.add(f"val/test_score/{record.data_source}", score.overall)


def tally_tokens(tally: Tally, batch: Any, rows: Any, world: int) -> None:
    """Add the prompt and completion tokens of the ``rows`` trained on to ``tally`` (summed over processes)."""
    for part, mask in (("prompt", batch.prompt_mask), ("completion", batch.completion_mask)):
        tally.add(f"tokens/{part}", float(mask[rows].sum()), count=1 / world)


def tally_passes(tally: Tally, passes: Any, batch: Any, world: int, prompt_once: bool = False) -> None:
    """Add the micro-batch metrics of ``passes`` (:data:`ocean_lib.training.forward.Passes`) to ``tally``. The
    padding is counted in the slots the forward computes: every row's prompt padded to the micro-batch's longest,
    or under ``prompt_once`` each distinct prompt once, then every row's completion padded to the longest."""
    real = [rows for rows, _, counts in passes if counts]
    # A count of 1/W per process makes the reduced "mean" the sum over processes.
    tally.add("micro_batch/count", len(real), count=1 / world)
    tally.add("micro_batch/filler_passes", len(passes) - len(real), count=1 / world)
    prompt_lengths, completion_lengths = batch.prompt_mask.sum(-1), batch.completion_mask.sum(-1)
    slots = tokens = 0
    for rows in real:
        ran = batch.prompt_index[rows].unique() * batch.n if prompt_once else rows  # a row of each prompt run
        slots += len(ran) * int(prompt_lengths[rows].max()) + len(rows) * int(completion_lengths[rows].max())
        tokens += int(prompt_lengths[ran].sum() + completion_lengths[rows].sum())
    tally.add("micro_batch/padding_fraction", slots - tokens, count=slots)


# ----------------------------------------------------------------------------------------------------------------
# Model FLOPs
# ----------------------------------------------------------------------------------------------------------------

PEAK_BF16_FLOPS = (  # dense bf16 tensor-core peaks from NVIDIA's data sheets; first substring of the name wins
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)


def peak_flops_per_s(configured: float, device: Any) -> float:
    """One device's peak FLOP/s: the configured value if > 0, else the GPU's bf16 dense peak by its name, else 0
    (unknown: MFU is not logged)."""
    if configured > 0:
        return configured
    if getattr(device, "type", device) == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), 0.0)
    return 0.0


@dataclass(frozen=True)
class FlopModel:
    """Forward FLOPs of a Qwen2.5-VL from its config: 2 per multiply-add of the matrix products (norms, activations
    and softmaxes are a rounding error), the convention of MFU (PaLM, appendix B) and of verl's FLOP counter.

    Text: every token goes through the layers' projections (q, k, v, o; the MLP's gate, up and down); causal
    attention adds QK^T and AV for every (query, key) pair with key <= query; the output layer runs at the
    completion positions only (the training forward projects nothing else). Vision: every 14-px patch goes
    through the patch embedding and the blocks; attention pairs a patch with the patches of its window (up to
    ``window_size``/patch per side) or, in the full-attention blocks, of its whole image; the merger maps each 2x2
    patches to one image token. Image tokens then go through the text layers like any token.
    """

    text_token: float  # projections and MLP of one token through all text layers
    text_pair: float  # QK^T and AV of one (query, key) pair, all text layers
    head_position: float  # the output layer at one position
    vision_patch: float  # patch embedding, projections and MLP of one patch through all vision blocks
    vision_pair: float  # QK^T and AV of one (patch, patch) pair in one vision block
    merger_token: float  # the merger's MLP for one image token
    window_patches: int  # patches in one attention window
    full_blocks: int  # vision blocks attending over the whole image
    windowed_blocks: int  # vision blocks attending within windows

    @classmethod
    def of(cls, config: Any) -> FlopModel:
        t, v = config.text_config, config.vision_config
        heads, kv_heads, width = t.num_attention_heads, t.num_key_value_heads, t.hidden_size
        head_dim = getattr(t, "head_dim", None) or width // heads
        attention = width * heads * head_dim + 2 * width * kv_heads * head_dim + heads * head_dim * width
        merged = v.hidden_size * v.spatial_merge_size**2
        patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
        block = 4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size  # qkv + proj; gate, up, down
        full_indexes = getattr(
            v, "fullatt_block_indexes", None
        )  # None: every block attends globally (Qwen2-VL)
        full = v.depth if full_indexes is None else len(full_indexes)
        return cls(
            text_token=2 * t.num_hidden_layers * (attention + 3 * width * t.intermediate_size),
            text_pair=2 * t.num_hidden_layers * 2 * heads * head_dim,
            head_position=2 * width * t.vocab_size,
            vision_patch=2 * (patch_dim * v.hidden_size + v.depth * block),
            vision_pair=2 * 2 * v.hidden_size,
            merger_token=2 * (merged * merged + merged * v.out_hidden_size),
            window_patches=(v.window_size // v.patch_size) ** 2,
            full_blocks=full,
            windowed_blocks=v.depth - full,
        )

    def text(self, prompt_tokens: torch.Tensor, completion_tokens: torch.Tensor) -> torch.Tensor:
        """Forward FLOPs of sequences [R] of ``prompt_tokens`` (image tokens included) + ``completion_tokens``."""
        length = (prompt_tokens + completion_tokens).double()
        pairs = length * (length + 1) / 2
        return length * self.text_token + pairs * self.text_pair + completion_tokens * self.head_position

    def image(self, patches: torch.Tensor) -> torch.Tensor:
        """Forward FLOPs of the vision tower for images [N] of ``patches`` patches (t x h x w of its grid)."""
        patches = patches.double()
        pairs = patches * (
            self.full_blocks * patches + self.windowed_blocks * patches.clamp(max=self.window_patches)
        )
        return patches * self.vision_patch + pairs * self.vision_pair + patches / 4 * self.merger_token


def prompt_runs(passes: Any, batch: Any, prompt_once: bool) -> torch.Tensor | None:
    """How many times each prompt's tokens (and images) run in one forward over ``passes``: under ``prompt_once``
    once per real micro-batch holding any of its rows; ``None`` otherwise (every row runs its own prompt)."""
    if not prompt_once:
        return None
    runs = torch.zeros(len(batch.images_per_prompt), dtype=torch.float64)
    for rows, _, real in passes:
        if real:
            runs[batch.prompt_index[rows].unique()] += 1
    return runs


def step_flops(
    config: Any,
    batch: Any,
    trained_rows: torch.Tensor,
    *,
    generated: bool,
    forward_only: int,
    forward_runs: torch.Tensor | None,
    updates: int,
    update_runs: torch.Tensor | None,
    vision_trained: bool,
    recompute: bool = False,
    generation_repeats_prompts: bool = False,
) -> float:
    """Model FLOPs of one step on ``batch`` (any object with the :class:`~ocean_lib.training.batch.RolloutBatch`
    fields ``prompt_mask``, ``completion_mask``, ``prompt_index``, ``image_grid_thw``, ``images_per_prompt``).

    A forward over rows R whose prompts p run k_p times (``*_runs``; ``None``: once per row of R, the repeated
    prompt) costs

        F = sum_{i in R} [text(P_i + C_i) - text(P_i)] + sum_p k_p [text(P_p) + vision(p)]

    (a completion's attention over its prompt belongs to the completion). The step: generation of every row when
    ``generated`` (both our engines prefill each prompt once per group, k_p = 1; with
    ``generation_repeats_prompts`` every row prefills its own, as TRL's ``generate``), ``forward_only`` passes over
    ``trained_rows`` (reference, old log-probs: ``forward_runs``) and ``updates`` of a forward and a backward of
    twice its cost (2N and 4N per token for N weights; a frozen vision tower forward only: nothing flows back
    into it) over ``trained_rows`` (``update_runs``). ``recompute`` adds gradient checkpointing's second forward
    per update, which the MFU convention leaves out (model FLOPs, not hardware FLOPs)."""
    flops = FlopModel.of(config)
    prompt_tokens, completion_tokens = batch.prompt_mask.sum(-1), batch.completion_mask.sum(-1)
    completion = flops.text(prompt_tokens, completion_tokens) - flops.text(prompt_tokens, 0 * prompt_tokens)
    prompts = len(batch.images_per_prompt)
    # the rows of a prompt share its length, so any of them gives it
    lengths = torch.zeros(prompts, dtype=prompt_tokens.dtype).scatter_(0, batch.prompt_index, prompt_tokens)
    prompt_text = flops.text(lengths, 0 * lengths)
    vision = torch.zeros(prompts, dtype=torch.float64)
    if batch.image_grid_thw is not None and len(batch.image_grid_thw):
        owner = torch.repeat_interleave(torch.tensor(batch.images_per_prompt))  # the prompt of each image
        vision.index_add_(0, owner, flops.image(batch.image_grid_thw.prod(-1)))

    def forward(rows: torch.Tensor, runs: torch.Tensor | None) -> tuple[float, float]:
        """(text, vision) FLOPs of one forward over ``rows``."""
        if runs is None:
            runs = torch.bincount(batch.prompt_index[rows], minlength=prompts).double()
        return float(completion[rows].sum() + (runs * prompt_text).sum()), float((runs * vision).sum())

    total = 0.0
    if generated:
        once = None if generation_repeats_prompts else torch.ones(prompts, dtype=torch.float64)
        total += sum(forward(torch.arange(len(prompt_tokens)), once))
    total += forward_only * sum(forward(trained_rows, forward_runs))
    text, image = forward(trained_rows, update_runs)
    per_update = 3 * text + (3 if vision_trained else 1) * image
    if recompute:
        per_update += text + (image if vision_trained else 0.0)
    return total + updates * per_update


def tally_flops(
    tally: Tally, world: int, config: Any, batch: Any, trained_rows: torch.Tensor, **step: Any
) -> None:
    """Add ``flops/step`` (:func:`step_flops` of this process's rows; summed over processes)."""
    tally.add("flops/step", step_flops(config, batch, trained_rows, **step), count=1 / world)
