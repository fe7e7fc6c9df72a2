"""Named random streams, so that what one part of a step samples does not shift what another samples.

Solution sampling, meta sampling, gating audits and the update's own draws (mini-batch order, expert
picks) each get a generator seeded from (seed, name). Two runs that differ only in their meta path then
draw the same solution samples for as long as their weights agree, which the global torch RNG (consumed
by meta sampling between two solution batches) could not give. Data order has its own seeded stream in
``ProblemSampler``. The streams' states are part of a checkpoint, so a resumed run continues them exactly.
"""

from __future__ import annotations

import random
from typing import Any

STREAMS = ("solutions", "metas", "audits", "update")


def stream_seed(seed: int, name: str) -> int:
    """A 63-bit seed for stream ``name`` of a run seeded with ``seed`` (string seeding hashes stably)."""
    return random.Random(f"masa-{seed}-{name}").getrandbits(63)


class RngStreams:
    def __init__(self, seed: int):
        self._rngs = {name: random.Random(stream_seed(seed, name)) for name in STREAMS}

    def generator(self, name: str) -> random.Random:
        return self._rngs[name]

    def draw(self, name: str) -> int:
        """A fresh seed from stream ``name``, for one sampling call (e.g. ``RolloutEngine.generate``)."""
        return self._rngs[name].getrandbits(63)

    def state_dict(self) -> dict[str, Any]:
        return {name: rng.getstate() for name, rng in self._rngs.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, rng_state in state.items():
            self._rngs[name].setstate(rng_state)
