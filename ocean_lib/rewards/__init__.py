"""Rule-based rewards: Ocean-R1's, reproduced with their quirks (mode ``ocean_r1``: the verl recipe; mode
``ocean_r1_v1``: the first, TRL-based recipe), and a stricter variant.

``score`` / ``score_batch`` turn completions into :class:`RewardBreakdown` s (``overall = accuracy +
format_weight · format``), bounded in time per call and never executing model output. The rules themselves,
and the helpers the evaluation suite shares with training, are pure functions in :mod:`.rules`; where each
part runs (in-process or in a killable worker) is decided in :mod:`.scoring` with :mod:`.deadline`'s pool.
"""

from ocean_lib.rewards.rules import (
    REWARD_FUNCS,
    choice_letter,
    extract_answer_span,
    first_int_box,
    format_ok,
    iou,
    literal_box,
    ocean_r1_v1_accuracy,
    parse_options,
    think_answer_disagree,
    v1_format_ok,
)
from ocean_lib.rewards.scoring import (
    MODES,
    RewardBreakdown,
    math_equivalent,
    reference_accuracy,
    score,
    score_batch,
    shutdown_workers,
)

__all__ = [
    "MODES",
    "REWARD_FUNCS",
    "RewardBreakdown",
    "choice_letter",
    "extract_answer_span",
    "first_int_box",
    "format_ok",
    "iou",
    "math_equivalent",
    "literal_box",
    "ocean_r1_v1_accuracy",
    "parse_options",
    "reference_accuracy",
    "score",
    "score_batch",
    "shutdown_workers",
    "think_answer_disagree",
    "v1_format_ok",
]
