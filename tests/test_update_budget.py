"""The loss budget: token-mean within each kind, weighted kinds, expert SFT in the same optimiser step."""

import math

import pytest
import torch

from masa.update import (
    TrainSequence,
    UpdateSettings,
    kind_token_counts,
    pack,
    policy_update,
    row_scales,
    token_logprobs,
)


def _sequences():
    return [
        TrainSequence([1, 2, 3], [4, 5, 6], 1.0),
        TrainSequence([1, 2, 3], [7, 8, 9], -1.0),
        TrainSequence([11, 12, 13, 14], list(range(20, 30)), 0.5, kind="meta"),
        TrainSequence([11, 12], [31, 32], 0.0, kind="expert"),
    ]


def test_per_kind_normalisers_make_each_kind_its_own_token_mean():
    seqs = _sequences()
    counts = kind_token_counts(seqs, range(4))
    assert counts.tolist() == [6, 10, 2]
    settings = UpdateSettings(kind_weights={"solution": 1.0, "meta": 0.25, "expert": 2.0})
    scales = row_scales(seqs, range(4), counts, settings)
    assert scales == pytest.approx({0: 1 / 6, 1: 1 / 6, 2: 0.25 / 10, 3: 2.0 / 2})


def test_joint_aggregation_is_the_papers_single_token_mean():
    seqs = _sequences()
    settings = UpdateSettings(kind_weights={"solution": 1.0, "meta": 1.0, "expert": 1.0}, aggregation="joint")
    scales = row_scales(seqs, range(4), kind_token_counts(seqs, range(4)), settings)
    # Solutions and metas share one normaliser of 16 tokens; the supervised term keeps its own.
    assert scales == pytest.approx({0: 1 / 16, 1: 1 / 16, 2: 1 / 16, 3: 1 / 2})


def _flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _manual_gradients(model, seqs, weights):
    """Each kind's gradient of its weighted token-mean loss, computed kind by kind from scratch."""
    grads = {}
    for kind in ("solution", "meta", "expert"):
        rows = [s for s in seqs if s.kind == kind]
        model.zero_grad()
        batch = pack(rows, pad_id=0)
        logp = token_logprobs(model, batch)
        tokens = batch.completion_mask.sum()
        if kind == "expert":
            loss = -(logp * batch.completion_mask).sum() / tokens
        else:
            # At ratio 1 the clipped objective's gradient is that of -A * log pi.
            loss = -(batch.advantages * logp * batch.completion_mask).sum() / tokens
        (weights[kind] * loss).backward()
        grads[kind] = _flat_grad(model).clone()
    model.zero_grad()
    return grads


def test_one_optimiser_step_follows_the_weighted_sum_of_kind_gradients(tiny):
    model, _ = tiny
    model = type(model)(model.config)  # a private copy: this test changes weights
    torch.manual_seed(0)
    seqs = _sequences()
    weights = {"solution": 1.0, "meta": 0.3, "expert": 0.7}
    manual = _manual_gradients(model, seqs, weights)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    steps = []
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: steps.append(s) or 1.0)
    log = policy_update(
        model,
        optimizer,
        scheduler,
        seqs,
        UpdateSettings(grad_clip=1e9, kind_weights=weights),
        pad_id=0,
        grad_stats=True,
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # SGD with lr 1: the step is minus the gradient, so one step holds all three terms.
    expected = manual["solution"] + manual["meta"] + manual["expert"]
    assert torch.allclose(before - after, expected, atol=1e-5, rtol=1e-4)
    assert len(steps) == 2  # LambdaLR's construction call plus exactly one optimiser step
    for kind, grad in manual.items():
        assert log[f"grad/norm_{kind}"] == pytest.approx(float(grad.norm()), rel=1e-4)
    cos = float(manual["solution"] @ manual["meta"] / (manual["solution"].norm() * manual["meta"].norm()))
    assert log["grad/cos_solution_meta"] == pytest.approx(cos, abs=1e-4)
    assert log["update/tokens_meta"] == 10 and log["update/tokens_solution"] == 6
    # The update's time, split where it goes.
    assert all(log[f"perf/update_seconds_{kind}"] > 0 for kind in manual)
    assert log["perf/optimizer_seconds"] > 0


def test_zero_meta_weight_leaves_exactly_the_solution_step(tiny):
    model, _ = tiny
    torch.manual_seed(0)
    seqs = _sequences()[:3]
    results = []
    for with_meta in (True, False):
        copy = type(model)(model.config)
        copy.load_state_dict(model.state_dict())
        optimizer = torch.optim.AdamW(copy.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        rows = seqs if with_meta else seqs[:2]
        log = policy_update(
            copy,
            optimizer,
            scheduler,
            rows,
            UpdateSettings(kind_weights={"solution": 1.0, "meta": 0.0, "expert": 1.0}),
            pad_id=0,
        )
        results.append(torch.cat([p.detach().flatten() for p in copy.parameters()]))
        assert log["update/trained_sequences"] == 2
    assert torch.equal(results[0], results[1])


def test_gradient_cosine_is_nan_free_when_a_kind_has_no_signal(tiny):
    model, _ = tiny
    copy = type(model)(model.config)
    optimizer = torch.optim.SGD(copy.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    log = policy_update(
        copy, optimizer, scheduler, _sequences()[:2], UpdateSettings(), pad_id=0, grad_stats=True
    )
    assert "grad/norm_solution" in log and not math.isnan(log["grad/norm_solution"])
    assert "grad/norm_meta" not in log


@pytest.mark.parametrize("mode", ["train", "skip"])
def test_a_batch_without_solution_signal_trains_its_auxiliary_terms_alone_or_not_at_all(tiny, mode):
    model, _ = tiny
    flat = [
        TrainSequence([1, 2, 3], [4, 5, 6], 0.0),
        TrainSequence([1, 2, 3], [7, 8, 9], 0.0),
        *_sequences()[2:],  # a meta row with an advantage and an expert target
    ]
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    before = torch.cat([p.detach().flatten() for p in copy.parameters()])
    optimizer = torch.optim.AdamW(copy.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    log = policy_update(
        copy, optimizer, scheduler, flat, UpdateSettings(auxiliary_alone=mode == "train"), pad_id=0
    )
    after = torch.cat([p.detach().flatten() for p in copy.parameters()])
    assert torch.equal(before, after) is (mode == "skip")
    assert log["update/skipped_minibatches"] == (mode == "skip")
    assert log["update/trained_sequences"] == (0 if mode == "skip" else 2)
    # One solution row with a signal is enough for the auxiliary terms to ride along.
    ridden = [TrainSequence([1, 2, 3], [4, 5, 6], 1.0), *flat[1:]]
    log = policy_update(copy, optimizer, scheduler, ridden, UpdateSettings(auxiliary_alone=False), pad_id=0)
    assert log["update/trained_sequences"] == 3
