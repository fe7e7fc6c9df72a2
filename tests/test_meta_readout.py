"""The expected pass rate read from the distribution over the count's digit, and the engines recording it."""

import math

import pytest
import torch

from masa.meta.credit import token_char_ends
from masa.meta.readout import count_token_ids, expected_pass_rate
from masa.prompts import encode_user_message
from masa.rollout.engine import HFEngine
from masa.rollout.types import SamplingParams
from masa.update import TrainSequence, pack


def _decode(tokenizer):
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def _read(tokenizer, text, belief, parsed_count, *, scale=8):
    """``text`` as a completion whose every position holds the count distribution ``belief``."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    watched = [[math.log(p) if p > 0 else -math.inf for p in belief]] * len(ids)
    counts = count_token_ids(tokenizer, scale)
    return expected_pass_rate(
        text, ids, watched, token_char_ends(ids, _decode(tokenizer)), counts, parsed_count
    )


def test_each_count_is_one_token_on_the_embedded_tokenizer(tiny):
    _, tokenizer = tiny
    ids = count_token_ids(tokenizer, 8)
    assert len(ids) == 9 and len(set(ids)) == 9
    assert [tokenizer.decode([i]) for i in ids] == [str(k) for k in range(9)]
    assert count_token_ids(tokenizer, 10) == ()  # "10" is two tokens: no single slot holds the count


def test_the_expected_count_is_the_mean_of_the_distribution_at_the_stated_count(tiny):
    _, tokenizer = tiny
    belief = [0.5, 0, 0, 0, 0.25, 0, 0, 0, 0.25]  # mean count 3
    text = '<meta>carry needed</meta>\n{"pass_rate": 0, "solution_length": 40}'
    assert _read(tokenizer, text, belief, 0) == pytest.approx(3 / 8)
    # JSON-only answers, other spacing and a quoted count read the same way.
    for other in ('{"pass_rate":0}', "{'pass_rate': '0', 'solution_length': 3}"):
        assert _read(tokenizer, other, belief, 0) == pytest.approx(3 / 8)


def test_no_reading_where_the_stated_count_is_not_one_watched_token(tiny):
    _, tokenizer = tiny
    belief = [1 / 9] * 9
    assert _read(tokenizer, '{"pass_rate": 4}', belief, None) is None  # nothing parsed
    assert _read(tokenizer, '{"pass_rate": 0.5}', belief, 4) is None  # a fraction the parser converted
    assert _read(tokenizer, '{"pass_rate": 4/8}', belief, 4) is None
    assert _read(tokenizer, '{"pass_rate": 50%}', belief, 4) is None
    assert _read(tokenizer, '{"solution_length": 12}', belief, 4) is None  # no pass-rate field
    # The parser read another count than the text's first digit (e.g. clamped): no reading.
    assert _read(tokenizer, '{"pass_rate": 9}', belief, 8) is None
    ids = tokenizer('{"pass_rate": 4}', add_special_tokens=False)["input_ids"]
    ends = token_char_ends(ids, _decode(tokenizer))
    assert expected_pass_rate('{"pass_rate": 4}', ids, None, ends, count_token_ids(tokenizer, 8), 4) is None


def test_the_hf_engine_records_the_models_own_distribution_over_watched_tokens(tiny):
    """At temperature 1 whatever the sampling temperature: the log-softmax of the unwarped logits over the
    watched tokens, at every sampled position."""
    model, tokenizer = tiny
    watch = count_token_ids(tokenizer, 8)
    engine = HFEngine(model, tokenizer)
    prompts = [encode_user_message(tokenizer, "Guess a digit."), encode_user_message(tokenizer, "2 + 2?")]
    params = SamplingParams(temperature=0.7, max_new_tokens=6, watch_token_ids=watch)
    groups = engine.generate(prompts, 2, params, seed=3)
    rollouts = [r for g in groups for r in g]
    assert all(r.watched_logprobs is not None and len(r.watched_logprobs) == r.num_tokens for r in rollouts)
    batch = pack(
        [TrainSequence(r.prompt_ids, r.completion_ids, 0.0) for r in rollouts], tokenizer.pad_token_id
    )
    model.eval()
    with torch.no_grad():
        mask = batch.attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers a left-padded prompt
        logits = model(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=positions, use_cache=False
        ).logits[:, batch.prompt_ids.shape[1] - 1 : -1]
    for row, rollout in enumerate(rollouts):
        expected = torch.log_softmax(logits[row, : rollout.num_tokens][:, list(watch)].float(), dim=-1)
        assert torch.allclose(torch.tensor(rollout.watched_logprobs), expected, atol=1e-4)
    # Without watched tokens nothing is recorded.
    plain = engine.generate(prompts[:1], 1, SamplingParams(temperature=0.7, max_new_tokens=4), seed=3)
    assert plain[0][0].watched_logprobs is None
