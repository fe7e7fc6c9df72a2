"""In-process verdicts: each rule is sound (never True for different values), in both argument orders."""

import pytest

from masa import verify
from masa.verify import check_answer
from masa.verify_forms import settle

SETTLED_EQUAL = [
    (r"50\%", "50"),
    (r"50 \%", "0.5"),
    ("12.5%", r"\frac{1}{8}"),
    ("(1, 2]", "(1,2]"),
    (r"\left[ 0, \infty \right)", r"[0,\infty)"),
    ("(0.5, 1]", r"(\frac12, 1]"),
    (r"\{1, 2\}", r"\{1.0,2\}"),
    ("x^2+1", "1+x^2"),
    ("2x - 3y + 1", "1-3y+2x"),
    (r"\sqrt{2}+1", r"1+\sqrt{2}"),
    (r"\pi r^{2} + \frac{1}{2}", r"\frac{1}{2}+\pi r^{2}"),
    ("-x+1", "1-x"),
    (r"\frac{1}{2}", "0.5"),
    (r"\dfrac{3}{4}", "0.75"),
    (r"-\frac{1}{2}", r"\frac{-1}{2}"),
    ("1,234", "1234"),
    ("1,234.5", r"\frac{2469}{2}"),
    ("2.50", "2.5"),
    (r"\pi r", r"\pi{}r"),
]

NEVER_TRUE = [
    ("(1,2]", "(1,2)"),
    ("[1,2]", "(1,2)"),
    (r"\{1,2\}", "(1,2)"),
    ("(1,2,3)", "(1,2)"),
    ("x^2+1", "x^2-1"),
    ("x^2+1", "x^{2+1}"),
    ("x^2+1", "x^2+1+0x"),
    # Read as scientific notation, 1e-5 is no subtraction: same string terms, different values.
    ("1e-5+x", "-5+x+1e"),
    ("x^-1+2", "2-1+x^"),
    (r"\sin x+y", r"y+\sin x"),  # sin(x + y) to some readers
    ("a+b=c", "b+a=c"),
    ("3!+1", "1+3!"),
    (r"\pi r", r"\pir"),
    (r"\text{a b}", r"\text{ab}"),
    (r"51\%", "0.5"),
    ("1,234", "1,2345"),
    ("1/0", "2/0"),
    ("0.333333", "1/3"),
]


@pytest.mark.parametrize(("a", "b"), SETTLED_EQUAL)
def test_common_forms_are_settled_equal_both_ways(a, b):
    assert settle(a, b) is True
    assert settle(b, a) is True


@pytest.mark.parametrize(("a", "b"), NEVER_TRUE)
def test_different_or_undecidable_forms_are_never_settled_equal(a, b):
    assert settle(a, b) is not True
    assert settle(b, a) is not True


def test_only_distinct_integers_are_settled_wrong():
    assert settle("41", "42") is False
    assert settle("-3", "3") is False
    assert settle("1,000", "100") is False
    for a, b in [("0.5", "0.4"), ("1/3", "0.33"), (r"5\%", "5.5"), ("x+1", "x+2")]:
        assert settle(a, b) is None, (a, b)


@pytest.mark.parametrize(
    ("a", "b"), [(r"\boxed{50\%}", "50"), (r"\boxed{(1, 2]}", "(1,2]"), ("\\boxed{x^2+1}", "1+x^2")]
)
def test_issue_examples_never_need_the_worker(monkeypatch, a, b):
    """The answers that scored 0 on a loaded machine are graded without math-verify."""

    def no_worker():
        raise AssertionError("should be settled in-process")

    monkeypatch.setattr(verify, "pool", no_worker)
    assert check_answer(a, b)
