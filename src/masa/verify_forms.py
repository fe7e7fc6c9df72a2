"""In-process verdicts for the common answer forms, so that most checks never wait on math-verify.

``settle`` answers True only when the two strings denote the same value for a reason that holds however a
LaTeX parser reads them:
- the same text up to LaTeX-insignificant differences (math-mode spaces, ``\\left``/``\\right``,
  ``\\dfrac``/``\\tfrac``), e.g. ``(1, 2]`` and ``(1,2]``;
- equal numbers: integers, decimals, ``a/b``, ``\\frac{a}{b}``, thousands separators, and a percentage
  against either its number or its fraction (``50\\%`` equals ``50`` and ``0.5``, as in math-verify);
- tuples, intervals or sets with the same brackets whose components are pairwise settled equal;
- sums of the same terms in another order (``x^2+1`` and ``1+x^2``), only where every term is a product of
  numbers, letters, ``\\pi``, ``\\sqrt``, ``\\frac`` and bracketed groups, so every top-level ``+``/``-`` is
  certainly an addition.
It answers False only for two distinct integers, and None (math-verify decides) otherwise: distinct
decimals may still agree after math-verify's rounding (``1/3`` and ``0.333333``). Nothing here evaluates
text: numbers are read with ``Fraction`` and everything else is compared as normalised strings.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["settle"]

# Text-mode content keeps its spaces (``\text{a b}`` is not ``\text{ab}``); such answers are compared as is.
_TEXT_MODE = re.compile(r"\\(?:text|mbox|hbox)")
_SPACING = re.compile(r"\\[,;:! ]|~")
_COMMAND_BEFORE_LETTER = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])")
_DELIMITER_SIZING = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_FRAC_VARIANTS = re.compile(r"\\[dt]frac(?![A-Za-z])")
_FRAC_DIGITS = re.compile(r"\\frac([0-9])([0-9])")
_MAX_NUMBER_CHARS = 100
_NUMBER = re.compile(
    r"(?P<sign>[+-]?)(?:"
    r"(?P<decimal>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"|(?P<num>\d+)/(?P<den>\d+)"
    r"|\\frac\{(?P<fnum>[+-]?\d+)\}\{(?P<fden>[+-]?\d+)\}"
    r")(?P<percent>\\?%)?",
    re.ASCII,
)
# ASCII only: ``str.isdigit`` is true for ``²``, which no number reader takes as a digit.
_DIGITS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ALPHANUMERIC = _LETTERS | frozenset("0123456789")
_BRACKETS = {"(": ")", "[": "]", "\\{": "\\}"}
_OPENERS = {"{": "}", "(": ")", "[": "]"}
_PRODUCT_OPERATORS = ("\\cdot", "\\times", "*")


def settle(answer: str, reference: str) -> bool | None:
    """True or False where the verdict is certain without math-verify, None where math-verify must decide."""
    a, r = _normalise(answer), _normalise(reference)
    if not a or not r:
        return None
    if a == r:
        return True
    numbers = _compare_numbers(a, r)
    if numbers is not None:
        return numbers
    if _same_components(a, r) or _same_terms(a, r):
        return True
    return None


def is_number(answer: str) -> bool:
    """Whether ``answer`` is a plain number (integer, decimal, fraction or percentage), not an expression."""
    return _number(_normalise(answer)) is not None


def _normalise(text: str) -> str:
    text = text.strip()
    if _TEXT_MODE.search(text):
        return text
    text = _DELIMITER_SIZING.sub("", _FRAC_VARIANTS.sub(r"\\frac", _SPACING.sub(" ", text)))
    # In math mode spaces only end a command name: ``\pi r`` keeps a boundary, ``\pi{}r``, not ``\pir``.
    text = re.sub(r"\s+", "", _COMMAND_BEFORE_LETTER.sub(r"\1{}", text))
    return _FRAC_DIGITS.sub(r"\\frac{\1}{\2}", text)


def _number(text: str) -> tuple[Fraction, bool] | None:
    """The value of a plain number and whether it was a percentage."""
    match = _NUMBER.fullmatch(text) if len(text) <= _MAX_NUMBER_CHARS else None
    if match is None:
        return None
    if match["decimal"] is not None:
        value = Fraction(match["decimal"].replace(",", ""))
    else:
        numerator, denominator = (
            (match["num"], match["den"]) if match["num"] else (match["fnum"], match["fden"])
        )
        if int(denominator) == 0:
            return None
        value = Fraction(int(numerator), int(denominator))
    return (-value if match["sign"] == "-" else value), match["percent"] is not None


def _compare_numbers(a: str, r: str) -> bool | None:
    parsed_a, parsed_r = _number(a), _number(r)
    if parsed_a is None or parsed_r is None:
        return None
    if _readings(*parsed_a) & _readings(*parsed_r):
        return True
    (value_a, percent_a), (value_r, percent_r) = parsed_a, parsed_r
    exact_integers = all(
        v.denominator == 1 and not p and not any(c in t for c in "./") and "frac" not in t
        for v, p, t in ((value_a, percent_a, a), (value_r, percent_r, r))
    )
    return False if exact_integers else None


def _readings(value: Fraction, percent: bool) -> set[Fraction]:
    return {value, value / 100} if percent else {value}


def _same_components(a: str, r: str) -> bool:
    opener = "\\{" if a.startswith("\\{") else a[0]
    closer = "\\}" if a.endswith("\\}") else a[-1]
    if (opener == "\\{") != (closer == "\\}") or opener not in _BRACKETS or closer not in _BRACKETS.values():
        return False
    if not (r.startswith(opener) and r.endswith(closer)) or len(a) <= len(opener) + len(closer):
        return False
    parts_a = _split_top_level(a[len(opener) : len(a) - len(closer)], ",")
    parts_r = _split_top_level(r[len(opener) : len(r) - len(closer)], ",")
    if parts_a is None or parts_r is None or len(parts_a) < 2 or len(parts_a) != len(parts_r):
        return False
    return all(settle(x, y) is True for x, y in zip(parts_a, parts_r, strict=True))


def _same_terms(a: str, r: str) -> bool:
    terms_a, terms_r = _sum_terms(a), _sum_terms(r)
    return terms_a is not None and terms_r is not None and len(terms_a) > 1 and terms_a == terms_r


def _sum_terms(text: str) -> list[str] | None:
    """The signed terms of a sum, sorted, or None unless every term is certainly a product."""
    terms: list[str] = []
    start, depth, i = 0, 0, 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char in "{([":
            depth += 1
        elif char in "})]":
            depth -= 1
        elif char in "+-" and depth == 0 and i > start:
            terms.append(text[start:i])
            start = i
        i += 1
    terms.append(text[start:])
    signed = [term if term[0] in "+-" else "+" + term for term in terms]
    if not all(_is_product(term[1:]) for term in signed):
        return None
    return sorted(signed)


def _is_product(term: str) -> bool:
    i, expect_factor = 0, True
    while i < len(term):
        operator = next((op for op in _PRODUCT_OPERATORS if _starts_token(term, i, op)), None)
        if operator is not None:
            if expect_factor:
                return False
            i, expect_factor = i + len(operator), True
            continue
        end = _factor_end(term, i)
        if end is not None and end < len(term) and term[end] == "^":
            end = _exponent_end(term, end + 1)
        if end is None:
            return False
        i, expect_factor = end, False
    return not expect_factor


def _factor_end(text: str, i: int) -> int | None:
    char = text[i]
    match = _DIGITS.match(text, i)
    if match is not None:
        end = match.end()
        # ``1e-5`` may be read as scientific notation, which would make its ``-`` no subtraction.
        return None if end < len(text) and text[end] in "eE" else end
    if char in _LETTERS:
        return i + 1
    if char in _OPENERS:
        return _group_end(text, i)
    if _starts_token(text, i, "\\pi"):
        return i + 3
    if _starts_token(text, i, "\\sqrt"):
        i += 5
        if i < len(text) and text[i] == "[":
            i = _group_end(text, i) or len(text) + 1
        return _group_end(text, i) if i < len(text) and text[i] == "{" else None
    if _starts_token(text, i, "\\frac"):
        i += 5
        for _ in range(2):
            if i >= len(text) or text[i] != "{" or (i := _group_end(text, i) or -1) < 0:
                return None
        return i
    return None


def _exponent_end(text: str, i: int) -> int | None:
    if i >= len(text):
        return None
    if text[i] == "{":
        return _group_end(text, i)
    return i + 1 if text[i] in _ALPHANUMERIC else None


def _group_end(text: str, i: int) -> int | None:
    """End (exclusive) of the bracketed group opening at ``i``; escaped brackets do not count."""
    closer, depth = _OPENERS[text[i]], 0
    opener = text[i]
    j = i
    while j < len(text):
        char = text[j]
        if char == "\\":
            j += 2
            continue
        if char == opener:
            depth += 1
        elif char == closer:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return None


def _starts_token(text: str, i: int, token: str) -> bool:
    """Whether ``token`` starts at ``i`` and, for a command, is not the prefix of a longer command."""
    if not text.startswith(token, i):
        return False
    end = i + len(token)
    return not (token[0] == "\\" and end < len(text) and text[end].isalpha())


def _split_top_level(text: str, separator: str) -> list[str] | None:
    parts: list[str] = []
    start, depth, i = 0, 0, 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char in "{([":
            depth += 1
        elif char in "})]":
            depth -= 1
            if depth < 0:
                return None
        elif char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts if depth == 0 and all(parts) else None
