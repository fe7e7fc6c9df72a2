"""When would MASA-efficient's calibration switch have started gating on a MASA run? (issue 11)

MASA-efficient's parallel stage is MASA itself (same streams, same update), so a MASA run's prediction log
holds exactly what the switch would have observed. This replays ``CalibrationSwitch`` over it: per step, the
rolling direction-aware precision of the gate the trainer would have applied and the Pearson correlation
of mean predicted with actual pass rate, and the first step the stage would have been sequential. Where the
run is a MASA-efficient run that logged the switch itself, the replay is checked against what it logged.

    .venv/bin/python benchmarks/switch_replay.py R/masa-new-s0 R/masa-new-s1 [--pearson 0.3 ...]

The gate and switch settings default to the run's own config (``efficient.*``); the flags override them,
to ask what a looser bar (or the expected-count readout, on runs that logged it) would have done.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from masa.efficient.gating import gate_reason
from masa.efficient.switch import CalibrationSwitch
from masa.tracking import parallel_stage_predictions

ROOT = Path(__file__).resolve().parent
SETTINGS = (
    "switch_window",
    "switch_precision",
    "switch_pearson",
    "gate_sigma",
    "gate_tolerance",
    "gate_min_parsed",
)


def run_settings(run_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    efficient = yaml.safe_load((run_dir / "config.yaml").read_text())["efficient"]
    settings = {key: efficient[key] for key in SETTINGS}
    settings["gate_readout"] = efficient.get("gate_readout", "sampled")  # older runs have no such key
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def replay(run_dir: Path, settings: dict[str, float]) -> list[dict[str, float]]:
    """One row per parallel-stage step: the switch's rolling metrics after it and whether it was ready."""
    by_step: dict[int, list[dict]] = defaultdict(list)
    for row in parallel_stage_predictions(run_dir):
        by_step[row["step"]].append(row)
    switch = CalibrationSwitch(
        int(settings["switch_window"]), settings["switch_precision"], settings["switch_pearson"]
    )
    rows = []
    for step in sorted(by_step):
        predicted, actual, reasons = [], [], []
        for problem in by_step[step]:
            key = "expected_pass_rates" if settings["gate_readout"] == "expected" else "predicted_pass_rates"
            if key not in problem:
                raise SystemExit(
                    f"{run_dir}: its prediction log has no {key} (a run from before the readout)"
                )
            parsed = [p for p in problem[key] if p is not None]
            reason = gate_reason(
                parsed, settings["gate_sigma"], settings["gate_tolerance"], int(settings["gate_min_parsed"])
            )[0]
            predicted.append(sum(parsed) / len(parsed) if parsed else None)
            actual.append(problem["actual_pass_rate"])
            reasons.append(reason)
        metrics = switch.observe(predicted, actual, reasons)
        rows.append({"step": step, **metrics, "ready": switch.ready()})
    return rows


def logged_switch(run_dir: Path) -> dict[int, dict[str, float]]:
    """The switch metrics a MASA-efficient run logged itself (empty for a MASA run)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "switch/pearson" in row:
            out[row["step"]] = {k: row[k] for k in ("switch/precision_direction", "switch/pearson")}
    return out


def _same(a: float, b: float | None) -> bool:
    if b is None:  # NaN is logged as null
        return math.isnan(a)
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-9


def _best(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if not math.isnan(r[key])]
    return max(values) if values else math.nan


def _or_none(x: object) -> object:
    return None if isinstance(x, float) and math.isnan(x) else x


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="MASA or MASA-efficient run folders")
    parser.add_argument("--window", type=int, dest="switch_window")
    parser.add_argument("--precision", type=float, dest="switch_precision")
    parser.add_argument("--pearson", type=float, dest="switch_pearson")
    parser.add_argument(
        "--readout",
        choices=("sampled", "expected"),
        dest="gate_readout",
        help="which predicted counts to read",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "switch_replay.json")
    args = parser.parse_args()
    overrides = {
        k: getattr(args, k) for k in ("switch_window", "switch_precision", "switch_pearson", "gate_readout")
    }
    results = []
    print("| run | window / precision / Pearson bars | best full-window precision (dir) | best full-window Pearson "
          "| sequential from step | replay = logged |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        settings = run_settings(run, overrides)
        rows = replay(run, settings)
        full = [r for r in rows if r["switch/steps_observed"] == settings["switch_window"]]
        ready = next((r["step"] for r in rows if r["ready"]), None)
        # The logged metrics are of the run's own readout and window; other ones have nothing to match.
        own = run_settings(run, {})
        same = all(settings[k] == own[k] for k in ("gate_readout", "switch_window"))
        logged = logged_switch(run) if same else {}
        agrees = (
            all(
                _same(r[key], logged[r["step"]][key])
                for r in rows
                if r["step"] in logged
                for key in ("switch/precision_direction", "switch/pearson")
            )
            if logged
            else None
        )

        sequential_from = None if ready is None else ready + 1  # ready after step s: gating from s + 1
        results.append(
            {
                "run": str(run),
                "settings": settings,
                "steps": [{k: _or_none(v) for k, v in r.items()} for r in rows],
                "sequential_from": sequential_from,
                "replay_matches_log": agrees,
            }
        )
        print(
            f"| {run.name} | {settings['switch_window']} / {settings['switch_precision']} / {settings['switch_pearson']} "
            f"| {_fmt(_best(full, 'switch/precision_direction'))} | {_fmt(_best(full, 'switch/pearson'))} "
            f"| {sequential_from or 'never'} | {'-' if agrees is None else agrees} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, allow_nan=False))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
