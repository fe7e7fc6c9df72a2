"""Answer extraction and equivalence checking, the reward of a solution rollout.

``check_answer`` takes the content of the last ``\\boxed{}`` of a completion and compares it with the
reference. Common forms (numbers, percentages, intervals, tuples, reordered sums) are settled in-process by
``masa.verify_forms``; everything else goes to math-verify in a warm worker process with a deadline on its
CPU time (``masa.verify_worker``), so that a verdict does not depend on how loaded the machine is. Every
input is cut to a fixed length before any other work, so a check costs linear time at most.
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache
from typing import Literal

from masa.verify_forms import is_number, settle
from masa.verify_worker import pool

__all__ = ["check_answer", "check_answers", "extract_answer", "verify_timeouts"]

Fallback = Literal["last_number", "none"]

logger = logging.getLogger(__name__)

# One linear pass over the text: box openers, escaped characters (so ``\{`` is not a group), bare braces.
# The lookahead lets the engine skip plain text quickly, which halves the cost on long completions.
_BOX_TOKENS = re.compile(
    r"(?=[\\{}])(?:\\(?:(?P<box>(?:boxed|fbox)\s*\{)|.)|(?P<open>\{)|(?P<close>\}))", re.DOTALL
)
# A minus sign counts only where it cannot be binary subtraction (``10-3`` ends in 3, not -3).
_NUMBER = re.compile(r"(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+|/\d+)?")
# Long enough for any real answer; longer strings are junk that would only cost a worker timeout.
_MAX_ANSWER_CHARS = 1000
# A reference may be a whole worked solution whose last ``\\boxed{}`` is the answer.
_MAX_REFERENCE_CHARS = 20_000

_timeouts = 0
_timeouts_lock = threading.Lock()


def extract_answer(completion: str, fallback: Fallback = "last_number") -> str | None:
    """Return the final answer written in ``completion``, or None when there is none.

    The answer is the content of the last closed, non-empty ``\\boxed{...}`` or ``\\fbox{...}`` (nested
    braces are matched, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``). Without one, and with
    ``fallback="last_number"``, it is the last number in the text: an integer, decimal or simple fraction,
    with thousands separators removed (``1,234`` gives ``1234``). Never raises.
    """
    try:
        boxed = _last_boxed(completion)
        if boxed is not None or fallback == "none":
            return boxed
        last = None
        for match in _NUMBER.finditer(completion):
            last = match
        return last.group().replace(",", "") if last else None
    except Exception:  # the contract is "never raises": a bad completion has no answer
        logger.debug("answer extraction failed", exc_info=True)
        return None


def check_answer(
    completion: str,
    reference: str,
    *,
    timeout_s: float = 2.0,
    fallback: Fallback = "last_number",
    number_only: bool = False,
) -> bool:
    """Whether the final answer of ``completion`` is equivalent to ``reference``.

    ``number_only``: the answer must be a plain number, not an expression equal to one. For a task whose
    question is an expression (the arithmetic task: "What is 17 + 8?"), restating it (``\\boxed{17 + 8}``)
    is equal to the reference as math-verify reads it, and a policy learns to answer so within a few dozen
    steps (benchmarks/README.md, "A reward hack").

    ``reference`` may be any form math-verify understands (``1/2``, ``\\frac{1}{2}``, ``0.5``, ``x^2+1``,
    ``(1,2)``); a reference that is itself boxed is unboxed first. A math-verify comparison may use
    ``timeout_s`` seconds of the worker's CPU time, however long that takes on a busy machine; the worker's
    one-off start (once per process and concurrent caller) is not counted. Safe to call from any thread. A
    missing answer, an answer over 1,000 characters (a reference over 20,000, or 1,000 once unboxed), no
    verdict in time (counted by ``verify_timeouts``) or any failure scores False; never raises. Model output
    is never run as Python: it is read as numbers and strings here and reaches only math-verify's LaTeX
    parser in the worker.
    """
    answer = extract_answer(completion, fallback)
    return answer is not None and _equivalent(answer, reference, timeout_s, number_only)


def check_answers(
    completions: list[str],
    reference: str,
    *,
    timeout_s: float = 2.0,
    fallback: Fallback = "last_number",
    number_only: bool = False,
) -> list[bool]:
    """``check_answer`` for a group of completions of one problem, comparing each distinct answer once."""
    answers = [extract_answer(completion, fallback) for completion in completions]
    verdicts = {a: _equivalent(a, reference, timeout_s, number_only) for a in set(answers) if a is not None}
    return [a is not None and verdicts[a] for a in answers]


def _last_boxed(text: str) -> str | None:
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    # Each open group remembers where its content starts if it is a box, None otherwise.
    stack: list[int | None] = []
    last = None
    for match in _BOX_TOKENS.finditer(text):
        if match.lastgroup == "box":
            stack.append(match.end())
        elif match.lastgroup == "open":
            stack.append(None)
        elif match.lastgroup == "close" and stack:
            start = stack.pop()
            if start is not None and text[start : match.start()].strip():
                last = text[start : match.start()].strip()
    return last


def verify_timeouts() -> int:
    """How many checks in this process have scored False because math-verify gave no verdict in time."""
    return _timeouts


def _equivalent(answer: str, reference: str, timeout_s: float, number_only: bool = False) -> bool:
    global _timeouts
    try:
        # The caps come first: every later step (unboxing, stripping, parsing) must see bounded input.
        if len(reference) > _MAX_REFERENCE_CHARS:
            _warn_unusable_reference(reference[:80], len(reference), _MAX_REFERENCE_CHARS)
            return False
        reference = _strip_math_delimiters(_last_boxed(reference) or reference)
        if len(answer) > _MAX_ANSWER_CHARS or len(reference) > _MAX_ANSWER_CHARS:
            if len(reference) > _MAX_ANSWER_CHARS:
                _warn_unusable_reference(reference[:80], len(reference), _MAX_ANSWER_CHARS)
            return False
        answer = _strip_math_delimiters(answer)
        if not answer or not reference or (number_only and not is_number(answer)):
            return False
        settled = settle(answer, reference)
        if settled is not None:
            return settled
        verdict = pool().check(answer, reference, timeout_s)
        if verdict is None:
            with _timeouts_lock:
                _timeouts += 1
        return bool(verdict)
    except Exception:  # the contract is "never raises": a check that cannot be made is a wrong answer
        logger.warning("answer check failed; scoring it as wrong", exc_info=True)
        return False


@lru_cache(maxsize=64)
def _warn_unusable_reference(preview: str, length: int, limit: int) -> None:
    logger.warning(
        "reference answer %.40r... is %d characters long, over the %d a check accepts; every answer to it "
        "scores 0",
        preview,
        length,
        limit,
    )


def _strip_math_delimiters(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] == text[-1] == "$":
        text = text[1:-1].strip()
    return text
