"""GRPO vs MASA vs MASA + expert SFT vs MASA-efficient on the embedded model, same seed and step budget.

Each arm is a separate `masa train` process (so peak RSS is per arm). Prints a table and writes
benchmarks/results/compare_algorithms.json plus an accuracy-vs-wall-clock plot.

    .venv/bin/python benchmarks/compare_algorithms.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from masa.eval.plots import plot_accuracy_vs_time

ROOT = Path(__file__).resolve().parent
ARMS = {
    "grpo": ["algo=grpo"],
    "masa": ["algo=masa"],
    "masa-sft": ["algo=masa", "meta.expert_sft=true"],
    # Meta tokens are ~65% of a MASA update; a quarter weight tests whether they crowd out the solution signal.
    "masa-sft-meta-weight-0.25": ["algo=masa", "meta.expert_sft=true", "meta.loss_weight=0.25"],
    "masa-efficient": ["algo=masa-efficient"],
    "masa-efficient-sft": ["algo=masa-efficient", "meta.expert_sft=true"],
}


def run_arm(name: str, overrides: list[str], out_dir: Path, preset: str) -> dict:
    command = [
        sys.executable,
        "-m",
        "masa.cli",
        "train",
        "--preset",
        preset,
        f"train.output_dir={out_dir}",
        f"train.run_name={name}",
    ]
    # Running an arm again replaces it, including a folder left by an interrupted run.
    shutil.rmtree(out_dir / name, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.Popen(command + overrides)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"arm {name} failed with status {status}")
    rows = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_seconds" in r]
    evals = [(r["step"], r["time/elapsed_s"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]

    def mean(key: str, part: list[dict]) -> float | None:
        values = [r[key] for r in part if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    head, tail = steps[:5], steps[-5:]
    updated = [r for r in steps if r.get("tokens/solution_per_problem") is not None]
    return {
        "arm": name,
        "overrides": overrides,
        "wall_seconds": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "train_seconds": steps[-1]["time/elapsed_s"],
        "seconds_per_step": mean("perf/step_seconds", steps),
        "generated_tokens_per_second": mean("perf/tokens_per_second", steps),
        "solution_tokens_per_step": mean("tokens/solution", steps),
        "solution_tokens_per_problem": mean("tokens/solution_per_problem", updated),
        "meta_tokens_per_step": mean("tokens/meta", steps),
        "evals": evals,
        "accuracy_start": evals[0][2],
        "accuracy_end": evals[-1][2],
        "train_reward_first5": mean("reward/solution", head),
        "train_reward_last5": mean("reward/solution", tail),
        "zero_variance_first5": mean("groups/zero_variance_fraction", head),
        "meta": {
            key: (mean(key, head), mean(key, tail))
            for key in (
                "meta/parse_rate",
                "meta/pass_rate_mae",
                "meta/pass_rate_pearson",
                "meta/length_hit_rate",
                "meta/reward",
            )
        },
        "sequential": {
            key: mean(key, [r for r in steps if r.get("stage/sequential")])
            for key in (
                "tokens/solution",
                "tokens/solution_per_problem",
                "gate/gated_fraction",
                "cutoff/cut_fraction",
                "cutoff/tokens_saved",
                "perf/step_seconds",
            )
        },
        "gate_cumulative": {
            k: steps[-1].get(k)
            for k in ("gate/precision_cumulative", "gate/recall_cumulative", "gate/f1_cumulative")
        },
    }


def prediction_log(run_dir: Path) -> list[dict]:
    """The run's per-problem meta predictions (empty for GRPO)."""
    log = run_dir / "meta_predictions.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def pass_rates_by_level(rows: list[dict], steps: range) -> dict[int, tuple[float, float]]:
    """Mean predicted and mean actual pass rate per difficulty level over ``steps``."""
    levels: dict[int, tuple[list[float], list[float]]] = {}
    for row in rows:
        parsed = [p for p in row["predicted_pass_rates"] if p is not None]
        if row["step"] in steps and parsed and row["actual_pass_rate"] is not None:
            predicted, actual = levels.setdefault(row["difficulty"], ([], []))
            predicted.append(statistics.fmean(parsed))
            actual.append(row["actual_pass_rate"])
    return {lv: (statistics.fmean(p), statistics.fmean(a)) for lv, (p, a) in sorted(levels.items())}


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def time_to_reach(evals: list, target: float) -> float | None:
    return next((t for _, t, acc in evals if acc >= target), None)


def fmt(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument(
        "--report-only", action="store_true", help="print the summary of the arms already run; run nothing"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "compare_algorithms")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="smollm2-arith", help="tiny: a seconds-long smoke run")
    args = parser.parse_args()
    common = [
        f"train.steps={args.steps}",
        f"train.seed={args.seed}",
        f"data.eval_size={args.eval_size}",
        f"train.eval_every={args.eval_every}",
        f"train.save_every={args.steps}",
        f"efficient.warmup_steps={args.steps // 2}",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    # Arms from earlier invocations are kept (and replaced when run again), so arms can be run separately.
    summary = args.out.parent / f"{args.out.name}.json"
    to_run = [] if args.report_only else args.arms
    results = [r for r in _load(summary) if r["arm"] not in to_run]
    for name in to_run:
        results.append(run_arm(name, ARMS[name] + common, args.out, args.preset))
        summary.write_text(json.dumps(results, indent=2))
    results.sort(key=lambda r: list(ARMS).index(r["arm"]))

    grpo = next((r for r in results if r["arm"] == "grpo"), None)
    print(
        "\n| arm | acc start | acc end | s/step | train s | sol tok/step | meta tok/step | peak RSS MiB | time to GRPO final acc |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        reach = time_to_reach(r["evals"], grpo["accuracy_end"]) if grpo else None
        print(
            f"| {r['arm']} | {fmt(r['accuracy_start'])} | {fmt(r['accuracy_end'])} | {fmt(r['seconds_per_step'], '.1f')} "
            f"| {fmt(r['train_seconds'], '.0f')} | {fmt(r['solution_tokens_per_step'], '.0f')} "
            f"| {fmt(r['meta_tokens_per_step'], '.0f')} | {fmt(r['peak_rss_mib'], '.0f')} | {fmt(reach, '.0f')} |"
        )
    print("\n| arm | metric | first 5 steps | last 5 steps |")
    print("|---|---|---|---|")
    for r in results:
        for key, (start, end) in r["meta"].items():
            if start is not None or end is not None:
                print(f"| {r['arm']} | {key} | {fmt(start)} | {fmt(end)} |")
    print("\nMean predicted vs actual pass rate per level (first 5 steps -> last 5 steps):")
    print("| arm | level | predicted | actual |")
    print("|---|---|---|---|")
    for r in results:
        predictions = prediction_log(args.out / r["arm"])
        first = pass_rates_by_level(predictions, range(1, 6))
        last = pass_rates_by_level(predictions, range(args.steps - 4, args.steps + 1))
        r["pass_rate_by_level"] = {"first5": first, "last5": last}
        for level in sorted(set(first) & set(last)):
            (p0, a0), (p1, a1) = first[level], last[level]
            print(f"| {r['arm']} | {level} | {p0:.2f} -> {p1:.2f} | {a0:.2f} -> {a1:.2f} |")
    summary.write_text(json.dumps(results, indent=2))
    for r in results:
        if r["arm"].startswith("masa-efficient"):
            print(
                "\nMASA-efficient, sequential stage means:",
                json.dumps(r["sequential"]),
                json.dumps(r["gate_cumulative"]),
            )
    plot_accuracy_vs_time([args.out / r["arm"] for r in results], args.out.parent / "accuracy_vs_time.png")


if __name__ == "__main__":
    main()
