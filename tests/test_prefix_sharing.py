"""The prefix-shared update: each prompt forwarded once for all of its completions, same gradient."""

import copy

import pytest
import torch

from masa.update import (
    TrainSequence,
    UpdateSettings,
    honours_shared_layout,
    pack,
    policy_update,
    token_logprobs,
)

PROMPT_A = [1, 17, 23, 99, 5, 61, 7]
PROMPT_B = [1, 44, 8, 300]


def _sequences() -> list[TrainSequence]:
    """Two groups of different prompt lengths, ragged completions, zero and per-token advantages, two
    temperatures, and an expert target on a meta prompt."""
    g = torch.Generator().manual_seed(0)

    def completion(n: int) -> list[int]:
        return torch.randint(3, 500, (n,), generator=g).tolist()

    solutions = [
        TrainSequence(PROMPT_A, completion(n), adv)
        for n, adv in zip((5, 1, 7, 3, 6), (1.2, -0.4, 0.0, -0.8, 0.5), strict=True)
    ]
    metas = [
        TrainSequence(PROMPT_B, completion(n), adv, kind="meta", temperature=0.7)
        for n, adv in zip((4, 8, 2, 6), (0.9, 0.0, -1.1, 0.3), strict=True)
    ]
    metas[0].token_advantages = [0.9, 0.0, -0.5, 2.0]
    for seq in solutions[:3]:  # as an engine other than the policy (vLLM) reports them
        seq.sampler_logprobs = [-10.5 + 0.1 * j for j in range(len(seq.completion_ids))]
    expert = TrainSequence(PROMPT_B, completion(5), 0.0, kind="expert")
    return solutions + metas + [expert]


def _update(
    model, sequences, grad_stats: bool = False, **settings
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Runs policy_update with plain SGD at lr 1 and no effective clipping: the step is minus the gradient."""
    model = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    log = policy_update(
        model,
        optimizer,
        scheduler,
        sequences,
        UpdateSettings(grad_clip=1e9, kind_weights={"solution": 1.0, "meta": 0.5, "expert": 0.3}, **settings),
        pad_id=2,
        grad_stats=grad_stats,
    )
    return {name: before[name] - p.detach() for name, p in model.named_parameters()}, log


@pytest.mark.parametrize(
    "settings",
    [
        {"micro_batch_sequences": 16},
        {"micro_batch_sequences": 3},
        {"micro_batch_sequences": 4, "off_policy": True, "importance_sampling_cap": 2.0},
    ],
)
def test_prefix_shared_gradient_equals_unshared(tiny, settings):
    model, _ = tiny
    sequences = _sequences()
    shared, shared_log = _update(model, sequences, prefix_sharing=True, **settings)
    unshared, unshared_log = _update(model, sequences, prefix_sharing=False, **settings)
    # Zero-advantage sequences are still skipped.
    assert shared_log["update/trained_sequences"] == unshared_log["update/trained_sequences"] == 8
    assert shared_log["update/loss"] == pytest.approx(unshared_log["update/loss"], abs=1e-6)
    largest = max(float(g.abs().max()) for g in unshared.values())
    assert largest > 1e-3  # a real gradient, not two zeros agreeing
    for name, grad in unshared.items():
        torch.testing.assert_close(shared[name], grad, atol=1e-5, rtol=0, msg=name)


def test_prompt_tokens_get_gradient_through_the_shared_cache(tiny):
    """The embedding rows of tokens that occur only in the prompts move: the cache is not detached."""
    model, _ = tiny
    steps, _ = _update(model, _sequences(), prefix_sharing=True)
    embedding = steps["model.embed_tokens.weight"]
    completion_tokens = {t for s in _sequences() for t in s.completion_ids}
    prompt_only = sorted(set(PROMPT_A + PROMPT_B) - completion_tokens)
    assert prompt_only
    assert float(embedding[prompt_only].abs().max()) > 1e-6


def test_shared_update_forwards_each_prompt_once(tiny):
    model, _ = tiny
    sequences = _sequences()
    seen: list[int] = []
    handle = model.model.embed_tokens.register_forward_hook(lambda _m, args, _o: seen.append(args[0].numel()))
    try:
        _update(model, sequences, prefix_sharing=True)
        shared_tokens, seen[:] = sum(seen), []
        _update(model, sequences, prefix_sharing=False)
        unshared_tokens = sum(seen)
    finally:
        handle.remove()
    expected = 0
    # The expert target shares its prompt with the meta rows, so it rides in their micro-batch.
    for kinds, prompt in ((("solution",), PROMPT_A), (("meta", "expert"), PROMPT_B)):
        active = [s for s in sequences if s.kind in kinds and (s.advantage != 0.0 or s.kind == "expert")]
        # Each micro-batch: one row of its prompt, then every completion minus its last token; no padding.
        lengths = [len(s.completion_ids) for s in active]
        expected += len(prompt) + sum(n - 1 for n in lengths)
    assert shared_tokens == expected
    assert shared_tokens < unshared_tokens


def _lone_expert_target() -> TrainSequence:
    """An expert target whose prompt no meta row has (its meta group had no signal, or it was buffered)."""
    g = torch.Generator().manual_seed(1)
    return TrainSequence(
        [1, 71, 72, 73, 74], torch.randint(3, 500, (6,), generator=g).tolist(), 0.0, kind="expert"
    )


@pytest.mark.parametrize("lone_target", [False, True], ids=["with its meta rows", "and a lone target"])
def test_expert_targets_ride_in_the_meta_micro_batch(tiny, lone_target):
    """Expert targets join the meta micro-batch (one on a meta row's prompt shares its prompt pass; one
    without meta rows still saves a forward and backward of its own) with the same gradient and the same
    per-kind losses as in a micro-batch of their own, which is what a step that logs per-kind gradients
    runs."""
    model, _ = tiny
    sequences = [*_sequences(), _lone_expert_target()] if lone_target else _sequences()
    seen: list[int] = []
    handle = model.model.embed_tokens.register_forward_hook(lambda _m, args, _o: seen.append(args[0].numel()))
    try:
        mixed, mixed_log = _update(model, sequences, prefix_sharing=True)
        mixed_passes, seen[:] = len(seen), []
        apart, apart_log = _update(model, sequences, prefix_sharing=True, grad_stats=True)
        apart_passes = len(seen)
    finally:
        handle.remove()
    assert (mixed_passes, apart_passes) == (2, 3)
    for key in ("update/loss", "update/loss_meta", "update/loss_expert", "update/loss_solution"):
        assert mixed_log[key] == pytest.approx(apart_log[key], abs=1e-6), key
    assert mixed_log["update/loss_expert"] > 0
    assert "grad/norm_expert" in apart_log
    for name, grad in apart.items():
        torch.testing.assert_close(mixed[name], grad, atol=1e-5, rtol=0, msg=name)


def test_pack_shares_identical_prompts_only():
    sequences = [
        TrainSequence([5, 6, 7], [8], 1.0),
        TrainSequence([9], [10, 11, 12], -1.0),
        TrainSequence([5, 6, 7], [13, 14], 0.5),
    ]
    batch = pack(sequences, pad_id=0, share_prompts=True)
    assert batch.shared
    assert batch.prompt_ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert batch.prompt_index.tolist() == [0, 1, 0]
    assert batch.completion_ids.tolist() == [[8, 0, 0], [10, 11, 12], [13, 14, 0]]
    assert batch.input_ids[2].tolist() == [5, 6, 7, 13, 14, 0]
    # Nothing to share: the joint layout, one forward.
    assert not pack(sequences[:2], pad_id=0, share_prompts=True).shared


def test_every_layout_is_one_forward(tiny):
    """Under FSDP every rank must run as many forwards as the others (each one all-gathers): a shared
    micro-batch, several prompts' groups with completions of every length, and an unshared one each take
    exactly one."""
    model, _ = tiny
    sequences = [
        TrainSequence([1, 40, 41], [50], 1.0),
        TrainSequence([1, 40, 41], [51, 52, 53], 1.0),
        TrainSequence([1, 42], [54, 55], -1.0),
        TrainSequence([1, 42], [56], -1.0),
    ]
    shared = pack(sequences, pad_id=2, share_prompts=True)
    unshared = pack(sequences, pad_id=2)
    assert shared.shared and not unshared.shared
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        one = token_logprobs(model, shared)
        other = token_logprobs(model, unshared)
    hook.remove()
    assert len(calls) == 2
    torch.testing.assert_close(
        one * shared.completion_mask, other * unshared.completion_mask, atol=1e-5, rtol=0
    )


def test_logprobs_use_each_sequences_own_temperature(tiny):
    model, _ = tiny
    prompt, completion = [1, 40, 41, 42], [50, 51, 52]
    mixed = pack(
        [TrainSequence(prompt, completion, 0.0, temperature=t) for t in (1.0, 0.5)] * 2,
        pad_id=2,
        share_prompts=True,
    )
    with torch.no_grad():
        logprobs = token_logprobs(model, mixed)
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
    for row, temperature in enumerate((1.0, 0.5, 1.0, 0.5)):
        expected = torch.log_softmax(logits / temperature, dim=-1).gather(
            -1, torch.tensor(completion)[:, None]
        )
        torch.testing.assert_close(logprobs[row], expected[:, 0], atol=1e-5, rtol=0)
    assert not torch.allclose(logprobs[0], logprobs[1])


def test_shared_gradient_is_bitwise_repeatable(tiny):
    """A prompt's copies sum their gradients in a fixed order (indexing's scatter-add does not, on CPU)."""
    model, _ = tiny
    batch = pack(_sequences()[5:9], pad_id=2, share_prompts=True)
    grads = []
    for _ in range(12):
        model.zero_grad(set_to_none=True)
        (token_logprobs(model, batch) * batch.completion_mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_a_prompt_opens_another_row_past_the_row_limit(tiny):
    """Completions that would make a shared row too long go to a second row with its own copy of the
    prompt, with the same log-probabilities."""
    model, _ = tiny
    sequences = _sequences()
    capped = pack(sequences, pad_id=2, share_prompts=True, max_shared_row=14)
    whole = pack(sequences, pad_id=2, share_prompts=True)
    assert whole.prompt_ids.shape[0] == 2 and capped.prompt_ids.shape[0] > 2
    assert capped.shared
    unshared = pack(sequences, pad_id=2)
    with torch.no_grad():
        expected = token_logprobs(model, unshared) * unshared.completion_mask
        for batch in (capped, whole):
            torch.testing.assert_close(
                token_logprobs(model, batch) * batch.completion_mask, expected, atol=1e-5, rtol=0
            )


class _IgnoresCustomMasks(torch.nn.Module):
    """A model whose attention drops a 4-D mask (as some remote-code models do): plain causal attention."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, attention_mask=None, **kwargs):
        return self.inner(attention_mask=None if attention_mask.dim() == 4 else attention_mask, **kwargs)


def test_a_model_that_ignores_the_shared_layouts_mask_is_refused(tiny):
    model, _ = tiny
    assert honours_shared_layout(model)
    assert not honours_shared_layout(_IgnoresCustomMasks(model))
