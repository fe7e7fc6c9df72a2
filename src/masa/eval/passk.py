"""Unbiased pass@k (Chen et al. 2021) and its summary over a benchmark's problems."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PassAtK:
    mean: float
    std: float  # sample standard deviation across problems; 0.0 for a single problem
    stderr: float
    n_problems: int


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct.

    Evaluates ``1 - C(n-c, k) / C(n, k)`` as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which stays exact in
    floating point for any n, where the binomials themselves would overflow.
    """
    if n < 1:
        raise ValueError(f"pass@k needs at least one sample, got n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k} with n={n} samples")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c} correct of n={n} samples")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def summarize_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[int, PassAtK]:
    """Mean pass@k over problems given as ``(n, c)`` pairs, for each k in ``ks``."""
    if not counts:
        raise ValueError("summarize_pass_at_k needs at least one problem")
    summary: dict[int, PassAtK] = {}
    for k in ks:
        scores = []
        for index, (n, c) in enumerate(counts):
            try:
                scores.append(pass_at_k(n, c, k))
            except ValueError as err:
                raise ValueError(f"problem {index}: {err}") from err
        summary[k] = _summarize(scores)
    return summary


def _summarize(scores: list[float]) -> PassAtK:
    count = len(scores)
    mean = math.fsum(scores) / count
    std = math.sqrt(math.fsum((s - mean) ** 2 for s in scores) / (count - 1)) if count > 1 else 0.0
    return PassAtK(mean=mean, std=std, stderr=std / math.sqrt(count), n_problems=count)
