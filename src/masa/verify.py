"""Answer extraction and equivalence checking, the reward of a solution rollout.

``check_answer`` takes the content of the last ``\\boxed{}`` of a completion and compares it with the
reference using math-verify. Plain numbers are settled in-process; everything else goes to a math-verify
worker *process* with a deadline. Math-verify's own timeouts use ``signal.alarm``, which only works on the
main thread, and a signal cannot interrupt a single long C call such as a huge integer power; a subprocess
can always be killed (untimed, sympy spends over a minute on ``9^{9^{9^9}}``). A worker that misses its
deadline is killed, the check scores False, and a replacement starts at once in the background.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Literal

__all__ = ["check_answer", "check_answers", "extract_answer"]

Fallback = Literal["last_number", "none"]

logger = logging.getLogger(__name__)

# One linear pass over the text: box openers, escaped characters (so ``\{`` is not a group), bare braces.
# The lookahead lets the engine skip plain text quickly, which halves the cost on long completions.
_BOX_TOKENS = re.compile(
    r"(?=[\\{}])(?:\\(?:(?P<box>(?:boxed|fbox)\s*\{)|.)|(?P<open>\{)|(?P<close>\}))", re.DOTALL
)
# A minus sign counts only where it cannot be binary subtraction (``10-3`` ends in 3, not -3).
_NUMBER = re.compile(r"(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+|/\d+)?")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+|/\d+)?")
# Long enough for any real answer; longer strings are junk that would only cost a worker timeout.
_MAX_ANSWER_CHARS = 1000
# Python + sympy + antlr import in well under a second; the margin is for a loaded machine.
_STARTUP_TIMEOUT_S = 60.0


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
) -> bool:
    """Whether the final answer of ``completion`` is equivalent to ``reference``.

    ``reference`` may be any form math-verify understands (``1/2``, ``\\frac{1}{2}``, ``0.5``, ``x^2+1``,
    ``(1,2)``); a reference that is itself boxed is unboxed first. The math-verify comparison gets
    ``timeout_s`` seconds from the moment it is sent to the worker; the worker's one-off start (about half a
    second, once per process and concurrent caller) is not counted. Safe to call from any thread. A missing
    answer, a timeout or any failure scores False; never raises. Model output is never run as Python: it
    reaches only math-verify's LaTeX parser and, for plain arithmetic, sympy's parser on digits and operators.
    """
    answer = extract_answer(completion, fallback)
    return answer is not None and _equivalent(answer, reference, timeout_s)


def check_answers(
    completions: list[str],
    reference: str,
    *,
    timeout_s: float = 2.0,
    fallback: Fallback = "last_number",
) -> list[bool]:
    """``check_answer`` for a group of completions of one problem, comparing each distinct answer once."""
    answers = [extract_answer(completion, fallback) for completion in completions]
    verdicts = {a: _equivalent(a, reference, timeout_s) for a in set(answers) if a is not None}
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


def _equivalent(answer: str, reference: str, timeout_s: float) -> bool:
    try:
        answer = _strip_math_delimiters(answer)
        reference = _strip_math_delimiters(_last_boxed(reference) or reference)
        if not answer or not reference or len(answer) > _MAX_ANSWER_CHARS:
            return False
        settled = _compare_plain_numbers(answer, reference)
        if settled is not None:
            return settled
        return _pool().check(answer, reference, timeout_s)
    except Exception:  # the contract is "never raises": a check that cannot be made is a wrong answer
        logger.warning("answer check failed; scoring it as wrong", exc_info=True)
        return False


def _strip_math_delimiters(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] == text[-1] == "$":
        text = text[1:-1].strip()
    return text


@lru_cache(maxsize=4096)
def _plain_number(text: str) -> Fraction | None:
    if len(text) > 100 or not _PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text.replace(",", ""))
    except ZeroDivisionError:
        return None


def _compare_plain_numbers(answer: str, reference: str) -> bool | None:
    """Settle the common case without math-verify; None when math-verify must decide.

    Equal values are equal. Distinct integers are distinct. Distinct decimals or fractions are left to
    math-verify, which accepts values that agree after rounding (``1/3`` and ``0.333333``).
    """
    a, b = _plain_number(answer), _plain_number(reference)
    if a is None or b is None:
        return None
    if a == b:
        return True
    if not any(c in text for text in (answer, reference) for c in "./"):
        return False
    return None


class _WorkerError(RuntimeError):
    pass


class _Worker:
    """One math-verify subprocess speaking JSON lines: ``[answer, reference]`` in, ``1`` or ``0`` out."""

    def __init__(self) -> None:
        # The worker is started with ``-c`` rather than multiprocessing so that it never re-imports the
        # caller's ``__main__`` (a training script without an ``if __name__`` guard would run again).
        package_root = str(Path(__file__).resolve().parents[1])
        code = "import sys; sys.path.append(sys.argv[1]); from masa.verify import _serve; _serve()"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code, package_root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
        )
        self._replies: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._ready = False
        # A reader thread turns the pipe into a queue, whose ``get`` takes a timeout on every platform.
        threading.Thread(target=self._read_replies, daemon=True).start()

    def _read_replies(self) -> None:
        assert self._proc.stdout is not None
        with self._proc.stdout as lines:
            for line in lines:
                self._replies.put(line.rstrip("\n"))
        self._replies.put(None)

    def ask(self, answer: str, reference: str, timeout_s: float) -> bool | None:
        """The verdict, or None when the worker missed the deadline or died (it is then unusable)."""
        if not self._ready:
            try:
                greeting = self._replies.get(timeout=_STARTUP_TIMEOUT_S)
            except queue.Empty:
                greeting = "no greeting within the startup timeout"
            if greeting != "ready":
                raise _WorkerError(f"math-verify worker failed to start: {greeting}")
            self._ready = True
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps([answer, reference]) + "\n")
        self._proc.stdin.flush()
        try:
            reply = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            return None
        return None if reply is None else reply == "1"

    def kill(self) -> None:
        self._proc.kill()
        self._proc.wait()
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):  # a pipe to a dead process may refuse the final flush
            self._proc.stdin.close()


class _WorkerPool:
    """Idle workers handed out one per concurrent caller, so threads never share a pipe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._pid = os.getpid()

    def check(self, answer: str, reference: str, timeout_s: float) -> bool:
        worker = self._acquire()
        try:
            verdict = worker.ask(answer, reference, timeout_s)
        except BaseException:
            worker.kill()
            raise
        if verdict is None:
            logger.info(
                "math-verify gave no verdict within %.1fs on %.80r; scoring it as wrong", timeout_s, answer
            )
            worker.kill()
            self._release(_Worker())  # start the replacement now so the next caller does not wait for it
            return False
        self._release(worker)
        return verdict

    def _acquire(self) -> _Worker:
        with self._lock:
            # A forked child shares its parent's pipes; it must start workers of its own.
            if self._pid != os.getpid():
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        return _Worker()

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        if self._pid == os.getpid():
            for worker in idle:
                worker.kill()


@lru_cache(maxsize=1)
def _pool() -> _WorkerPool:
    pool = _WorkerPool()
    atexit.register(pool.close)
    return pool


def _serve() -> None:
    """Worker main loop; runs in the subprocess started by ``_Worker``."""
    # Replies get a private copy of stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    try:
        from math_verify import parse, verify
    except Exception as exc:
        replies.write(f"{exc!r}\n")
        replies.flush()
        return
    # The parent enforces the deadline by killing this process, so math-verify's signal-based timeouts are
    # off, and its warning that they are off is noise here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    @lru_cache(maxsize=4096)
    def parse_math(text: str) -> list:
        # Boxing makes math-verify treat the whole string as the answer; ``$...$`` rescues unbalanced braces.
        return parse(f"\\boxed{{{text}}}", parsing_timeout=None) or parse(f"${text}$", parsing_timeout=None)

    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        try:
            answer, reference = json.loads(line)
            ok = verify(parse_math(reference), parse_math(answer), timeout_seconds=None)
        except Exception:
            ok = False
        replies.write("1\n" if ok else "0\n")
        replies.flush()
