"""Off-policy honesty without vLLM: importance weights, the log-prob gap, and the stale-engine check."""

import math
import random

import pytest
import torch

from masa.rollout.engine import HFEngine
from masa.rollout.sync import StaleEngineError, SyncedEngine
from masa.rollout.types import SamplingParams
from masa.update import (
    TrainSequence,
    UpdateSettings,
    clipped_policy_loss,
    pack,
    policy_update,
    token_logprobs,
    truncated_importance_weights,
)


def test_importance_weights_are_the_capped_probability_ratio():
    old = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    sampler = torch.tensor([[0.0, -2.0, -0.5]])
    weights = truncated_importance_weights(old, sampler, cap=2.0)
    assert weights.tolist()[0] == pytest.approx([1.0, 2.0, math.exp(-1.5)])  # e^1 capped at 2
    assert not weights.requires_grad


def test_importance_weights_scale_the_policy_term_but_not_the_kl_term():
    logp = torch.tensor([[-1.0, -1.0]])
    mask = torch.ones(1, 2)
    kwargs = dict(clip_low=0.2, clip_high=0.28, normaliser=2.0, ref_logprobs=torch.tensor([[-1.5, -0.5]]))
    plain, _ = clipped_policy_loss(logp, logp, torch.tensor([1.0]), mask, kl_coef=0.0, **kwargs)
    weighted, _ = clipped_policy_loss(
        logp, logp, torch.tensor([1.0]), mask, kl_coef=0.0, is_weights=torch.tensor([[0.5, 2.0]]), **kwargs
    )
    assert float(plain) == pytest.approx(-1.0)
    assert float(weighted) == pytest.approx(-(0.5 + 2.0) / 2)
    with_kl, _ = clipped_policy_loss(
        logp, logp, torch.tensor([1.0]), mask, kl_coef=1.0, is_weights=torch.tensor([[0.5, 2.0]]), **kwargs
    )
    k3 = sum(math.exp(d) - d - 1 for d in (-0.5, 0.5))
    assert float(with_kl) == pytest.approx(-(0.5 + 2.0) / 2 + k3 / 2)


def _sequences(tiny, offset):
    """Two rollouts whose 'sampler' log-probs are the policy's own shifted by ``offset``."""
    model, tokenizer = tiny
    prompts = [tokenizer("What is 2 + 2?")["input_ids"], tokenizer("Hi there")["input_ids"]]
    completions = [[100, 200, 300], [400, 500]]
    plain = [TrainSequence(p, c, adv) for p, c, adv in zip(prompts, completions, [1.0, -1.0], strict=True)]
    with torch.no_grad():
        exact = token_logprobs(model, pack(plain, tokenizer.pad_token_id))
    return [
        TrainSequence(
            s.prompt_ids,
            s.completion_ids,
            s.advantage,
            sampler_logprobs=[float(x) - offset for x in exact[row, : len(s.completion_ids)]],
        )
        for row, s in enumerate(plain)
    ]


def _update(tiny, sequences, **settings):
    model, tokenizer = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # measure, do not move the shared model
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    try:
        return policy_update(
            model,
            optimizer,
            scheduler,
            sequences,
            UpdateSettings(**settings),
            pad_id=tokenizer.pad_token_id,
            rng=random.Random(0),
        )
    finally:
        model.load_state_dict(state)


# One optimiser step reads the old log-probs off the training forward; several compute them up front.
@pytest.mark.parametrize(
    "passes", [{}, {"ppo_epochs": 2}, {"mini_batches": 2}], ids=["one step", "epochs", "minis"]
)
def test_gap_and_weights_are_reported_against_the_policy_before_the_update(tiny, passes):
    log = _update(tiny, _sequences(tiny, 0.5), off_policy=True, importance_sampling_cap=2.0, **passes)
    assert log["rollout/logprob_gap_mean"] == pytest.approx(0.5, abs=1e-4)
    assert log["rollout/logprob_gap_max"] == pytest.approx(0.5, abs=1e-4)
    assert log["rollout/is_weight_mean"] == pytest.approx(math.exp(0.5), abs=1e-3)
    assert log["rollout/is_capped_fraction"] == 0.0
    capped = _update(tiny, _sequences(tiny, 1.0), off_policy=True, importance_sampling_cap=2.0, **passes)
    assert capped["rollout/is_weight_mean"] == pytest.approx(2.0)
    assert capped["rollout/is_capped_fraction"] == 1.0


def test_the_ratio_one_shortcut_reports_no_gap(tiny):
    log = _update(tiny, _sequences(tiny, 0.5))
    assert "rollout/logprob_gap_mean" not in log


def test_an_off_policy_step_runs_one_forward_per_micro_batch(tiny):
    """The old log-probs of a single optimiser step come from the training forward itself: measuring the
    sampler's gap costs no extra pass over the batch."""
    model, _ = tiny
    sequences = _sequences(tiny, 0.5)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        log = _update(tiny, sequences, off_policy=True, importance_sampling_cap=2.0)
    finally:
        handle.remove()
    assert "rollout/logprob_gap_mean" in log
    assert len(calls) == 1  # two sequences, one (joint-layout) micro-batch


def test_importance_weights_change_the_gradient_by_their_factor(tiny):
    model, tokenizer = tiny
    grads = []
    for offset in (0.0, 0.5):
        sequences = _sequences(tiny, offset)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        handle = optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: grads.append(model.lm_head.weight.grad.clone())
        )
        policy_update(
            model,
            optimizer,
            scheduler,
            sequences,
            UpdateSettings(off_policy=True, importance_sampling_cap=2.0, grad_clip=1e9),
            pad_id=tokenizer.pad_token_id,
        )
        handle.remove()
    # every token's weight is e^0.5, so the whole policy gradient scales by it
    error = (grads[1] - grads[0] * math.exp(0.5)).norm() / grads[1].norm()
    assert float(error) < 1e-5


def test_a_stale_engine_is_refused_until_synced(tiny):
    model, tokenizer = tiny
    engine = SyncedEngine(HFEngine(model, tokenizer), model.named_parameters)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    engine.track(optimizer)
    prompts = [tokenizer("Hi")["input_ids"]]
    params = SamplingParams(max_new_tokens=2)
    engine.generate(prompts, 1, params)
    optimizer.step()
    with pytest.raises(StaleEngineError, match="version 0 but the policy is at version 1"):
        engine.generate(prompts, 1, params)
    engine.sync()
    assert engine.weights_version == 1
    assert len(engine.generate(prompts, 1, params)[0]) == 1
    assert engine.sync() == 0.0  # nothing new to send


def test_seeded_generation_repeats_and_leaves_the_global_stream_alone(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer)
    prompts = [tokenizer("Hi")["input_ids"]]
    params = SamplingParams(max_new_tokens=4)
    torch.manual_seed(3)
    first = engine.generate(prompts, 2, params, seed=11)
    after_first = torch.rand(1)
    torch.manual_seed(3)
    second = engine.generate(prompts, 2, params, seed=11)
    assert [r.completion_ids for r in first[0]] == [r.completion_ids for r in second[0]]
    assert torch.equal(after_first, torch.rand(1))
