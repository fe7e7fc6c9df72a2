"""Where a verdict's update seconds go, by how many groups of each kind carry a signal.

A group whose rewards are all equal has no advantage and is not run; an expert target runs whatever its meta
group did. So a step's update cost depends on how many solution and meta groups are active, and this
tabulates the per-kind update seconds the runs logged (``perf/update_seconds_*``) against those counts, over
every step of every run of the named arms (steps that log per-kind gradients keep the kinds in separate
micro-batches, so they are left out).

    python benchmarks/update_by_groups.py --runs RESULTS/runs --arms grpo masa-lean --out results/X.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from masa.runfiles import write_text


def active_groups(step: dict[str, Any], key: str, groups: int) -> int:
    return round(groups * (1 - step[key]))


def tabulate(runs: list[Path], groups: int) -> dict[str, Any]:
    by_solution: dict[int, list[float]] = {}
    by_meta: dict[int, list[float]] = {}
    for run in runs:
        for line in (run / "metrics.jsonl").read_text().splitlines():
            step = json.loads(line)
            if "perf/update_seconds" not in step or "grad/norm_solution" in step:
                continue
            solution = active_groups(step, "groups/zero_variance_fraction", groups)
            by_solution.setdefault(solution, []).append(step.get("perf/update_seconds_solution", 0.0))
            if "groups/meta_zero_variance_fraction" in step:
                meta = active_groups(step, "groups/meta_zero_variance_fraction", groups)
                seconds = step.get("perf/update_seconds_meta", 0.0) + step.get(
                    "perf/update_seconds_expert", 0.0
                )
                by_meta.setdefault(meta, []).append(seconds)

    def summary(table: dict[int, list[float]]) -> list[dict[str, Any]]:
        return [
            {"active_groups": k, "steps": len(v), "mean_seconds": statistics.fmean(v)}
            for k, v in sorted(table.items())
        ]

    return {"solution": summary(by_solution), "meta_and_expert": summary(by_meta)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, required=True, help="a verdict's runs/ folder")
    parser.add_argument("--arms", nargs="+", required=True)
    parser.add_argument("--groups", type=int, default=4, help="problems per step (train.batch_problems)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    record: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "arms": {}}
    for arm in args.arms:
        runs = sorted(p.parent for p in args.runs.glob(f"{arm}-s*/metrics.jsonl"))
        record["arms"][arm] = {"runs": [r.name for r in runs], **tabulate(runs, args.groups)}
        print(f"{arm} ({len(runs)} runs)")
        for kind in ("solution", "meta_and_expert"):
            cells = [
                f"{r['active_groups']}: {r['mean_seconds']:.2f} s ({r['steps']})"
                for r in record["arms"][arm][kind]
            ]
            if cells:
                print(f"  {kind:16s} " + ", ".join(cells))
    write_text(args.out, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
