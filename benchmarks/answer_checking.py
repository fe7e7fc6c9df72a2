"""Answer-checking verdicts and per-call time, idle vs with every core busy (issue 12).

Runs a fixed set of about 200 labelled equivalence cases (true and false pairs: numbers, fractions,
percentages, intervals, reordered sums, radicals, powers, sets, equations, prose with the answer last)
through ``masa.verify.check_answer``: first on the machine as it is, then with a CPU burner process per core
that this script starts and stops itself. The target is identical verdicts in both phases. Each phase
starts with one untimed check, so the worker's one-off start is not in the per-call times. The machine may
be shared: the load average at the start of each phase is recorded with the results.

    nice -n 10 .venv/bin/python benchmarks/answer_checking.py
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import time
from fractions import Fraction
from pathlib import Path

from masa import verify
from masa.verify import check_answer

RESULTS = Path(__file__).parent / "results" / "answer_checking.json"

# Numbers written several ways: every pair of spellings of one value is a true case, and each spelling
# against a nearby value is a false one.
NUMBER_SPELLINGS = {
    Fraction(1, 2): ["0.5", r"\frac{1}{2}", r"\dfrac12", "1/2", r"50\%"],
    Fraction(3, 4): ["0.75", r"\frac{3}{4}", "3/4", r"\tfrac{3}{4}", r"75\%"],
    Fraction(7): ["7", "7.0", r"\frac{14}{2}", "07"],
    Fraction(-5, 2): ["-2.5", r"-\frac{5}{2}", r"\frac{-5}{2}", "-5/2"],
    Fraction(1, 8): ["0.125", r"\frac{1}{8}", r"12.5\%"],
    Fraction(1234): ["1234", "1,234", r"1{,}234", r"1\,234"],
}
NEARBY = {
    Fraction(1, 2): ["0.25", r"\frac{1}{3}", "2", r"5\%"],
    Fraction(3, 4): ["0.7", r"\frac{4}{3}", "3", r"7.5\%"],
    Fraction(7): ["8", "-7", "0.7", r"\frac{7}{2}"],
    Fraction(-5, 2): ["2.5", r"-\frac{2}{5}", "-2", "-25"],
    Fraction(1, 8): ["0.8", r"\frac{1}{9}", "8"],
    Fraction(1234): ["1243", "123.4", "12340", "1235"],
}
# (answer, reference, equal?)
EXPRESSIONS = [
    ("x^2+1", "1+x^2", True),
    ("2x+3", "3+2x", True),
    ("3x-2y", "-2y+3x", True),
    ("a+b+c", "c+a+b", True),
    (r"\sqrt{2}+1", r"1+\sqrt{2}", True),
    (r"\pi r^{2}+2\pi r", r"2\pi r+\pi r^{2}", True),
    ("x^2-2x+1", "(x-1)^2", True),
    ("(x+1)^2", "x^2+2x+1", True),
    (r"\frac{x}{2}", "0.5x", True),
    ("2(x+3)", "2x+6", True),
    ("x^2+1", "x^2-1", False),
    ("2x+3", "3x+2", False),
    ("3x-2y", "3x+2y", False),
    ("(x+1)^2", "x^2+1", False),
    (r"\sqrt{2}+1", r"\sqrt{3}+1", False),
    ("x^3", "x^2", False),
    ("a+b", "a-b", False),
    ("2(x+3)", "2x+3", False),
    ("x^2-2x+1", "(x+1)^2", False),
    (r"\frac{x}{2}", "2x", False),
]
INTERVALS = [
    ("(1, 2]", "(1,2]", True),
    ("[0, \\infty)", "[0,\\infty)", True),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("(0.5, 1]", r"(\frac{1}{2}, 1]", True),
    (r"\left(1, 2\right)", "(1,2)", True),
    ("[-1, 1]", "[-1,1]", True),
    (r"\{1, 2\}", r"\{2, 1\}", True),
    ("(3, 4)", "(3,4)", True),
    ("(1, 2]", "(1,2)", False),
    ("[0, \\infty)", "(0,\\infty)", False),
    ("(-\\infty, 3)", "(-\\infty,3]", False),
    ("(0.5, 1]", "(0.25, 1]", False),
    ("(1, 2)", "(2,1)", False),
    ("[-1, 1]", "[-1,2]", False),
    (r"\{1, 2\}", r"\{1, 3\}", False),
    ("(3, 4)", "(3,4,5)", False),
]
# Forms that only math-verify can judge.
WORKER_FORMS = [
    (r"\sqrt{16}", "4", True),
    (r"2^{10}", "1024", True),
    (r"10^{3}", "1000", True),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),
    (r"2\sqrt{3}", r"\sqrt{12}", True),
    (r"\frac{\pi}{2}", r"\pi/2", True),
    (r"\sin(\frac{\pi}{6})", "0.5", True),
    (r"\cos(0)", "1", True),
    (r"e^{0}", "1", True),
    (r"\log_2 8", "3", True),
    (r"\binom{5}{2}", "10", True),
    ("5!", "120", True),
    ("x=2", "2", True),
    (r"y=2x+1", r"y=1+2x", True),
    (r"\frac{2\pi}{3}", r"\frac{4\pi}{6}", True),
    (r"3\sqrt{2}", r"\sqrt{18}", True),
    (r"\sqrt[3]{27}", "3", True),
    (r"\frac{1}{1+\sqrt{2}}", r"\sqrt{2}-1", True),
    (r"90^\circ", "90", True),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", True),
    (r"\sqrt{16}", "5", False),
    (r"2^{10}", "1000", False),
    (r"10^{3}", "100", False),
    (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}", False),
    (r"2\sqrt{3}", r"\sqrt{6}", False),
    (r"\frac{\pi}{2}", r"\pi", False),
    (r"\sin(\frac{\pi}{6})", r"\frac{\sqrt{3}}{2}", False),
    (r"\cos(0)", "0", False),
    (r"\log_2 8", "4", False),
    (r"\binom{5}{2}", "20", False),
    ("5!", "24", False),
    ("x=2", "3", False),
    (r"y=2x+1", r"y=2x-1", False),
    (r"3\sqrt{2}", r"\sqrt{12}", False),
    (r"\sqrt[3]{27}", "9", False),
    (r"\frac{1}{1+\sqrt{2}}", r"\sqrt{2}+1", False),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}2\\1\end{pmatrix}", False),
]
# Completions without a box: the last number in the text is the answer.
PROSE = [
    ("The answer is 42.", "42", True),
    ("So we get 3 apples, then 1,234 in total", "1234", True),
    ("x = -5", "-5", True),
    ("it is 2.5.", r"\frac{5}{2}", True),
    ("We had 10-3, which is 7", "7", True),
    ("The answer is 42, not 41.", "42", False),
    ("10-3 is the result", "-3", False),
    ("it is 2.5.", "2", False),
    ("I don't know", "0", False),
    ("x = -5", "5", False),
]


def cases() -> list[tuple[str, str, bool]]:
    """(completion, reference, equal?) in a fixed order."""
    out: list[tuple[str, str, bool]] = []
    for value, spellings in NUMBER_SPELLINGS.items():
        out += [(rf"\boxed{{{a}}}", b, True) for i, a in enumerate(spellings) for b in spellings[i + 1 :]]
        out += [(rf"\boxed{{{a}}}", b, False) for a, b in zip(spellings, NEARBY[value], strict=False)]
    for group in (EXPRESSIONS, INTERVALS, WORKER_FORMS):
        out += [(rf"\boxed{{{a}}}", b, ok) for a, b, ok in group]
        out += [(rf"The final answer is $\boxed{{{b}}}$.", a, ok) for a, b, ok in group]  # swapped sides
    return out + PROSE


def burn() -> None:
    while True:
        pass


def run_phase(name: str, all_cases: list[tuple[str, str, bool]], repeats: int, timeout_s: float) -> dict:
    load = os.getloadavg()
    check_answer(r"\boxed{\sqrt{4}}", "2", timeout_s=timeout_s)  # untimed: starts the worker
    timeouts = getattr(verify, "verify_timeouts", None)  # absent before issue 12; lets older code be timed
    timeouts_before = timeouts() if timeouts else None
    verdicts: list[list[bool]] = []
    seconds: list[float] = []
    for _ in range(repeats):
        round_verdicts = []
        for completion, reference, _ok in all_cases:
            start = time.perf_counter()
            round_verdicts.append(check_answer(completion, reference, timeout_s=timeout_s))
            seconds.append(time.perf_counter() - start)
        verdicts.append(round_verdicts)
    ms = sorted(s * 1000 for s in seconds)
    first = verdicts[0]
    return {
        "phase": name,
        "load_average_at_start": load,
        "calls": len(seconds),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
        "max_ms": ms[-1],
        "verify_timeouts": timeouts() - timeouts_before if timeouts else None,
        "stable_across_repeats": all(v == first for v in verdicts),
        "agree_with_labels": sum(v == ok for v, (_, _, ok) in zip(first, all_cases, strict=True)),
        "verdicts": first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="passes over the cases per phase")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="check_answer's timeout_s")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2, help="busy processes in phase 2")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    all_cases = cases()
    phases = [run_phase("idle", all_cases, args.repeats, args.timeout_s)]
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.burners)]
    for process in burners:
        process.start()
    try:
        time.sleep(5)  # let the load average see the burners
        phases.append(run_phase(f"busy ({args.burners} burners)", all_cases, args.repeats, args.timeout_s))
    finally:
        for process in burners:
            process.terminate()
            process.join()

    idle, busy = phases[0]["verdicts"], phases[1]["verdicts"]
    differing = [
        {"completion": c, "reference": r, "label": ok, "idle": a, "busy": b}
        for (c, r, ok), a, b in zip(all_cases, idle, busy, strict=True)
        if a != b
    ]
    wrong = [
        {"completion": c, "reference": r, "label": ok}
        for (c, r, ok), a in zip(all_cases, idle, strict=True)
        if a != ok
    ]
    print(
        f"{len(all_cases)} cases ({sum(ok for *_, ok in all_cases)} equal), {args.repeats} passes per phase"
    )
    print(
        "| phase | load avg at start (1/5/15 min) | p50 ms | p99 ms | max ms | timeouts | agree with labels |"
    )
    print("|---|---|---|---|---|---|---|")
    for phase in phases:
        load = "/".join(f"{x:.1f}" for x in phase["load_average_at_start"])
        print(
            f"| {phase['phase']} | {load} | {phase['p50_ms']:.2f} | {phase['p99_ms']:.1f} | "
            f"{phase['max_ms']:.1f} | {phase['verify_timeouts']} | "
            f"{phase['agree_with_labels']}/{len(all_cases)} |"
        )
    print(f"verdicts that differ between idle and busy: {len(differing)}")
    for case in differing:
        print(f"  {case}")
    print(f"idle verdicts that differ from the label: {len(wrong)}")
    for case in wrong:
        print(f"  {case}")
    document = {
        "command": "benchmarks/answer_checking.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "cases": [{"completion": c, "reference": r, "label": ok} for c, r, ok in all_cases],
        "phases": phases,
        "differing_verdicts": differing,
        "idle_disagreements_with_labels": wrong,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.out}")


def _cpu_model() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line), "")


if __name__ == "__main__":
    main()
