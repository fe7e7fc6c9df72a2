import os
import signal
import threading
import time
from pathlib import Path

import pytest

from masa import verify, verify_worker
from masa.verify import check_answer, check_answers, extract_answer, verify_timeouts


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"first \boxed{1}, then \fbox{2}, finally \boxed{ 3 }", "3"),
        (r"\boxed{\sqrt{\frac{a}{b}} + 1} and an unclosed \boxed{7", r"\sqrt{\frac{a}{b}} + 1"),
        (r"\boxed{5} then an empty \boxed{}", "5"),
        ("we get 3, then 1,234 apples", "1234"),
        ("x = -5", "-5"),
        ("10-3 is 7 and 3/4 of it", "3/4"),
        ("it is 2.5.", "2.5"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(completion: str, expected: str | None) -> None:
    assert extract_answer(completion) == expected


def test_extract_answer_without_fallback() -> None:
    assert extract_answer("the answer is 42", fallback="none") is None
    assert extract_answer(r"\boxed{42}", fallback="none") == "42"


def test_extraction_is_linear_on_unclosed_boxes() -> None:
    start = time.perf_counter()
    assert extract_answer(r"\boxed{" * 20_000, fallback="none") is None
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("completion", "reference"),
    [
        (r"\boxed{1/2}", r"\frac{1}{2}"),
        (r"\boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{0.5}", "1/2"),
        (r"\boxed{\dfrac12}", "1/2"),
        (r"\boxed{42}", "42"),
        ("The answer is 42.", "42"),
        (r"$\boxed{1,234}$", "1234"),
        (r"\boxed{2.50}", "2.5"),
        (r"\boxed{42}", r"\boxed{42}"),
        (r"\boxed{1+x^2}", "x^2+1"),
        (r"\boxed{(1, 2)}", "(1,2)"),
    ],
)
def test_equivalent_forms(completion: str, reference: str) -> None:
    assert check_answer(completion, reference)


@pytest.mark.parametrize(
    ("completion", "reference"),
    [
        (r"\boxed{41}", "42"),
        ("The answer is 41", "42"),
        (r"\boxed{\frac{1}{3}}", "0.5"),
        (r"\boxed{x^2-1}", "x^2+1"),
        (r"\boxed{(2, 1)}", "(1,2)"),
        (r"\boxed{42} no, wait: \boxed{43}", "42"),
    ],
)
def test_wrong_answers(completion: str, reference: str) -> None:
    assert not check_answer(completion, reference)


def test_no_answer_scores_false() -> None:
    assert not check_answer("I don't know", "42")
    assert not check_answer("the answer is 42", "42", fallback="none")


def test_check_answers_matches_check_answer() -> None:
    completions = [r"\boxed{42}", r"\boxed{41}", "nothing", r"\boxed{42}", r"\boxed{\frac{84}{2}}"]
    assert check_answers(completions, "42") == [True, False, False, True, True]


def _warm_worker() -> int:
    """Make sure an idle worker is up (``\\sqrt{4}`` is not settled in-process) and return its pid."""
    assert check_answer(r"\boxed{\sqrt{4}}", "2")
    return verify_worker.pool().idle_pids()[-1]


def test_pathological_answer_times_out_as_false() -> None:
    _warm_worker()
    before = verify_timeouts()
    start = time.perf_counter()
    # A huge integer power is one long C call, which the CPU timer cannot interrupt: the worker is killed.
    assert not check_answer(r"\boxed{9^{9^{9^{9}}}}", "2", timeout_s=0.5)
    assert time.perf_counter() - start < 60  # hang guard only
    assert verify_timeouts() == before + 1
    assert check_answer(r"\boxed{\sqrt{9}}", "3")  # the killed worker was replaced


def test_timeout_in_python_code_keeps_the_worker_warm() -> None:
    pid = _warm_worker()
    before = verify_timeouts()
    # Expanding a 60th power takes sympy about a second of pure Python, which the CPU timer interrupts.
    assert not check_answer(r"\boxed{(x+1)^{60}}", "x^{60}+1", timeout_s=0.05)
    assert verify_timeouts() == before + 1
    assert verify_worker.pool().idle_pids() == [pid]
    assert check_answer(r"\boxed{\sqrt{16}}", "4")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="CPU time of a process is read from /proc")
def test_deadline_counts_cpu_time_not_wall_time() -> None:
    """A worker that gets no CPU for a while (a loaded machine, here simulated by stopping it) still gives
    its verdict: under a wall-clock deadline this correct answer scored 0."""
    pid = _warm_worker()
    os.kill(pid, signal.SIGSTOP)
    resume = threading.Timer(1.0, os.kill, (pid, signal.SIGCONT))
    resume.start()
    try:
        before = verify_timeouts()
        assert check_answer(r"\boxed{\sqrt{25}}", "5", timeout_s=0.3)
        assert verify_timeouts() == before
    finally:
        resume.join()


def test_answer_and_reference_lengths_are_capped_first(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_worker() -> None:
        raise AssertionError("an over-long input must not reach math-verify")

    monkeypatch.setattr(verify, "pool", no_worker)
    start = time.perf_counter()
    # Stripping ``$`` pairs before the cap was quadratic: 31 s for this one.
    assert not check_answer("\\boxed{" + "$" * 2**20 + "}", "1")
    assert not check_answer(r"\boxed{1}", "$" * 2**20)
    huge = "1" * 10**6
    assert not check_answer(f"\\boxed{{{huge}}}", huge)
    assert not check_answer(r"\boxed{1}", huge)
    assert not check_answer(r"\boxed{1}", rf"\boxed{{{huge[:5000]}}}")
    assert time.perf_counter() - start < 30  # hang guard only
    assert check_answer(r"\boxed{1}", "x" * 5000 + r"\boxed{1}")  # a worked solution is a fine reference


def test_unstartable_worker_scores_false(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_pool() -> None:
        raise OSError("cannot spawn")

    monkeypatch.setattr(verify, "pool", broken_pool)
    assert not check_answer(r"\boxed{\sqrt{4}}", "2")
    assert check_answer(r"\boxed{42}", "42")  # plain numbers never need the worker


def test_works_off_the_main_thread() -> None:
    results: list[bool] = []
    threads = [
        threading.Thread(
            target=lambda ok=ok: results.append(check_answer(rf"\boxed{{{ok}}}", r"\frac{1}{2}"))
        )
        for ok in [r"\sqrt{\frac{1}{4}}", r"\sin(\frac{\pi}{6})", r"\frac{1}{3}"]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True, True]


def test_a_question_restated_does_not_answer_a_number_only_problem() -> None:
    # Seen in training (session 19): a policy learnt to box the question itself, quoted, which math-verify
    # evaluates to the reference; every held-out arithmetic problem then scored as solved.
    expressions = [r'\boxed{"17 + 8"}', r"\boxed{17 + 8}"]
    answers = [r"\boxed{25}", r"so \boxed{$25$}.", r"\boxed{25.0}", "it is 25"]
    assert check_answer(r'\boxed{"17 + 8"}', "25")  # what math-verify alone accepts
    assert check_answers(expressions + answers, "25", number_only=True) == [False, False] + [True] * 4
    assert not check_answer(r"\boxed{5 \cdot 5}", "25", number_only=True)
    # A fraction is a number form: 50/2 is accepted as 25, like 25.0.
    assert check_answer(r"\boxed{\frac{50}{2}}", "25", number_only=True)
    assert check_answer(r"\boxed{-3}", "-3", number_only=True)
    assert check_answer(r"\boxed{1,234}", "1234", number_only=True)


def test_arithmetic_problems_are_number_only_and_score_the_restated_question_zero() -> None:
    from masa.data.arithmetic import make_arithmetic_problems
    from masa.rewards import solution_rewards
    from masa.rollout.types import FinishReason

    problem = make_arithmetic_problems(1, seed=0)[0]
    expression = problem.prompt.removeprefix("What is ").removesuffix("?")
    texts = [rf'\boxed{{"{expression}"}}', rf"\boxed{{{problem.answer}}}"]
    reasons = [FinishReason.STOP] * 2
    assert problem.numeric_answer
    assert solution_rewards(texts, reasons, problem.answer, number_only=problem.numeric_answer) == [0.0, 1.0]
