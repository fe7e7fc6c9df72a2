import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from masa.meta.parse import MAX_SCAN_CHARS, MAX_SOLUTION_LENGTH, MetaPrediction, parse_meta_prediction
from masa.meta.prompt import render_meta_json

CANONICAL = '{"math_notion": ["modular arithmetic"], "pass_rate": 5, "solution_length": 300}'


def test_canonical_after_meta():
    pred = parse_meta_prediction(f"<meta>easy enough</meta>\n{CANONICAL}")
    assert pred == MetaPrediction(["modular arithmetic"], 5, 300, {})
    assert pred.parsed_fields == ("notions", "pass_rate", "solution_length")
    assert pred.any_parsed
    assert pred.pass_rate_fraction(8) == 0.625


def test_keys_in_any_order_and_dict_not_starting_with_math_notion():
    pred = parse_meta_prediction('{"solution_length": 40, "pass_rate": 2, "math_notion": ["a"]}')
    assert (pred.notions, pred.pass_rate, pred.solution_length) == (["a"], 2, 40)


def test_fake_json_inside_reasoning_is_ignored():
    text = '<meta>maybe {"pass_rate": 0, "solution_length": 9} or {"a": {"b": 1}}</meta>' + CANONICAL
    assert parse_meta_prediction(text).pass_rate == 5


def test_reasoning_that_mentions_the_closing_tag():
    text = '<meta>I will write </meta> and then {"pass_rate": 1}.</meta>\n' + CANONICAL
    assert parse_meta_prediction(text).pass_rate == 5


def test_json_only_inside_meta_is_not_read_when_tag_closes():
    pred = parse_meta_prediction(f"<meta>{CANONICAL}</meta> no answer")
    assert not pred.any_parsed
    assert pred.reasons["pass_rate"] == "no JSON object with a recognised key"


def test_without_closing_tag_the_last_object_wins():
    text = '{"pass_rate": 1} then {"pass_rate": 7} and {"other": 3}'
    assert parse_meta_prediction(text).pass_rate == 7


def test_enclosing_object_beats_dict_quoted_in_its_strings():
    text = '{"math_notion": ["{\'pass_rate\': 1}"], "pass_rate": 6}'
    pred = parse_meta_prediction(text)
    assert (pred.pass_rate, pred.notions) == (6, ["{'pass_rate': 1}"])


def test_nested_braces_in_strings_and_code_fence():
    body = '{"math_notion": ["set {1, 2}", "}{"], "pass_rate": 3, "solution_length": 99}'
    text = f"<meta>x</meta>\n```json\n{body}\n```"
    pred = parse_meta_prediction(text)
    assert (pred.notions, pred.pass_rate, pred.solution_length) == (["set {1, 2}", "}{"], 3, 99)


def test_python_style_dict_and_bare_keys():
    assert parse_meta_prediction("{'math notion': ['a'], 'pass rate': 4, 'length': 7}").solution_length == 7
    pred = parse_meta_prediction("{passRate: 5/8, solutionLength: 120, notions: ['x'], done: true, z: null}")
    assert (pred.pass_rate, pred.solution_length, pred.notions) == (5, 120, ["x"])


def test_trailing_comma_is_tolerated():
    assert parse_meta_prediction('{"pass_rate": 2, "solution_length": 10,}').pass_rate == 2


@pytest.mark.parametrize("key", ["pass_rate", "pass rate", "passRate", "PASS-RATE", "Pass_Rate", "pass"])
def test_pass_rate_key_spellings(key):
    assert parse_meta_prediction(f'{{"{key}": 3}}').pass_rate == 3


@pytest.mark.parametrize("key", ["solution_length", "solution length", "solutionLength", "length", "tokens"])
def test_length_key_spellings(key):
    assert parse_meta_prediction(f'{{"{key}": 321}}').solution_length == 321


@pytest.mark.parametrize(
    "key", ["math_notion", "math notions", "mathNotion", "notions", "notion", "concepts", "code_notion"]
)
def test_notion_key_spellings(key):
    assert parse_meta_prediction(f'{{"{key}": ["a"]}}').notions == ["a"]


def test_most_specific_spelling_wins_within_one_object():
    assert parse_meta_prediction('{"length": 5, "solution_length": 9}').solution_length == 9


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5),
        ('"5"', 5),
        ("5.0", 5),
        ('"5.0"', 5),
        ("1.0", 1),  # integer-valued: a count, not a fraction
        ("0", 0),
        ("8", 8),
        ("0.75", 6),  # non-integer in [0, 1]: a fraction of the scale
        ("0.3", 2),  # 2.4 rounds to 2
        ("0.0625", 1),  # 0.5 rounds half up
        ("5.5", 6),  # non-integer above 1: rounded half up
        ('"5/8"', 5),
        ('"5 / 8"', 5),
        ('"5 out of 8"', 5),
        ('"1/2"', 4),
        ('"10/16"', 5),
        ('"75%"', 6),
        ("9", None),
        ("-1", None),
        ("-0.4", None),
        ('"9/8"', None),
        ('"1/0"', None),
        ('"150%"', None),
        ('"five"', None),
        ("true", None),
        ("null", None),
        ("[5]", None),
        ("NaN", None),
        ("1e999", None),
    ],
)
def test_pass_rate_values(value, expected):
    pred = parse_meta_prediction(f'{{"pass_rate": {value}}}')
    assert pred.pass_rate == expected
    assert ("pass_rate" in pred.reasons) == (expected is None)


def test_pass_rate_scale_is_respected():
    assert parse_meta_prediction('{"pass_rate": 12}', pass_rate_scale=16).pass_rate == 12
    assert parse_meta_prediction('{"pass_rate": "3/4"}', pass_rate_scale=16).pass_rate == 12
    assert parse_meta_prediction('{"pass_rate": 12}').pass_rate is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("300", 300),
        ("300.0", 300),
        ("299.5", 300),
        ('"300"', 300),
        ('"1,024 tokens"', 1024),
        ('"~500"', 500),
        ("0", None),
        ("-5", None),
        ("0.4", None),
        ('"long"', None),
        ("false", None),
        ("Infinity", None),
        ("1000000", MAX_SOLUTION_LENGTH),
        ("1000001", MAX_SOLUTION_LENGTH),
        ("1e308", MAX_SOLUTION_LENGTH),
        ('"12,000,000 tokens"', MAX_SOLUTION_LENGTH),
    ],
)
def test_solution_length_values(value, expected):
    assert parse_meta_prediction(f'{{"solution_length": {value}}}').solution_length == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('["a", " b ", ""]', ["a", "b"]),
        ('"a, b; c"', ["a", "b", "c"]),
        ('""', []),
        ("[]", []),
        ("[1, 2.5, true, null]", ["1", "2.5"]),
        ("[null, {}]", None),
        ("7", None),
        ("null", None),
    ],
)
def test_notion_values(value, expected):
    assert parse_meta_prediction(f'{{"math_notion": {value}}}').notions == expected


def test_reasons_explain_missing_fields():
    pred = parse_meta_prediction('{"pass_rate": 11}')
    assert pred.pass_rate is None
    assert pred.reasons == {
        "notions": "key missing",
        "pass_rate": "out of range 0..8: 11",
        "solution_length": "key missing",
    }
    assert not pred.any_parsed
    assert pred.pass_rate_fraction() is None


def test_object_without_recognised_key_is_skipped():
    pred = parse_meta_prediction('{"pass_rate": 2} {"answer": 5}')
    assert pred.pass_rate == 2


def test_only_the_tail_of_a_huge_text_is_scanned():
    head = '{"pass_rate": 1}' + "x" * MAX_SCAN_CHARS
    assert parse_meta_prediction(head).pass_rate is None
    assert parse_meta_prediction("{" * 100_000 + CANONICAL).pass_rate == 5


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "}",
        '{"',
        "{'",
        "{\\",
        "{" * 5000,
        "[" * 5000,
        '{"a": ' + "[" * 3000 + "}",
        "\x00{\x00}",
        "{1: 2}",
    ],
)
def test_pathological_inputs(text):
    assert isinstance(parse_meta_prediction(text), MetaPrediction)


def test_huge_numbers_and_deep_nesting():
    big = "9" * 4300  # the longest int Python will convert from text
    assert parse_meta_prediction(f'{{"pass_rate": {big}}}').reasons["pass_rate"].startswith("out of range")
    assert parse_meta_prediction(f'{{"solution_length": {big}}}').solution_length == MAX_SOLUTION_LENGTH
    assert parse_meta_prediction(f'{{"notions": [{big}]}}').notions == [big]
    for depth in (500, 990, 5000):
        nested = "[" * depth + "]" * depth
        assert not parse_meta_prediction(f'{{"pass_rate": {nested}}}').any_parsed


FRAGMENTS = st.sampled_from(
    [
        "{", "}", "[", "]", '"', "'", ":", ",", "\\", " ", "\n", "<meta>", "</meta>", "```json",
        '"pass_rate"', "pass rate", '"solution_length"', "'math_notion'", "notions", "length",
        "5", "-3", "0.5", "1e999", "NaN", '"5/8"', "3/4", "true", "null", "%", "tokens",
    ]
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_never_raises_on_text(text):
    assert isinstance(parse_meta_prediction(text), MetaPrediction)


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENTS | st.text(max_size=5), max_size=60).map("".join), st.integers(1, 16))
def test_never_raises_on_json_like_text(text, scale):
    pred = parse_meta_prediction(text, pass_rate_scale=scale)
    assert pred.pass_rate is None or 0 <= pred.pass_rate <= scale
    assert pred.solution_length is None or 1 <= pred.solution_length <= MAX_SOLUTION_LENGTH
    assert set(pred.reasons) == {"notions", "pass_rate", "solution_length"} - set(pred.parsed_fields)


NOTION = st.text(min_size=1, max_size=20).filter(lambda s: s == s.strip() and s != "")
CLOSE_TAG = re.compile(r"</\s*meta\s*>", re.IGNORECASE)
REASONING = (
    st.lists(
        st.text(max_size=10)
        | st.sampled_from(
            ['{"pass_rate": 0}', "{'solution_length': 1}", "{", "}", '"', "'", "{a: {b}}", "\\"]
        ),
        max_size=12,
    )
    .map("".join)
    .filter(lambda s: not CLOSE_TAG.search(s))
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(NOTION, max_size=5),
    st.integers(1, 16).flatmap(lambda b: st.tuples(st.just(b), st.integers(0, b))),
    st.integers(1, 10**6),
    REASONING,
)
def test_round_trips_rendered_predictions(notions, scale_and_rate, length, reasoning):
    scale, rate = scale_and_rate
    rendered = render_meta_json(notions, rate, length)
    for text in (
        rendered,
        f"<meta>{reasoning}</meta>\n{rendered}",
        f"<meta>{reasoning}</meta>```json\n{rendered}\n```",
    ):
        pred = parse_meta_prediction(text, pass_rate_scale=scale)
        assert (pred.notions, pred.pass_rate, pred.solution_length) == (notions, rate, length)
        assert pred.reasons == {}
