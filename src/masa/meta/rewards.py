"""Meta rewards: how well a meta rollout predicted the statistics of the same step's solution rollouts.

The G solution rollouts of a problem are the "dynamic ground truth" of its M meta rollouts. Every function
here is pure; a prediction field that is missing scores 0 for its component.

Notion matching (the paper only says "lemma-based"): case-insensitive, on whole words, after a simple
plural-stripping lemmatisation applied identically to notion and text (``-ies`` -> ``-y``; ``-sses``,
``-shes``, ``-ches``, ``-xes``, ``-zes`` lose ``-es``; another final ``-s`` goes unless the word ends in
``-ss``, ``-us`` or ``-is``; words of three letters or fewer are kept). A multi-word notion matches a
contiguous run of words, so punctuation and hyphens do not matter ("AM-GM" matches "am gm"). Notions that
normalise to the same words count once, so repeating a sure notion cannot inflate the fraction.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from masa.meta.parse import MetaPrediction

_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class SolutionStats:
    """Statistics of one problem's G solution rollouts: the truth the meta rewards compare against."""

    num_rollouts: int
    num_correct: int
    lengths: tuple[int, ...]
    correct_lengths: tuple[int, ...]
    correct_texts: tuple[str, ...]
    incorrect_texts: tuple[str, ...]

    @property
    def pass_rate(self) -> float:
        return self.num_correct / self.num_rollouts

    @property
    def l_min(self) -> int | None:
        return min(self.correct_lengths, default=None)

    @property
    def l_max(self) -> int | None:
        return max(self.correct_lengths, default=None)

    # Normalised once per problem, then shared by its M meta rollouts' notion rewards.
    @cached_property
    def _correct_words(self) -> tuple[str, ...]:
        return tuple(_word_string(text) for text in self.correct_texts)

    @cached_property
    def _incorrect_words(self) -> tuple[str, ...]:
        return tuple(_word_string(text) for text in self.incorrect_texts)


@dataclass(frozen=True)
class MetaRewardWeights:
    length: float = 1.0
    pass_rate: float = 1.0
    notion: float = 1.0

    def __post_init__(self) -> None:
        weights = (self.length, self.pass_rate, self.notion)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {self}")


EQUAL_WEIGHTS = MetaRewardWeights()


@dataclass(frozen=True)
class MetaRewardBreakdown:
    length: float
    pass_rate: float
    notion: float
    combined: float


def solution_stats(texts: list[str], correct: list[bool], lengths: list[int]) -> SolutionStats:
    """Collect the truth for one problem; a cut-off rollout is passed as incorrect."""
    if not (len(texts) == len(correct) == len(lengths)):
        raise ValueError(f"mismatched rollouts: {len(texts)=} {len(correct)=} {len(lengths)=}")
    if not texts:
        raise ValueError("a problem needs at least one solution rollout")
    return SolutionStats(
        num_rollouts=len(texts),
        num_correct=sum(correct),
        lengths=tuple(lengths),
        correct_lengths=tuple(n for n, ok in zip(lengths, correct, strict=True) if ok),
        correct_texts=tuple(t for t, ok in zip(texts, correct, strict=True) if ok),
        incorrect_texts=tuple(t for t, ok in zip(texts, correct, strict=True) if not ok),
    )


def length_reward(pred_len: int | None, stats: SolutionStats) -> float:
    """1 inside [l_min, l_max], bounds included, so a single correct rollout is a reachable target."""
    if pred_len is None or stats.l_min is None or stats.l_max is None:
        return 0.0
    return 1.0 if stats.l_min <= pred_len <= stats.l_max else 0.0


PassRateReward = Literal["exp", "brier", "log"]


def pass_rate_reward(
    pred_pass_rate: int | None,
    stats: SolutionStats,
    *,
    scale: int = 8,
    base: float = 0.01,
    kind: PassRateReward = "exp",
) -> float:
    """How well a predicted count out of ``scale`` matches the observed pass rate p, in [0, 1].

    - ``exp`` (the paper): ``base ** |p - q|``. Not a proper scoring rule: its expected value over the
      problems a model meets is highest at the most common outcome, not at the rate (with many unsolved
      problems, at q = 0), and the collapse is absorbing.
    - ``brier``: ``1 - (p - q)^2``, the mean Brier score of this step's G outcomes up to a constant within
      the group; proper, so its expectation is highest at the true rate.
    - ``log``: the mean log-likelihood of the G outcomes, ``p log q + (1 - p) log(1 - q)``, with q kept
      half a unit off 0 and 1 so a sure prediction is finite, mapped affinely from [log eps, 0] to [0, 1].
    """
    if pred_pass_rate is None:
        return 0.0
    q = pred_pass_rate / scale
    p = stats.pass_rate
    if kind == "exp":
        return base ** abs(p - q)
    if kind == "brier":
        return 1.0 - (p - q) ** 2
    if kind == "log":
        eps = 1 / (2 * scale)
        q = min(max(q, eps), 1 - eps)
        log_likelihood = p * math.log(q) + (1 - p) * math.log(1 - q)
        # p log q + (1 - p) log(1 - q) >= log eps, so this lies in [0, 1].
        return 1.0 + log_likelihood / -math.log(eps)
    raise ValueError(f"unknown pass-rate reward {kind!r}; allowed: exp, brier, log")


def notion_counts(notions: list[str] | None, problem_text: str, stats: SolutionStats) -> dict[str, int]:
    """Per surviving notion: correct rollouts mentioning it minus incorrect rollouts mentioning it.

    Notions found in the bare problem text are dropped (the authors tested the whole templated prompt,
    which wrongly dropped words of the template). Keys are the first spelling of each distinct notion.
    """
    problem_words = _word_string(problem_text)
    counts: dict[str, int] = {}
    seen: set[str] = set()
    for notion in notions or []:
        words = _word_string(notion)
        if words in seen or _mentions(problem_words, words):
            continue
        seen.add(words)
        counts[notion] = sum(_mentions(text, words) for text in stats._correct_words) - sum(
            _mentions(text, words) for text in stats._incorrect_words
        )
    return counts


def notion_reward(notions: list[str] | None, problem_text: str, stats: SolutionStats) -> float:
    """Fraction of surviving notions that correct rollouts mention more than incorrect ones; 0 if none."""
    counts = notion_counts(notions, problem_text, stats)
    if not counts:
        return 0.0
    return sum(count > 0 for count in counts.values()) / len(counts)


def meta_reward(
    pred: MetaPrediction,
    problem_text: str,
    stats: SolutionStats,
    *,
    scale: int = 8,
    base: float = 0.01,
    weights: MetaRewardWeights = EQUAL_WEIGHTS,
    pass_rate_kind: PassRateReward = "exp",
) -> MetaRewardBreakdown:
    """All components and their weighted mean; an unparseable output scores 0 everywhere."""
    length = length_reward(pred.solution_length, stats)
    pass_rate = pass_rate_reward(pred.pass_rate, stats, scale=scale, base=base, kind=pass_rate_kind)
    notion = notion_reward(pred.notions, problem_text, stats)
    total = weights.length + weights.pass_rate + weights.notion
    combined = (weights.length * length + weights.pass_rate * pass_rate + weights.notion * notion) / total
    return MetaRewardBreakdown(length=length, pass_rate=pass_rate, notion=notion, combined=combined)


def _lemma(word: str) -> str:
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _word_string(text: str) -> str:
    """Lemmatised words joined and padded by spaces, so a substring test is a whole-word sequence test."""
    words = [_lemma(word) for word in _WORD.findall(text.lower())]
    return f" {' '.join(words)} " if words else ""


def _mentions(text_words: str, notion_words: str) -> bool:
    # A notion with no words (only symbols) can be in no text: it survives the filter and scores 0.
    return bool(notion_words) and notion_words in text_words
