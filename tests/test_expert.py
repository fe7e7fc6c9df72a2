import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from masa.meta.expert import GENERIC_REASONING, build_expert_target, select_expert_meta
from masa.meta.parse import MetaPrediction, parse_meta_prediction
from masa.meta.rewards import solution_stats

NOTIONS = MetaPrediction(notions=["a"])
NONE = MetaPrediction()


def stats(correct, lengths):
    return solution_stats(["t"] * len(correct), correct, lengths)


def test_select_highest_score_at_or_above_threshold():
    texts = ["<meta>a</meta>{}"] * 3
    assert select_expert_meta(texts, [NOTIONS] * 3, [0.1, 0.5, 0.3]) == 1
    assert select_expert_meta(texts[:1], [NOTIONS], [0.2]) == 0  # inclusive
    assert select_expert_meta(texts[:2], [NOTIONS] * 2, [0.19, 0.0]) is None
    assert select_expert_meta(texts[:2], [NOTIONS] * 2, [0.3, 0.4], threshold=0.5) is None
    assert select_expert_meta([], [], []) is None


def test_select_skips_unparsed_notions_and_breaks_ties():
    assert select_expert_meta(["x", "y"], [NONE, NOTIONS], [0.0, 0.0], threshold=0.0) == 1
    assert select_expert_meta(["no block", "<meta>r</meta>", "<meta>s</meta>"], [NOTIONS] * 3, [0.5] * 3) == 1
    assert select_expert_meta(["a", "b"], [NOTIONS] * 2, [0.5, 0.5]) == 0


def test_select_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        select_expert_meta(["a"], [NOTIONS, NOTIONS], [1.0])


def test_target_keeps_reasoning_and_carries_true_statistics():
    answer = '{"math_notion": ["x"], "pass_rate": 8, "solution_length": 5}'
    meta = f'<meta>Think: {{"pass_rate": 0}} is wrong.</meta>\n{answer}'
    s = stats([True, True, True, False, False, False, False, False], [100, 300, 200, 9, 9, 9, 9, 9])
    target = build_expert_target(meta, s, ["parity"], max_response_tokens=1000, min_length=50)
    assert target.startswith('<meta>Think: {"pass_rate": 0} is wrong.</meta>\n')
    pred = parse_meta_prediction(target)
    assert (pred.notions, pred.pass_rate, pred.solution_length) == (["parity"], 3, 200)


def test_target_rounds_half_up_and_takes_median_of_correct_rollouts():
    s = stats([True] + [False] * 15, [10] * 16)  # p * 8 = 0.5 -> 1
    assert (
        parse_meta_prediction(
            build_expert_target(None, s, [], max_response_tokens=99, min_length=1)
        ).pass_rate
        == 1
    )
    s = stats([True, True, False], [100, 301, 5])  # median 200.5 -> 201
    pred = parse_meta_prediction(build_expert_target(None, s, None, max_response_tokens=999, min_length=1))
    assert (pred.pass_rate, pred.solution_length, pred.notions) == (5, 201, [])  # 2/3 * 8 = 5.33 -> 5


def test_target_length_without_correct_rollouts_and_clamping():
    s = stats([False, False, False], [10, 500, 2000])
    assert (
        parse_meta_prediction(
            build_expert_target(None, s, [], max_response_tokens=999, min_length=1)
        ).solution_length
        == 500
    )
    s = stats([True], [20])
    assert (
        parse_meta_prediction(
            build_expert_target(None, s, [], max_response_tokens=999, min_length=128)
        ).solution_length
        == 128
    )
    s = stats([True], [5000])
    assert (
        parse_meta_prediction(
            build_expert_target(None, s, [], max_response_tokens=999, min_length=128)
        ).solution_length
        == 999
    )


def test_target_without_a_meta_block_uses_generic_reasoning():
    s = stats([True], [20])
    for meta in (None, "no tags at all", "<meta>unterminated"):
        target = build_expert_target(meta, s, ["a"], max_response_tokens=64, notion_word="code_notion")
        assert target == GENERIC_REASONING + '\n{"code_notion": ["a"], "pass_rate": 8, "solution_length": 20}'


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(1, 5000)), min_size=1, max_size=16),
    st.integers(1, 16),
    st.integers(1, 300),
    st.integers(1, 4000),
    st.text(max_size=40),
)
def test_target_always_parses_to_the_true_statistics(rollouts, scale, min_length, max_tokens, reasoning):
    correct = [ok for ok, _ in rollouts]
    lengths = [n for _, n in rollouts]
    s = stats(correct, lengths)
    meta = f"<meta>{reasoning.replace('</meta>', '')}</meta> junk"
    target = build_expert_target(
        meta, s, ["n"], scale=scale, max_response_tokens=max_tokens, min_length=min_length
    )
    pred = parse_meta_prediction(target, pass_rate_scale=scale)
    assert pred.pass_rate == int(sum(correct) * scale / len(correct) + 0.5)
    median = math.floor(statistics.median([n for ok, n in rollouts if ok] or lengths) + 0.5)
    low = min_length if min_length <= max_tokens else 1
    assert pred.solution_length == min(max(median, low), max_tokens)
    assert pred.notions == ["n"]


def test_json_only_target_is_the_json_line_alone():
    s = stats([True, False], [20, 30])
    meta = '<meta>kept only when reasoning is asked for</meta>\n{"pass_rate": 1}'
    target = build_expert_target(meta, s, ["a"], max_response_tokens=64, reasoning=False)
    assert target == '{"math_notion": ["a"], "pass_rate": 4, "solution_length": 20}'
    pred = parse_meta_prediction(target)
    assert (pred.notions, pred.pass_rate, pred.solution_length) == (["a"], 4, 20)


def test_fallback_keeps_the_best_sampled_notions_instead_of_an_empty_list():
    from masa.meta.expert import fallback_notions

    preds = [
        MetaPrediction(notions=[]),
        MetaPrediction(notions=["carry"]),
        NONE,
        MetaPrediction(notions=["sum"]),
    ]
    assert fallback_notions(preds, [0.0, 0.1, 0.0, 0.1]) == ["carry"]  # tie: the earliest
    assert fallback_notions(preds, [0.0, 0.0, 0.0, 0.15]) == ["sum"]
    assert fallback_notions([NONE, MetaPrediction(notions=[])], [0.0, 0.0]) == []
