"""Held-out accuracy during training: the same prompts, sampling and checking every time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from masa.data.problem import Problem
from masa.prompts import encode_user_message, solution_prompt
from masa.rewards import solution_rewards
from masa.rollout.engine import RolloutEngine
from masa.rollout.types import Rollout, SamplingParams


@dataclass(frozen=True)
class HeldOutResult:
    accuracy: float
    by_difficulty: dict[str, float]
    samples: int
    mean_tokens: float


def heldout_accuracy(
    engine: RolloutEngine,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    params: SamplingParams,
    *,
    samples_per_problem: int = 1,
    template: str,
    fallback: Literal["last_number", "none"] = "last_number",
    timeout_s: float = 2.0,
    chunk_problems: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> HeldOutResult:
    """Accuracy of ``samples_per_problem`` completions per problem; generated ``chunk_problems`` problems
    at a time (all at once by default), with ``on_progress(problems done)`` after each chunk."""
    prompts = [encode_user_message(tokenizer, solution_prompt(p.prompt, template)) for p in problems]
    step = chunk_problems or len(prompts)
    groups: list[list[Rollout]] = []
    for start in range(0, len(prompts), step):
        groups += engine.generate(prompts[start : start + step], samples_per_problem, params)
        if on_progress is not None:
            on_progress(len(groups))
    scores: list[float] = []
    by_level: dict[str, list[float]] = defaultdict(list)
    tokens = 0
    for problem, rollouts in zip(problems, groups, strict=True):
        texts = tokenizer.batch_decode([r.completion_ids for r in rollouts], skip_special_tokens=True)
        rewards = solution_rewards(
            texts,
            [r.finish_reason for r in rollouts],
            problem.answer,
            fallback=fallback,
            timeout_s=timeout_s,
            number_only=problem.numeric_answer,
        )
        scores.extend(rewards)
        tokens += sum(r.num_tokens for r in rollouts)
        if problem.difficulty is not None:
            by_level[str(problem.difficulty)].extend(rewards)
    return HeldOutResult(
        accuracy=sum(scores) / len(scores),
        by_difficulty={level: sum(v) / len(v) for level, v in sorted(by_level.items())},
        samples=len(scores),
        mean_tokens=tokens / len(scores),
    )
