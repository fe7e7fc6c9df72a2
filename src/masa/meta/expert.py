"""Expert meta-trajectory SFT targets (paper v1): the best meta rollout, corrected to the true statistics.

Unlike the authors' (disabled) version, the target is valid JSON in the prompt's own units: pass rate as a
0..scale count, length as a statistic of the correct rollouts, and it parses back exactly.
"""

from __future__ import annotations

import re

from masa.meta.parse import MetaPrediction
from masa.meta.prompt import DEFAULT_MIN_LENGTH, length_bounds, render_meta_json
from masa.meta.rewards import SolutionStats

_META_BLOCK = re.compile(r"<meta>.*?</meta>", re.IGNORECASE | re.DOTALL)

# Used when no meta rollout is worth keeping, so that even a model that never produced the format
# (a 135M one early in training) gets a well-formed target to imitate.
GENERIC_REASONING = (
    "<meta>I consider which concepts the solution needs, how likely I am to solve it, "
    "and how long my solution will be.</meta>"
)


def select_expert_meta(
    meta_texts: list[str],
    predictions: list[MetaPrediction],
    notion_scores: list[float],
    threshold: float = 0.2,
) -> int | None:
    """Index of the meta rollout with the highest notion score, if that score reaches ``threshold``.

    Only rollouts whose notions parsed are eligible. Ties go to a rollout with a complete
    ``<meta>...</meta>`` block (its reasoning is kept in the target), then to the earliest.
    """
    if not (len(meta_texts) == len(predictions) == len(notion_scores)):
        raise ValueError(f"mismatched inputs: {len(meta_texts)=} {len(predictions)=} {len(notion_scores)=}")
    eligible = [
        i
        for i, (pred, score) in enumerate(zip(predictions, notion_scores, strict=True))
        if pred.notions is not None and score >= threshold
    ]
    if not eligible:
        return None
    return max(eligible, key=lambda i: (notion_scores[i], _META_BLOCK.search(meta_texts[i]) is not None, -i))


def fallback_notions(predictions: list[MetaPrediction], notion_scores: list[float]) -> list[str]:
    """The notions a fallback target keeps: those of the best-scoring rollout that stated any (earliest on
    ties), so the target does not teach an empty list when the rollouts named concepts below the bar."""
    stated = [i for i, p in enumerate(predictions) if p.notions]
    if not stated:
        return []
    return list(predictions[max(stated, key=lambda i: (notion_scores[i], -i))].notions or [])


def build_expert_target(
    meta_text: str | None,
    stats: SolutionStats,
    notions: list[str] | None,
    *,
    scale: int = 8,
    max_response_tokens: int,
    min_length: int = DEFAULT_MIN_LENGTH,
    notion_word: str = "math_notion",
    reasoning: bool = True,
    with_notions: bool = True,
) -> str:
    """The SFT completion for a meta prompt: kept (or generic) reasoning, then the true statistics as JSON
    (without the notion key when the task has no notions).

    pass_rate = round(p * scale), half up; solution_length = median length of the correct rollouts (of all
    rollouts when none is correct), half up, clamped to the prompt's length range. With ``reasoning=False``
    (a JSON-only meta prompt) the target is the JSON line alone.
    """
    low, high = length_bounds(min_length, max_response_tokens)
    # Exact integer form of floor(c * scale / G + 1/2): no float rounding at the .5 boundaries.
    pass_rate = (2 * stats.num_correct * scale + stats.num_rollouts) // (2 * stats.num_rollouts)
    length = _median_half_up(stats.correct_lengths or stats.lengths)
    kept = (notions or []) if with_notions else None
    answer = render_meta_json(kept, pass_rate, min(max(length, low), high), notion_word=notion_word)
    if not reasoning:
        return answer
    block = _META_BLOCK.search(meta_text) if meta_text is not None else None
    return f"{block.group() if block is not None else GENERIC_REASONING}\n{answer}"


def _median_half_up(values: tuple[int, ...]) -> int:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle] + 1) // 2
