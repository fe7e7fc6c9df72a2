"""The meta prompt: asks the policy to predict its own behaviour on a problem before solving it."""

from __future__ import annotations

import json
import re

DEFAULT_MIN_LENGTH = 128

# Placeholders are substituted in a single regex pass (see ``build_meta_prompt``), so the literal JSON braces
# of a custom template need no escaping and braces inside the problem text are never re-interpreted.
META_PROMPT_TEMPLATE = """\
Do not solve the problem below yet. First predict how your own solution will go.

Problem:
{problem}

Think briefly inside <meta> and </meta>. After </meta>, write one JSON object with these keys:
- "{notion_key}": list of the concepts your solution will use (leave out concepts the problem already names)
- "pass_rate": integer from 0 to {scale}: how many of {scale} attempts you expect to get right
- "solution_length": integer from {min_length} to {max_length}: how many tokens your solution will take

Output format example:
<meta>Short reasoning about the problem.</meta>
{example}"""

_PLACEHOLDER = re.compile(r"\{(problem|notion_key|scale|min_length|max_length|example)\}")


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
    template: str | None = None,
    notions: bool = True,
) -> str:
    """The user-message text of the meta prompt for one bare problem statement.

    ``notion_word`` names the notion key (e.g. ``code_notion`` for another domain); the parser accepts any
    key ending in "notion(s)". A custom ``template`` may use the placeholders {problem}, {notion_key},
    {scale}, {min_length}, {max_length} and {example}. ``notions=False`` (a task without notions) drops
    the template's lines naming {notion_key} and the key from the example.
    """
    if pass_rate_scale < 1:
        raise ValueError(f"pass_rate_scale must be >= 1, got {pass_rate_scale}")
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
    }
    chosen = META_PROMPT_TEMPLATE if template is None else template
    if not notions:
        chosen = "\n".join(line for line in chosen.split("\n") if "{notion_key}" not in line)
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], chosen)


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
