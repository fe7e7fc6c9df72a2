import threading
import time

import pytest

from masa import verify
from masa.verify import check_answer, check_answers, extract_answer


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


def test_pathological_answer_times_out_as_false() -> None:
    assert check_answer(r"\boxed{\frac{1}{2}}", "0.5")  # the worker is up, so only the deadline is timed
    start = time.perf_counter()
    assert not check_answer(r"\boxed{9^{9^{9^{9}}}}", "2", timeout_s=0.5)
    assert time.perf_counter() - start < 1.5
    assert check_answer(r"\boxed{\frac{2}{4}}", "0.5")  # the killed worker was replaced


def test_unstartable_worker_scores_false(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_pool() -> None:
        raise OSError("cannot spawn")

    monkeypatch.setattr(verify, "_pool", broken_pool)
    assert not check_answer(r"\boxed{\frac{1}{2}}", "0.5")
    assert check_answer(r"\boxed{42}", "42")  # plain numbers never need the worker


def test_works_off_the_main_thread() -> None:
    results: list[bool] = []
    threads = [
        threading.Thread(
            target=lambda ok=ok: results.append(check_answer(rf"\boxed{{{ok}}}", r"\frac{1}{2}"))
        )
        for ok in ["0.5", r"\frac{2}{4}", r"\frac{1}{3}"]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True, True]
