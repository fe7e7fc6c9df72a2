import math

import pytest

from masa.eval.passk import PassAtK, pass_at_k, summarize_pass_at_k


def test_hand_computed_values():
    # 1 - C(2,1)/C(4,1) = 1 - 2/4
    assert pass_at_k(4, 2, 1) == pytest.approx(0.5)
    # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    # 1 - C(7,3)/C(10,3) = 1 - 35/120
    assert pass_at_k(10, 3, 3) == pytest.approx(1 - 35 / 120)


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(32, 5, 1) == pytest.approx(5 / 32)


def test_matches_binomials_where_they_are_small():
    for n, c, k in [(16, 4, 8), (32, 1, 8), (32, 31, 2), (20, 10, 20)]:
        expected = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_edges():
    assert pass_at_k(8, 0, 3) == 0.0
    assert pass_at_k(8, 8, 3) == 1.0
    assert pass_at_k(8, 1, 8) == 1.0  # k = n draws every sample
    assert pass_at_k(8, 0, 8) == 0.0


def test_huge_n_stays_finite():
    value = pass_at_k(100_000, 3, 1000)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(1 - (1 - 1000 / 100_000) ** 3, rel=1e-4)


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (4, 1, 5, "k <= n"),
        (4, 1, 0, "k <= n"),
        (4, 5, 1, "c <= n"),
        (4, -1, 1, "c <= n"),
        (0, 0, 1, "at least one sample"),
    ],
)
def test_rejects_invalid_arguments(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_summary():
    summary = summarize_pass_at_k([(4, 0), (4, 2), (4, 4)], ks=[1, 2])
    assert summary[1] == PassAtK(mean=0.5, std=0.5, stderr=pytest.approx(0.5 / math.sqrt(3)), n_problems=3)
    scores = [0.0, 5 / 6, 1.0]
    mean = sum(scores) / 3
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / 2)
    assert summary[2].mean == pytest.approx(mean)
    assert summary[2].std == pytest.approx(std)
    assert summary[2].stderr == pytest.approx(std / math.sqrt(3))


def test_summary_of_one_problem_has_zero_spread():
    assert summarize_pass_at_k([(4, 1)], ks=[1])[1] == PassAtK(0.25, 0.0, 0.0, 1)


def test_summary_errors_name_the_problem():
    with pytest.raises(ValueError, match="problem 1: .*k <= n"):
        summarize_pass_at_k([(8, 1), (4, 1)], ks=[8])
    with pytest.raises(ValueError, match="at least one problem"):
        summarize_pass_at_k([], ks=[1])
