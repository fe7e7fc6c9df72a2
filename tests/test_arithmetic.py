import ast
import operator
from collections import Counter

import pytest

from masa.data.arithmetic import DEFAULT_LEVELS, arithmetic_splits, make_arithmetic_problems
from masa.data.problem import Problem

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def evaluate(prompt: str) -> int:
    """An independent oracle: evaluate the expression in "What is ...?" over integer + - * only."""
    assert prompt.startswith("What is ") and prompt.endswith("?")

    def walk(node: ast.expr) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        assert isinstance(node, ast.Constant) and type(node.value) is int
        return node.value

    return walk(ast.parse(prompt.removeprefix("What is ").removesuffix("?"), mode="eval").body)


def test_deterministic_per_seed() -> None:
    assert make_arithmetic_problems(50, seed=3) == make_arithmetic_problems(50, seed=3)
    assert [p.prompt for p in make_arithmetic_problems(50, seed=3)] != [
        p.prompt for p in make_arithmetic_problems(50, seed=4)
    ]
    assert arithmetic_splits(seed=1, n_train=100, n_eval=20) == arithmetic_splits(
        seed=1, n_train=100, n_eval=20
    )


def test_answers_are_correct_integers() -> None:
    for problem in make_arithmetic_problems(500, seed=0):
        assert int(problem.answer) == evaluate(problem.prompt)
        assert problem.answer == str(int(problem.answer))
        operands = problem.metadata["operands"]
        assert all(str(x) in problem.prompt for x in operands)
        if problem.metadata["operation"] == "sub":
            assert int(problem.answer) > 0


def test_levels_in_equal_shares_and_growing_size() -> None:
    problems = make_arithmetic_problems(500, seed=0)
    assert Counter(p.difficulty for p in problems) == {level: 100 for level in DEFAULT_LEVELS}
    assert {p.metadata["operation"] for p in problems} == {"add", "sub", "mul", "multi_step"}
    largest = {
        level: max(int(p.answer) for p in problems if p.difficulty == level) for level in DEFAULT_LEVELS
    }
    assert largest[1] <= 18 and largest[4] < 1000 and largest[5] > 10_000


def test_level_selection() -> None:
    problems = make_arithmetic_problems(20, seed=0, levels=[2, 4])
    assert {p.difficulty for p in problems} == {2, 4}
    with pytest.raises(ValueError, match="levels"):
        make_arithmetic_problems(5, seed=0, levels=[6])


def test_ids() -> None:
    assert [p.id for p in make_arithmetic_problems(2, seed=7)] == ["arith-7-0", "arith-7-1"]
    train, eval_ = arithmetic_splits(seed=7, n_train=2, n_eval=2)
    assert [p.id for p in train + eval_] == [
        "arith-7-train-0",
        "arith-7-train-1",
        "arith-7-eval-0",
        "arith-7-eval-1",
    ]


def test_splits_are_disjoint() -> None:
    train, eval_ = arithmetic_splits(seed=0)
    assert (len(train), len(eval_)) == (2000, 200)
    eval_prompts = {p.prompt for p in eval_}
    assert len(eval_prompts) == len(eval_)
    assert not eval_prompts & {p.prompt for p in train}
    assert all(isinstance(p, Problem) for p in train + eval_)
    assert {p.difficulty for p in train} == {p.difficulty for p in eval_} == set(DEFAULT_LEVELS)


def test_exhausted_level_fails_instead_of_spinning() -> None:
    with pytest.raises(ValueError, match="level 1 has no unused problems"):
        arithmetic_splits(seed=0, n_train=10, n_eval=101, levels=[1])
