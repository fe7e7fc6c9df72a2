"""Predictive gating (MASA-efficient): skip the solution rollouts of problems predicted to be trivial or
unsolvable, whose GRPO group would have zero variance and so contribute nothing to the update.

A problem is gated when at least ``min_parsed`` of its M meta predictions parsed, their population
standard deviation is strictly below ``sigma``, and their mean lies within ``tolerance`` (inclusive) of 0
or of 1. The paper says "mean of 0 or 1"; read literally (tolerance 0) sigma would be redundant, since a
mean of exactly 0 or 1 forces every prediction to equal it. The default tolerance of 1/16 is half a unit
of the default 8-point scale: the mean *rounds* to 0 or to 8 of 8. Set it to 0 for the literal reading.

Online quality (spec section 5): a random ``audit_fraction`` of gated problems is rolled out anyway.
- precision = hits / audited, where a hit is an audited problem that proved zero-variance. Audits are a
  uniform sample of gated problems, so this estimates precision without bias.
- recall = TP / (TP + FN). FN (zero-variance problems the gate let through) is observed exactly, because
  every un-gated problem is rolled out. TP is only observed on the audited sample, so it is scaled up to
  all gated problems: TP ~= gated * precision. Counting only audited hits would bias recall down by the
  audit fraction. The ratio makes the estimate consistent rather than exactly unbiased; it is exact when
  ``audit_fraction`` is 1. Undefined metrics are NaN so that the logged keys stay the same every step.
- Direction-aware precision/recall (when outcomes come with their pass rate) count an audited gate as a
  hit only when its side is the outcome's: predicted unsolvable and all wrong, or trivial and all right.
  A collapsed predictor that calls everything unsolvable scores well on the zero-variance precision
  wherever most groups are flat, but not on this one.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any


class GateReason(StrEnum):
    PREDICTED_UNSOLVABLE = "predicted_unsolvable"
    PREDICTED_TRIVIAL = "predicted_trivial"
    TOO_FEW_PARSED = "too_few_parsed"
    SPREAD = "spread"  # std >= sigma: the predictions disagree
    UNCERTAIN = "uncertain"  # agree, but on a pass rate that should give a mixed group


GATING_REASONS = (GateReason.PREDICTED_UNSOLVABLE, GateReason.PREDICTED_TRIVIAL)


def gate_reason(
    parsed: list[float], sigma: float, tolerance: float, min_parsed: int
) -> tuple[GateReason, float | None, float | None]:
    """The gating rule itself, pure: why a problem with these parsed predicted pass rates is (not) gated."""
    if not parsed:
        return GateReason.TOO_FEW_PARSED, None, None
    mean, std = _mean_std(parsed)
    if len(parsed) < min_parsed:
        return GateReason.TOO_FEW_PARSED, mean, std
    if std >= sigma:
        return GateReason.SPREAD, mean, std
    if mean <= tolerance:
        return GateReason.PREDICTED_UNSOLVABLE, mean, std
    if mean >= 1 - tolerance:
        return GateReason.PREDICTED_TRIVIAL, mean, std
    return GateReason.UNCERTAIN, mean, std


@dataclass(frozen=True)
class GateDecision:
    gated: bool
    audited: bool
    reason: GateReason
    mean: float | None
    std: float | None
    n_parsed: int

    @property
    def rolled_out(self) -> bool:
        """Whether the problem's solution rollouts are generated (un-gated, or gated but audited)."""
        return not self.gated or self.audited


@dataclass
class _Counts:
    decisions: int = 0
    gated: int = 0
    audited: int = 0
    audit_hits: int = 0  # audited and truly zero-variance
    audit_direction_hits: int = 0  # audited, zero-variance, and on the predicted side
    ungated_observed: int = 0
    missed: int = 0  # un-gated but truly zero-variance


class PredictiveGate:
    """Decides per problem whether to skip its solution rollouts, and tracks how often it was right."""

    def __init__(
        self,
        sigma: float = 0.1,
        tolerance: float = 1 / 16,
        min_parsed: int = 2,
        audit_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        if sigma <= 0 or not 0 <= tolerance < 0.5 or min_parsed < 1 or not 0 <= audit_fraction <= 1:
            raise ValueError(f"invalid gate settings: {sigma=} {tolerance=} {min_parsed=} {audit_fraction=}")
        self.sigma = sigma
        self.tolerance = tolerance
        self.min_parsed = min_parsed
        self.audit_fraction = audit_fraction
        self._rng = random.Random(seed)
        self._window = _Counts()
        self._total = _Counts()

    def decide(self, pass_rate_fractions: list[float | None]) -> GateDecision:
        """Gate one problem from its M predicted pass rates as fractions in [0, 1] (None: unparsed)."""
        parsed = [x for x in pass_rate_fractions if x is not None]
        if any(not 0 <= x <= 1 for x in parsed):
            raise ValueError(f"pass-rate fractions must lie in [0, 1], got {parsed}")
        reason, mean, std = gate_reason(parsed, self.sigma, self.tolerance, self.min_parsed)
        gated = reason in GATING_REASONS
        # One draw per gated problem whatever audit_fraction is, so the RNG stream depends only on the
        # sequence of gate outcomes.
        audited = gated and self._rng.random() < self.audit_fraction
        for counts in (self._window, self._total):
            counts.decisions += 1
            counts.gated += gated
            counts.audited += audited
        return GateDecision(gated, audited, reason, mean, std, len(parsed))

    def roll_out_anyway(self, decision: GateDecision) -> GateDecision:
        """A skipped problem rolled out after all (to fill a short batch). Its outcome counts as an audit's:
        which gated problems fill a batch depends on the order they were drawn in, not on their outcomes,
        so they are as fair a sample of the gate's decisions as the random audits."""
        if decision.rolled_out:
            raise ValueError("only a gated, un-audited problem can be rolled out anyway")
        for counts in (self._window, self._total):
            counts.audited += 1
        return replace(decision, audited=True)

    def record_outcome(
        self, decision: GateDecision, truly_zero_variance: bool, pass_rate: float | None = None
    ) -> None:
        """Report whether a rolled-out problem's solution group had zero variance, and its pass rate."""
        if not decision.rolled_out:
            raise ValueError("a gated, un-audited problem was never rolled out: it has no outcome")
        side_matches = pass_rate is not None and (
            (decision.reason is GateReason.PREDICTED_UNSOLVABLE and pass_rate == 0.0)
            or (decision.reason is GateReason.PREDICTED_TRIVIAL and pass_rate == 1.0)
        )
        for counts in (self._window, self._total):
            if decision.gated:
                counts.audit_hits += truly_zero_variance
                counts.audit_direction_hits += truly_zero_variance and side_matches
            else:
                counts.ungated_observed += 1
                counts.missed += truly_zero_variance

    def metrics(self, cumulative: bool = False) -> dict[str, float]:
        """Gate metrics since the last ``reset_metrics`` (or since the start when ``cumulative``)."""
        c = self._total if cumulative else self._window
        precision = c.audit_hits / c.audited if c.audited else math.nan
        true_positives = c.gated * precision if c.gated else 0.0
        found = true_positives + c.missed
        recall = true_positives / found if found else math.nan
        precision_direction = c.audit_direction_hits / c.audited if c.audited else math.nan
        recall_direction = (c.gated * precision_direction if c.gated else 0.0) / found if found else math.nan
        return {
            "gate_rate": c.gated / c.decisions if c.decisions else math.nan,
            "precision": precision,
            "recall": recall,
            "f1": _f1(precision, recall),
            "precision_direction": precision_direction,
            "recall_direction": recall_direction,
            "f1_direction": _f1(precision_direction, recall_direction),
            **{f"n_{name}": float(value) for name, value in asdict(c).items()},
        }

    def reset_metrics(self) -> None:
        """Start a new metrics window; cumulative counts and the audit RNG are untouched."""
        self._window = _Counts()

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss_next = self._rng.getstate()
        return {
            "rng": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
            "window": asdict(self._window),
            "total": asdict(self._total),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng = state["rng"]
        self._rng.setstate((rng["version"], tuple(rng["internal"]), rng["gauss_next"]))
        # Checkpoints written before direction-aware counts existed load with those counts at 0.
        self._window = _Counts(**state["window"])
        self._total = _Counts(**state["total"])


def _f1(precision: float, recall: float) -> float:
    if math.isnan(precision) or math.isnan(recall):
        return math.nan
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    mean = math.fsum(values) / len(values)
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in values) / len(values))
