import pytest

from masa.efficient.cutoff import cutoff_limit


def limit(predictions, **kwargs):
    return cutoff_limit(predictions, **{"min_tokens": 16, "max_tokens": 4096, **kwargs})


def test_factor_times_median_of_parsed_predictions():
    assert limit([100, None, 300, 200]) == 400
    assert limit([100, 301]) == 401  # median 200.5 x 2
    assert limit([100, 202], factor=1.5) == 227  # 151 x 1.5 = 226.5 rounds up


def test_aggregates():
    predictions = [100, 100, 700]
    assert limit(predictions, aggregate="median") == 200
    assert limit(predictions, aggregate="mean") == 600
    assert limit(predictions, aggregate="max") == 1400


def test_clamped_to_bounds():
    assert limit([3]) == 16
    assert limit([3000]) == 4096
    assert limit([10**400], aggregate="mean") == 4096  # no float overflow


def test_no_parsed_prediction_means_no_cutoff():
    assert limit([]) == 4096
    assert limit([None, None]) == 4096


def test_decimal_factor_has_no_float_noise():
    assert limit([100], factor=1.1) == 110
    assert limit([10], factor=0.3) == 16
    assert limit([1000], factor=0.3) == 300


@pytest.mark.parametrize(
    "kwargs",
    [
        {"factor": 0.0},
        {"min_tokens": 0},
        {"min_tokens": 5000},
        {"aggregate": "mode"},
    ],
)
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        limit([100], **kwargs)


def test_a_cut_rollout_that_already_answered_is_graded():
    from masa.rewards import solution_rewards
    from masa.rollout.types import FinishReason

    texts = ["so it is \\boxed{12} and then I keep going on and", "first 12 then more", "\\boxed{12"]
    cut = [FinishReason.CUTOFF] * 3
    # A closed box counts; a bare number mid-reasoning and an unclosed box do not.
    assert solution_rewards(texts, cut, "12") == [1.0, 0.0, 0.0]
    assert solution_rewards(texts, cut, "12", grade_cutoff=False) == [0.0, 0.0, 0.0]
    assert solution_rewards(texts[1:2], [FinishReason.STOP], "12") == [1.0]
