"""Arithmetic problems a run never saw: neither in its seed's training split (all of it, not only the
problems the run drew) nor in its evaluation split. Each level's are drawn from a stream of their own, apart
from every seed's training and evaluation draws, so the arms of one seed meet the same problems."""

from __future__ import annotations

import json
from pathlib import Path

from masa.config import Config
from masa.data.arithmetic import make_arithmetic_problems
from masa.data.problem import Problem
from masa.runfiles import write_text
from masa.trainer import load_problem_splits

WIDE_SEED_OFFSET = 1_000_003


def fresh_problems(seed: int, seen: set[str], per_level: int, levels: list[int]) -> list[Problem]:
    """``per_level`` distinct problems of each level whose prompts are not in ``seen`` (the seed's splits)."""
    chosen: list[Problem] = []
    for level in levels:
        fresh: dict[str, Problem] = {}
        for problem in make_arithmetic_problems(
            50 * per_level, seed=WIDE_SEED_OFFSET + 10 * seed + level, levels=[level]
        ):
            if problem.prompt not in seen and problem.prompt not in fresh:
                fresh[problem.prompt] = problem
        if len(fresh) < per_level:
            raise SystemExit(f"level {level} has only {len(fresh)} problems outside seed {seed}'s splits")
        chosen += list(fresh.values())[:per_level]
    return chosen


def run_fresh_problems(config: Config, per_level: int, levels: list[int]) -> list[Problem]:
    """The fresh problems of a run trained with ``config`` (its seed, outside its splits)."""
    train, own_eval = load_problem_splits(config)
    return fresh_problems(config.train.seed, {p.prompt for p in [*train, *own_eval]}, per_level, levels)


def write_problems(path: Path, problems: list[Problem]) -> None:
    """A problems file ``masa eval --benchmark`` reads (the level as ``difficulty``), aside and renamed."""
    write_text(
        path,
        "".join(
            json.dumps({"id": p.id, "prompt": p.prompt, "answer": p.answer, **p.metadata}) + "\n"
            for p in problems
        ),
    )
