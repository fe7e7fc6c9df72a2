import json

import pytest

from masa.meta.parse import parse_meta_prediction
from masa.meta.prompt import META_PROMPT_TEMPLATE, build_meta_prompt, length_bounds, render_meta_json


def test_prompt_states_problem_keys_and_response_range():
    text = build_meta_prompt("Compute 2 + 3.", pass_rate_scale=8, max_response_tokens=8192, min_length=128)
    assert "Compute 2 + 3." in text
    for key in ('"math_notion"', '"pass_rate"', '"solution_length"', "<meta>", "</meta>"):
        assert key in text
    assert "from 0 to 8" in text
    assert "from 128 to 8192" in text


def test_example_in_prompt_is_valid_canonical_json():
    text = build_meta_prompt("x", max_response_tokens=1000, min_length=100, pass_rate_scale=8)
    example = json.loads(text.strip().splitlines()[-1])
    assert example == {"math_notion": ["concept one", "concept two"], "pass_rate": 4, "solution_length": 550}
    assert parse_meta_prediction(text.strip().splitlines()[-1]).pass_rate == 4


def test_short_response_limit_lowers_the_minimum():
    assert length_bounds(128, 128) == (128, 128)
    assert length_bounds(128, 96) == (1, 96)
    assert "from 1 to 96" in build_meta_prompt("x", max_response_tokens=96)


@pytest.mark.parametrize(("min_length", "max_tokens"), [(0, 10), (5, 0)])
def test_length_bounds_reject_non_positive(min_length, max_tokens):
    with pytest.raises(ValueError):
        length_bounds(min_length, max_tokens)


def test_scale_must_be_positive():
    with pytest.raises(ValueError):
        build_meta_prompt("x", max_response_tokens=100, pass_rate_scale=0)


def test_braces_and_placeholders_in_problem_are_left_alone():
    problem = "Let S = {1, 2} and {scale} be a set."
    text = build_meta_prompt(problem, max_response_tokens=512, pass_rate_scale=4)
    assert problem in text
    assert "from 0 to 4" in text


def test_custom_template_and_notion_word():
    template = 'Q: {problem}\nAnswer like {"x": 1} with {notion_key} in 0..{scale}, {min_length}-{max_length}'
    text = build_meta_prompt(
        "p", max_response_tokens=300, min_length=10, notion_word="code_notion", template=template
    )
    assert text == 'Q: p\nAnswer like {"x": 1} with code_notion in 0..8, 10-300'


def test_default_template_uses_every_placeholder():
    for name in ("problem", "notion_key", "scale", "min_length", "max_length", "example"):
        assert "{" + name + "}" in META_PROMPT_TEMPLATE


def test_render_meta_json_is_canonical():
    assert (
        render_meta_json(["a", "é"], 3, 200)
        == '{"math_notion": ["a", "é"], "pass_rate": 3, "solution_length": 200}'
    )
    assert render_meta_json([], 0, 1, notion_word="notions").startswith('{"notions": []')


@pytest.mark.parametrize("style", ["paper", "compact"])
def test_every_built_in_prompt_states_the_problem_keys_and_ranges(style):
    for reasoning in (True, False):
        text = build_meta_prompt(
            "Compute 2 + 3.", max_response_tokens=500, min_length=20, style=style, reasoning=reasoning
        )
        assert "Compute 2 + 3." in text
        for key in ('"math_notion"', '"pass_rate"', '"solution_length"', "8", "20", "500"):
            assert key in text
        # JSON-only prompts do not mention the <meta> block at all.
        assert ("<meta>" in text) is reasoning


def test_compact_prompt_is_under_half_the_paper_prompt(tiny):
    from masa.prompts import encode_user_message

    _, tokenizer = tiny
    problem = "What is 49 + 6?"

    def tokens(**kw):
        return len(encode_user_message(tokenizer, build_meta_prompt(problem, max_response_tokens=64, **kw)))

    paper, compact, json_only = tokens(), tokens(style="compact"), tokens(style="compact", reasoning=False)
    assert json_only < compact < paper / 1.8


def test_compact_schema_is_not_a_parseable_answer():
    text = build_meta_prompt("x", max_response_tokens=64, style="compact", reasoning=False)
    assert not parse_meta_prediction(text).any_parsed


def test_unknown_style_is_rejected():
    with pytest.raises(ValueError, match="compact"):
        build_meta_prompt("x", max_response_tokens=64, style="short")


def test_terse_prompt_drops_the_default_system_turn_and_is_under_two_thirds_of_compact(tiny):
    from masa.prompts import encode_meta_prompt

    _, tokenizer = tiny
    problem = "What is 49 + 6?"

    def ids(style):
        text = build_meta_prompt(problem, max_response_tokens=64, style=style, reasoning=False, notions=False)
        return encode_meta_prompt(tokenizer, text, style)

    compact, terse = ids("compact"), ids("terse")
    assert "SmolLM" in tokenizer.decode(compact) and "SmolLM" not in tokenizer.decode(terse)
    assert problem in tokenizer.decode(terse)
    assert len(terse) < 0.7 * len(compact)


@pytest.mark.parametrize("reasoning", [True, False])
@pytest.mark.parametrize("notions", [True, False])
def test_terse_prompt_states_the_fields_and_ranges_and_cannot_be_copied(reasoning, notions):
    text = build_meta_prompt(
        "Compute 2 + 3.",
        max_response_tokens=500,
        min_length=20,
        style="terse",
        reasoning=reasoning,
        notions=notions,
    )
    assert text.startswith("Compute 2 + 3.\n")
    for field in ('"pass_rate": <0-8', '"solution_length": <20-500', "8 tries"):
        assert field in text
    assert ('"math_notion"' in text) is notions
    assert ("<meta>" in text) is reasoning
    assert not parse_meta_prediction(text).any_parsed
