"""Final accuracy (or, with ``--meta``, meta-awareness) of a verdict's runs on a wider held-out set.

The verdict evaluates on 50 held-out problems per seed: one model's accuracy there has a binomial spread of
about 7 points, as large as the differences between arms. This script takes each run's final model and
scores it, greedy like the in-training evaluation (same prompt, token limit and answer check), on
``--per-level`` fresh problems of each of ``--levels``, none of which is in that seed's training split (all
of it, not only the problems the run drew) or its 50-problem evaluation set. The set depends only on the
seed, so the arms of one seed meet the same problems. As a check that the protocol is the training's, it
also scores the run's own evaluation set and sets that beside the accuracy the run logged at its end.

    .venv-vllm/bin/python benchmarks/heldout_wide.py --runs RESULTS/runs --out RESULTS_wide.json
    .venv-vllm/bin/python benchmarks/heldout_wide.py --report-only --out RESULTS_wide.json

Levels 2-4 by default: a training split of 4000 holds all of level 1 (100 problems in all), and on level 5
the embedded model stays near 0 whatever it was trained with, so those problems would cost time and tell
nothing apart.

With ``--meta`` it measures instead how well each final model predicts its own pass rate on fresh problems
(``--meta-per-level`` of each of ``--meta-levels``, the same levels by default), with ``masa eval --meta``
at its own sample counts (8 solutions and 8 meta answers per problem). The verdicts up to
``verdict-s16-40steps`` asked 4 and 4 in-run on 30 problems of the ``arithmetic`` benchmark, which is held
out only from seed 0 at the default evaluation size (each verdict run's training split held 9-15 of them);
``verdict.py`` now asks on fresh problems too. Beside the model's predictions it reports what the level
alone tells (``verdict.beyond_level``). ``--base`` adds the untrained model, asked on each GRPO run's
problems.

    .venv-vllm/bin/python benchmarks/heldout_wide.py --meta --base --runs RESULTS/runs --out RESULTS_meta.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fresh_problems import fresh_problems, run_fresh_problems
from verdict import beyond_level, meta_eval, meta_style, paired_with_grpo, pm, write_json

from masa.config import load_config
from masa.data.problem import Problem
from masa.eval.heldout import heldout_accuracy
from masa.models import cpu_has_fast_bf16, cpu_name, load_tokenizer
from masa.prompts import DEFAULT_SOLUTION_TEMPLATE
from masa.rollout import build_engine
from masa.rollout.types import SamplingParams
from masa.trainer import load_problem_splits


def score_run(run: Path, per_level: int, levels: list[int], threads: int) -> dict[str, Any]:
    # vLLM serves a saved model by itself; a run trained on the HF engine is scored on vLLM too (its rescored
    # own evaluation then shows how far the two engines' greedy answers differ).
    config = load_config(
        file=run / "config.yaml", overrides=[f"model.threads={threads}", "rollout.engine=vllm"]
    )
    train, own_eval = load_problem_splits(config)
    problems = fresh_problems(config.train.seed, {p.prompt for p in [*train, *own_eval]}, per_level, levels)
    final = run / "final"
    tokenizer = load_tokenizer(str(final))
    engine = build_engine(
        config.rollout, None, tokenizer, model_source=str(final), seed=config.train.seed, threads=threads
    )
    params = SamplingParams(
        temperature=config.rollout.eval_temperature,
        top_p=config.rollout.top_p,
        max_new_tokens=config.rollout.max_new_tokens,
    )

    def accuracy(problems: list[Problem]) -> Any:
        return heldout_accuracy(
            engine,
            tokenizer,
            problems,
            params,
            samples_per_problem=config.rollout.eval_samples,
            template=DEFAULT_SOLUTION_TEMPLATE,
            fallback=config.data.answer_fallback,
            timeout_s=config.data.verify_timeout_s,
            chunk_problems=max(1, config.rollout.max_batch_sequences // config.rollout.eval_samples),
        )

    started = time.perf_counter()
    try:
        wide, own = accuracy(problems), accuracy(own_eval)
    finally:
        engine.close()
        gc.collect()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = [m["eval/accuracy"] for m in metrics if "eval/accuracy" in m]
    return {
        "run": run.name,
        "arm": run.name.rsplit("-s", 1)[0],
        "seed": config.train.seed,
        "steps": config.train.steps,
        "wide_accuracy": wide.accuracy,
        "wide_by_level": wide.by_difficulty,
        "wide_problems": len(problems),
        "own_eval_accuracy": own.accuracy,
        "own_eval_logged": logged[-1] if logged else None,
        "seconds": time.perf_counter() - started,
    }


def score_meta(run: Path, model: str, arm: str, args: argparse.Namespace) -> dict[str, Any]:
    """``masa eval --meta`` of ``model`` on the fresh problems of ``run``'s seed, asked as ``arm`` is."""
    config = load_config(file=run / "config.yaml")
    seed = config.train.seed
    problems = run_fresh_problems(config, args.meta_per_level, args.meta_levels)
    name = f"{arm}-s{seed}"
    folder = args.out.with_suffix("")
    style = meta_style(arm, run, args)
    started = time.perf_counter()
    result = meta_eval(model, folder / name, args, style, problems)
    return {
        "run": name,
        "arm": arm,
        "seed": seed,
        "model": model,
        "meta_prompt": list(style),
        "meta_levels": args.meta_levels,
        **result,
        "eval_dir": str(folder / name),
        "seconds": time.perf_counter() - started,
    }


def meta_report(rows: list[dict[str, Any]]) -> list[str]:
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], {})[row["seed"]] = row
    columns = [
        "pass@1",
        "parse_rate",
        "pearson_n",
        "pearson",
        "pearson_expected",
        "pearson_level_baseline",
        "pearson_within_level",
        "pearson_within_level_expected",
        "mae",
    ]
    lines = [
        "| arm | seeds | " + " | ".join(columns) + " | minus the level alone: Pearson / E[k] |",
        "|---|---|" + "---|" * len(columns) + "---|",
    ]
    order = {"base": 0, "grpo": 1}
    for arm, seeds in sorted(by_arm.items(), key=lambda item: (order.get(item[0], 2), item[0])):
        runs = [seeds[s] for s in sorted(seeds)]
        lines.append(
            f"| {arm} | {len(runs)} | "
            + " | ".join(pm([r[c] for r in runs]) for c in columns)
            + f" | {_minus_level(runs, 'pearson')} / {_minus_level(runs, 'pearson_expected')} |"
        )
    return lines


def _minus_level(runs: list[dict[str, Any]], key: str) -> str:
    """Mean ± SE over runs of a Pearson minus the level alone's on the same problems (paired within a run)."""
    differences = [
        r[key] - r["pearson_level_baseline"]
        for r in runs
        if r[key] is not None and r["pearson_level_baseline"] is not None
    ]
    if len(differences) < 2:
        return "–"
    se = statistics.stdev(differences) / len(differences) ** 0.5
    below = sum(d < 0 for d in differences)
    return f"{statistics.fmean(differences):+.2f} ± {se:.2f} ({below} of {len(differences)} below)"


def wide_accuracy(row: dict[str, Any]) -> float:
    return row["wide_accuracy"]


def report(rows: list[dict[str, Any]]) -> list[str]:
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], {})[row["seed"]] = row
    pairs = paired_with_grpo({arm: list(seeds.values()) for arm, seeds in by_arm.items()}, wide_accuracy)
    levels = sorted({level for row in rows for level in row["wide_by_level"]})
    lines = [
        "| arm | seeds | wide accuracy | "
        + " | ".join(f"level {level}" for level in levels)
        + " | paired with GRPO (points) | own 50, logged → rescored |",
        "|---|---|---|" + "---|" * len(levels) + "---|---|",
    ]
    for arm, seeds in sorted(by_arm.items(), key=lambda item: (item[0] != "grpo", item[0])):
        runs = [seeds[s] for s in sorted(seeds)]
        wide = [r["wide_accuracy"] for r in runs]
        per_level = [
            statistics.fmean(r["wide_by_level"][level] for r in runs if level in r["wide_by_level"])
            for level in levels
        ]
        paired = "–"
        if arm in pairs:
            diff = pairs[arm]
            paired = (
                f"{diff['mean']:+.1f} ± {diff['se'] or 0.0:.1f} ("
                + ", ".join(f"{d:+.1f}" for d in diff["differences"])
                + ")"
            )
        agree = sum(
            r["own_eval_logged"] is not None and abs(r["own_eval_logged"] - r["own_eval_accuracy"]) < 1e-9
            for r in runs
        )
        lines.append(
            f"| {arm} | {len(runs)} | {pm(wide)} | "
            + " | ".join(f"{v:.3f}" for v in per_level)
            + f" | {paired} | {agree} of {len(runs)} equal |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, help="a verdict's runs/ folder (each run with final/)")
    parser.add_argument("--only", nargs="*", default=[], help="run names to score (default: all with final/)")
    parser.add_argument("--per-level", type=int, default=100)
    parser.add_argument("--levels", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--meta", action="store_true", help="meta-awareness instead of accuracy")
    parser.add_argument("--meta-per-level", type=int, default=34)
    parser.add_argument("--meta-levels", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--base", action="store_true", help="with --meta: also the untrained model")
    # What verdict.meta_eval reads: masa eval's own sample counts, the training's temperature and token limit.
    parser.add_argument("--meta-eval-n", type=int, default=8)
    parser.add_argument("--meta-eval-temperature", type=float, default=0.7)
    parser.add_argument("--meta-eval-max-tokens", type=int, default=64)
    parser.add_argument(
        "--meta-eval-prompt", default="compact", help="the prompt GRPO and base are asked with"
    )
    parser.add_argument("--meta-eval-reasoning", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--meta-eval-notions", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--engine", default="vllm")
    parser.add_argument(
        "--out", type=Path, required=True, help="results JSON; scored runs are kept across calls"
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--merge", type=Path, nargs="*", default=[], help="more results files to add to --out"
    )
    args = parser.parse_args()
    record = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    if not args.report_only:
        record["machine"] = f"{cpu_name()}, bf16 {'yes' if cpu_has_fast_bf16() else 'no'}"
        record["command"] = " ".join(["python", *sys.argv])
    for extra in args.merge:
        part = json.loads(extra.read_text())
        names = {r["run"] for r in part["rows"]}
        record["rows"] = [r for r in record["rows"] if r["run"] not in names] + part["rows"]
        record.setdefault("parts", []).append(
            {"file": extra.name, **{k: v for k, v in part.items() if k != "rows"}}
        )
    if not args.report_only:
        if args.runs is None:
            parser.error("--runs is required unless --report-only")
        runs = sorted(
            p.parent for p in args.runs.glob("*/final") if not args.only or p.parent.name in args.only
        )
        for run in runs:
            arm = run.name.rsplit("-s", 1)[0]
            if not args.meta:
                scored = [score_run(run, args.per_level, args.levels, args.threads)]
            else:
                scored = [score_meta(run, str(run / "final"), arm, args)]
                if args.base and arm == "grpo":
                    base = load_config(file=run / "config.yaml").model.name
                    scored.append(score_meta(run, base, "base", args))
            for row in scored:
                print(json.dumps(row), flush=True)
                # Each run is written as soon as it is scored, aside and renamed. Processes running at once
                # each get their own --out; --merge joins them.
                record["rows"] = [r for r in record["rows"] if r["run"] != row["run"]] + [row]
                write_json(args.out, record)
    if args.meta and args.report_only:
        # Rows scored before a measure existed get it from their saved evaluation.
        for row in record["rows"]:
            eval_dir = Path(row.get("eval_dir") or args.out.with_suffix("") / row["run"])
            if eval_dir.is_dir():
                row.update(beyond_level(eval_dir), eval_dir=str(eval_dir))
        write_json(args.out, record)
    elif args.merge:
        write_json(args.out, record)
    print("\n".join((meta_report if args.meta else report)(record["rows"])))


if __name__ == "__main__":
    main()
