import pytest

from masa.meta.parse import MetaPrediction, parse_meta_prediction
from masa.meta.prompt import build_meta_prompt
from masa.meta.rewards import (
    MetaRewardWeights,
    length_reward,
    meta_reward,
    notion_counts,
    notion_reward,
    pass_rate_reward,
    solution_stats,
)


def stats_of(*rollouts):
    """rollouts: (text, correct, length) triples."""
    texts, correct, lengths = zip(*rollouts, strict=True)
    return solution_stats(list(texts), list(correct), list(lengths))


def test_solution_stats():
    s = stats_of(("a", True, 30), ("b", False, 99), ("c", True, 10), ("d", False, 5))
    assert (s.num_rollouts, s.num_correct, s.pass_rate) == (4, 2, 0.5)
    assert (s.l_min, s.l_max) == (10, 30)
    assert s.correct_texts == ("a", "c")
    assert s.incorrect_texts == ("b", "d")
    none_correct = stats_of(("a", False, 3))
    assert (none_correct.pass_rate, none_correct.l_min, none_correct.l_max) == (0.0, None, None)


@pytest.mark.parametrize(("texts", "correct", "lengths"), [([], [], []), (["a"], [True, False], [1])])
def test_solution_stats_rejects_bad_input(texts, correct, lengths):
    with pytest.raises(ValueError):
        solution_stats(texts, correct, lengths)


def test_length_single_correct_rollout_is_reachable():
    s = stats_of(("a", True, 200), ("b", False, 900))
    assert length_reward(200, s) == 1.0  # the authors' strict inequalities gave 0 here
    assert length_reward(201, s) == 0.0


def test_length_bounds_are_inclusive():
    s = stats_of(("a", True, 100), ("b", True, 300), ("c", False, 50))
    assert [length_reward(n, s) for n in (99, 100, 200, 300, 301)] == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert length_reward(None, s) == 0.0


def test_length_zero_without_correct_rollout():
    assert length_reward(50, stats_of(("a", False, 50))) == 0.0


def test_pass_rate_reward_values():
    s = stats_of(*[("t", i < 4, 10) for i in range(8)])  # p = 0.5
    assert pass_rate_reward(4, s) == 1.0
    assert pass_rate_reward(5, s) == pytest.approx(0.5623413, rel=1e-6)  # 0.01 ** (1/8)
    assert pass_rate_reward(3, s) == pytest.approx(0.5623413, rel=1e-6)
    assert pass_rate_reward(8, s) == pytest.approx(0.1)  # 0.01 ** 0.5
    assert pass_rate_reward(None, s) == 0.0
    assert pass_rate_reward(2, s, scale=4, base=0.02) == 1.0
    assert pass_rate_reward(3, s, scale=4, base=0.02) == pytest.approx(0.02**0.25)


PROBLEM = "Find the remainder when 2^100 is divided by 7."
CORRECT = ("By Fermat's little theorem and modular arithmetic, powers of 2 cycle with period 3.", True, 50)
WRONG = ("Using modular arithmetic carelessly gives 4.", False, 40)


def test_notion_mentioned_more_by_correct_rollouts_scores():
    s = stats_of(CORRECT, WRONG)
    assert notion_counts(["Fermat's little theorem", "modular arithmetic", "induction"], PROBLEM, s) == {
        "Fermat's little theorem": 1,
        "modular arithmetic": 0,
        "induction": 0,
    }
    assert notion_reward(
        ["Fermat's little theorem", "modular arithmetic", "induction"], PROBLEM, s
    ) == pytest.approx(1 / 3)
    assert notion_reward(["fermat's LITTLE theorem"], PROBLEM, s) == 1.0


def test_notions_in_problem_text_are_dropped_case_insensitively():
    s = stats_of(("the Remainder is 2", True, 5))
    assert notion_counts(["remainder", "Remainders"], PROBLEM, s) == {}
    assert notion_reward(["REMAINDER"], PROBLEM, s) == 0.0  # none survives


def test_notion_only_in_the_template_is_not_dropped():
    prompt = build_meta_prompt(PROBLEM, max_response_tokens=512)
    assert "integer" in prompt and "integer" not in PROBLEM.lower()
    s = stats_of(("2^100 mod 7: every integer power of 2 cycles", True, 5))
    assert notion_reward(["integer"], PROBLEM, s) == 1.0


def test_plural_and_singular_forms_match():
    s = stats_of(("Count the prime numbers and their probabilities; use two boxes.", True, 5))
    assert notion_reward(["prime number"], "x", s) == 1.0
    assert notion_reward(["probability"], "x", s) == 1.0
    assert notion_reward(["box"], "x", s) == 1.0
    s_singular = stats_of(("a geometric series with one class", True, 5))
    assert notion_reward(["geometric series", "classes"], "x", s_singular) == 1.0


def test_whole_words_and_word_sequences_only():
    s = stats_of(("summation of the AM-GM inequality", True, 5))
    assert notion_reward(["sum"], "x", s) == 0.0
    assert notion_reward(["am gm inequality"], "x", s) == 1.0
    assert notion_reward(["inequality am"], "x", s) == 0.0


def test_duplicate_notions_count_once_and_symbol_only_notions_score_zero():
    s = stats_of(CORRECT, WRONG)
    assert notion_counts(["period", "periods", "Period"], PROBLEM, s) == {"period": 1}
    assert notion_reward(["period", "∑∑"], PROBLEM, s) == 0.5


def test_notion_reward_missing_or_empty():
    s = stats_of(CORRECT)
    assert notion_reward(None, PROBLEM, s) == 0.0
    assert notion_reward([], PROBLEM, s) == 0.0


def test_meta_reward_combines_components():
    s = stats_of(CORRECT, WRONG)  # p = 0.5, correct lengths [50, 50]
    pred = MetaPrediction(notions=["little theorem", "induction"], pass_rate=4, solution_length=50)
    out = meta_reward(pred, PROBLEM, s)
    assert (out.length, out.pass_rate, out.notion) == (1.0, 1.0, 0.5)
    assert out.combined == pytest.approx(2.5 / 3)
    weighted = meta_reward(pred, PROBLEM, s, weights=MetaRewardWeights(length=0.0, pass_rate=1.0, notion=3.0))
    assert weighted.combined == pytest.approx((1.0 + 1.5) / 4)
    wrong_len = meta_reward(MetaPrediction(pass_rate=5, solution_length=51), PROBLEM, s, scale=8, base=0.01)
    assert wrong_len.combined == pytest.approx(0.01**0.125 / 3)


def test_unparseable_output_scores_zero_everywhere():
    s = stats_of(CORRECT, WRONG)
    out = meta_reward(parse_meta_prediction("I refuse."), PROBLEM, s)
    assert (out.length, out.pass_rate, out.notion, out.combined) == (0.0, 0.0, 0.0, 0.0)


def test_dict_starting_with_another_key_is_rewarded():
    s = stats_of(CORRECT, WRONG)
    pred = parse_meta_prediction(
        '<meta>..</meta>{"pass_rate": 4, "solution_length": 50, "math_notion": ["period"]}'
    )
    assert meta_reward(pred, PROBLEM, s).combined == 1.0


@pytest.mark.parametrize("weights", [(-1.0, 1.0, 1.0), (0.0, 0.0, 0.0)])
def test_invalid_weights(weights):
    with pytest.raises(ValueError):
        MetaRewardWeights(*weights)
