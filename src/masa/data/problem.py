"""The unit of work every task produces and every trainer and evaluator consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One problem with a verifiable answer.

    ``prompt`` is the bare problem statement (no chat template, no instructions): prompt builders wrap it,
    and the notion reward filters concepts against exactly this text.
    """

    id: str
    prompt: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def difficulty(self) -> Any:
        return self.metadata.get("difficulty")
