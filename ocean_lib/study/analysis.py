"""Read a run directory into tables, and measure the behaviour the aha-moment notebook looks at.

Ocean-R1 plots counts of "reasoning behaviour" per training step without saying what was counted. Here is what
we count, exactly:

* **Reflective phrases.** A completion is scanned (its whole text: ``<think>``, ``<answer>`` and anything
  outside the tags; the first :data:`MAX_SCAN_CHARS` characters) for the regular expressions of
  :data:`REFLECTION_LEXICON`, case-insensitively. Every pattern is anchored on word boundaries (``\\b``), so
  "wait" counts in "Wait, the angle..." but not in "awaiting" or "waiter", and "recheck" not in "prechecked".
  Each match is one occurrence; matches of different patterns may overlap ("however, I made a mistake" is one
  "however ... error" and one "I made a mistake"). :func:`reflection_counts_per_step` reports, per step, the
  fraction of completions with at least one occurrence and the number of occurrences of each pattern.
* **Response length.** The token count the trainer logged per completion (EOS included), summarised per step
  by :func:`response_length_per_step`.
* **Think/answer disagreement.** The reward's diagnostic ``think_answer_disagree``, computed by the reward code
  for every scored completion; :func:`think_answer_disagreement_rate_per_step` explains it and rates it per step.

The lexicon is a detector of *wording*, not of reasoning: a model can say "wait" without changing its mind, and
can correct itself silently. Read the counts next to the rollouts themselves (:mod:`ocean_lib.study.browser`).

Model output is untrusted: every pattern is a flat sequence of literals, character classes and bounded
repetitions (no nested quantifiers), so a scan is linear in the scanned length, and the length is capped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ocean_lib.base.io import read_jsonl
from ocean_lib.base.run_dir import RunDir

MAX_SCAN_CHARS = 20_000  # ~4,096 tokens of English; longer completions are scanned up to here

# name -> pattern (compiled case-insensitively). `\s+` between words lets a line break split a phrase.
REFLECTION_LEXICON: dict[str, str] = {
    # the "aha" of DeepSeek-R1's paper: "Wait, wait. Wait. That's an aha moment I can flag here."
    "wait": r"\bwait\b",
    # re-check, recheck, rechecking, rechecked
    "re-check": r"\bre-?check(?:s|ed|ing)?\b",
    # let me / let's / let us verify | check | confirm
    "let me verify": r"\blet(?:'s|\s+me|\s+us)\s+(?:verify|check|confirm)\b",
    "double-check": r"\bdouble[-\s]?check(?:s|ed|ing)?\b",
    # re-evaluate, reevaluate, re-examine, reconsider, rethink (and their -s/-d/-ing forms)
    "re-evaluate": r"\bre-?(?:evaluat|examin)(?:e|es|ed|ing)\b|\breconsider(?:s|ed|ing)?\b"
    r"|\bre-?think(?:s|ing)?\b",
    # "however, this ... error": a "however" followed, within the same sentence (at most 80 characters),
    # by an admission that something is wrong
    "however ... error": r"\bhowever\b[^.!?\n]{0,80}?\b(?:error|mistake|wrong|incorrect)\b",
    "on second thought": r"\bon\s+second\s+thought\b",
    "I made a mistake": r"\bI\s+(?:made\s+an?\s+(?:mistake|error)|was\s+wrong)\b",
    "that's wrong": r"\b(?:that|this)(?:'s|\s+is)\s+(?:not\s+right|not\s+correct|wrong|incorrect)\b",
    "let me try again": r"\blet(?:'s|\s+me)\s+try\s+again\b",
}

_COMPILED = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in REFLECTION_LEXICON.items()}

ROLLOUT_FIELDS = ("step", "data_source", "completion", "reward", "advantage", "length")
# optional fields and their defaults; with the required ones, in the order of a rollouts table's columns
ROLLOUT_COLUMNS: dict[str, Any] = {
    "step": None,
    "prompt_id": None,
    "data_source": None,
    "reward_func": None,
    "image": None,
    "prompt": "",
    "ground_truth": "",
    "completion": None,
    "advantage": None,
    "length": None,
    "finished": True,
}


# ----------------------------------------------------------------------------------------------------------------
# Reading a run directory
# ----------------------------------------------------------------------------------------------------------------


def _run_file(run_dir: str | Path | RunDir, name: str) -> Path:
    path = (run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)) / name
    if not path.is_file():
        raise FileNotFoundError(f"no {name} in run directory {path.parent}")
    return path


def metrics_frame(rows: Iterable[Mapping[str, Any]], source: str = "metrics") -> pd.DataFrame:
    """One row per optimizer step, indexed by ``step`` (sorted; a repeated step keeps its last row).

    Keys a step did not log (``val/accuracy`` between validations) are NaN. ``source`` names the rows' origin
    in errors.
    """
    rows = list(rows)
    for number, row in enumerate(rows, start=1):
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"{source}: row {number}, field 'step': expected an integer, got {step!r:.40}")
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(index=pd.Index([], name="step", dtype=int))
    return frame.drop_duplicates("step", keep="last").set_index("step").sort_index()


def load_metrics(run_dir: str | Path | RunDir) -> pd.DataFrame:
    """``<run_dir>/metrics.jsonl`` as a :func:`metrics_frame` (keys documented in :mod:`ocean_lib.training.metrics`)."""
    path = _run_file(run_dir, "metrics.jsonl")
    return metrics_frame(read_jsonl(path), str(path))


def rollouts_frame(rows: Iterable[Mapping[str, Any]], source: str = "rollouts") -> pd.DataFrame:
    """One row per sampled completion, with the reward breakdown flattened into ``reward/<field>`` columns.

    Required fields: ``step``, ``data_source``, ``completion``, ``reward`` (an object with at least
    ``overall``, ``accuracy``, ``format``), ``advantage``, ``length``; the others default
    (``image`` None, ``finished`` True, ...). A missing field raises naming ``source``, row and field.
    """
    flat = []
    for number, row in enumerate(rows, start=1):
        for name in ROLLOUT_FIELDS:
            if name not in row:
                raise ValueError(f"{source}: row {number} has no field {name!r}")
        reward = row["reward"]
        if not isinstance(reward, Mapping) or not {"overall", "accuracy", "format"} <= reward.keys():
            raise ValueError(
                f"{source}: row {number}, field 'reward': expected an object with overall, accuracy and format, "
                f"got {reward!r:.80}"
            )
        item = {name: row.get(name, default) for name, default in ROLLOUT_COLUMNS.items()}
        item.update({k: v for k, v in row.items() if k not in item and k != "reward"})
        item.update({f"reward/{key}": value for key, value in reward.items()})
        flat.append(item)
    if not flat:  # a run that has not logged rollouts yet: the columns, no rows
        numeric = {
            "step": int,
            "advantage": float,
            "length": int,
            "finished": bool,
            "reward/overall": float,
            "reward/accuracy": float,
            "reward/format": float,
        }
        columns = [*ROLLOUT_COLUMNS, "reward/overall", "reward/accuracy", "reward/format"]
        return pd.DataFrame({name: pd.Series(dtype=numeric.get(name, object)) for name in columns})
    return pd.DataFrame(flat)


def load_rollouts(run_dir: str | Path | RunDir) -> pd.DataFrame:
    """``<run_dir>/rollouts.jsonl`` as a :func:`rollouts_frame`."""
    path = _run_file(run_dir, "rollouts.jsonl")
    return rollouts_frame(read_jsonl(path), str(path))


# ----------------------------------------------------------------------------------------------------------------
# Completions
# ----------------------------------------------------------------------------------------------------------------


def _find_block(text: str, tag: str, start: int, last: bool = False) -> tuple[int, int, int, int] | None:
    """(block start, content start, content end, block end) of the first (or last) ``<tag>`` block at or after
    ``start``; an unclosed block runs to the end of the text (a completion cut at max_new_tokens)."""
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    at = text.rfind(open_tag, start) if last else text.find(open_tag, start)
    if at < 0:
        return None
    content = at + len(open_tag)
    close = text.find(close_tag, content)
    if close < 0:
        return at, content, len(text), len(text)
    return at, content, close, close + len(close_tag)


def split_completion(text: str) -> tuple[str, str, str]:
    """(think, answer, rest) of a completion, for display. Plain string search, linear time.

    ``think`` is the content of the first ``<think>`` block; ``answer`` of the *last* ``<answer>`` block after
    it; an unclosed block runs to the end of the text (for display: on malformed text, such as nested or
    unclosed tags, the reward may read another span, which its breakdown records as ``answer_extracted``).
    ``rest`` is the text outside those two blocks (preamble, text between or after them), one piece per line.
    Missing blocks are empty strings; everything is stripped.
    """
    think = _find_block(text, "think", 0)
    answer = _find_block(text, "answer", think[3] if think else 0, last=True)
    pieces, cursor = [], 0
    for block in (think, answer):
        if block:
            pieces.append(text[cursor : block[0]])
            cursor = block[3]
    pieces.append(text[cursor:])
    rest = "\n".join(piece.strip() for piece in pieces if piece.strip())
    return tuple(text[b[1] : b[2]].strip() if b else "" for b in (think, answer)) + (rest,)


def find_reflections(text: str, max_chars: int = MAX_SCAN_CHARS) -> list[tuple[str, int, int]]:
    """Every match of :data:`REFLECTION_LEXICON` in ``text[:max_chars]`` as (name, start, end), by position.

    Sorted by start, longer match first on ties; matches of different patterns may overlap.
    """
    scanned = text[:max_chars]
    found = [
        (name, m.start(), m.end()) for name, pattern in _COMPILED.items() for m in pattern.finditer(scanned)
    ]
    return sorted(found, key=lambda match: (match[1], -match[2]))


# ----------------------------------------------------------------------------------------------------------------
# Per-step analytics
# ----------------------------------------------------------------------------------------------------------------


def reflection_counts_per_step(rollouts: pd.DataFrame) -> pd.DataFrame:
    """Reflective wording per training step, indexed by ``step``.

    Columns: ``n`` (completions logged at the step), ``reflective`` (completions with at least one lexicon
    match), ``reflective_fraction`` = reflective / n, and one column per :data:`REFLECTION_LEXICON` name holding
    that pattern's number of occurrences summed over the step's completions (divide by ``n`` for a rate).
    """
    names = list(REFLECTION_LEXICON)
    counted = [Counter(name for name, _, _ in find_reflections(text)) for text in rollouts["completion"]]
    per_completion = pd.DataFrame(
        [[counts[name] for name in names] for counts in counted],
        columns=names,
        index=rollouts.index,
        dtype=int,
    )
    per_completion["step"] = rollouts["step"]
    per_completion["reflective"] = (per_completion[names].sum(axis=1) > 0).astype(int)
    grouped = per_completion.groupby("step")
    table = grouped[["reflective", *names]].sum()
    table.insert(0, "n", grouped.size())
    table.insert(2, "reflective_fraction", table["reflective"] / table["n"])
    return table


def reflection_over_training(rollouts: pd.DataFrame, windows: int = 4, seed: int = 0) -> pd.DataFrame:
    """Does RL amplify or suppress reflection? The run's steps cut into ``windows`` equal consecutive ranges;
    per range, the share of reflective completions (at least one lexicon match) and the accuracy of reflective
    and other completions, each with a 95% bootstrap interval.

    The samples of one prompt at one step (a GRPO group) are not independent, so the bootstrap resamples
    whole groups (``step``, ``prompt_id``; :func:`ocean_lib.evaluation.stats.bootstrap_accuracy`). Accuracy is
    the reward's ``accuracy`` field (1/0, or the IoU-based credit of boxes). Columns, one row per range:
    ``steps`` ("1-10"), ``n``, ``reflective``, ``rate`` / ``rate_low`` / ``rate_high``, and ``accuracy_reflective``
    and ``accuracy_other`` with their ``_low`` / ``_high`` (NaN where a range has no such completion).
    """
    from ocean_lib.evaluation.stats import bootstrap_accuracy

    if rollouts.empty:
        raise ValueError("no rollouts: the run has logged no completions yet")
    steps = np.sort(rollouts["step"].unique())
    reflective = rollouts["completion"].map(lambda text: bool(find_reflections(text)))
    group = rollouts["step"].astype(str) + "/" + rollouts["prompt_id"].astype(str)
    accuracy = rollouts["reward/accuracy"].astype(float)
    rows = []
    for part in np.array_split(steps, min(windows, len(steps))):
        inside = rollouts["step"].isin(part)
        row: dict[str, Any] = {"steps": f"{part[0]}-{part[-1]}", "n": int(inside.sum())}
        row["reflective"] = int(reflective[inside].sum())
        cells = {
            "rate": (reflective[inside], inside),
            "accuracy_reflective": (accuracy[inside & reflective], inside & reflective),
            "accuracy_other": (accuracy[inside & ~reflective], inside & ~reflective),
        }
        for name, (values, where) in cells.items():
            interval = bootstrap_accuracy(
                [values.to_numpy(float)], seed=seed, clusters=[group[where].tolist()]
            )
            row.update({name: interval.value, f"{name}_low": interval.low, f"{name}_high": interval.high})
        rows.append(row)
    return pd.DataFrame(rows)


def response_length_per_step(rollouts: pd.DataFrame) -> pd.DataFrame:
    """Completion length in tokens per training step, indexed by ``step``.

    Columns: ``n``, ``mean``, ``median``, ``q10`` and ``q90`` (10th/90th percentiles, linear interpolation),
    ``max``, and ``unfinished_fraction`` (completions cut at max_new_tokens without EOS).
    """
    grouped = rollouts.groupby("step")
    lengths = grouped["length"]
    return pd.DataFrame(
        {
            "n": grouped.size(),
            "mean": lengths.mean(),
            "median": lengths.median(),
            "q10": lengths.quantile(0.1),
            "q90": lengths.quantile(0.9),
            "max": lengths.max(),
            "unfinished_fraction": 1.0 - grouped["finished"].mean(),
        }
    )


def think_answer_disagreement_rate_per_step(rollouts: pd.DataFrame) -> pd.DataFrame:
    """How often the answer in ``<answer>`` disagrees with a number reached in ``<think>``, per step.

    The reward code (``ocean_lib.rewards.rules.think_answer_disagree``) sets the diagnostic
    ``think_answer_disagree`` on every ``acc`` completion it scores: true when the last number in the
    ``<think>`` span differs (as a float) from the last number in the last ``<answer>`` span, as in
    ``<think>... so 5</think><answer>6</answer>``. It is false when they are equal *and* when either span is
    missing or holds no number, so the rate below is a lower bound on disagreement among completions that state
    a number in both places. ``iou`` completions (boxes, not numbers) are not counted; a null diagnostic counts
    as not checked.

    Why it matters: Ocean-R1's accuracy reward first matches the *whole* completion symbolically, so a number
    that appears only in ``<think>`` can earn credit while the stated answer is something else. A rising rate
    means the model is learning to hedge in its reasoning rather than to answer.

    Columns, indexed by ``step``: ``n`` (completions), ``checked`` (``acc`` completions with a true or false
    diagnostic), ``disagree`` (true ones), ``rate`` = disagree / checked (NaN when nothing was checked).
    """
    column = "reward/think_answer_disagree"
    values = rollouts[column] if column in rollouts else pd.Series(None, index=rollouts.index, dtype=object)
    scored_as_acc = rollouts["reward_func"].ne("iou") if "reward_func" in rollouts else True
    checked = values.map(lambda v: isinstance(v, bool | np.bool_)) & scored_as_acc
    disagree = values.map(lambda v: v is True or v is np.True_) & checked
    frame = pd.DataFrame({"step": rollouts["step"], "checked": checked, "disagree": disagree})
    grouped = frame.groupby("step")
    table = pd.DataFrame(
        {"n": grouped.size(), "checked": grouped["checked"].sum(), "disagree": grouped["disagree"].sum()}
    )
    table["rate"] = table["disagree"] / table["checked"].where(table["checked"] > 0)
    return table


def smooth(values: Iterable[float], weight: float) -> np.ndarray:
    r"""Exponential moving average with bias correction (TensorBoard's smoothing slider).

    :math:`m_t = w\,m_{t-1} + (1-w)\,x_t`, :math:`m_0 = 0`, shown as :math:`m_t / (1 - w^t)` so the first points
    are not pulled towards zero. ``weight`` 0 returns the input; it must lie in [0, 1).
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    x = np.asarray(list(values), dtype=float)
    out = np.empty_like(x)
    moving = 0.0
    for t, value in enumerate(x, start=1):
        moving = weight * moving + (1.0 - weight) * value
        out[t - 1] = moving / (1.0 - weight**t)
    return out


def data_mix(records: Iterable[Any]) -> pd.DataFrame:
    """How many records of each data source and reward function (``Record`` objects), largest first."""
    counts = Counter((r.data_source, r.reward_func, len(r.images)) for r in records)
    frame = pd.DataFrame(
        [{"data_source": s, "reward_func": f, "images": i, "records": n} for (s, f, i), n in counts.items()],
        columns=["data_source", "reward_func", "images", "records"],
    )
    return frame.sort_values("records", ascending=False, ignore_index=True)
