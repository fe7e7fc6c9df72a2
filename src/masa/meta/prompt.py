"""The meta prompt: asks the policy to predict its own behaviour on a problem before solving it."""

from __future__ import annotations

import json
import re

from masa.meta.parse import FIELDS, MetaPrediction, parse_meta_prediction

DEFAULT_MIN_LENGTH = 128

# Placeholders are substituted in a single regex pass (see ``build_meta_prompt``), so the literal JSON braces
# of a custom template need no escaping and braces inside the problem text are never re-interpreted.
_PAPER_INTRO = """\
Do not solve the problem below yet. First predict how your own solution will go.

Problem:
{problem}

"""
_PAPER_KEYS = """\
- "{notion_key}": list of the concepts your solution will use (leave out concepts the problem already names)
- "pass_rate": integer from 0 to {scale}: how many of {scale} attempts you expect to get right
- "solution_length": integer from {min_length} to {max_length}: how many tokens your solution will take

Output format example:
"""
META_PROMPT_TEMPLATE = (
    _PAPER_INTRO
    + "Think briefly inside <meta> and </meta>. After </meta>, write one JSON object with these keys:\n"
    + _PAPER_KEYS
    + "<meta>Short reasoning about the problem.</meta>\n{example}"
)
"""The paper's prompt: reasoning in a <meta> block, then the JSON, with the keys explained one by one."""

# The compact prompts state the keys once, as a schema whose values say what to put there: about a third
# of the paper prompt's tokens, and nothing in it is a valid answer that could be copied verbatim.
_COMPACT_INTRO = "Predict your own solution to this problem; do not solve it.\nProblem: {problem}\n"
# The terse prompt is the compact one cut to what a short-answer task needs: the problem, one instruction and
# a schema of bare ranges. It is also asked without the chat template's default system turn (see
# ``SYSTEM_TURN``): on the embedded model the two cut a compact JSON-only prompt from 97 tokens to 62, and the
# meta prompts are most of what a MASA step's update runs beyond GRPO's (benchmarks/README.md).
_TERSE_INTRO = "{problem}\nDo not solve it. "
TEMPLATES = {
    ("paper", True): META_PROMPT_TEMPLATE,
    ("paper", False): _PAPER_INTRO
    + "Write only one JSON object, with no other text, with these keys:\n"
    + _PAPER_KEYS
    + "{example}",
    ("compact", True): _COMPACT_INTRO + "Think briefly in <meta></meta>, then write this JSON: {schema}",
    ("compact", False): _COMPACT_INTRO + "Reply with this JSON only: {schema}",
    ("terse", True): _TERSE_INTRO
    + "Think briefly in <meta></meta>, then predict your {scale} tries as JSON: {schema}",
    ("terse", False): _TERSE_INTRO + "Predict your {scale} tries as JSON only: {schema}",
}
"""Built-in templates by (``meta.prompt``, ``meta.reasoning``)."""
PROMPT_STYLES = ("paper", "compact", "terse")
SYSTEM_TURN = {"paper": True, "compact": True, "terse": False}
"""Whether a style's prompt keeps the chat template's default system turn (``masa.prompts.encode_meta_prompt``)."""

_PLACEHOLDER = re.compile(r"\{(problem|notion_key|scale|min_length|max_length|example|schema)\}")


def length_bounds(min_length: int, max_response_tokens: int) -> tuple[int, int]:
    """The [low, high] range of a predicted solution length, in tokens.

    The upper bound is the *response* limit (the authors' prompt wrongly used the prompt limit). When the
    response limit is below ``min_length`` (tiny presets allow under 128 tokens) the lower bound drops to 1
    rather than collapsing the range to a single value that would carry no information.
    """
    if max_response_tokens < 1 or min_length < 1:
        raise ValueError(f"lengths must be positive, got {min_length=} {max_response_tokens=}")
    return (min_length if min_length <= max_response_tokens else 1), max_response_tokens


def render_meta_json(
    notions: list[str] | None, pass_rate: int, solution_length: int, *, notion_word: str = "math_notion"
) -> str:
    """The canonical one-line JSON of a meta prediction, in the key order the prompt shows (no notion key
    for ``notions=None``: a task without notions)."""
    fields = {} if notions is None else {notion_word: list(notions)}
    return json.dumps(
        {**fields, "pass_rate": pass_rate, "solution_length": solution_length}, ensure_ascii=False
    )


def build_meta_prompt(
    problem_text: str,
    *,
    pass_rate_scale: int = 8,
    max_response_tokens: int,
    min_length: int = DEFAULT_MIN_LENGTH,
    notion_word: str = "math_notion",
    style: str = "paper",
    reasoning: bool = True,
    template: str | None = None,
    notions: bool = True,
) -> str:
    """The user-message text of the meta prompt for one bare problem statement.

    ``style`` is ``paper`` (the paper's wording, keys explained one by one), ``compact`` (a one-line
    schema) or ``terse`` (the problem, one instruction and a schema of bare ranges; encode it without the
    default system turn); ``reasoning=False`` asks for the JSON alone, without a <meta>
    reasoning block. ``notion_word`` names the notion key (e.g. ``code_notion`` for another domain); the
    parser accepts any key ending in "notion(s)". A custom ``template`` replaces the built-in one and may use
    the placeholders {problem}, {notion_key}, {scale}, {min_length}, {max_length}, {example} and {schema}.
    ``notions=False`` (a task without notions) drops the template's lines naming {notion_key} and the key from
    the example and schema. ``masa.prompts.encode_meta_prompt`` encodes the text as its style asks.
    """
    if pass_rate_scale < 1:
        raise ValueError(f"pass_rate_scale must be >= 1, got {pass_rate_scale}")
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown meta prompt style {style!r}; allowed: {', '.join(PROMPT_STYLES)}")
    low, high = length_bounds(min_length, max_response_tokens)
    # The example's numbers sit mid-range so they do not anchor the model towards an extreme.
    example = render_meta_json(
        EXAMPLE_NOTIONS if notions else None, pass_rate_scale // 2, (low + high) // 2, notion_word=notion_word
    )
    values = {
        "problem": problem_text.strip(),
        "notion_key": notion_word,
        "scale": str(pass_rate_scale),
        "min_length": str(low),
        "max_length": str(high),
        "example": example,
        "schema": _schema(style, notion_word if notions else None, pass_rate_scale, low, high),
    }
    chosen = TEMPLATES[style, reasoning] if template is None else template
    if not notions:
        chosen = "\n".join(line for line in chosen.split("\n") if "{notion_key}" not in line)
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], chosen)


def _schema(style: str, notion_word: str | None, scale: int, low: int, high: int) -> str:
    """The one-line JSON schema of the compact and terse prompts: each value says what goes there."""
    notion = "" if notion_word is None else f'"{notion_word}": [concepts used], '
    if style == "terse":
        return f'{{{notion}"pass_rate": <0-{scale} right>, "solution_length": <{low}-{high} tokens>}}'
    return (
        f'{{{notion}"pass_rate": <0-{scale}: right answers in {scale} tries>, '
        f'"solution_length": <{low}-{high}: tokens in your solution>}}'
    )


EXAMPLE_NOTIONS = ["concept one", "concept two"]
"""The notions of the format example ``build_meta_prompt`` shows."""


def is_example_copy(
    notions: list[str] | None,
    pass_rate: int | None,
    solution_length: int | None,
    *,
    pass_rate_scale: int,
    max_response_tokens: int,
    min_length: int = DEFAULT_MIN_LENGTH,
) -> bool:
    """Whether a parsed prediction repeats the prompt's format example: its example notions, or (for a
    task without notions) both of its numbers. Such a copy says nothing about the problem and is scored as
    unparsed, so copying the example cannot be a stable answer (the embedded model's first habit)."""
    low, high = length_bounds(min_length, max_response_tokens)
    if notions:
        return [n.strip().lower() for n in notions] == EXAMPLE_NOTIONS
    return pass_rate == pass_rate_scale // 2 and solution_length == (low + high) // 2


def parse_meta_answer(
    text: str, *, pass_rate_scale: int, max_response_tokens: int, min_length: int = DEFAULT_MIN_LENGTH
) -> tuple[MetaPrediction, bool]:
    """A meta answer as training and evaluation score it: parsed, with a copy of the prompt's format
    example unparsed. Returns the prediction and whether it was such a copy."""
    prediction = parse_meta_prediction(text, pass_rate_scale=pass_rate_scale)
    copied = is_example_copy(
        prediction.notions,
        prediction.pass_rate,
        prediction.solution_length,
        pass_rate_scale=pass_rate_scale,
        max_response_tokens=max_response_tokens,
        min_length=min_length,
    )
    if copied:
        return MetaPrediction(reasons=dict.fromkeys(FIELDS, "copied the prompt example")), True
    return prediction, False
