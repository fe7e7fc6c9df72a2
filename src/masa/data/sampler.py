"""Deterministic, resumable iteration over training problems in shuffled epochs."""

from __future__ import annotations

import random
from typing import Any

from masa.data.problem import Problem


class ProblemSampler:
    """Yields problems epoch after epoch, each epoch in a seeded order.

    The order of epoch e depends only on (seed, e), so the state is just two integers and a resumed run
    sees exactly the problems an uninterrupted run would have seen.
    """

    def __init__(self, problems: list[Problem], *, seed: int, shuffle: bool = True):
        if not problems:
            raise ValueError("no training problems to sample from")
        self.problems = problems
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        order = list(range(len(self.problems)))
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order

    def take(self, count: int) -> list[Problem]:
        batch = []
        for _ in range(count):
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order()
            batch.append(self.problems[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": len(self.problems)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["size"] != len(self.problems) or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint was made with {state['size']} problems and seed {state['seed']}, "
                f"but this run has {len(self.problems)} problems and seed {self.seed}"
            )
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._order = self._epoch_order()
