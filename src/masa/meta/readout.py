"""The expected pass rate: a meta prediction's count read from the model's distribution over it.

A sampled count is one draw, and at the usual sampling temperature (below 1) a sharpened draw: a model
that gives "0" 55% and spreads the rest over 1-8 samples "0" far more often than 55%, so the mean of a few
sampled counts sits below what the model believes, and varies from draw to draw. At the position where the
sampled output states its count, the engine records the distribution over the tokens "0".."scale"
(temperature 1); its mean is the model's expected count, a smooth and deterministic reading of the same
belief. It needs each count to be a single token (scale at most 9 on tokenizers that split digits).
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Callable, Sequence

from transformers import PreTrainedTokenizerBase

from masa.meta.credit import field_spans, token_char_ends
from masa.meta.parse import PASS_RATE
from masa.rollout.types import Rollout

_COUNT = re.compile(r"[:=]\s*[\"']?(\d)")


def count_token_ids(tokenizer: PreTrainedTokenizerBase, scale: int) -> tuple[int, ...]:
    """The token of each count 0..``scale``, or () when some count is not a single token of its own."""
    if scale > 9:
        return ()
    encoded = [tokenizer(str(count), add_special_tokens=False)["input_ids"] for count in range(scale + 1)]
    return tuple(ids[0] for ids in encoded) if all(len(ids) == 1 for ids in encoded) else ()


def expected_pass_rate(
    text: str,
    completion_ids: Sequence[int],
    watched_logprobs: Sequence[Sequence[float]] | None,
    char_ends: Sequence[int],
    count_ids: Sequence[int],
    parsed_count: int | None,
) -> float | None:
    """sum_k k P(k) / scale at the token where ``text`` states the count the parser read; None where that
    token cannot be found (no parsed count, a count that is not one watched token, a fraction or a
    percentage the parser converted).

    ``watched_logprobs`` are per completion token over ``count_ids`` (``SamplingParams.watch_token_ids``);
    ``char_ends`` are from ``masa.meta.credit.token_char_ends`` with the decoding that produced ``text``.
    """
    if watched_logprobs is None or parsed_count is None or not count_ids:
        return None
    span = field_spans(text).get(PASS_RATE)
    found = _COUNT.search(text, span[0], span[1]) if span else None
    if found is None or int(found.group(1)) != parsed_count:
        return None
    end = found.end(1)
    if end < len(text) and (text[end].isdigit() or text[end] in "./%"):  # 10, 0.5, 4/8, 50%: not one count
        return None
    index = bisect_right(char_ends, found.start(1))  # the token whose decoded text holds the digit
    if index >= len(completion_ids) or completion_ids[index] != count_ids[parsed_count]:
        return None
    weights = [math.exp(x) for x in watched_logprobs[index]]
    return sum(k * w for k, w in enumerate(weights)) / sum(weights) / (len(count_ids) - 1)


def read_rollout(
    rollout: Rollout,
    text: str,
    parsed_count: int | None,
    count_ids: Sequence[int],
    decode: Callable[[list[int]], str],
    char_ends: Sequence[int] | None = None,
) -> float | None:
    """``expected_pass_rate`` of a sampled meta rollout, ``text`` being ``decode(rollout.completion_ids)``;
    ``char_ends``, when the caller has them already, spare decoding every prefix again."""
    if rollout.watched_logprobs is None or parsed_count is None:
        return None
    if char_ends is None:
        char_ends = token_char_ends(rollout.completion_ids, decode)
    return expected_pass_rate(
        text, rollout.completion_ids, rollout.watched_logprobs, char_ends, count_ids, parsed_count
    )
