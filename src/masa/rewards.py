"""Solution rewards: 1 for a verified-correct final answer, else 0."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from masa.rollout.types import FinishReason
from masa.verify import check_answer


def solution_rewards(
    texts: Sequence[str],
    finish_reasons: Sequence[FinishReason],
    reference: str,
    *,
    fallback: Literal["last_number", "none"] = "last_number",
    timeout_s: float = 2.0,
) -> list[float]:
    """Cut-off rollouts score 0 without being checked: they were stopped before any final answer, and a
    number that happens to appear mid-reasoning must not count as one."""
    return [
        0.0
        if reason is FinishReason.CUTOFF
        else float(check_answer(text, reference, timeout_s=timeout_s, fallback=fallback))
        for text, reason in zip(texts, finish_reasons, strict=True)
    ]
