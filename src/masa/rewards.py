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
    grade_cutoff: bool = True,
    number_only: bool = False,
) -> list[float]:
    """A cut-off rollout is graded on a closed ``\\boxed{}`` alone (no fallback): it may have answered and
    then rambled on, but a number that happens to appear mid-reasoning must not count as an answer. With
    ``grade_cutoff`` false it scores 0 unchecked (the paper). ``number_only``: see ``check_answer``."""

    def grade(text: str, reason: FinishReason) -> float:
        if reason is not FinishReason.CUTOFF:
            return float(
                check_answer(text, reference, timeout_s=timeout_s, fallback=fallback, number_only=number_only)
            )
        if not grade_cutoff:
            return 0.0
        return float(
            check_answer(text, reference, timeout_s=timeout_s, fallback="none", number_only=number_only)
        )

    return [grade(text, reason) for text, reason in zip(texts, finish_reasons, strict=True)]
