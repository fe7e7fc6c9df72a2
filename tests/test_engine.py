import pytest
import torch

from masa.rollout.engine import HFEngine
from masa.rollout.types import FinishReason, SamplingParams
from masa.update import TrainSequence, pack, token_logprobs


@pytest.fixture()
def engine(tiny):
    model, tokenizer = tiny
    return HFEngine(model, tokenizer, max_batch_sequences=5)


def _prompts(tokenizer):
    return [
        tokenizer("What is 2 + 2?")["input_ids"],
        tokenizer("Hi")["input_ids"],
        tokenizer("a b c d e f")["input_ids"],
    ]


def test_each_prompt_stops_at_its_own_limit(engine, tiny):
    _, tokenizer = tiny
    torch.manual_seed(0)
    # the tiny random model never emits EOS in a few tokens with a 49k vocabulary, so limits are what stop it
    groups = engine.generate(_prompts(tokenizer), 3, SamplingParams(max_new_tokens=12), max_tokens=[3, 12, 7])
    assert [len(g) for g in groups] == [3, 3, 3]
    for group, limit in zip(groups, [3, 12, 7], strict=True):
        for rollout in group:
            assert rollout.num_tokens <= limit
            assert len(rollout.logprobs) == rollout.num_tokens
            if rollout.finish_reason != FinishReason.STOP:
                assert rollout.num_tokens == limit
    assert {r.finish_reason for r in groups[0]} <= {FinishReason.CUTOFF, FinishReason.STOP}
    assert {r.finish_reason for r in groups[1]} <= {FinishReason.LENGTH, FinishReason.STOP}


def test_stop_is_reported_when_eos_is_sampled(tiny):
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    handle = model.lm_head.register_forward_hook(
        lambda m, i, out: out.index_fill(-1, torch.tensor([eos]), 50.0)
    )
    try:
        groups = HFEngine(model, tokenizer).generate(
            _prompts(tokenizer)[:1], 2, SamplingParams(max_new_tokens=5)
        )
    finally:
        handle.remove()
    for rollout in groups[0]:
        assert rollout.finish_reason is FinishReason.STOP
        assert rollout.completion_ids == [eos]


def test_logprobs_match_a_teacher_forced_forward(engine, tiny):
    model, tokenizer = tiny
    torch.manual_seed(1)
    params = SamplingParams(temperature=0.7, max_new_tokens=6)
    groups = engine.generate(_prompts(tokenizer), 2, params)
    sequences = [
        TrainSequence(r.prompt_ids, r.completion_ids, 0.0, temperature=0.7) for g in groups for r in g
    ]
    batch = pack(sequences, tokenizer.pad_token_id)
    with torch.no_grad():
        recomputed = token_logprobs(model, batch)
    for row, seq in enumerate(sequences):
        rollout = [r for g in groups for r in g][row]
        n = len(seq.completion_ids)
        assert recomputed[row, :n].tolist() == pytest.approx(rollout.logprobs, abs=1e-4)


def test_greedy_is_deterministic(engine, tiny):
    _, tokenizer = tiny
    params = SamplingParams(temperature=0.0, max_new_tokens=5)
    first = engine.generate(_prompts(tokenizer), 1, params)
    second = engine.generate(_prompts(tokenizer), 1, params)
    assert [g[0].completion_ids for g in first] == [g[0].completion_ids for g in second]


def test_mismatched_limits_are_rejected(engine, tiny):
    _, tokenizer = tiny
    with pytest.raises(ValueError, match="max_tokens"):
        engine.generate(_prompts(tokenizer), 1, SamplingParams(), max_tokens=[1])
