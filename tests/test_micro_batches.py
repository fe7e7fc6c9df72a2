"""Micro-batches capped by sequences and by forward tokens, as many on every rank."""

import contextlib
import copy
import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import masa.update
from masa.distributed import Ranks
from masa.update import (
    TrainSequence,
    UpdateSettings,
    _micro_batches,
    _rank_micro_batches,
    forward_tokens,
    pack,
    policy_update,
)


def _group(prompt: list[int], lengths: list[int], kind: str = "solution") -> list[TrainSequence]:
    rng = random.Random(len(prompt) * 100 + sum(lengths))
    return [
        TrainSequence(
            prompt, [rng.randrange(3, 400) for _ in range(n)], rng.choice([-1.0, 0.5, 1.0]), kind=kind
        )
        for n in lengths
    ]


@pytest.mark.parametrize("share_prompts", [False, True])
@pytest.mark.parametrize("max_row", [4096, 12])
def test_forward_tokens_is_the_size_of_the_packed_forward(share_prompts, max_row):
    sequences = _group([1, 2, 3, 4], [5, 1, 9, 3]) + _group([7, 8], [6, 6]) + _group([9, 9, 9], [2])
    batch = pack(sequences, pad_id=0, share_prompts=share_prompts, max_shared_row=max_row)
    forward = batch.shared_layout.input_ids if batch.shared else batch.input_ids
    assert forward_tokens(sequences, share_prompts=share_prompts, max_shared_row=max_row) == forward.numel()


def test_a_micro_batch_stays_within_both_caps_and_a_long_sequence_goes_alone():
    sequences = _group([1, 2, 3], [4, 4, 4, 4, 40, 4, 4])
    settings = UpdateSettings(micro_batch_sequences=3, micro_batch_tokens=20, prefix_sharing=True)
    batches = _micro_batches(list(range(len(sequences))), sequences, settings)
    assert [i for batch in batches for i in batch] == list(range(len(sequences)))  # in order, each once
    assert (4,) in batches  # 3 + 39 tokens, over the cap on its own
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or forward_tokens([sequences[i] for i in batch], share_prompts=True) <= 20
    # Without a token cap only the sequence count splits.
    assert _micro_batches(list(range(7)), sequences, UpdateSettings(micro_batch_sequences=3)) == [
        (0, 1, 2),
        (3, 4, 5),
        (6,),
    ]


def test_a_prompt_group_that_fits_in_one_micro_batch_is_not_split():
    # Groups of 5 rows (4 meta answers and an expert target on one prompt), 16 rows a micro-batch: the fourth
    # group starts a new micro-batch rather than forward its prompt in two.
    sequences = [s for p in range(4) for s in _group([1, 2, 3 + p], [4, 6, 5, 3, 7], kind="meta")]
    rows = list(range(len(sequences)))
    shared = UpdateSettings(micro_batch_sequences=16, prefix_sharing=True)
    assert _micro_batches(rows, sequences, shared) == [tuple(range(15)), tuple(range(15, 20))]
    # Unshared there is no prompt pass to save: rows fill each micro-batch as before.
    unshared = UpdateSettings(micro_batch_sequences=16, prefix_sharing=False)
    assert _micro_batches(rows, sequences, unshared) == [tuple(range(16)), tuple(range(16, 20))]
    # Under a token cap too: the third group's first row would fit beside the two short rows, its second
    # would not; alone (one row of 25 tokens) it fits, so it starts the next micro-batch whole.
    grouped = _group([1, 2, 3], [2, 2, 2]) + _group([1, 2, 4], [2, 2, 2]) + _group([1, 2, 5], [5, 10, 10])
    capped = UpdateSettings(micro_batch_sequences=16, micro_batch_tokens=30, prefix_sharing=True)
    assert _micro_batches(list(range(9)), grouped, capped) == [tuple(range(6)), (6, 7, 8)]
    # A group larger than a micro-batch is still split.
    assert _micro_batches(
        rows[:5], sequences, UpdateSettings(micro_batch_sequences=3, prefix_sharing=True)
    ) == [
        (0, 1, 2),
        (3, 4),
    ]


def test_every_rank_gets_as_many_micro_batches_and_stand_ins_are_other_ranks_rows():
    # Dealt in turn, rank 0 gets the short rows 0, 2, 4 and rank 1 the long rows 1, 3, 5: under a token
    # cap rank 1 needs more micro-batches, so rank 0 (for once) is the one given a stand-in.
    sequences = [TrainSequence([1, 2], [5] * (2 if i % 2 == 0 else 12), 1.0, kind="meta") for i in range(6)]
    settings = UpdateSettings(micro_batch_sequences=8, micro_batch_tokens=16, prefix_sharing=False)
    rows = list(range(6))
    shares = [_rank_micro_batches(rows, sequences, settings, Ranks(rank=r, world=2)) for r in (0, 1)]
    (micro0, standins0), (micro1, standins1) = shares
    assert len(micro0) == len(micro1) == 3
    assert micro1 == [(1,), (3,), (5,)] and not standins1
    assert micro0[0] == (0, 2, 4) and standins0 == {(1,)}
    assert micro0[1:] == [(1,), (1,)]


def test_a_token_cap_changes_the_passes_not_the_update(tiny):
    model, _ = tiny
    sequences = (
        _group([1, 2, 3, 4], [5, 1, 9, 3])
        + _group([7, 8], [6, 6, 2])
        + _group([11, 12, 13], [4, 8, 2, 7], kind="meta")
    )
    results, forwards = [], []
    for cap in (None, 24):
        copy = type(model)(model.config)
        copy.load_state_dict(model.state_dict())
        calls = []
        copy.register_forward_pre_hook(lambda *_, seen=calls: seen.append(1), with_kwargs=True)
        optimizer = torch.optim.SGD(copy.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        settings = UpdateSettings(
            grad_clip=1e9, micro_batch_sequences=64, micro_batch_tokens=cap, prefix_sharing=True
        )
        policy_update(copy, optimizer, scheduler, sequences, settings, pad_id=0)
        results.append(torch.cat([p.detach().flatten() for p in copy.parameters()]))
        forwards.append(len(calls))
    assert forwards[0] == 2 and forwards[1] > 2  # one forward per kind, then the cap splits them
    torch.testing.assert_close(results[1], results[0], atol=1e-6, rtol=1e-5)


class _WeightCasts(TorchDispatchMode):
    """Counts autocast's float32 -> bfloat16 copies of tensors shaped like one weight."""

    def __init__(self, shape: torch.Size):
        super().__init__()
        self.shape, self.count = shape, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (
            func is torch.ops.aten._to_copy.default
            and args[0].dtype == torch.float32
            and kwargs.get("dtype") == torch.bfloat16
            and args[0].shape == self.shape
        ):
            self.count += 1
        return func(*args, **kwargs)


def _bf16_update(model, sequences, settings):
    policy = copy.deepcopy(model)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    weight = policy.model.layers[0].mlp.down_proj.weight
    casts = _WeightCasts(weight.shape)
    with casts:
        policy_update(
            policy, optimizer, scheduler, sequences, settings, pad_id=0, autocast_dtype=torch.bfloat16
        )
    return policy, casts.count


@pytest.mark.parametrize("steps", [1, 2])
def test_the_micro_batches_of_one_optimiser_step_cast_the_weights_once(tiny, monkeypatch, steps):
    """Under bf16 autocast each weight is cast once per optimiser step, not once per micro-batch, and the
    update is the same to the bit."""
    model, _ = tiny
    sequences = _group([1, 2, 3, 4], [3, 5, 2, 4, 3, 6])
    layers = len(model.model.layers)  # every layer's down_proj has the counted shape
    settings = UpdateSettings(micro_batch_sequences=2 // steps, mini_batches=steps)  # 3 micro-batches a step
    kept, kept_casts = _bf16_update(model, sequences, settings)
    monkeypatch.setattr(masa.update, "_weight_casts_kept", lambda *_, **__: contextlib.nullcontext())
    recast, recast_casts = _bf16_update(model, sequences, settings)
    # With two optimiser steps the old log-probs take a forward of their own first (one cast per weight).
    old_logprobs = 0 if steps == 1 else 1
    assert kept_casts == layers * (steps + old_logprobs)
    assert recast_casts == layers * (3 * steps + old_logprobs)
    for (name, a), b in zip(kept.named_parameters(), recast.parameters(), strict=True):
        assert torch.equal(a, b), name
