import json
import math
import random

import pytest

from masa.efficient.gating import GateReason, PredictiveGate


def test_std_exactly_sigma_is_not_gated():
    # mean 0.875, population std 0.125: both exact in binary
    assert PredictiveGate(sigma=0.125, tolerance=0.125).decide([0.75, 1.0]).reason == GateReason.SPREAD
    decision = PredictiveGate(sigma=0.1251, tolerance=0.125).decide([0.75, 1.0])
    assert (decision.gated, decision.reason, decision.mean, decision.std) == (
        True,
        GateReason.PREDICTED_TRIVIAL,
        0.875,
        0.125,
    )


@pytest.mark.parametrize(
    ("fractions", "tolerance", "reason"),
    [
        ([0.0, 0.0, 0.125], 1 / 16, GateReason.PREDICTED_UNSOLVABLE),  # mean 1/24
        ([1.0, 1.0, 0.875], 1 / 16, GateReason.PREDICTED_TRIVIAL),
        ([0.0625, 0.0625], 0.0625, GateReason.PREDICTED_UNSOLVABLE),  # tolerance is inclusive
        ([0.125, 0.125], 1 / 16, GateReason.UNCERTAIN),
        ([0.875, 0.875], 1 / 16, GateReason.UNCERTAIN),
        ([1.0, 1.0], 0.0, GateReason.PREDICTED_TRIVIAL),
        ([0.0, 0.0, None], 0.0, GateReason.PREDICTED_UNSOLVABLE),
        ([1.0, 0.875], 0.0, GateReason.UNCERTAIN),
        ([0.5] * 8, 1 / 16, GateReason.UNCERTAIN),
        ([0.0, 1.0], 1 / 16, GateReason.SPREAD),
    ],
)
def test_mean_and_tolerance(fractions, tolerance, reason):
    decision = PredictiveGate(tolerance=tolerance).decide(fractions)
    assert decision.reason == reason
    assert decision.gated == (reason in (GateReason.PREDICTED_UNSOLVABLE, GateReason.PREDICTED_TRIVIAL))


def test_too_few_parsed_predictions():
    gate = PredictiveGate(min_parsed=2)
    one = gate.decide([0.0, None, None])
    assert (one.gated, one.reason, one.n_parsed, one.mean, one.std) == (
        False,
        GateReason.TOO_FEW_PARSED,
        1,
        0.0,
        0.0,
    )
    empty = gate.decide([None, None])
    assert (empty.gated, empty.reason, empty.n_parsed, empty.mean, empty.std) == (
        False,
        GateReason.TOO_FEW_PARSED,
        0,
        None,
        None,
    )
    assert gate.decide([]).reason == GateReason.TOO_FEW_PARSED
    assert PredictiveGate(min_parsed=1).decide([0.0, None]).gated


def test_invalid_inputs():
    with pytest.raises(ValueError):
        PredictiveGate().decide([1.5, 1.0])
    for kwargs in ({"sigma": 0.0}, {"tolerance": 0.5}, {"min_parsed": 0}, {"audit_fraction": 1.1}):
        with pytest.raises(ValueError):
            PredictiveGate(**kwargs)


def test_audit_is_seeded_and_only_for_gated_problems():
    def run(seed):
        gate = PredictiveGate(audit_fraction=0.3, seed=seed)
        return [gate.decide([0.0, 0.0]).audited for _ in range(2000)]

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    assert 0.25 < sum(first) / len(first) < 0.35
    gate = PredictiveGate(audit_fraction=1.0)
    assert not gate.decide([0.5, 0.5]).audited
    assert gate.decide([1.0, 1.0]).audited
    assert not PredictiveGate(audit_fraction=0.0).decide([1.0, 1.0]).audited


def test_state_dict_round_trip_resumes_identical_decisions():
    rng = random.Random(0)
    inputs = [[rng.choice([0.0, 0.125, 1.0, None]) for _ in range(4)] for _ in range(300)]
    gate = PredictiveGate(audit_fraction=0.5, seed=3)
    for fractions in inputs[:100]:
        decision = gate.decide(fractions)
        if decision.rolled_out:
            gate.record_outcome(decision, truly_zero_variance=decision.mean == 0.0)
    state = json.loads(json.dumps(gate.state_dict()))  # plain data, safe to checkpoint
    resumed = PredictiveGate(audit_fraction=0.5, seed=999)
    resumed.load_state_dict(state)
    assert resumed.metrics(cumulative=True) == gate.metrics(cumulative=True)
    assert [gate.decide(f) for f in inputs[100:]] == [resumed.decide(f) for f in inputs[100:]]


def test_metrics_on_a_scripted_sequence():
    gate = PredictiveGate(audit_fraction=1.0)
    script = [
        ([0.0, 0.0], True),
        ([1.0, 1.0], False),
        ([0.5, 0.5], True),
        ([0.5, 0.625], False),
        ([None], True),
    ]
    for fractions, zero_variance in script:
        gate.record_outcome(gate.decide(fractions), zero_variance)
    metrics = gate.metrics()
    # gated 2 of 5, audits 1 hit of 2 -> precision 1/2; TP ~ 2 * 1/2 = 1, missed 2 -> recall 1/3; F1 0.4
    assert metrics["gate_rate"] == pytest.approx(0.4)
    assert metrics["precision"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(0.4)
    assert (metrics["n_decisions"], metrics["n_gated"], metrics["n_audited"], metrics["n_missed"]) == (
        5,
        2,
        2,
        2,
    )
    gate.reset_metrics()
    assert math.isnan(gate.metrics()["gate_rate"])
    assert gate.metrics()["n_decisions"] == 0
    assert gate.metrics(cumulative=True) == metrics


def test_a_skipped_problem_rolled_out_anyway_counts_as_an_audit():
    gate = PredictiveGate(audit_fraction=0.0)
    skipped = gate.decide([0.0, 0.0])
    assert skipped.gated and not skipped.rolled_out
    filled = gate.roll_out_anyway(skipped)
    assert filled.rolled_out and filled.reason is GateReason.PREDICTED_UNSOLVABLE
    gate.record_outcome(filled, truly_zero_variance=False, pass_rate=0.5)
    metrics = gate.metrics()
    assert (metrics["n_audited"], metrics["precision"]) == (1, 0.0)
    with pytest.raises(ValueError, match="un-audited"):
        gate.roll_out_anyway(filled)
    with pytest.raises(ValueError, match="un-audited"):
        gate.roll_out_anyway(gate.decide([0.5, 0.5]))


def test_recall_scales_audited_hits_to_all_gated_problems():
    gate = PredictiveGate()
    counts = {
        "decisions": 20,
        "gated": 10,
        "audited": 4,
        "audit_hits": 3,
        "ungated_observed": 10,
        "missed": 1,
    }
    gate.load_state_dict({**gate.state_dict(), "window": counts})
    metrics = gate.metrics()
    assert metrics["precision"] == 0.75
    assert metrics["recall"] == pytest.approx(7.5 / 8.5)  # not 3 / 4, which ignores the unaudited
    assert metrics["f1"] == pytest.approx(2 * 0.75 * (7.5 / 8.5) / (0.75 + 7.5 / 8.5))


def test_recall_estimate_is_close_to_the_truth_under_audit_sampling():
    rng = random.Random(1)
    gate = PredictiveGate(audit_fraction=0.2, seed=1)
    true_positives = false_negatives = 0
    for _ in range(4000):
        gated_input = rng.random() < 0.5
        zero_variance = rng.random() < (0.9 if gated_input else 0.2)
        decision = gate.decide([0.0, 0.0] if gated_input else [0.5, 0.5])
        true_positives += decision.gated and zero_variance
        false_negatives += not decision.gated and zero_variance
        if decision.rolled_out:
            gate.record_outcome(decision, zero_variance)
    metrics = gate.metrics()
    assert metrics["recall"] == pytest.approx(true_positives / (true_positives + false_negatives), abs=0.03)
    assert metrics["precision"] == pytest.approx(0.9, abs=0.04)


def test_undefined_metrics_are_nan():
    gate = PredictiveGate(audit_fraction=0.0)
    decision = gate.decide([0.0, 0.0])
    with pytest.raises(ValueError):
        gate.record_outcome(decision, True)  # never rolled out: no outcome exists
    metrics = gate.metrics()
    assert metrics["gate_rate"] == 1.0
    assert all(math.isnan(metrics[key]) for key in ("precision", "recall", "f1"))
    ungated_only = PredictiveGate()
    ungated_only.record_outcome(ungated_only.decide([0.5, 0.5]), True)
    assert ungated_only.metrics()["recall"] == 0.0
