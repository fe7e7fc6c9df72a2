"""When MASA-efficient may start gating: once the meta predictions have shown they know the problems.

A fixed step count (the paper) switches on whatever the predictions are; a switch on the zero-variance
shadow precision accepts a predictor that calls everything unsolvable whenever most groups are flat. This
one looks at the last ``window`` parallel-stage steps and switches when, over their problems, the
direction-aware precision of the gate the trainer would have applied (the predicted side must be the
outcome's) and the Pearson correlation of mean predicted with actual pass rate both reach their bars.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from masa.efficient.gating import GATING_REASONS, GateReason
from masa.eval.meta_metrics import gate_side_matches, pearson


class CalibrationSwitch:
    def __init__(self, window: int, min_precision: float, min_pearson: float):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.min_precision = min_precision
        self.min_pearson = min_pearson
        # Per step: (mean predicted pass rate or None, actual pass rate, shadow gate reason) per problem.
        self._steps: deque[list[tuple[float | None, float, str]]] = deque(maxlen=window)

    def observe(
        self, predicted: list[float | None], actual: list[float], reasons: list[GateReason]
    ) -> dict[str, float]:
        """Record one parallel-stage step's problems; returns the rolling metrics after it."""
        self._steps.append([(p, a, str(r)) for p, a, r in zip(predicted, actual, reasons, strict=True)])
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        rows = [row for step in self._steps for row in step]
        gated = [(GateReason(r), a) for _, a, r in rows if GateReason(r) in GATING_REASONS]
        precision = sum(gate_side_matches(r, a) for r, a in gated) / len(gated) if gated else math.nan
        pairs = [(p, a) for p, a, _ in rows if p is not None]
        correlation = pearson([p for p, _ in pairs], [a for _, a in pairs])
        return {
            "switch/precision_direction": precision,
            "switch/pearson": math.nan if correlation is None else correlation,
            "switch/steps_observed": float(len(self._steps)),
        }

    def ready(self) -> bool:
        m = self.metrics()
        # NaN (nothing gated, or no spread to correlate) compares False: not ready.
        return (
            len(self._steps) == self.window
            and m["switch/precision_direction"] >= self.min_precision
            and m["switch/pearson"] >= self.min_pearson
        )

    def state_dict(self) -> dict[str, Any]:
        return {"steps": [list(step) for step in self._steps]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps = deque((list(step) for step in state["steps"]), maxlen=self.window)
