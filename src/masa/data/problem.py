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

    @property
    def numeric_answer(self) -> bool:
        """Whether only a plain number answers it (``metadata["answer_form"] == "number"``): an expression
        equal to the answer, such as the question restated, then scores 0 (``masa.verify.check_answer``)."""
        return self.metadata.get("answer_form") == "number"
