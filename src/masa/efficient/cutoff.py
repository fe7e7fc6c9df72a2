"""Early cutoff (MASA-efficient): a per-problem token limit for solution rollouts from predicted lengths.

The length reward trains predictions to fall inside the range of correct solutions' lengths, so a rollout
running far past them is unlikely to be correct and is stopped. The paper does not say how the M
predictions combine; the project uses the median of the parsed ones (robust to one wild prediction).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from fractions import Fraction
from typing import Literal

Aggregate = Literal["median", "mean", "max"]

_AGGREGATES: dict[str, Callable[[list[int]], Fraction]] = {
    "median": lambda xs: Fraction(statistics.median_low(xs) + statistics.median_high(xs), 2),
    "mean": lambda xs: Fraction(sum(xs), len(xs)),
    "max": lambda xs: Fraction(max(xs)),
}


def cutoff_limit(
    predicted_lengths: list[int | None],
    *,
    factor: float = 2.0,
    min_tokens: int,
    max_tokens: int,
    aggregate: Aggregate = "median",
) -> int:
    """ceil(factor x aggregate of the parsed predictions), clamped to [min_tokens, max_tokens].

    With no parsed prediction there is nothing to cut against, so the rollout gets ``max_tokens``.
    """
    if not 1 <= min_tokens <= max_tokens or factor <= 0 or aggregate not in _AGGREGATES:
        raise ValueError(f"invalid cutoff settings: {factor=} {min_tokens=} {max_tokens=} {aggregate=}")
    parsed = [n for n in predicted_lengths if n is not None]
    if not parsed:
        return max_tokens
    # Exact arithmetic with the factor read as the decimal it was written as (1.1, not 1.10000000000000009),
    # so that 1.1 x 100 gives 110 and not 111; also no float overflow on absurd predictions.
    limit = math.ceil(Fraction(repr(float(factor))) * _AGGREGATES[aggregate](parsed))
    return min(max(limit, min_tokens), max_tokens)
