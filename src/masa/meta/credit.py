"""Advantages of meta rollouts: per group, optionally mean-centred only, optionally credited per JSON field.

Field-level credit: a meta output's reward has three components (notions, pass rate, length), each earned
by one field of its JSON. With one combined advantage every token shares every component's credit, so a
lucky length guess also reinforces a wrong pass rate. With ``field_credit`` each component's own group
advantage goes to the tokens of its field, and the rest of the output (reasoning, braces) gets the
combined advantage.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from masa.advantages import group_advantages
from masa.meta.parse import NOTIONS, PASS_RATE, SOLUTION_LENGTH, field_of_key
from masa.meta.rewards import MetaRewardBreakdown, MetaRewardWeights

_KEY = re.compile(r"[\"']?([A-Za-z_][A-Za-z0-9_ \-]*)[\"']?\s*:")
_CLOSE_TAG = re.compile(r"</\s*meta\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class MetaAdvantages:
    advantages: list[list[float]]
    """Per group, per rollout: the advantage of the combined reward."""
    token_advantages: list[list[list[float] | None]]
    """Per group, per rollout: per-token advantages with field credit, else None."""
    zero_variance: list[bool]
    pass_component_constant: list[bool]
    """Groups whose pass-rate component was the same for every rollout (nothing to learn it from)."""


def field_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span of each recognised field of the output's JSON: from its key to the next key.

    Only the text after ``</meta>`` is searched when the tag is there, as the parser does; where a key
    occurs more than once the last occurrence counts (the parser reads the last object).
    """
    close = _CLOSE_TAG.search(text)
    offset = close.end() if close else 0
    keys = [(m.start() + offset, field_of_key(m.group(1))) for m in _KEY.finditer(text[offset:])]
    end = text.rfind("}")
    spans: dict[str, tuple[int, int]] = {}
    for index, (start, name) in enumerate(keys):
        if name is None:
            continue
        stop = keys[index + 1][0] if index + 1 < len(keys) else (end if end > start else len(text))
        spans[name] = (start, stop)
    return spans


def token_char_ends(completion_ids: Sequence[int], decode: Callable[[list[int]], str]) -> list[int]:
    """Length of the decoded text after each completion token (prefix decoding, so merges are exact)."""
    return [len(decode(list(completion_ids[: i + 1]))) for i in range(len(completion_ids))]


def field_token_advantages(
    char_ends: Sequence[int], spans: dict[str, tuple[int, int]], by_field: dict[str, float], default: float
) -> list[float]:
    """Each token's advantage: its field's when the token overlaps exactly one field span, else ``default``."""
    out = []
    start = 0
    for end in char_ends:
        inside = [name for name, (a, b) in spans.items() if start < b and end > a and name in by_field]
        out.append(by_field[inside[0]] if len(inside) == 1 else default)
        start = end
    return out


def meta_advantages(
    scores: Sequence[Sequence[MetaRewardBreakdown]],
    *,
    weights: MetaRewardWeights,
    eps: float,
    scale: bool,
    field_credit: bool = False,
    texts: Sequence[Sequence[str]] = (),
    char_ends: Sequence[Sequence[Sequence[int]]] = (),
) -> MetaAdvantages:
    """Group advantages of the combined meta reward, and with ``field_credit`` per-token ones.

    A field's advantage is its component's group advantage times the component's weight relative to the
    mean weight (a component weighted 0 teaches its field nothing). ``texts`` and ``char_ends`` (from
    ``token_char_ends``) are needed only with ``field_credit``.
    """
    combined = group_advantages([[s.combined for s in g] for g in scores], eps=eps, scale=scale)
    passes = group_advantages([[s.pass_rate for s in g] for g in scores], eps=eps, scale=scale)
    tokens: list[list[list[float] | None]] = [[None] * len(g) for g in scores]
    if field_credit:
        mean_weight = (weights.notion + weights.pass_rate + weights.length) / 3
        parts = {
            NOTIONS: (
                weights.notion,
                group_advantages([[s.notion for s in g] for g in scores], eps=eps, scale=scale),
            ),
            PASS_RATE: (weights.pass_rate, passes),
            SOLUTION_LENGTH: (
                weights.length,
                group_advantages([[s.length for s in g] for g in scores], eps=eps, scale=scale),
            ),
        }
        for g, group in enumerate(scores):
            for i in range(len(group)):
                by_field = {
                    name: weight / mean_weight * adv.advantages[g][i] for name, (weight, adv) in parts.items()
                }
                tokens[g][i] = field_token_advantages(
                    char_ends[g][i], field_spans(texts[g][i]), by_field, combined.advantages[g][i]
                )
    return MetaAdvantages(combined.advantages, tokens, combined.zero_variance, passes.zero_variance)
