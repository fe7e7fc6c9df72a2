"""A meta rollout with its parsed prediction, and the per-step meta-awareness metrics over a batch."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from masa.eval.meta_metrics import pass_rate_alignment
from masa.meta.parse import MetaPrediction
from masa.meta.rewards import MetaRewardBreakdown, SolutionStats
from masa.rollout.types import Rollout


@dataclass(frozen=True)
class MetaRollout:
    rollout: Rollout
    text: str
    prediction: MetaPrediction
    expected_pass_rate: float | None = None
    """The model's mean pass rate at the token stating its count (``masa.meta.readout``), if read."""
    char_ends: tuple[int, ...] | None = None
    """``masa.meta.credit.token_char_ends`` of the completion, kept when field-level credit needs it."""


def meta_step_metrics(
    metas: list[list[MetaRollout]],
    scores: list[list[MetaRewardBreakdown]],
    stats: list[SolutionStats],
    scale: int,
    notions: bool = True,
) -> dict[str, float]:
    """Parse rates per field, reward components, and how well predictions match this step's truth.

    Alignment is measured per problem: the mean of its parsed predicted pass rates against the share of
    its solution rollouts that were correct, across the problems of the batch.
    """
    flat = [m.prediction for group in metas for m in group]
    flat_scores = [s for group in scores for s in group]
    if not flat:
        return {}
    actual = [s.pass_rate for s in stats]
    counts = _group_means(metas, lambda m: m.prediction.pass_rate)
    alignment = pass_rate_alignment([None if c is None else c / scale for c in counts], actual)
    expected_alignment = pass_rate_alignment(_group_means(metas, lambda m: m.expected_pass_rate), actual)
    hits = [
        float(s.l_min <= m.prediction.solution_length <= s.l_max)
        for group, s in zip(metas, stats, strict=True)
        if s.l_min is not None and s.l_max is not None
        for m in group
        if m.prediction.solution_length is not None
    ]
    return {
        "meta/parse_rate": _share(
            (p.notions is not None or not notions)
            and p.pass_rate is not None
            and p.solution_length is not None
            for p in flat
        ),
        "meta/parse_rate_any": _share(p.any_parsed for p in flat),
        "meta/parse_rate_notions": _share(p.notions is not None for p in flat),
        "meta/parse_rate_pass_rate": _share(p.pass_rate is not None for p in flat),
        "meta/parse_rate_length": _share(p.solution_length is not None for p in flat),
        "meta/reward": statistics.fmean(s.combined for s in flat_scores),
        "meta/reward_length": statistics.fmean(s.length for s in flat_scores),
        "meta/reward_pass_rate": statistics.fmean(s.pass_rate for s in flat_scores),
        "meta/reward_notion": statistics.fmean(s.notion for s in flat_scores),
        "meta/pass_rate_mae": _or_nan(alignment["mae"]),
        "meta/pass_rate_pearson": _or_nan(alignment["pearson"]),
        # The same alignment with each problem's predictions read as the model's expected count.
        "meta/pass_rate_mae_expected": _or_nan(expected_alignment["mae"]),
        "meta/pass_rate_pearson_expected": _or_nan(expected_alignment["pearson"]),
        "meta/expected_readout_rate": _share(m.expected_pass_rate is not None for g in metas for m in g),
        "meta/length_hit_rate": statistics.fmean(hits) if hits else math.nan,
    }


def _group_means(
    metas: list[list[MetaRollout]], reading: Callable[[MetaRollout], float | None]
) -> list[float | None]:
    """Per problem, the mean of its rollouts' readings that exist (None when none does)."""
    means = []
    for group in metas:
        values = [v for v in map(reading, group) if v is not None]
        means.append(statistics.fmean(values) if values else None)
    return means


def _share(flags) -> float:
    values = [bool(f) for f in flags]
    return sum(values) / len(values) if values else math.nan


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value
