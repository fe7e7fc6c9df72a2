"""GRPO advantages: each rollout's reward relative to the other rollouts of the same group."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupAdvantages:
    advantages: list[list[float]]
    zero_variance: list[bool]
    """Groups whose rewards were all equal: they carry no learning signal (advantage 0)."""


def group_advantages(
    groups: Sequence[Sequence[float]], *, eps: float = 1e-6, scale: bool = True
) -> GroupAdvantages:
    """A_i = (r_i - mean) / (std + eps) within each group; groups may differ in size.

    The std is the unbiased sample std, as in GRPO's reference implementations (TRL, verl). A group of one
    rollout, or one whose rewards are all equal, gets advantage 0 rather than 0/eps noise.
    """
    advantages: list[list[float]] = []
    zero_variance: list[bool] = []
    for group in groups:
        rewards = torch.tensor(list(group), dtype=torch.float64)
        flat = len(group) < 2 or bool((rewards == rewards[0]).all())
        zero_variance.append(flat)
        if flat:
            advantages.append([0.0] * len(group))
            continue
        centred = rewards - rewards.mean()
        if scale:
            centred = centred / (rewards.std() + eps)
        advantages.append(centred.tolist())
    return GroupAdvantages(advantages, zero_variance)
