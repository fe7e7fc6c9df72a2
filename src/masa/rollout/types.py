"""What a rollout engine is asked for and what it returns; shared by the HF and vLLM engines."""

from __future__ import annotations

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


@dataclass
class Rollout:
    """One sampled completion of one prompt.

    ``logprobs[i]`` is the log-probability of ``completion_ids[i]`` under the distribution it was sampled
    from (temperature and top-p applied). ``completion_ids`` includes the end-of-sequence token when
    ``finish_reason`` is STOP, because the policy chose it and the update must see it.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason

    @property
    def num_tokens(self) -> int:
        return len(self.completion_ids)
