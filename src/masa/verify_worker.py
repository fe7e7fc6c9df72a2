"""math-verify in warm worker processes, with a deadline on the CPU time a check may use.

Math-verify's own timeouts use ``signal.alarm``, which only works on the main thread, and a signal cannot
interrupt a single long C call such as a huge integer power; a subprocess can always be killed (untimed,
sympy spends over a minute on ``9^{9^{9^9}}``).

The deadline counts the worker's CPU time, not wall-clock time, so a verdict does not depend on how busy
the machine is: a check that needs 0.2 s of CPU gets it whether that takes 0.2 s or 5 s of wall time. The
worker arms ``ITIMER_PROF`` for each check and answers "no verdict" when it fires, staying warm for the
next one. Only a check stuck in one C call, which the timer cannot interrupt, is killed, by the parent,
once the worker's CPU time (read from ``/proc``) passes the deadline by a grace period; it is replaced at
once by a fresh worker that warms up before taking work. Where ``/proc`` is missing the parent falls back
to wall-clock time.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path

__all__ = ["WorkerPool", "pool"]

logger = logging.getLogger(__name__)

# Python + sympy + antlr import and warm up in about a second; the margin is for a loaded machine.
_STARTUP_TIMEOUT_S = 120.0
# How long past its CPU deadline a worker may run before the parent concludes that the timer could not
# interrupt it (a long C call) and kills it.
_KILL_GRACE_S = 0.5
_POLL_S = 0.05
# A worker that uses no CPU yet gives no reply (which should never happen) is killed after this many
# deadlines of wall-clock time; a merely starved worker keeps using some CPU and is judged by that.
_HANG_FACTOR = 60
# Checks run once at worker start, so that lazy imports and parser tables are loaded before any deadline.
_WARM_UP = (("50\\%", "0.5"), ("(1, 2]", "(1,2]"), ("x^2+1", "1+x^2"), ("\\frac{1}{3}", "0.333"))
_TIMED_OUT = "t"


class WorkerError(RuntimeError):
    pass


class _CpuDeadline(BaseException):
    """Raised in the worker when a check has used up its CPU time; a BaseException so that the library
    code it interrupts (which catches Exception) cannot swallow it."""


class _Worker:
    """One math-verify subprocess speaking JSON lines: ``[answer, reference, cpu_s]`` in, ``1``/``0``/``t``
    (no verdict within ``cpu_s``) out."""

    def __init__(self) -> None:
        # Started with ``-c`` rather than multiprocessing so that it never re-imports the caller's
        # ``__main__`` (a training script without an ``if __name__`` guard would run again).
        package_root = str(Path(__file__).resolve().parents[1])
        code = "import sys; sys.path.append(sys.argv[1]); from masa.verify_worker import serve; serve()"
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
        self.usable = True
        # A reader thread turns the pipe into a queue, whose ``get`` takes a timeout on every platform.
        threading.Thread(target=self._read_replies, daemon=True).start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read_replies(self) -> None:
        assert self._proc.stdout is not None
        with self._proc.stdout as lines:
            for line in lines:
                self._replies.put(line.rstrip("\n"))
        self._replies.put(None)

    def ask(self, answer: str, reference: str, cpu_s: float) -> bool | None:
        """The verdict, or None when there was none within ``cpu_s`` of CPU time. A worker that had to be
        given up (killed past the grace period, or dead) is marked not ``usable``."""
        if not self._ready:
            try:
                greeting = self._replies.get(timeout=_STARTUP_TIMEOUT_S)
            except queue.Empty:
                greeting = "no greeting within the startup timeout"
            if greeting != "ready":
                self.usable = False
                raise WorkerError(f"math-verify worker failed to start: {greeting}")
            self._ready = True
        assert self._proc.stdin is not None
        cpu_start, wall_start = self._cpu_seconds(), time.monotonic()
        self._proc.stdin.write(json.dumps([answer, reference, cpu_s]) + "\n")
        self._proc.stdin.flush()
        while True:
            try:
                reply = self._replies.get(timeout=_POLL_S)
                break
            except queue.Empty:
                wall = time.monotonic() - wall_start
                cpu_now = self._cpu_seconds()
                used = wall if cpu_start is None or cpu_now is None else cpu_now - cpu_start
                if used > cpu_s + _KILL_GRACE_S or wall > _HANG_FACTOR * cpu_s:
                    self.usable = False
                    return None
        if reply is None:
            self.usable = False
            return None
        return None if reply == _TIMED_OUT else reply == "1"

    def _cpu_seconds(self) -> float | None:
        """User + system CPU time of the worker, or None where the OS does not expose it."""
        try:
            stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the parenthesised command name; utime and stime are the 14th and 15th of the line.
        fields = stat[stat.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        self._proc.kill()
        self._proc.wait()
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):  # a pipe to a dead process may refuse the final flush
            self._proc.stdin.close()


class WorkerPool:
    """Warm workers handed out one per concurrent caller, so threads never share a pipe. A check that runs
    out of time leaves its worker warm; only a worker that had to be killed is replaced."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._pid = os.getpid()

    def check(self, answer: str, reference: str, cpu_s: float) -> bool | None:
        """The verdict, or None when math-verify gave none within ``cpu_s`` seconds of CPU time."""
        worker = self._acquire()
        try:
            verdict = worker.ask(answer, reference, cpu_s)
        except BaseException:
            worker.kill()
            raise
        if verdict is None:
            logger.info("math-verify gave no verdict within %.1f CPU seconds on %.80r", cpu_s, answer)
        if worker.usable:
            self._release(worker)
        else:
            worker.kill()
            self._release(_Worker())  # start the replacement now so the next caller does not wait for it
        return verdict

    def idle_pids(self) -> list[int]:
        with self._lock:
            return [worker.pid for worker in self._idle]

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
def pool() -> WorkerPool:
    """The process's worker pool, closed at exit."""
    workers = WorkerPool()
    atexit.register(workers.close)
    return workers


def serve() -> None:
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
    # Deadlines are this process's CPU timer, so math-verify's signal-based timeouts are off, and its
    # warning that they are off is noise here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    def out_of_time(signum: int, frame: object) -> None:
        raise _CpuDeadline

    signal.signal(signal.SIGPROF, out_of_time)

    @lru_cache(maxsize=4096)
    def parse_math(text: str) -> list:
        # Boxing makes math-verify treat the whole string as the answer; ``$...$`` rescues unbalanced braces.
        return parse(f"\\boxed{{{text}}}", parsing_timeout=None) or parse(f"${text}$", parsing_timeout=None)

    def judge(answer: str, reference: str, cpu_s: float) -> str:
        try:
            try:
                signal.setitimer(signal.ITIMER_PROF, cpu_s)
                ok = verify(parse_math(reference), parse_math(answer), timeout_seconds=None)
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
        except _CpuDeadline:
            return _TIMED_OUT
        except Exception:
            return "0"
        return "1" if ok else "0"

    for answer, reference in _WARM_UP:
        judge(answer, reference, _STARTUP_TIMEOUT_S)
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        try:
            answer, reference, cpu_s = json.loads(line)
            reply = judge(answer, reference, cpu_s)
        except _CpuDeadline:  # the timer fired just as it was disarmed
            reply = _TIMED_OUT
        except Exception:
            reply = "0"
        replies.write(reply + "\n")
        replies.flush()
