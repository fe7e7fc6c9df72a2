"""What a rollout engine is asked for and what it returns; shared by the HF and vLLM engines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class FinishReason(StrEnum):
    STOP = "stop"  # emitted an end-of-sequence token
    LENGTH = "length"  # reached the global max_new_tokens
    CUTOFF = "cutoff"  # reached its own, smaller per-sequence limit (MASA-efficient early cutoff)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    watch_token_ids: tuple[int, ...] = ()
    """Tokens whose distribution the engine records at every sampled position (``Rollout.watched_logprobs``):
    e.g. the digits of a predicted pass count, to read the model's expected answer and not just its sample."""


@dataclass(frozen=True)
class GenerationRequest:
    """One batch of a ``generate_together`` call: ``n`` completions of each prompt under ``params``, with
    ``max_tokens`` and ``seed`` as in ``RolloutEngine.generate``."""

    prompts: Sequence[list[int]]
    n: int
    params: SamplingParams
    max_tokens: Sequence[int] | None = None
    seed: int | None = None


@dataclass
class Rollout:
    """One sampled completion of one prompt.

    ``logprobs[i]`` is the log-probability of ``completion_ids[i]`` under the distribution it was sampled
    from (temperature and top-p applied). ``completion_ids`` includes the end-of-sequence token when
    ``finish_reason`` is STOP, because the policy chose it and the update must see it.

    ``watched_logprobs[i][j]`` (when ``SamplingParams.watch_token_ids`` is set) is the log-probability of
    watched token j at position i, at temperature 1 and normalised over the watched tokens alone: the
    same whatever temperature the completion was sampled at, and whichever engine sampled it.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    watched_logprobs: list[list[float]] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.completion_ids)
