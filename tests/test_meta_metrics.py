import math

import pytest

from masa.eval.meta_metrics import (
    CalibrationRow,
    GatingScore,
    calibration_table,
    cutoff_analysis,
    gating_scores,
    length_hit_rate,
    level_alignment,
    pass_rate_alignment,
    pearson,
    spearman,
    would_gate,
)


def test_pearson_hand_computed():
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_correlations_undefined():
    assert pearson([1], [2]) is None
    assert pearson([], []) is None
    assert pearson([1, 1, 1], [1, 2, 3]) is None
    assert spearman([0.5, 0.5], [0.1, 0.9]) is None
    with pytest.raises(ValueError, match="same length"):
        pearson([1, 2], [1])


def test_spearman_averages_tied_ranks():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)


def test_pass_rate_alignment():
    result = pass_rate_alignment([0.5, None, 1.0, 0.0], [0.25, 0.5, 1.0, 0.0])
    assert result["n"] == 3
    assert result["parse_rate"] == pytest.approx(0.75)
    assert result["mae"] == pytest.approx(1 / 12)
    assert result["pearson"] == pytest.approx(0.5 / math.sqrt(0.5 * 78 / 144))
    assert result["spearman"] == pytest.approx(1.0)


def test_pass_rate_alignment_with_nothing_parsed():
    assert pass_rate_alignment([None, None], [0.0, 1.0]) == {
        "n": 0,
        "parse_rate": 0.0,
        "mae": None,
        "pearson": None,
        "spearman": None,
    }
    assert pass_rate_alignment([], [])["parse_rate"] is None


def test_level_alignment_sets_the_level_apart_from_the_ranking_within_it():
    levels = [1, 1, 2, 2, 3, 3]
    actual = [1.0, 0.5, 0.75, 0.25, 0.5, 0.0]  # level means 0.75, 0.5, 0.25, each level's spread ±0.25
    # Predictions that know the level only: a high Pearson, nothing within levels.
    knows_level = level_alignment([0.9, 0.9, 0.3, 0.3, 0.1, 0.1], actual, levels)
    assert knows_level["within_level_pearson"] is None  # no spread left once the level is taken out
    # The level baseline is the level means themselves.
    means = [0.75, 0.75, 0.5, 0.5, 0.25, 0.25]
    assert knows_level["level_baseline_pearson"] == pytest.approx(pearson(means, actual))
    assert knows_level["n"] == 6 and knows_level["levels"] == 3
    # Predictions that rank each level's two problems right and ignore the level: perfect within levels.
    ranks_within = level_alignment([0.6, 0.4, 0.6, 0.4, 0.6, 0.4], actual, levels)
    assert ranks_within["within_level_pearson"] == pytest.approx(1.0)
    # Unparsed predictions drop out of both.
    partial = level_alignment([0.6, None, 0.6, 0.4, None, None], actual, levels)
    assert partial["n"] == 3 and partial["levels"] == 2
    assert partial["level_baseline_pearson"] == pytest.approx(pearson([1.0, 0.5, 0.5], [1.0, 0.75, 0.25]))


def test_calibration_buckets_are_centred_on_eighths():
    rows = calibration_table(
        [0.0, 0.125, 0.1, 1.0, None, 0.5, 0.55, 0.0625], [0.0, 0.25, 0.0, 1.0, 1.0, 0.5, 0.75, 0.5]
    )
    assert len(rows) == 9
    assert rows[0] == CalibrationRow(0.0, 1 / 16, 1, 0.0, 0.0)
    assert rows[1].bucket_low == pytest.approx(1 / 16)
    assert rows[1].bucket_high == pytest.approx(3 / 16)
    assert rows[1].count == 3  # 0.125, 0.1 and the lower edge 0.0625
    assert rows[1].mean_predicted == pytest.approx((0.125 + 0.1 + 0.0625) / 3)
    assert rows[1].mean_actual == pytest.approx(0.75 / 3)
    assert rows[4].count == 2
    assert rows[4].mean_actual == pytest.approx(0.625)
    assert rows[8] == CalibrationRow(15 / 16, 1.0, 1, 1.0, 1.0)
    assert rows[2] == CalibrationRow(3 / 16, 5 / 16, 0, None, None)
    assert sum(row.count for row in rows) == 7


def test_calibration_rejects_bad_input():
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        calibration_table([1.5], [1.0])
    with pytest.raises(ValueError, match="at least 2 buckets"):
        calibration_table([0.5], [1.0], buckets=1)


def test_length_hit_rate():
    predicted = [100, 50, None, 300, 10]
    ranges = [(100, 200), (60, 80), (10, 20), None, (10, 10)]
    assert length_hit_rate(predicted, ranges) == pytest.approx(0.5)
    assert length_hit_rate([100], [None]) is None


def test_would_gate():
    assert would_gate([0.0, 0.0, 0.0, 0.0], sigma=0.1)
    assert would_gate([1.0] * 8, sigma=0.1)
    assert not would_gate([0.5] * 4, sigma=0.1)  # confident, but not trivial or unsolvable
    assert not would_gate([0.0, None], sigma=0.1)  # one parsed prediction is not enough
    assert would_gate([0.0, None], sigma=0.1, min_parsed=1)
    assert not would_gate([0.0, 0.125], sigma=0.1)  # mean 1/16 is not 0 without tolerance
    assert would_gate([0.0, 0.125], sigma=0.1, tolerance=0.1)
    # std of [0.875, 1] is exactly 1/16: the threshold is strict
    assert not would_gate([0.875, 1.0], sigma=0.0625, tolerance=0.1)
    assert would_gate([0.875, 1.0], sigma=0.07, tolerance=0.1)
    with pytest.raises(ValueError, match="min_parsed"):
        would_gate([0.0], sigma=0.1, min_parsed=0)


def test_gating_scores():
    predictions = [
        [0.0, 0.0, 0.0],  # gated, truly zero-variance
        [1.0, 1.0, None],  # gated, truly zero-variance
        [0.0, 0.0, 0.0],  # gated, but its group had variance
        [0.5, 0.5],  # missed
        [0.0, 0.25],  # not gated, had variance
        [None, None, 0.0],  # missed: too few parsed
    ]
    zero_variance = [True, True, False, True, False, True]
    loose, strict = gating_scores(predictions, zero_variance, sigmas=[0.1, 0.0])
    assert loose == GatingScore(
        sigma=0.1, precision=pytest.approx(2 / 3), recall=0.5, f1=pytest.approx(4 / 7), gated=3, positives=4
    )
    assert strict == GatingScore(sigma=0.0, precision=None, recall=0.0, f1=None, gated=0, positives=4)


def test_gating_scores_degenerate():
    (no_positives,) = gating_scores([[0.0, 0.0]], [False], sigmas=[0.1])
    assert (no_positives.precision, no_positives.recall, no_positives.f1) == (0.0, None, None)
    (all_wrong,) = gating_scores([[0.0, 0.0], [0.5, 0.5]], [False, True], sigmas=[0.1])
    assert (all_wrong.precision, all_wrong.recall, all_wrong.f1) == (0.0, 0.0, 0.0)


def test_cutoff_analysis():
    result = cutoff_analysis(
        actual_lengths=[100, 250, 400, 90, 500],
        correct=[True, True, False, False, True],
        predicted_length=[100, 100, 100, None, 200],
        factors=(1.5, 2, 4),
    )
    assert result["differences_correct"] == [0, 150, 300]
    assert result["differences_incorrect"] == [300]
    assert (result["n_correct"], result["n_incorrect"]) == (3, 1)
    assert result["mean_difference_correct"] == pytest.approx(150)
    assert result["median_difference_correct"] == pytest.approx(150)
    assert result["mean_difference_incorrect"] == pytest.approx(300)
    assert result["median_difference_incorrect"] == pytest.approx(300)
    assert result["cutoffs"] == [
        {"factor": 1.5, "killed_correct": 2, "killed_incorrect": 1, "tokens_saved": 550},
        {"factor": 2.0, "killed_correct": 2, "killed_incorrect": 1, "tokens_saved": 350},
        {"factor": 4.0, "killed_correct": 0, "killed_incorrect": 0, "tokens_saved": 0},
    ]


def test_cutoff_analysis_fractional_limit_and_empty_groups():
    result = cutoff_analysis([253], [False], [101], factors=(2.5,))
    assert result["cutoffs"][0]["tokens_saved"] == 1  # generation stops at token 252
    assert result["mean_difference_correct"] is None
    assert result["median_difference_correct"] is None
