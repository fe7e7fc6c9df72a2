"""Checks that get no verdict in time are counted: per training step and in `masa eval` results."""

import json

import pytest
from scripted_engine import ScriptedEngine

from masa import verify
from masa.config import load_config
from masa.eval.runner import EvalSettings, evaluate_benchmark, write_results
from masa.trainer import Trainer


class _NoVerdictFor:
    """A worker pool that gives no verdict (as on a deadline) for the listed answers, True otherwise."""

    def __init__(self, *answers: str):
        self.answers = set(answers)

    def check(self, answer: str, reference: str, cpu_s: float) -> bool | None:
        return None if answer in self.answers else True


@pytest.fixture
def no_fast_path(monkeypatch):
    monkeypatch.setattr(verify, "settle", lambda answer, reference: None)


# Numbers, because arithmetic problems take only a number as an answer; the pool stubbed below gives no
# verdict on "7" (the slow check) and says True to anything else.
SLOW, FAST = "7", "8"


def _solution(problem, j):
    return rf"\boxed{{{SLOW}}}" if j % 2 == 0 else rf"\boxed{{{FAST}}}"


def test_train_step_logs_verify_timeouts(tmp_path, monkeypatch, no_fast_path):
    monkeypatch.setattr(verify, "pool", lambda: _NoVerdictFor(SLOW))
    cfg = load_config(
        "tiny",
        overrides=[
            f"train.output_dir={tmp_path}",
            "data.eval=null",
            "algo=grpo",
            "train.batch_problems=3",
            "rollout.n=4",
            "rollout.max_new_tokens=16",
        ],
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "r")
    trainer.engine.engine = ScriptedEngine(trainer.tokenizer, trainer.train_problems, _solution, _solution)
    log = trainer.train_step()
    assert log["reward/verify_timeouts"] == 3 * 2  # the two slow samples of each problem
    assert log["reward/solution"] == 0.5


def test_eval_results_count_verify_timeouts(tiny, tmp_path, monkeypatch, no_fast_path):
    from masa.data.problem import Problem

    monkeypatch.setattr(verify, "pool", lambda: _NoVerdictFor(SLOW))
    model, tokenizer = tiny
    problems = [Problem("a", "What is 2 + 3?", "5"), Problem("b", "What is 7 * 6?", "42")]
    engine = ScriptedEngine(tokenizer, problems, _solution, _solution)
    result = evaluate_benchmark(
        model, tokenizer, problems, EvalSettings(n=4), tmp_path / "bench", engine=engine
    )
    # check_answers grades each distinct answer of a problem once: one check without a verdict each.
    assert [row["verify_timeouts"] for row in result.problems] == [1, 1]
    assert [row["c"] for row in result.problems] == [2, 2]
    path = write_results(tmp_path / "results.json", EvalSettings(n=4), [result])
    assert json.loads(path.read_text())["benchmarks"]["bench"]["verify_timeouts"] == 2
