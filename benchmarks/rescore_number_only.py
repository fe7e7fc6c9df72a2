"""How many of a verdict's held-out answers were the question restated: its runs' saved `masa eval --meta`
samples scored again with arithmetic's number-only check (``masa.verify.check_answers(number_only=True)``).

A sample the run scored correct that is not correct as a plain number is an expression equal to the answer,
such as ``\\boxed{"17 + 8"}`` for "What is 17 + 8?" (benchmarks/README.md, "A reward hack").

    python benchmarks/rescore_number_only.py --runs RESULTS/runs --out results/RESULTS_number_only.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from masa.runfiles import write_text
from masa.verify import check_answers


def rescore(results: Path) -> dict[str, float]:
    benchmark = next(iter(json.loads(results.read_text())["benchmarks"].values()))
    samples = logged = number_only = 0
    for problem in benchmark["problems"]:
        texts = [c["text"] for c in problem["completions"]]
        samples += len(texts)
        logged += sum(c["correct"] for c in problem["completions"])
        number_only += sum(check_answers(texts, problem["answer"], number_only=True))
    return {
        "samples": samples,
        "accuracy_logged": logged / samples,
        "accuracy_number_only": number_only / samples,
        "restated_share": (logged - number_only) / samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, required=True, help="a verdict's runs/ folder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = {}
    for results in sorted(args.runs.glob("*/meta_eval/results.json")):
        run = results.parent.parent.name
        rows[run] = rescore(results)
        row = rows[run]
        print(
            f"{run:28s} samples {row['samples']:4d}  logged {row['accuracy_logged']:.3f}  "
            f"number-only {row['accuracy_number_only']:.3f}  restated {row['restated_share']:.3f}"
        )
    if args.out:
        write_text(args.out, json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
