"""Keeping a rollout engine at the policy's weights: versions, syncing, and refusing stale engines."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import torch

from masa.rollout.engine import RolloutEngine, generate_together
from masa.rollout.types import GenerationRequest, Rollout, SamplingParams


class StaleEngineError(RuntimeError):
    """The engine holds older weights than the policy: its samples would be silently off-policy."""


class SyncedEngine:
    """The trainer's engine: every optimiser step of a tracked optimiser is a new policy version.

    The version is counted by an optimiser step hook, so no step (RL update, expert SFT, one a future
    component adds) can go uncounted; ``sync`` sends the weights, and ``generate`` refuses an engine that
    has not received them.
    """

    def __init__(self, engine: RolloutEngine, weights: Callable[[], Iterable[tuple[str, torch.Tensor]]]):
        self.engine = engine
        self.weights = weights
        self.policy_version = engine.weights_version

    @property
    def weights_version(self) -> int:
        return self.engine.weights_version

    def track(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_post_hook(self._policy_changed)

    def _policy_changed(self, *_: object) -> None:
        self.policy_version += 1

    def sync(self) -> float:
        """Send the policy's weights if the engine is behind; returns the seconds it took."""
        if self.engine.weights_version == self.policy_version:
            return 0.0
        started = time.perf_counter()
        self.engine.load_weights(self.weights(), self.policy_version)
        return time.perf_counter() - started

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.engine.load_weights(named_tensors, version)

    def close(self) -> None:
        self.engine.close()

    def generate(
        self,
        prompts: Sequence[list[int]],
        n: int,
        params: SamplingParams,
        max_tokens: Sequence[int] | None = None,
        seed: int | None = None,
    ) -> list[list[Rollout]]:
        return self.generate_many([GenerationRequest(prompts, n, params, max_tokens, seed)])[0]

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[list[list[Rollout]]]:
        if self.engine.weights_version != self.policy_version:
            raise StaleEngineError(
                f"the rollout engine holds policy version {self.engine.weights_version} but the policy is at "
                f"version {self.policy_version}: call sync() after optimiser steps, before generating"
            )
        return generate_together(self.engine, requests)
