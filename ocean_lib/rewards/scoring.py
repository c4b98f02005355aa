"""Scoring completions: a :class:`RewardBreakdown` per completion, one at a time or as a fast batch.

    overall = accuracy + format_weight · format

The rules live in :mod:`ocean_lib.rewards.rules`; this module decides where each part runs. Everything that is
plain string work (format, answer spans, Ocean-R1's string rules, strict mode's string rules, IoU) runs here in
linear time. Only math-verify, which can take unbounded time on adversarial text, runs in worker processes under
``cfg.timeout_s`` per call (:mod:`ocean_lib.rewards.deadline`); a call that overruns is killed and its completion
gets accuracy 0 with ``timed_out=True``.

Why the batch is fast and still exact. Ocean-R1's cascade is "math-verify match → 1, else the string rules'
0 / 0.1 / 1", so math-verify can be skipped, with no change to any verdict, when (a) the string rules already
give 1, (b) the completion gives math-verify nothing to extract
(:func:`~ocean_lib.rewards.rules.math_verify_finds_nothing`), (c) a worker has found that this ground truth
has no math reading at all, or (d) in the worker, no number in a LaTeX-free completion can equal a numeric
ground truth (:func:`~ocean_lib.rewards.rules.numbers_cannot_match`). What remains is deduplicated, streamed
to the workers while this process is still applying the string rules, and parsed with larger caches
(:func:`~ocean_lib.rewards.rules.prepare_worker`). ``bench/rewards.py`` and the tests check the batch against
:func:`reference_accuracy`, the plain cascade in Ocean-R1's own order.
"""

from __future__ import annotations

import atexit
import dataclasses
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ocean_lib.base.schema import RewardConfig
from ocean_lib.rewards import rules
from ocean_lib.rewards.deadline import Call, DeadlinePool, default_size

MODES = ("ocean_r1", "ocean_r1_v1", "strict")
EXTRACTED_MAX_CHARS = 1000
"""``answer_extracted`` is cut to this many characters (it is a diagnostic; the completion is logged anyway)."""

# Option letter → option text, which lets strict mode accept an option's text (see rules.parse_options).
Options = Mapping[str, str] | None
_Owed = tuple[str, str, str]  # (kind, text, ground truth): the math-verify check a verdict still owes


@dataclass(frozen=True)
class RewardBreakdown:
    """One completion's reward and why.

    ``overall = accuracy + format_weight · format``. ``answer_extracted`` is the answer the rules compared
    (``None`` if none): for ``acc`` in modes ``ocean_r1``/``ocean_r1_v1`` the last answer span, else the whole completion
    (``answer_source`` ``answer_tag`` / ``whole_text``); for ``iou`` the first span (strict: the last); for
    ``acc`` in strict mode the last span. ``think_answer_disagree``: the last number in ``<think>`` differs from
    the last number in the answer (``acc`` only). ``timed_out``: math-verify did not finish within the timeout
    (accuracy is then 0). ``unknown_reward_func``: the record's reward_func is neither ``acc`` nor ``iou``
    (accuracy and format 0): a data bug, surfaced in metrics.
    """

    overall: float
    accuracy: float
    format: float
    answer_extracted: str | None
    answer_source: Literal["answer_tag", "whole_text", "none"]
    think_answer_disagree: bool
    timed_out: bool
    unknown_reward_func: bool

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for ``rollouts.jsonl``)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Draft:
    """A breakdown before math-verify: ``accuracy`` stands unless the ``owed`` check finds a match (then 1.0)."""

    accuracy: float
    owed: _Owed | None
    answer: str | None
    source: Literal["answer_tag", "whole_text", "none"]
    format: float
    think_answer_disagree: bool
    unknown_reward_func: bool


def score(
    completion: str, ground_truth: str, reward_func: str, cfg: RewardConfig, options: Options = None
) -> RewardBreakdown:
    """Score one completion (see :func:`score_batch`, which this calls with a batch of one)."""
    return score_batch(
        [completion], [ground_truth], [reward_func], cfg, None if options is None else [options]
    )[0]


def score_batch(
    completions: Sequence[str],
    ground_truths: Sequence[str],
    reward_funcs: Sequence[str],
    cfg: RewardConfig,
    options: Sequence[Options] | None = None,
) -> list[RewardBreakdown]:
    """Score many completions; entry ``i`` scores ``completions[i]`` against ``ground_truths[i]``.

    ``reward_funcs[i]`` is the record's ``extra_info.reward_func`` (``acc`` or ``iou``). ``cfg.mode`` picks the
    rules (module docstring of :mod:`ocean_lib.rewards.rules`); ``options[i]`` (letter → text, optional) lets
    strict mode accept an option's text. Never raises on any string content and never runs it; each math-verify
    call is bounded by ``cfg.timeout_s`` (the first call that needs a worker also waits for it to start, about a
    second once per process). Raises ``TypeError``/``ValueError`` only for programming errors: non-strings,
    mismatched lengths, an invalid config.
    """
    _check(completions, ground_truths, reward_funcs, cfg, options)
    per_item_options = options if options is not None else [None] * len(completions)
    items = zip(completions, ground_truths, reward_funcs, per_item_options, strict=True)
    drafts: list[_Draft] = []
    owed: dict[_Owed, None] = {}  # an ordered set: each distinct check once

    def checks_owed() -> Iterator[Call]:
        # A generator, so that the string rules run here while the workers already run math-verify.
        for item in items:
            drafts.append(draft := _draft(*item, cfg.mode))
            if draft.owed is not None and draft.owed not in owed and _may_match(draft.owed):
                owed[draft.owed] = None
                yield rules.symbolic_task, draft.owed

    outcomes = dict(zip(owed, _run(checks_owed(), cfg), strict=True))
    for (kind, _, ground_truth), outcome in outcomes.items():
        if outcome is not None and not outcome[1]:
            _remember_gold_without_math(kind, ground_truth)
    return [_finish(draft, outcomes, cfg) for draft in drafts]


def reference_accuracy(
    completion: str, ground_truth: str, reward_func: str, mode: str = "ocean_r1", options: Options = None
) -> float:
    """The plain one-call-at-a-time cascade: every rule in its original order, math-verify in-process.

    For tests and ``bench/rewards.py`` (the baseline that :func:`score_batch` must agree with). It has no
    deadline beyond math-verify's own 5 s alarms, so it runs only in the main thread and pathological input can
    hang it; use :func:`score_batch` in training and evaluation.
    """
    if reward_func == "iou":
        return _iou_accuracy(completion, ground_truth, mode)
    if reward_func != "acc":
        return 0.0
    if mode == "ocean_r1":
        return rules.ocean_r1_accuracy(completion, ground_truth)
    if mode == "ocean_r1_v1":
        return rules.ocean_r1_v1_accuracy(completion, ground_truth)
    span = rules.extract_answer_span(completion, "last")
    if span is None:
        return 0.0
    decided = rules.strict_decide(span, ground_truth, options)
    if decided is not None:
        return decided
    match = rules.strict_symbolic_match(rules.strict_math_text(span), rules.strict_gold(ground_truth))
    return 1.0 if match else 0.0


def math_equivalent(ground_truth: str, text: str, timeout_s: float = 2.0) -> tuple[bool, str]:
    """R1-V/Ocean-R1's GeoQA rule: math-verify's parse of the whole ``text`` verifies against the parsed ground
    truth. Returns ``(equal, first parsed value as text)``; ``(False, "")`` if it overruns ``timeout_s``."""
    outcome = run_bounded([(rules.whole_text_task, (text, ground_truth))], timeout_s)[0]
    return outcome if outcome is not None else (False, "")


def run_bounded(calls: Iterable[Call], timeout_s: float, num_workers: int = 0) -> list[Any | None]:
    """Run ``(function, args)`` calls (module-level functions, picklable arguments) in the scoring workers, each
    under ``timeout_s``; a call that overruns (or kills its worker) gives ``None``. Results in call order.
    ``num_workers`` as ``reward.num_workers`` (0: from the CPU count)."""
    return _run(calls, RewardConfig(timeout_s=timeout_s, num_workers=num_workers))


def shutdown_workers() -> None:
    """Stop the scoring worker processes (they restart on demand). Runs at interpreter exit."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.close()
            _POOL = None


# ----------------------------------------------------------------------------------------------------------------


def _check(completions, ground_truths, reward_funcs, cfg: RewardConfig, options) -> None:
    n = len(completions)
    lengths = {"ground_truths": len(ground_truths), "reward_funcs": len(reward_funcs)}
    if options is not None:
        lengths["options"] = len(options)
    for name, length in lengths.items():
        if length != n:
            raise ValueError(f"score_batch: {name} has {length} entries but completions has {n}")
    for name, values in (
        ("completions", completions),
        ("ground_truths", ground_truths),
        ("reward_funcs", reward_funcs),
    ):
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise TypeError(f"score_batch: {name}[{i}] must be str, got {type(value).__name__}")
    if cfg.mode not in MODES:
        raise ValueError(f"reward.mode must be one of {MODES}, got {cfg.mode!r}")
    if not cfg.timeout_s > 0:
        raise ValueError(f"reward.timeout_s must be > 0, got {cfg.timeout_s}")
    if cfg.num_workers < 0:
        raise ValueError(
            f"reward.num_workers must be >= 0 (0 = pick from the CPU count), got {cfg.num_workers}"
        )


def _draft(completion: str, ground_truth: str, reward_func: str, options: Options, mode: str) -> _Draft:
    """Everything but math-verify, and the math-verify check still owed (``None`` when it cannot matter)."""
    accuracy, owed, answer, source = _accuracy_draft(completion, ground_truth, reward_func, options, mode)
    return _Draft(
        accuracy=accuracy,
        owed=owed,
        answer=answer[:EXTRACTED_MAX_CHARS] if answer is not None else None,
        source=source,
        format=1.0 if _format_ok(completion, reward_func, mode) else 0.0,
        think_answer_disagree=reward_func == "acc" and rules.think_answer_disagree(completion),
        unknown_reward_func=reward_func not in rules.REWARD_FUNCS,
    )


def _accuracy_draft(
    completion: str, ground_truth: str, reward_func: str, options: Options, mode: str
) -> tuple[float, _Owed | None, str | None, Literal["answer_tag", "whole_text", "none"]]:
    """(accuracy without math-verify, math-verify check owed or None, answer compared, where it came from)."""
    if reward_func not in rules.REWARD_FUNCS:
        return 0.0, None, None, "none"
    if reward_func == "iou":
        span = rules.extract_answer_span(completion, "last" if mode == "strict" else "first")
        accuracy = _iou_accuracy(completion, ground_truth, mode)
        return accuracy, None, span, "none" if span is None else "answer_tag"
    if mode in ("ocean_r1", "ocean_r1_v1"):
        span = rules.extract_answer_span(completion, "last")
        whole = completion.strip()
        answer, source = (
            (span, "answer_tag") if span is not None else (whole, "whole_text") if whole else (None, "none")
        )
        value = rules.ocean_string_match(completion, ground_truth, strip_dollars=mode == "ocean_r1")
        skip = value == 1.0 or rules.math_verify_finds_nothing(completion)
        return value, None if skip else (mode, completion, ground_truth), answer, source
    span = rules.extract_answer_span(completion, "last")
    if span is None:
        return 0.0, None, None, "none"
    decided = rules.strict_decide(span, ground_truth, options)
    if decided is not None:
        return decided, None, span, "answer_tag"
    math_text = rules.strict_math_text(span)
    skip = rules.math_verify_finds_nothing(math_text)
    return 0.0, None if skip else ("strict", math_text, ground_truth), span, "answer_tag"


def _format_ok(completion: str, reward_func: str, mode: str) -> bool:
    """The format rule of ``mode``: the first recipe's full match, or the verl recipe's (also strict mode's)."""
    if mode == "ocean_r1_v1":
        return rules.v1_format_ok(completion, reward_func)
    return rules.format_ok(completion, reward_func)


def _iou_accuracy(completion: str, ground_truth: str, mode: str) -> float:
    """IoU accuracy of ``mode``: the first answer span (strict: the last); ``$`` kept in the ground truth by the
    first recipe."""
    which = "last" if mode == "strict" else "first"
    return rules.iou_accuracy(completion, ground_truth, which, strip_dollars=mode != "ocean_r1_v1")


def _finish(draft: _Draft, outcomes: dict[_Owed, Any], cfg: RewardConfig) -> RewardBreakdown:
    accuracy, timed_out = draft.accuracy, False
    if draft.owed in outcomes:
        outcome = outcomes[draft.owed]
        if outcome is None:
            accuracy, timed_out = 0.0, True
        elif outcome[0]:
            accuracy = 1.0
    return RewardBreakdown(
        overall=accuracy + cfg.format_weight * draft.format,
        accuracy=accuracy,
        format=draft.format,
        answer_extracted=draft.answer,
        answer_source=draft.source,
        think_answer_disagree=draft.think_answer_disagree,
        timed_out=timed_out,
        unknown_reward_func=draft.unknown_reward_func,
    )


# Ground truths that math-verify reads as nothing (e.g. "(A)", "left"): no completion can match them, so their
# checks are skipped. Learned from workers' answers; bounded, and cleared when full.
_GOLDS_WITHOUT_MATH: set[tuple[str, str]] = set()
_GOLDS_WITHOUT_MATH_MAX = 100_000


def _may_match(owed: _Owed) -> bool:
    return (owed[0], owed[2]) not in _GOLDS_WITHOUT_MATH


def _remember_gold_without_math(kind: str, ground_truth: str) -> None:
    if len(_GOLDS_WITHOUT_MATH) >= _GOLDS_WITHOUT_MATH_MAX:
        _GOLDS_WITHOUT_MATH.clear()
    _GOLDS_WITHOUT_MATH.add((kind, ground_truth))


_POOL: DeadlinePool | None = None
_POOL_LOCK = threading.Lock()
_WORKER_INITIALIZER = "ocean_lib.rewards.rules:prepare_worker"


def _run(calls: Iterable[Call], cfg: RewardConfig) -> list[Any | None]:
    """``calls`` on the process-wide worker pool (started on first need, resized when the config asks)."""
    global _POOL
    size = cfg.num_workers or default_size()
    with _POOL_LOCK:
        if _POOL is None or _POOL.size != size:
            if _POOL is not None:
                _POOL.close()
            _POOL = DeadlinePool(size, initializer=_WORKER_INITIALIZER)
        return _POOL.map(calls, cfg.timeout_s)


atexit.register(shutdown_workers)
