"""Meta-awareness before and after training: `masa eval --meta` on the base model and on trained runs.

The per-step alignment numbers a training run logs come from 8 problems at a time and from a policy that
changes every step; this evaluates each model once, on the same held-out problems, with the same settings
as training (solution limit, temperature, meta prompt), so the arms' alignment can be compared directly.

    .venv/bin/python benchmarks/meta_alignment.py \
        base=smollm2-135m-instruct \
        grpo=benchmarks/results/compare_algorithms/grpo/final \
        masa=benchmarks/results/compare_algorithms/masa/final

Prints a table and merges each model's row into benchmarks/results/meta_alignment.json (a label run again
replaces its row); the full eval output of each model is in benchmarks/results/meta_alignment/LABEL/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
GATING_SIGMA = 0.1  # the gate's default, the paper's v1 value


def evaluate(label: str, model: str, out: Path, args: argparse.Namespace) -> dict:
    if not args.resume:
        shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "masa.cli", "eval", model,
        "--benchmark", "arithmetic", "--out", str(out), "--meta",
        "--n", str(args.n), "--k", "1", str(args.n), "--meta-n", str(args.n),
        "--temperature", str(args.temperature), "--max-tokens", str(args.max_tokens),
        "--limit", str(args.limit), "--seed", str(args.seed), "--meta-prompt", args.meta_prompt,
        "--meta-reasoning" if args.meta_reasoning else "--no-meta-reasoning",
    ] + (["--resume"] if args.resume else [])  # fmt: skip
    subprocess.run(command, check=True)
    return summarise(label, model, out, args)


def summarise(label: str, model: str, out: Path, args: argparse.Namespace) -> dict:
    result = json.loads((out / "results.json").read_text())["benchmarks"]["arithmetic"]
    meta = result["meta"]
    gating = next(g for g in meta["gating"] if abs(g["sigma"] - GATING_SIGMA) < 1e-9)
    return {
        "label": label,
        "model": model,
        "problems": result["n_problems"],
        "pass@1": result["pass_at_k"]["1"]["mean"],
        f"pass@{args.n}": result["pass_at_k"][str(args.n)]["mean"],
        "parse_rate": meta["parse_rate"],
        "pass_rate_mae": meta["pass_rate"]["mae"],
        "pass_rate_pearson": meta["pass_rate"]["pearson"],
        "length_hit_rate": meta["length_hit_rate"],
        "notion_reward": meta["notion_reward"],
        "gating": gating,
        "settings": {k: v for k, v in vars(args).items() if k not in ("models", "out", "resume")},
    }


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", metavar="LABEL=MODEL")
    parser.add_argument("--limit", type=int, default=60, help="held-out arithmetic problems")
    parser.add_argument("--n", type=int, default=8, help="solutions and meta predictions per problem")
    parser.add_argument("--temperature", type=float, default=0.7, help="the default preset's")
    parser.add_argument("--max-tokens", type=int, default=64, help="the default preset's solution limit")
    parser.add_argument("--seed", type=int, default=0)
    # The models of the results here were trained on the paper's meta prompt with reasoning (masa's default
    # then); a model trained on masa's default now wants --meta-prompt compact --no-meta-reasoning.
    parser.add_argument("--meta-prompt", choices=("paper", "compact"), default="paper")
    parser.add_argument("--meta-reasoning", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep finished evaluations (masa eval --resume) instead of redoing them",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "meta_alignment")
    args = parser.parse_args()
    pairs = [spec.split("=", 1) for spec in args.models]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        parser.error("each model is LABEL=MODEL, e.g. grpo=runs/grpo/final")

    summary = args.out.parent / f"{args.out.name}.json"
    rows = json.loads(summary.read_text()) if summary.exists() else []
    labels = [label for label, _ in pairs]
    rows = [r for r in rows if r["label"] not in labels]
    for label, model in pairs:
        rows.append(evaluate(label, model, args.out / label, args))
        summary.write_text(json.dumps(rows, indent=2))

    print(
        f"\n| model | pass@1 | pass@{args.n} | parse rate | pass-rate MAE | Pearson | length hit | notion reward "
        f"| gating P / R (σ={GATING_SIGMA}) | gated |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g = r["gating"]
        print(
            f"| {r['label']} | {fmt(r['pass@1'])} | {fmt(r.get(f'pass@{args.n}'))} | {fmt(r['parse_rate'])} "
            f"| {fmt(r['pass_rate_mae'])} | {fmt(r['pass_rate_pearson'])} | {fmt(r['length_hit_rate'])} "
            f"| {fmt(r['notion_reward'])} | {fmt(g['precision'])} / {fmt(g['recall'])} "
            f"| {g['gated']} of {r['problems']} |"
        )


if __name__ == "__main__":
    main()
