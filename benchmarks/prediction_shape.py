"""What a verdict's MASA runs learnt to predict, against what they were taught (issue 11's Pearson target).

For each run with a held-out `masa eval --meta` (``RUN/meta_eval/results.json``) it reads:

- the training side, from the prediction log: the share of trained problems whose group came out flat
  (0 or all of its solutions correct). A flat group's expert target is the count 0 or 8, so this is the
  share of extreme targets the expert term fits;
- the held-out side: the share of sampled pass-rate predictions that are an extreme count, the mean
  expected pass rate (the readout over the digit's distribution) and the actual pass rate by level, and how
  much the expected pass rate moves between levels against within one (standard deviations over problems).

A predictor that has learnt only the marginal of its targets samples extremes at about the training share
and moves little with the level; the expected pass rate's Pearson needs it to move with the difficulty.

    python benchmarks/prediction_shape.py --runs RESULTS/runs --arms masa-lean-m2 \\
        --out benchmarks/results/RESULTS_prediction_shape.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from masa.runfiles import read_jsonl, write_text
from masa.tracking import PREDICTIONS_FILE


def training_flat_share(run_dir: Path) -> float:
    rows = [row for row in read_jsonl(run_dir / PREDICTIONS_FILE) if row["actual_pass_rate"] is not None]
    return sum(row["actual_pass_rate"] in (0.0, 1.0) for row in rows) / len(rows)


def heldout_shape(results: Path) -> dict:
    saved = json.loads(results.read_text())
    benchmark = next(iter(saved["benchmarks"].values()))
    scale = saved["settings"]["pass_rate_scale"]  # the predicted count's range, not the solutions drawn
    digits = extremes = 0
    expected_by_level: dict[int, list[float]] = defaultdict(list)
    actual_by_level: dict[int, list[float]] = defaultdict(list)
    for problem in benchmark["problems"]:
        counts = [m["pass_rate"] for m in problem["meta"] if m.get("pass_rate") is not None]
        digits += len(counts)
        extremes += sum(count in (0, scale) for count in counts)
        readouts = [
            m["expected_pass_rate"] for m in problem["meta"] if m.get("expected_pass_rate") is not None
        ]
        if readouts:
            expected_by_level[problem["difficulty"]].append(statistics.mean(readouts))
            actual_by_level[problem["difficulty"]].append(problem["c"] / problem["n"])
    levels = sorted(expected_by_level)
    level_means = [statistics.mean(expected_by_level[level]) for level in levels]
    within = [statistics.pstdev(expected_by_level[level]) for level in levels]
    return {
        "extreme_share": extremes / digits,
        "expected_by_level": dict(zip(levels, level_means, strict=True)),
        "actual_by_level": {level: statistics.mean(actual_by_level[level]) for level in levels},
        "expected_between_level_std": statistics.pstdev(level_means),
        "expected_within_level_std": statistics.mean(within),
    }


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, required=True, help="a verdict's runs/ folder")
    parser.add_argument(
        "--arms", nargs="+", default=None, help="arms to read (default: every run with meta_eval)"
    )
    parser.add_argument("--exclude", nargs="*", default=[], help="run names to leave out, e.g. a hacked run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows: dict[str, dict] = {}
    for results in sorted(args.runs.glob("*/meta_eval/results.json")):
        run_dir = results.parent.parent
        summary = json.loads((args.runs / f"{run_dir.name}.json").read_text())
        if run_dir.name in args.exclude or (args.arms and summary["arm"] not in args.arms):
            continue
        meta = summary.get("heldout_meta") or {}
        rows[run_dir.name] = {
            "arm": summary["arm"],
            "training_flat_share": training_flat_share(run_dir),
            **heldout_shape(results),
            "pearson_expected": meta.get("pearson_expected"),
            "pearson_level_baseline": meta.get("pearson_level_baseline"),
        }
    print(
        "| run | trained groups flat | held-out predictions at 0 or the top of the scale | expected by level | actual by level "
        "| std of E between / within levels | Pearson E[k] | level alone |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        by_level = " / ".join(f"{v:.2f}" for v in row["expected_by_level"].values())
        actual = " / ".join(f"{v:.2f}" for v in row["actual_by_level"].values())
        pearson = "-" if row["pearson_expected"] is None else f"{row['pearson_expected']:.2f}"
        level = "-" if row["pearson_level_baseline"] is None else f"{row['pearson_level_baseline']:.2f}"
        print(
            f"| {name} | {row['training_flat_share']:.2f} | {row['extreme_share']:.2f} | {by_level} | {actual} "
            f"| {row['expected_between_level_std']:.3f} / {row['expected_within_level_std']:.3f} "
            f"| {pearson} | {level} |"
        )
    for arm in sorted({row["arm"] for row in rows.values()}):
        runs = [row for row in rows.values() if row["arm"] == arm]
        print(
            f"{arm}: {len(runs)} runs; trained groups flat {mean_std([r['training_flat_share'] for r in runs])}, "
            f"held-out predictions at 0 or the top {mean_std([r['extreme_share'] for r in runs])}, std of E between "
            f"levels {mean_std([r['expected_between_level_std'] for r in runs])}, within "
            f"{mean_std([r['expected_within_level_std'] for r in runs])}"
        )
    if args.out:
        write_text(args.out, json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
