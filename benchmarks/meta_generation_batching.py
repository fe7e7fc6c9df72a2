"""Solution and meta rollouts of a MASA step: one engine call for both, or one call each?

The issue asks for both kinds in one batched call "where possible". With HFEngine a batch runs until its
longest member stops and pads every prompt to the longest one, so mixing 64-token solutions on short
prompts with 96-token meta rollouts on ~4x longer prompts may cost more than it saves. This times both on
the default preset's workload (8 problems x 8 solutions + 8 metas) with the same seed:

- separate: solutions (limit 64) then metas (limit 96), each a batch of 64 sequences (the trainer's way);
- merged: one call of 128 sequences, each prompt with its own limit.

    .venv/bin/python benchmarks/meta_generation_batching.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from timing import print_table, time_runners, workload_parser

from masa.data.arithmetic import arithmetic_splits
from masa.meta.prompt import build_meta_prompt
from masa.models import load_model, resolve_autocast
from masa.prompts import DEFAULT_SOLUTION_TEMPLATE, encode_user_message, solution_prompt
from masa.rollout.engine import HFEngine
from masa.rollout.types import SamplingParams

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = workload_parser(__doc__)
    parser.add_argument("--solution-tokens", type=int, default=64)
    parser.add_argument("--meta-tokens", type=int, default=96)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    autocast = resolve_autocast("auto", torch.device("cpu"))
    batch = args.problems * args.n
    separate_engine = HFEngine(model, tokenizer, max_batch_sequences=batch, autocast_dtype=autocast)
    merged_engine = HFEngine(model, tokenizer, max_batch_sequences=2 * batch, autocast_dtype=autocast)
    problems = arithmetic_splits(seed=0, n_train=10, n_eval=args.problems)[1]
    solution_ids = [
        encode_user_message(tokenizer, solution_prompt(p.prompt, DEFAULT_SOLUTION_TEMPLATE)) for p in problems
    ]
    meta_ids = [
        encode_user_message(tokenizer, build_meta_prompt(p.prompt, max_response_tokens=args.solution_tokens))
        for p in problems
    ]
    longest = max(args.solution_tokens, args.meta_tokens)

    def separate() -> int:
        solutions = separate_engine.generate(
            solution_ids, args.n, SamplingParams(args.temperature, 1.0, args.solution_tokens)
        )
        metas = separate_engine.generate(
            meta_ids, args.n, SamplingParams(args.temperature, 1.0, args.meta_tokens)
        )
        return sum(r.num_tokens for g in solutions + metas for r in g)

    def merged() -> int:
        limits = [args.solution_tokens] * len(solution_ids) + [args.meta_tokens] * len(meta_ids)
        groups = merged_engine.generate(
            solution_ids + meta_ids, args.n, SamplingParams(args.temperature, 1.0, longest), max_tokens=limits
        )
        return sum(r.num_tokens for g in groups for r in g)

    rows = time_runners({"separate calls (trainer)": separate, "one merged call": merged}, args.repeats)
    print(
        f"\n{args.problems} problems x ({args.n} solutions <= {args.solution_tokens} tokens + {args.n} metas "
        f"<= {args.meta_tokens} tokens), autocast={autocast}, median of {args.repeats}"
    )
    print_table(rows, "generation")
    out = ROOT / "results" / "meta_generation_batching.json"
    out.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
