"""How well meta predictions match what the solution rollouts then did (the paper's meta-awareness).

Every function is pure and takes plain lists; a prediction of ``None`` means the meta output could not be
parsed. Pass rates, predicted or actual, are fractions in [0, 1].
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from masa.efficient.gating import GATING_REASONS, GateReason, gate_reason


class PassRateAlignment(TypedDict):
    n: int  # parsed pairs
    parse_rate: float | None  # None for no predictions at all
    mae: float | None
    pearson: float | None
    spearman: float | None


class LevelAlignment(TypedDict):
    n: int  # parsed pairs with a level
    levels: int
    # Each problem predicted as its level's mean actual pass rate, fitted on the pairs it is scored on.
    level_baseline_pearson: float | None
    # Prediction and actual pass rate, each less its level's mean: does the model tell a level's problems apart?
    within_level_pearson: float | None


@dataclass(frozen=True)
class CalibrationRow:
    bucket_low: float
    bucket_high: float
    count: int
    mean_predicted: float | None  # None for an empty bucket
    mean_actual: float | None


@dataclass(frozen=True)
class GatingScore:
    sigma: float
    precision: float | None  # None when nothing was gated
    recall: float | None  # None when no problem was truly zero-variance
    f1: float | None
    gated: int
    positives: int
    # Direction-aware: a gate is right only when its side matches (predicted unsolvable and all solutions
    # wrong, or predicted trivial and all right). None without actual pass rates.
    precision_direction: float | None = None
    recall_direction: float | None = None
    f1_direction: float | None = None


class CutoffEffect(TypedDict):
    factor: float
    killed_correct: int
    killed_incorrect: int
    tokens_saved: int


class CutoffAnalysis(TypedDict):
    n_correct: int
    n_incorrect: int
    differences_correct: list[int]  # actual - predicted length, per solution with a prediction
    differences_incorrect: list[int]
    mean_difference_correct: float | None
    mean_difference_incorrect: float | None
    median_difference_correct: float | None
    median_difference_incorrect: float | None
    cutoffs: list[CutoffEffect]


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when it is undefined (fewer than two points or a constant side)."""
    _check_same_length(x, y)
    if len(x) < 2:
        return None
    xs = np.asarray(x, dtype=np.float64) - np.mean(x)
    ys = np.asarray(y, dtype=np.float64) - np.mean(y)
    denominator = np.sqrt(np.dot(xs, xs) * np.dot(ys, ys))
    if denominator == 0.0:
        return None
    # Rounding can push a perfect correlation a hair past 1.
    return float(np.clip(np.dot(xs, ys) / denominator, -1.0, 1.0))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation, ties given their average rank (as scipy does)."""
    _check_same_length(x, y)
    return pearson(_average_ranks(x), _average_ranks(y))


def pass_rate_alignment(predicted: Sequence[float | None], actual: Sequence[float]) -> PassRateAlignment:
    """Parse rate over all predictions; error and correlations over the parsed ones."""
    _check_same_length(predicted, actual)
    pairs = [(p, a) for p, a in zip(predicted, actual, strict=True) if p is not None]
    preds = [p for p, _ in pairs]
    actuals = [a for _, a in pairs]
    return PassRateAlignment(
        n=len(pairs),
        parse_rate=len(pairs) / len(predicted) if predicted else None,
        mae=float(np.mean(np.abs(np.subtract(preds, actuals)))) if pairs else None,
        pearson=pearson(preds, actuals),
        spearman=spearman(preds, actuals),
    )


def level_alignment(
    predicted: Sequence[float | None], actual: Sequence[float], levels: Sequence[int]
) -> LevelAlignment:
    """What pass-rate predictions tell beyond each problem's difficulty level, over the parsed ones.

    A Pearson over problems of several levels rewards knowing the level alone: predicting each problem's
    level mean (``level_baseline_pearson``, the best any function of the level does on these pairs) can
    beat a model that also ranks within levels. ``within_level_pearson`` takes the level out of both sides.
    """
    _check_same_length(predicted, actual)
    _check_same_length(predicted, levels)
    kept = [(p, a, level) for p, a, level in zip(predicted, actual, levels, strict=True) if p is not None]
    preds = [p for p, _, _ in kept]
    actuals = [a for _, a, _ in kept]
    kept_levels = [level for _, _, level in kept]
    actual_means = _group_means(actuals, kept_levels)
    predicted_means = _group_means(preds, kept_levels)
    return LevelAlignment(
        n=len(kept),
        levels=len(set(kept_levels)),
        level_baseline_pearson=pearson(actual_means, actuals),
        within_level_pearson=pearson(
            np.subtract(preds, predicted_means).tolist(), np.subtract(actuals, actual_means).tolist()
        ),
    )


def _group_means(values: Sequence[float], groups: Sequence[int]) -> list[float]:
    """Each value's group mean."""
    members: dict[int, list[float]] = {}
    for value, group in zip(values, groups, strict=True):
        members.setdefault(group, []).append(value)
    means = {group: statistics.fmean(vs) for group, vs in members.items()}
    return [means[group] for group in groups]


def calibration_table(
    predicted: Sequence[float | None], actual: Sequence[float], buckets: int = 9
) -> list[CalibrationRow]:
    """Mean actual pass rate per bucket of predicted pass rate, unparsed predictions left out.

    Buckets are centred on the grid ``i / (buckets - 1)``: with the default 9 that is the model's own
    answer grid 0/8 .. 8/8, so each possible single prediction has its own bucket and a mean of several
    lands in the bucket of the nearest eighth. The outer buckets are half as wide, clipped to [0, 1].
    """
    _check_same_length(predicted, actual)
    if buckets < 2:
        raise ValueError(f"calibration needs at least 2 buckets, got {buckets}")
    steps = buckets - 1
    members: list[list[tuple[float, float]]] = [[] for _ in range(buckets)]
    for p, a in zip(predicted, actual, strict=True):
        if p is None:
            continue
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"predicted pass rates must lie in [0, 1], got {p}")
        # floor(x + 0.5) rather than round(), which would send exact halves to the even neighbour.
        members[int(np.floor(p * steps + 0.5))].append((p, a))
    rows = []
    for index, pairs in enumerate(members):
        rows.append(
            CalibrationRow(
                bucket_low=max(0.0, (index - 0.5) / steps),
                bucket_high=min(1.0, (index + 0.5) / steps),
                count=len(pairs),
                mean_predicted=float(np.mean([p for p, _ in pairs])) if pairs else None,
                mean_actual=float(np.mean([a for _, a in pairs])) if pairs else None,
            )
        )
    return rows


def length_hit_rate(
    predicted_lengths: Sequence[int | None], correct_length_ranges: Sequence[tuple[int, int] | None]
) -> float | None:
    """Fraction of predicted lengths inside the problem's range of correct lengths, bounds included.

    Problems without a correct rollout (range None) have no target and are left out; an unparsed
    prediction counts as a miss, as it earns no length reward. None when no problem has a target.
    """
    _check_same_length(predicted_lengths, correct_length_ranges)
    hits = [
        length is not None and bounds[0] <= length <= bounds[1]
        for length, bounds in zip(predicted_lengths, correct_length_ranges, strict=True)
        if bounds is not None
    ]
    return sum(hits) / len(hits) if hits else None


def would_gate(
    preds: Sequence[float | None], sigma: float, tolerance: float = 0.0, min_parsed: int = 2
) -> bool:
    """Predictive gating: skip a problem whose predicted pass rates agree it is trivial or unsolvable.

    Needs ``min_parsed`` parsed predictions, because the spread of a single one says nothing; their
    population standard deviation must be strictly below ``sigma`` and their mean within ``tolerance``
    of 0 or of 1.
    """
    if min_parsed < 1:
        raise ValueError(f"min_parsed must be at least 1, got {min_parsed}")
    if not 0.0 <= tolerance < 0.5:
        raise ValueError(f"tolerance must lie in [0, 0.5), got {tolerance}")
    reason, _, _ = gate_reason([p for p in preds if p is not None], sigma, tolerance, min_parsed)
    return reason in GATING_REASONS


def gate_side_matches(reason: GateReason, actual_pass_rate: float) -> bool:
    """Whether a gate's side is the outcome's: unsolvable and all wrong, or trivial and all right."""
    return (reason is GateReason.PREDICTED_UNSOLVABLE and actual_pass_rate == 0.0) or (
        reason is GateReason.PREDICTED_TRIVIAL and actual_pass_rate == 1.0
    )


def gating_scores(
    per_problem_predictions: Sequence[Sequence[float | None]],
    truly_zero_variance: Sequence[bool],
    sigmas: Sequence[float],
    *,
    tolerance: float = 0.0,
    min_parsed: int = 2,
    actual_pass_rates: Sequence[float] | None = None,
) -> list[GatingScore]:
    """Precision, recall and F1 of the gate against the problems whose solution group had no variance.

    The zero-variance scores count a problem predicted 0/8 that came out 8/8 as a correct gate (its group
    carried no signal either way); with ``actual_pass_rates`` the direction-aware scores also need the
    predicted side to be the outcome's, which is what shows that the predictions know the problem.
    """
    _check_same_length(per_problem_predictions, truly_zero_variance)
    positives = sum(truly_zero_variance)
    scores = []
    for sigma in sigmas:
        reasons = [
            gate_reason([p for p in preds if p is not None], sigma, tolerance, min_parsed)[0]
            for preds in per_problem_predictions
        ]
        gated = [reason in GATING_REASONS for reason in reasons]
        hits = sum(g and z for g, z in zip(gated, truly_zero_variance, strict=True))
        precision = hits / sum(gated) if any(gated) else None
        recall = hits / positives if positives else None
        direction: dict[str, float | None] = {}
        if actual_pass_rates is not None:
            _check_same_length(per_problem_predictions, actual_pass_rates)
            right = sum(
                g and gate_side_matches(r, a)
                for g, r, a in zip(gated, reasons, actual_pass_rates, strict=True)
            )
            p_dir = right / sum(gated) if any(gated) else None
            r_dir = right / positives if positives else None
            direction = {
                "precision_direction": p_dir,
                "recall_direction": r_dir,
                "f1_direction": _f1(p_dir, r_dir),
            }
        scores.append(
            GatingScore(
                sigma=sigma,
                precision=precision,
                recall=recall,
                f1=_f1(precision, recall),
                gated=sum(gated),
                positives=positives,
                **direction,
            )
        )
    return scores


def cutoff_analysis(
    actual_lengths: Sequence[int],
    correct: Sequence[bool],
    predicted_length: Sequence[int | None],
    factors: Sequence[float] = (1.5, 2, 3, 4),
) -> CutoffAnalysis:
    """What an early cutoff at ``factor * predicted length`` would have done to these solutions.

    A solution is killed when its actual length exceeds the cutoff, and then saves the tokens past it.
    Solutions without a parsed predicted length are left out everywhere.
    """
    _check_same_length(actual_lengths, correct)
    _check_same_length(actual_lengths, predicted_length)
    kept = [
        (length, ok, pred)
        for length, ok, pred in zip(actual_lengths, correct, predicted_length, strict=True)
        if pred is not None
    ]
    diffs_correct = [length - pred for length, ok, pred in kept if ok]
    diffs_incorrect = [length - pred for length, ok, pred in kept if not ok]
    cutoffs = []
    for factor in factors:
        killed = [(length, ok, factor * pred) for length, ok, pred in kept if length > factor * pred]
        cutoffs.append(
            CutoffEffect(
                factor=float(factor),
                killed_correct=sum(ok for _, ok, _ in killed),
                killed_incorrect=sum(not ok for _, ok, _ in killed),
                # A stopped rollout still generates up to the (integer) cutoff.
                tokens_saved=sum(length - int(limit) for length, _, limit in killed),
            )
        )
    return CutoffAnalysis(
        n_correct=len(diffs_correct),
        n_incorrect=len(diffs_incorrect),
        differences_correct=diffs_correct,
        differences_incorrect=diffs_incorrect,
        mean_difference_correct=statistics.fmean(diffs_correct) if diffs_correct else None,
        mean_difference_incorrect=statistics.fmean(diffs_incorrect) if diffs_incorrect else None,
        median_difference_correct=float(statistics.median(diffs_correct)) if diffs_correct else None,
        median_difference_incorrect=float(statistics.median(diffs_incorrect)) if diffs_incorrect else None,
        cutoffs=cutoffs,
    )


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _average_ranks(values: Sequence[float]) -> list[float]:
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(len(array), dtype=np.float64)
    ranks[order] = np.arange(1, len(array) + 1)
    # Tied values share the mean of the ranks they occupy.
    _, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse].tolist()


def _check_same_length(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"inputs must have the same length, got {len(a)} and {len(b)}")
