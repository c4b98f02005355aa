"""What a benchmark asks (:class:`Item`) and what a scorer says about an answer to it (:class:`Verdict`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ocean_lib.data.images import ImageRef


@dataclass(frozen=True)
class Item:
    """One evaluation question.

    ``prompt`` is the full user turn: one ``<image>`` marker per image, before the text or after it (where the
    reference script put the images), and the reference's question and instruction;
    ``answer`` the ground truth as text (a JSON box for grounding; the option letter for multiple choice);
    ``options`` the option texts in letter order (empty for free-form questions, and where a benchmark writes
    its options only inside the question); ``subset`` the group accuracies are broken down by (CV-Bench task,
    RefCOCO split, MMMU subject, ...).
    """

    id: str
    prompt: str
    answer: str
    images: tuple[ImageRef, ...] = ()
    subset: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """What the scorer read from an output, and whether it is right."""

    extracted: str
    correct: bool


Scorer = Callable[[str, Item], Verdict]
"""A scoring rule: ``(output, item) -> Verdict``, a pure function (:mod:`ocean_lib.evaluation.scorers`)."""
