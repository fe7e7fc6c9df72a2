"""Direction-aware gating scores: the predicted side must match the outcome's."""

import math

import pytest

from masa.efficient.gating import GateReason, PredictiveGate
from masa.efficient.switch import CalibrationSwitch
from masa.eval.meta_metrics import gate_side_matches, gating_scores


def test_a_wrong_side_gate_counts_for_zero_variance_but_not_for_direction():
    predictions = [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.5, 0.5], [0.5, 0.5]]
    actual = [0.0, 1.0, 1.0, 0.5, 0.0]  # problem 2: predicted unsolvable, came out 8/8
    zero_variance = [a in (0.0, 1.0) for a in actual]
    (score,) = gating_scores(predictions, zero_variance, [0.1], actual_pass_rates=actual)
    assert score.precision == 1.0 and score.recall == pytest.approx(3 / 4)
    assert score.precision_direction == pytest.approx(2 / 3)
    assert score.recall_direction == pytest.approx(2 / 4)
    assert score.f1_direction == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    (blind,) = gating_scores(predictions, zero_variance, [0.1])
    assert blind.precision_direction is None


def test_side_matching():
    assert gate_side_matches(GateReason.PREDICTED_UNSOLVABLE, 0.0)
    assert gate_side_matches(GateReason.PREDICTED_TRIVIAL, 1.0)
    assert not gate_side_matches(GateReason.PREDICTED_UNSOLVABLE, 1.0)
    assert not gate_side_matches(GateReason.PREDICTED_TRIVIAL, 0.0)


def test_online_gate_direction_metrics():
    gate = PredictiveGate(sigma=0.1, tolerance=0.0, audit_fraction=1.0)
    outcomes = [([0.0, 0.0], 0.0), ([0.0, 0.0], 1.0), ([1.0, 1.0], 1.0), ([0.5, 0.5], 0.0)]
    for preds, rate in outcomes:
        gate.record_outcome(gate.decide(preds), rate in (0.0, 1.0), rate)
    m = gate.metrics()
    assert m["precision"] == 1.0  # every gated group was flat
    assert m["precision_direction"] == pytest.approx(2 / 3)
    # Flat groups: 3 gated + 1 missed; right-side gates: 2.
    assert m["recall_direction"] == pytest.approx(2 / 4)
    gate.reset_metrics()
    assert math.isnan(gate.metrics()["precision_direction"])
    restored = PredictiveGate(sigma=0.1, tolerance=0.0, audit_fraction=1.0)
    restored.load_state_dict(gate.state_dict())
    assert restored.metrics(cumulative=True)["precision_direction"] == pytest.approx(2 / 3)


def _switch_step(switch, preds, actual):
    from masa.efficient.gating import gate_reason

    reasons = [gate_reason([p, p], 0.1, 1 / 16, 2)[0] for p in preds]
    return switch.observe(list(preds), list(actual), reasons)


def test_calibration_switch_needs_a_full_window_of_calibrated_predictions():
    switch = CalibrationSwitch(window=2, min_precision=0.8, min_pearson=0.5)
    _switch_step(switch, [0.0, 1.0, 0.5], [0.0, 1.0, 0.375])
    assert not switch.ready()  # one step of two
    _switch_step(switch, [0.0, 1.0, 0.25], [0.0, 1.0, 0.5])
    assert switch.ready()
    saved = switch.state_dict()
    copy = CalibrationSwitch(window=2, min_precision=0.8, min_pearson=0.5)
    copy.load_state_dict(saved)
    assert copy.ready() and copy.metrics() == switch.metrics()


def test_calibration_switch_refuses_a_collapsed_predictor():
    # Everything predicted unsolvable: zero-variance precision is high where most groups are flat, but
    # half the gated problems came out all right, and a constant prediction correlates with nothing.
    switch = CalibrationSwitch(window=2, min_precision=0.8, min_pearson=0.5)
    for _ in range(4):
        m = _switch_step(switch, [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0])
    assert m["switch/precision_direction"] == 0.5 and math.isnan(m["switch/pearson"])
    assert not switch.ready()
