"""The built-in procedural arithmetic task, the default training task.

Levels run on purpose from trivial to beyond a 135M-parameter model, so that some groups of samples come
out all correct and some all wrong: those are the zero-variance groups that MASA's predictive gating learns
to skip.

=====  =========================================================  ==========================
level  problem                                                    operation
=====  =========================================================  ==========================
1      single-digit + single-digit                                ``add``
2      two-digit + single-digit                                   ``add``
3      two-digit + two-digit, or two-digit - two-digit (> 0)      ``add`` / ``sub``
4      two-digit * single-digit                                   ``mul``
5      three-digit * two-digit, or (a + b) * c - d                ``mul`` / ``multi_step``
=====  =========================================================  ==========================
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from masa.data.problem import Problem

__all__ = ["DEFAULT_LEVELS", "arithmetic_splits", "make_arithmetic_problems"]

# Each generator returns (operation, operands, expression, answer).
_Generated = tuple[str, list[int], str, int]


def _level_1(rng: random.Random) -> _Generated:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return "add", [a, b], f"{a} + {b}", a + b


def _level_2(rng: random.Random) -> _Generated:
    a, b = rng.randint(10, 99), rng.randint(0, 9)
    return "add", [a, b], f"{a} + {b}", a + b


def _level_3(rng: random.Random) -> _Generated:
    if rng.random() < 0.5:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return "add", [a, b], f"{a} + {b}", a + b
    a = rng.randint(11, 99)
    b = rng.randint(10, a - 1)
    return "sub", [a, b], f"{a} - {b}", a - b


def _level_4(rng: random.Random) -> _Generated:
    a, b = rng.randint(10, 99), rng.randint(2, 9)
    return "mul", [a, b], f"{a} * {b}", a * b


def _level_5(rng: random.Random) -> _Generated:
    if rng.random() < 0.5:
        a, b = rng.randint(100, 999), rng.randint(10, 99)
        return "mul", [a, b], f"{a} * {b}", a * b
    a, b, c, d = rng.randint(10, 999), rng.randint(10, 999), rng.randint(10, 99), rng.randint(10, 999)
    return "multi_step", [a, b, c, d], f"({a} + {b}) * {c} - {d}", (a + b) * c - d


_GENERATORS: dict[int, Callable[[random.Random], _Generated]] = {
    1: _level_1,
    2: _level_2,
    3: _level_3,
    4: _level_4,
    5: _level_5,
}
DEFAULT_LEVELS: tuple[int, ...] = tuple(_GENERATORS)

# Rejection sampling gives up after this many draws per problem: a level only has so many distinct
# problems (level 1 has 100), and asking for more unseen ones than exist must fail rather than spin.
_MAX_DRAWS_PER_PROBLEM = 1000


def make_arithmetic_problems(n: int, seed: int, levels: Sequence[int] = DEFAULT_LEVELS) -> list[Problem]:
    """``n`` problems, ``levels`` in equal shares (in shuffled order), the same for the same arguments.

    Problems are independent draws, so easy levels repeat once ``n`` is large. Ids are ``arith-{seed}-{i}``;
    metadata holds ``difficulty`` (the level), ``operation`` and ``operands``.
    """
    rng = random.Random(seed)
    return [_draw(rng, level, f"arith-{seed}-{i}") for i, level in enumerate(_level_schedule(rng, n, levels))]


def arithmetic_splits(
    seed: int = 0,
    n_train: int = 2000,
    n_eval: int = 200,
    levels: Sequence[int] = DEFAULT_LEVELS,
) -> tuple[list[Problem], list[Problem]]:
    """Train and eval problems with no prompt in common; eval prompts are also distinct from each other.

    Ids are ``arith-{seed}-train-{i}`` and ``arith-{seed}-eval-{i}``. Raises ValueError when a level has too
    few distinct problems for the request (level 1 has 100 in all).
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    eval_problems = []
    for i, level in enumerate(_level_schedule(rng, n_eval, levels)):
        problem = _draw_unseen(rng, level, f"arith-{seed}-eval-{i}", seen)
        seen.add(problem.prompt)
        eval_problems.append(problem)
    train_problems = [
        _draw_unseen(rng, level, f"arith-{seed}-train-{i}", seen)
        for i, level in enumerate(_level_schedule(rng, n_train, levels))
    ]
    return train_problems, eval_problems


def _level_schedule(rng: random.Random, n: int, levels: Sequence[int]) -> list[int]:
    if not levels or not set(levels) <= set(_GENERATORS):
        raise ValueError(f"levels must be a non-empty selection of {list(_GENERATORS)}, got {list(levels)}")
    # Round-robin then shuffle: exact shares, so per-level statistics are never starved by chance.
    schedule = [levels[i % len(levels)] for i in range(n)]
    rng.shuffle(schedule)
    return schedule


def _draw(rng: random.Random, level: int, problem_id: str) -> Problem:
    operation, operands, expression, answer = _GENERATORS[level](rng)
    return Problem(
        id=problem_id,
        prompt=f"What is {expression}?",
        answer=str(answer),
        # The question is an expression, so an answer must be a number, or restating it would score.
        metadata={"difficulty": level, "operation": operation, "operands": operands, "answer_form": "number"},
    )


def _draw_unseen(rng: random.Random, level: int, problem_id: str, seen: set[str]) -> Problem:
    for _ in range(_MAX_DRAWS_PER_PROBLEM):
        problem = _draw(rng, level, problem_id)
        if problem.prompt not in seen:
            return problem
    raise ValueError(
        f"level {level} has no unused problems left; ask for fewer eval problems or drop the level"
    )
