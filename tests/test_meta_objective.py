"""The pass-rate objective: proper scoring rules, mean-centred meta advantages, field-level credit."""

import math

import pytest
from scripted_engine import ScriptedEngine

import masa.learner as learner_module
from masa.config import load_config
from masa.meta.credit import field_spans, field_token_advantages, meta_advantages, token_char_ends
from masa.meta.prompt import render_meta_json
from masa.meta.rewards import MetaRewardBreakdown, MetaRewardWeights, pass_rate_reward, solution_stats
from masa.trainer import Trainer

G = 8


def _stats(correct: int, total: int = G):
    return solution_stats(["x"] * total, [i < correct for i in range(total)], [10] * total)


def _expected_reward(pi: float, q: int, kind: str) -> float:
    """E over this step's G outcomes ~ Binomial(G, pi) of the reward for predicting q of 8."""
    return sum(
        math.comb(G, k) * pi**k * (1 - pi) ** (G - k) * pass_rate_reward(q, _stats(k), kind=kind)
        for k in range(G + 1)
    )


@pytest.mark.parametrize("kind", ["brier", "log"])
@pytest.mark.parametrize("true_count", range(G + 1))
def test_proper_rewards_are_maximised_by_the_true_rate(kind, true_count):
    pi = true_count / G
    best = max(range(G + 1), key=lambda q: _expected_reward(pi, q, kind))
    assert best == true_count


def _best_constant(rates, kind):
    return max(range(G + 1), key=lambda q: sum(_expected_reward(pi, q, kind) for pi in rates))


def test_the_papers_reward_prefers_the_commonest_outcome_over_the_rate():
    # The per-level pass rates measured late in a MASA run (benchmarks/README.md): mean 0.40.
    rates = [0.93, 0.83, 0.08, 0.15, 0.0]
    assert _best_constant(rates, "exp") == 0  # the collapse: predict 0 everywhere
    for kind in ("brier", "log"):
        assert _best_constant(rates, kind) in (3, 4)  # about the mean rate, 0.40 * 8 = 3.2


def test_rewards_lie_in_zero_one_and_an_unparsed_prediction_scores_zero():
    for kind in ("exp", "brier", "log"):
        for correct in range(G + 1):
            for q in range(G + 1):
                assert 0.0 <= pass_rate_reward(q, _stats(correct), kind=kind) <= 1.0
        assert pass_rate_reward(None, _stats(3), kind=kind) == 0.0


def _b(pass_rate, length=0.0, notion=0.0):
    return MetaRewardBreakdown(length, pass_rate, notion, (length + pass_rate + notion) / 3)


def test_mean_centred_meta_advantages_keep_a_small_difference_small():
    # An all-wrong group: only the pass digit varies, 1.0 vs 0.56 (the example).
    group = [[_b(1.0), _b(0.56)]]
    scaled = meta_advantages(group, weights=MetaRewardWeights(), eps=1e-6, scale=True)
    centred = meta_advantages(group, weights=MetaRewardWeights(), eps=1e-6, scale=False)
    assert scaled.advantages[0] == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], abs=1e-4)
    assert centred.advantages[0] == pytest.approx([0.44 / 6, -0.44 / 6])


def test_share_of_groups_with_a_constant_pass_component():
    scores = [[_b(0.5, 1.0), _b(0.5, 0.0)], [_b(1.0), _b(0.2)]]
    out = meta_advantages(scores, weights=MetaRewardWeights(), eps=1e-6, scale=True)
    assert out.pass_component_constant == [True, False]
    assert out.zero_variance == [False, False]


def test_field_spans_cover_each_key_to_the_next():
    text = '<meta>pass_rate: guess</meta>\n{"math_notion": ["a"], "pass_rate": 3, "solution_length": 40}'
    spans = field_spans(text)
    assert text[slice(*spans["pass_rate"])].startswith('"pass_rate": 3')
    assert text[slice(*spans["notions"])].startswith('"math_notion"')
    assert text[slice(*spans["solution_length"])].rstrip().startswith('"solution_length": 40')
    # "pass_rate:" inside the reasoning is not the field.
    assert spans["pass_rate"][0] > text.index("</meta>")


def test_each_field_gets_its_components_advantage(tiny):
    _, tokenizer = tiny
    text = "<meta>easy</meta>" + render_meta_json(["sum"], 8, 40)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ends = token_char_ends(ids, tokenizer.decode)
    assert ends[-1] == len(text)
    spans = field_spans(text)
    advantages = field_token_advantages(ends, spans, {"pass_rate": 5.0, "notions": -1.0}, default=0.25)
    pieces = {
        a: "".join(tokenizer.decode(ids[i : i + 1]) for i in range(len(ids)) if advantages[i] == a)
        for a in set(advantages)
    }
    assert "8" in pieces[5.0] and "sum" in pieces[-1.0]
    assert "easy" in pieces[0.25] and "40" in pieces[0.25]  # no length advantage given: the default


def test_field_credit_reaches_the_meta_sequences_of_a_training_step(tmp_path, monkeypatch):
    seen = []
    real = learner_module.policy_update

    def recording(model, optimizer, scheduler, sequences, *args, **kwargs):
        seen.append(list(sequences))
        return real(model, optimizer, scheduler, sequences, *args, **kwargs)

    monkeypatch.setattr(learner_module, "policy_update", recording)
    config = load_config(
        "tiny",
        overrides=[
            f"train.output_dir={tmp_path}",
            "data.eval=null",
            "algo=masa",
            "data.arithmetic_levels=[4]",
            "train.batch_problems=2",
            "meta.n=3",
            "meta.max_new_tokens=48",
            "rollout.max_new_tokens=48",
            "meta.field_credit=true",
            "meta.pass_rate_reward=brier",
        ],
    )
    trainer = Trainer(config, run_dir=tmp_path / "r")

    def meta(problem, j):
        return "<meta>ok</meta>" + render_meta_json(["answer"], [1, 4, 7][j], 12)

    def solution(problem, j):
        return f"\\boxed{{{problem.answer}}}" if j % 2 == 0 else "\\boxed{-1}"

    trainer.engine.engine = ScriptedEngine(trainer.tokenizer, trainer.train_problems, solution, meta)
    log = trainer.train_step()
    metas = [s for s in seen[0] if s.kind == "meta"]
    assert all(
        s.token_advantages is not None and len(s.token_advantages) == len(s.completion_ids) for s in metas
    )
    # Only the pass rate differs within each group: the notion and length fields get advantage 0, the
    # pass-rate field its own non-zero one.
    assert all(0.0 in s.token_advantages and any(a != 0 for a in s.token_advantages) for s in metas[::3])
    assert log["groups/meta_pass_constant_fraction"] == 0.0


def test_a_task_without_notions_drops_their_weight_and_field():
    from masa.config import task_has_notions
    from masa.meta.expert import build_expert_target
    from masa.meta.parse import parse_meta_prediction

    assert not task_has_notions(load_config("tiny"))  # arithmetic names every concept it uses
    assert task_has_notions(load_config("tiny", overrides=["data.train=problems.jsonl"]))
    assert task_has_notions(load_config("tiny", overrides=["meta.preset=paper"]))
    assert not task_has_notions(load_config("tiny", overrides=["data.train=x.jsonl", "meta.notions=false"]))
    target = build_expert_target(None, _stats(4), ["carry"], max_response_tokens=64, with_notions=False)
    assert "notion" not in target
    pred = parse_meta_prediction(target)
    assert pred.notions is None and pred.pass_rate == 4


def test_copying_the_prompt_example_is_not_an_answer():
    from masa.meta.parse import parse_meta_prediction
    from masa.meta.prompt import build_meta_prompt, is_example_copy

    prompt = build_meta_prompt("1 + 1", pass_rate_scale=8, max_response_tokens=64)
    example = parse_meta_prediction(prompt[prompt.rindex("{") :])
    settings = {"pass_rate_scale": 8, "max_response_tokens": 64}
    assert is_example_copy(example.notions, example.pass_rate, example.solution_length, **settings)
    assert is_example_copy(None, example.pass_rate, example.solution_length, **settings)
    assert not is_example_copy(["addition"], example.pass_rate, example.solution_length, **settings)
    assert not is_example_copy(None, 8, example.solution_length, **settings)


def test_a_prompt_without_notions_neither_asks_for_nor_shows_them():
    from masa.meta.prompt import build_meta_prompt

    with_notions = build_meta_prompt("1 + 1", max_response_tokens=64)
    without = build_meta_prompt("1 + 1", max_response_tokens=64, notions=False)
    assert "math_notion" in with_notions and "math_notion" not in without and "concept" not in without
    assert '"pass_rate"' in without and '"solution_length"' in without
