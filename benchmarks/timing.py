"""Timing rounds shared by the generation benchmarks: same seed per round, first round not counted."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def workload_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments every generation benchmark shares: model, problems, samples, temperature, rounds."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def time_runners(runners: dict[str, Callable[[], int]], repeats: int) -> list[dict]:
    """Run each runner ``repeats`` + 1 times (the first round warms caches); each call returns its token count.

    Every runner gets the same seed in a round, so runners that sample the same way generate the same tokens.
    """
    timings: dict[str, list[float]] = {name: [] for name in runners}
    tokens: dict[str, list[int]] = {name: [] for name in runners}
    for repeat in range(repeats + 1):
        for name, run in runners.items():
            torch.manual_seed(repeat)
            start = time.perf_counter()
            count = run()
            if repeat:
                timings[name].append(time.perf_counter() - start)
                tokens[name].append(count)
    return [
        {
            "runner": name,
            "median_seconds": statistics.median(timings[name]),
            "tokens": tokens[name],
            "tokens_per_second": statistics.fmean(
                t / s for t, s in zip(tokens[name], timings[name], strict=True)
            ),
        }
        for name in runners
    ]


def print_table(rows: list[dict], first_column: str) -> None:
    print(f"| {first_column} | median s | tokens (per run) | tokens/s |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['runner']} | {row['median_seconds']:.2f} | {row['tokens']} | {row['tokens_per_second']:.0f} |"
        )
