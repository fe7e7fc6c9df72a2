"""Reads a meta rollout's prediction (notions, pass rate, solution length) out of free model text.

The parser is total: model output is arbitrary text, and a crash here would kill a training step, so every
failure becomes a missing field with a reason. It is deliberately tolerant of the ways small models bend
the format (key spellings, single quotes, numbers as strings, fractions), because the authors' parser,
which only took an object starting with ``math_notion`` and without nested braces, threw away most
predictions.

Decisions where the spec is silent:
- Only text after the first ``</meta>`` is searched when the tag is present (fake JSON in the reasoning is
  ignored); otherwise the whole text is. Among candidate objects the one ending last wins, so an enclosing
  object beats a dict quoted inside one of its strings.
- ``pass_rate`` is in the prompt's 0..B units. A bare integer (``5``, ``5.0``, ``"5"``) is a count; a
  non-integer in [0, 1] (``0.75``) is a fraction and is scaled to B; another non-integer (``5.5``) is
  rounded half up. ``"a/b"`` is a count when b == B, else the fraction a/b scaled to B; ``"75%"`` is a
  fraction. Negative values, and values that round outside 0..B, are rejected.
- ``solution_length`` is rounded half up and must be a positive integer; ``"1,024 tokens"`` is accepted.
  Values above ``MAX_SOLUTION_LENGTH`` (10^6 tokens, beyond any generation budget) are clamped to it, so
  that ``1e308`` or a 4,000-digit integer stays an ordinary number that rewards and cutoffs can use (as a
  float it would overflow).
- ``notions`` may be a list or a comma/semicolon/newline-separated string; items are stripped and empty
  ones dropped. An empty list parses as ``[]`` (stated, scores 0), unlike a missing key (``None``).
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from typing import TypeVar

# Bounds that keep the parser fast on adversarial text: predictions sit at the end of an output.
MAX_SCAN_CHARS = 20_000
MAX_OBJECT_CHARS = 8_000
MAX_CANDIDATES = 256
MAX_DEPTH = 32
MAX_SOLUTION_LENGTH = 1_000_000

T = TypeVar("T")

NOTIONS, PASS_RATE, SOLUTION_LENGTH = "notions", "pass_rate", "solution_length"
FIELDS = (NOTIONS, PASS_RATE, SOLUTION_LENGTH)

# Normalised key spellings (lower case, alphanumerics only), most specific first: when one object has
# several spellings of a field, the earliest in its list wins.
_KEY_ALIASES = {
    NOTIONS: ("mathnotion", "mathnotions", "notion", "notions", "mathconcepts", "concepts", "concept"),
    PASS_RATE: ("passrate", "passrates", "predictedpassrate", "expectedpassrate", "pass"),
    SOLUTION_LENGTH: (
        "solutionlength",
        "solutionlen",
        "predictedlength",
        "expectedlength",
        "solutiontokens",
        "length",
        "tokens",
    ),
}

_CLOSE_TAG = re.compile(r"</\s*meta\s*>", re.IGNORECASE)
_SCANNER = re.compile(r"[{}\"'\\]")
_KEY_HINT = re.compile(r"pass|len|notion|concept|token", re.IGNORECASE)
_STRING_LITERAL = re.compile(r"(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')", re.DOTALL)
_BARE_KEY = re.compile(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_ \-]*?)(\s*:)")
_BARE_FRACTION = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?\s*/\s*\d+(?:\.\d+)?)(?![\w.])")
_JSON_WORDS = re.compile(r"\b(true|false|null)\b")
_PY_WORDS = {"true": "True", "false": "False", "null": "None"}
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_RATIO = re.compile(r"(\S+?)\s*(?:/|out of|of)\s*(\S+)")
_THOUSANDS = re.compile(r"(?<=\d)[,_](?=\d{3})")
_NOTION_SEPARATORS = re.compile(r"[,;\n]")
_MAX_NUMBER_CHARS = 40


@dataclass(frozen=True)
class MetaPrediction:
    """One meta rollout's prediction; a field is None when absent or unusable, with the why in ``reasons``."""

    notions: list[str] | None = None
    pass_rate: int | None = None
    solution_length: int | None = None
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def parsed_fields(self) -> tuple[str, ...]:
        return tuple(name for name in FIELDS if getattr(self, name) is not None)

    @property
    def any_parsed(self) -> bool:
        return bool(self.parsed_fields)

    def pass_rate_fraction(self, scale: int = 8) -> float | None:
        """The predicted pass rate as a probability; ``scale`` must be the one the text was parsed with."""
        return None if self.pass_rate is None else self.pass_rate / scale


def parse_meta_prediction(text: str, *, pass_rate_scale: int = 8) -> MetaPrediction:
    """Parse the prediction of a meta rollout; never raises on any string."""
    found = _last_prediction_object(_search_region(text))
    if found is None:
        reason = "no JSON object with a recognised key"
        return MetaPrediction(reasons=dict.fromkeys(FIELDS, reason))
    reasons: dict[str, str] = {}
    return MetaPrediction(
        notions=_field(found, NOTIONS, _notions, reasons),
        pass_rate=_field(found, PASS_RATE, partial(_pass_rate, scale=pass_rate_scale), reasons),
        solution_length=_field(found, SOLUTION_LENGTH, _solution_length, reasons),
        reasons=reasons,
    )


def _field(
    found: dict[str, object],
    name: str,
    convert: Callable[[object], tuple[T | None, str]],
    reasons: dict[str, str],
) -> T | None:
    """Convert one recognised field, recording in ``reasons`` why it is absent."""
    if name not in found:
        reasons[name] = "key missing"
        return None
    value, why = convert(found[name])
    if value is None:
        reasons[name] = why
    return value


def _search_region(text: str) -> str:
    tail = text[-MAX_SCAN_CHARS:]
    close = _CLOSE_TAG.search(tail)
    return tail if close is None else tail[close.end() :]


def _last_prediction_object(region: str) -> dict[str, object] | None:
    """The recognised fields of the last-ending object that has at least one recognised key."""
    starts = [m.start() for m in re.finditer(r"\{", region)][-MAX_CANDIDATES:]
    best: dict[str, object] | None = None
    best_end = -1
    for start in starts:
        end = _object_end(region, start)
        if end is None or end <= best_end:
            continue
        span = region[start:end]
        if not _KEY_HINT.search(span):
            continue
        decoded = _decode(span)
        recognised = _recognised_fields(decoded) if isinstance(decoded, dict) else {}
        if recognised:
            best, best_end = recognised, end
    return best


def _object_end(text: str, start: int) -> int | None:
    """End (exclusive) of the brace-balanced object opening at ``start``; braces in quotes do not count."""
    limit = min(len(text), start + MAX_OBJECT_CHARS)
    depth = 0
    quote: str | None = None
    pos = start
    while (match := _SCANNER.search(text, pos, limit)) is not None:
        char, pos = match.group(), match.end()
        if quote is not None:
            if char == "\\":
                pos += 1
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "{":
            depth += 1
            if depth > MAX_DEPTH:
                return None
        elif char == "}":
            depth -= 1
            if depth == 0:
                return pos
    return None


def _decode(span: str) -> object:
    try:
        return json.loads(span, strict=False)
    except Exception:  # ValueError, RecursionError: not JSON, try the Python-literal reading
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in model text
            return ast.literal_eval(_pythonise(span))
    except Exception:  # literal_eval raises many types (SyntaxError, ValueError, TypeError, MemoryError)
        return None


def _pythonise(span: str) -> str:
    """Make near-JSON readable by ``ast.literal_eval``: bare keys quoted, ``5/8`` quoted, JSON literals."""
    pieces = _STRING_LITERAL.split(span)
    for i in range(0, len(pieces), 2):  # even pieces lie outside string literals
        outside = _BARE_KEY.sub(lambda m: f'{m[1]}"{m[2]}"{m[3]}', pieces[i])
        outside = _BARE_FRACTION.sub(lambda m: f'"{m[1]}"', outside)
        pieces[i] = _JSON_WORDS.sub(lambda m: _PY_WORDS[m[1]], outside)
    return "".join(pieces)


def _recognised_fields(obj: dict[object, object]) -> dict[str, object]:
    chosen: dict[str, tuple[int, object]] = {}
    for key, value in obj.items():
        normalised = re.sub(r"[^a-z0-9]", "", str(key).lower())
        for name, aliases in _KEY_ALIASES.items():
            if normalised in aliases:
                rank = aliases.index(normalised)
            elif name == NOTIONS and normalised.endswith(("notion", "notions")):
                rank = len(aliases)  # a domain's own word, e.g. code_notion
            else:
                continue
            if name not in chosen or rank < chosen[name][0]:
                chosen[name] = (rank, value)
    return {name: value for name, (_, value) in chosen.items()}


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def _exact(value: object) -> Fraction | None:
    """A plain number (int, finite float, or decimal string) as an exact fraction."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        if len(text) <= _MAX_NUMBER_CHARS and _DECIMAL.fullmatch(text):
            return Fraction(text)
    return None


def _pass_rate(raw: object, scale: int) -> tuple[int | None, str]:
    count = _pass_rate_count(raw, scale)
    if count is None:
        return None, f"not a pass rate: {_preview(raw)}"
    if not 0 <= count <= scale:
        return None, f"out of range 0..{scale}: {_preview(raw)}"
    return count, ""


def _pass_rate_count(raw: object, scale: int) -> int | None:
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text.endswith("%"):
            percent = _exact(text[:-1])
            return None if percent is None else _fraction_to_count(percent / 100, scale)
        ratio = _RATIO.fullmatch(text)
        if ratio is not None:
            numerator, denominator = _exact(ratio[1]), _exact(ratio[2])
            if numerator is None or not denominator or numerator < 0:
                return None
            if denominator == scale:
                return _round_half_up(numerator)
            return _fraction_to_count(numerator / denominator, scale)
    value = _exact(raw)
    if value is None or value < 0:
        return None
    if value.denominator == 1:
        return int(value)
    return _fraction_to_count(value, scale) if value <= 1 else _round_half_up(value)


def _fraction_to_count(fraction: Fraction, scale: int) -> int | None:
    return _round_half_up(fraction * scale) if 0 <= fraction <= 1 else None


def _solution_length(raw: object) -> tuple[int | None, str]:
    value = _exact(raw)
    if value is None and isinstance(raw, str):
        text = raw.strip().lower().removesuffix("tokens").removesuffix("token")
        value = _exact(_THOUSANDS.sub("", text).strip().lstrip("~"))
    if value is None:
        return None, f"not a token count: {_preview(raw)}"
    length = _round_half_up(min(value, MAX_SOLUTION_LENGTH))
    if length < 1:
        return None, f"not positive: {_preview(raw)}"
    return length, ""


def _preview(raw: object) -> str:
    # Containers are named, not repr'd: they can nest deeply enough to make repr itself recurse too far.
    return repr(raw)[:60] if isinstance(raw, str | int | float | None) else type(raw).__name__


def _notions(raw: object) -> tuple[list[str] | None, str]:
    if isinstance(raw, str):
        return [part.strip() for part in _NOTION_SEPARATORS.split(raw) if part.strip()], ""
    if not isinstance(raw, list | tuple):
        return None, f"not a list of strings: {_preview(raw)}"
    items = [
        str(item).strip()
        for item in raw
        if isinstance(item, str) or (isinstance(item, int | float) and not isinstance(item, bool))
    ]
    kept = [item for item in items if item]
    if raw and not kept:
        return None, f"no usable items: {_preview(raw)}"
    return kept, ""


def field_of_key(key: str) -> str | None:
    """Which prediction field a JSON key names, in any spelling the parser accepts; None for none."""
    return next(iter(_recognised_fields({key: None})), None)
