"""Project MASA-efficient's saving from a measured run to the paper's regime (issue 11).

On the embedded model solutions are ~20-130 tokens and meta outputs as long, so meta generation dominates a
step and gating cannot pay for itself; the paper trains on solutions of 4k-8k tokens with meta outputs of a
few hundred. This takes what a run measured about the *predictor* and the *cutoff*, which carry over
between regimes, and recomputes the cost per informative problem (one whose solution group has variance,
the only kind that teaches GRPO anything) at the paper's lengths:

- from the run's meta prediction log (parallel-stage steps, where every problem was rolled out): the share
  of zero-variance problems z, the direction-aware gating recall r (flat problems gated on the right side:
  predicted unsolvable and all wrong, or trivial and all right) and the false-gate rate f (informative
  problems gated); a wrong-side gate of a flat problem is counted as not gated, since in another regime
  the side decides whether the skip is right;
- from its sequential-stage metrics, if it has any: c, the solution tokens generated with cutoff over the
  tokens without it (an upper bound on the saving: a cut rollout might have stopped earlier anyway).

Cost per informative problem, in generated tokens (generation dominates at these lengths):
    MASA:           (G Ls + M Lm) / (1 - z)
    MASA-efficient: (M Lm + (1 - z r - (1 - z) f) G Ls c) / ((1 - z)(1 - f))

    .venv/bin/python benchmarks/projection.py benchmarks/results/verdict/runs/masa-new-s0 ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from masa.efficient.gating import GATING_REASONS, gate_reason
from masa.eval.meta_metrics import gate_side_matches
from masa.tracking import parallel_stage_predictions

ROOT = Path(__file__).resolve().parent
PAPER = {"speedup": 1.28, "time_saving": 0.345}


def gating_rates(run_dir: Path, sigma: float, tolerance: float, min_parsed: int) -> dict[str, float]:
    rows = parallel_stage_predictions(run_dir)
    flat = right = informative = false_gates = 0
    for row in rows:
        parsed = [p for p in row["predicted_pass_rates"] if p is not None]
        reason = gate_reason(parsed, sigma, tolerance, min_parsed)[0]
        actual = row["actual_pass_rate"]
        if actual in (0.0, 1.0):
            flat += 1
            right += gate_side_matches(reason, actual)
        else:
            informative += 1
            false_gates += reason in GATING_REASONS
    return {
        "problems": len(rows),
        "zero_variance": flat / max(len(rows), 1),
        "recall_direction": right / flat if flat else 0.0,
        "false_gate_rate": false_gates / informative if informative else 0.0,
    }


def cutoff_ratio(run_dir: Path) -> float | None:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seq = [r for r in rows if r.get("stage/sequential") and "cutoff/tokens_saved" in r]
    if not seq:
        return None
    generated = sum(r["tokens/solution"] for r in seq)
    return generated / max(generated + sum(r["cutoff/tokens_saved"] for r in seq), 1)


def meta_tokens(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "tokens/meta" in r]
    return {
        "meta_tokens_per_step": statistics.fmean(r["tokens/meta"] for r in steps),
        "meta_token_share": statistics.fmean(r.get("meta/token_share", 0.0) for r in steps),
    }


def project(z: float, r: float, f: float, c: float, g: int, m: int, ls: float, lm: float) -> dict[str, float]:
    masa = (g * ls + m * lm) / (1 - z)
    efficient = (m * lm + (1 - z * r - (1 - z) * f) * g * ls * c) / ((1 - z) * (1 - f))
    return {
        "masa": masa,
        "efficient": efficient,
        "speedup": masa / efficient,
        "time_saving": 1 - efficient / masa,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="MASA or MASA-efficient run folders")
    parser.add_argument("--solution-tokens", type=float, nargs="+", default=[4000, 6000, 8000])
    parser.add_argument(
        "--meta-tokens", type=float, default=300, help="meta output length in the paper's regime"
    )
    parser.add_argument("--g", type=int, default=8, help="solutions per problem")
    parser.add_argument("--m", type=int, default=8, help="meta rollouts per problem")
    parser.add_argument("--zero-variance", type=float, help="override the run's zero-variance share")
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--tolerance", type=float, default=1 / 16)
    parser.add_argument("--min-parsed", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "projection.json")
    args = parser.parse_args()
    results = []
    print("| run | problems | zero-var | recall (dir) | false gates | cutoff ratio | meta tok/step (measured) "
          "| Ls | speedup | time saving | paper |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        rates = gating_rates(run, args.sigma, args.tolerance, args.min_parsed)
        z = rates["zero_variance"] if args.zero_variance is None else args.zero_variance
        measured_c = cutoff_ratio(run)
        c = 1.0 if measured_c is None else measured_c
        meta = meta_tokens(run)
        if z >= 1 or rates["false_gate_rate"] >= 1:
            print(
                f"| {run.name} | {rates['problems']} | {z:.2f} | no informative problem survives: nothing to project |"
            )
            continue
        for ls in args.solution_tokens:
            p = project(
                z,
                rates["recall_direction"],
                rates["false_gate_rate"],
                c,
                args.g,
                args.m,
                ls,
                args.meta_tokens,
            )
            results.append({"run": str(run), **rates, "zero_variance_used": z, "cutoff_ratio": measured_c,
                            **meta, "solution_tokens": ls, "meta_tokens": args.meta_tokens, **p})  # fmt: skip
            print(
                f"| {run.name} | {rates['problems']} | {z:.2f} | {rates['recall_direction']:.2f} "
                f"| {rates['false_gate_rate']:.2f} | {'-' if measured_c is None else f'{measured_c:.2f}'} "
                f"| {meta['meta_tokens_per_step']:.0f} | {ls:.0f} | {p['speedup']:.2f}x | {100 * p['time_saving']:.1f}% "
                f"| {PAPER['speedup']}x / {100 * PAPER['time_saving']:.1f}% |"
            )
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "paper": PAPER,
                               "rows": results}, indent=2))  # fmt: skip
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
