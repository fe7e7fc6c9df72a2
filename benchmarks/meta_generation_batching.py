"""Solution and meta rollouts of a MASA step: one engine call for both, or one call each?

The issue asks for both kinds in one batched call "where possible". With HFEngine a batch runs until its
longest member stops and pads every prompt to the longest one, so mixing 64-token solutions on short
prompts with 96-token meta rollouts on ~4x longer prompts may cost more than it saves. This times both on
the default preset's workload (8 problems x 8 solutions + 8 metas) with the same seed:

- separate: solutions (limit 64) then metas (limit 96), each a batch of 64 sequences (the trainer's way);
- merged: one call of 128 sequences, each prompt with its own limit.

With ``--engine vllm`` the merged arm is ``generate_many`` (what the trainer does with vLLM,
``meta.sample_with_solutions``), and the prefix cache is emptied before every call, as a weight sync does
in training.

    .venv/bin/python benchmarks/meta_generation_batching.py
    .venv-vllm/bin/python benchmarks/meta_generation_batching.py --engine vllm --problems 4 \
        --meta-prompt compact --json-only --threads 1
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from timing import print_table, time_runners, workload_parser

from masa.config import RolloutConfig
from masa.data.arithmetic import arithmetic_splits
from masa.meta.prompt import PROMPT_STYLES, build_meta_prompt
from masa.models import cpu_name, load_model, load_tokenizer, resolve_autocast
from masa.prompts import DEFAULT_SOLUTION_TEMPLATE, encode_meta_prompt, encode_user_message, solution_prompt
from masa.rollout import build_engine
from masa.rollout.engine import HFEngine
from masa.rollout.types import GenerationRequest, SamplingParams

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = workload_parser(__doc__)
    parser.add_argument("--solution-tokens", type=int, default=64)
    parser.add_argument("--meta-tokens", type=int, default=96)
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--meta-prompt", choices=PROMPT_STYLES, default="paper")
    parser.add_argument("--json-only", action="store_true", help="meta answers without reasoning")
    parser.add_argument("--threads", type=int, default=0, help="torch / vLLM threads (0: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    problems = arithmetic_splits(seed=0, n_train=10, n_eval=args.problems)[1]
    tokenizer = load_tokenizer(args.model)
    solution_ids = [
        encode_user_message(tokenizer, solution_prompt(p.prompt, DEFAULT_SOLUTION_TEMPLATE)) for p in problems
    ]
    meta_ids = [
        encode_meta_prompt(
            tokenizer,
            build_meta_prompt(
                p.prompt,
                max_response_tokens=args.solution_tokens,
                style=args.meta_prompt,
                reasoning=not args.json_only,
                notions=False,  # as the trainer asks on the arithmetic task, which has none
            ),
            args.meta_prompt,
        )
        for p in problems
    ]
    solution_params = SamplingParams(args.temperature, 1.0, args.solution_tokens)
    meta_params = SamplingParams(args.temperature, 1.0, args.meta_tokens)
    if args.engine == "vllm":
        runners = vllm_runners(args, tokenizer, solution_ids, meta_ids, solution_params, meta_params)
    else:
        runners = hf_runners(args, solution_ids, meta_ids, solution_params, meta_params)
    rows = time_runners(runners, args.repeats)
    print(
        f"\n{args.engine}: {args.problems} problems x ({args.n} solutions <= {args.solution_tokens} tokens + "
        f"{args.n} metas <= {args.meta_tokens} tokens, {args.meta_prompt} meta prompt"
        f"{', JSON only' if args.json_only else ''}), {cpu_name()}, median of {args.repeats}"
    )
    print_table(rows, "generation")
    name = "meta_generation_batching" + ("" if args.engine == "hf" else "_vllm")
    out = ROOT / "results" / f"{name}.json"
    out.write_text(json.dumps({"settings": vars(args), "cpu": cpu_name(), "rows": rows}, indent=2))


def vllm_runners(args, tokenizer, solution_ids, meta_ids, solution_params, meta_params) -> dict:
    settings = RolloutConfig(engine="vllm", cpu_kv_cache_gb=1)
    engine = build_engine(settings, None, tokenizer, model_source=args.model, threads=args.threads)
    rounds, merged_rounds = itertools.count(), itertools.count()

    def separate() -> int:
        seed = next(rounds)
        engine.llm.reset_prefix_cache()  # as after a weight sync
        solutions = engine.generate(solution_ids, args.n, solution_params, seed=2 * seed)
        metas = engine.generate(meta_ids, args.n, meta_params, seed=2 * seed + 1)
        return sum(r.num_tokens for g in solutions + metas for r in g)

    def merged() -> int:
        seed = next(merged_rounds)
        engine.llm.reset_prefix_cache()
        solutions, metas = engine.generate_many(
            [
                GenerationRequest(solution_ids, args.n, solution_params, seed=2 * seed),
                GenerationRequest(meta_ids, args.n, meta_params, seed=2 * seed + 1),
            ]
        )
        return sum(r.num_tokens for g in solutions + metas for r in g)

    return {"separate calls": separate, "one call (generate_many, the trainer)": merged}


def hf_runners(args, solution_ids, meta_ids, solution_params, meta_params) -> dict:
    model, tokenizer = load_model(args.model)
    autocast = resolve_autocast("auto", torch.device("cpu"))
    batch = args.problems * args.n
    separate_engine = HFEngine(model, tokenizer, max_batch_sequences=batch, autocast_dtype=autocast)
    merged_engine = HFEngine(model, tokenizer, max_batch_sequences=2 * batch, autocast_dtype=autocast)
    longest = max(args.solution_tokens, args.meta_tokens)

    def separate() -> int:
        solutions = separate_engine.generate(solution_ids, args.n, solution_params)
        metas = separate_engine.generate(meta_ids, args.n, meta_params)
        return sum(r.num_tokens for g in solutions + metas for r in g)

    def merged() -> int:
        limits = [args.solution_tokens] * len(solution_ids) + [args.meta_tokens] * len(meta_ids)
        groups = merged_engine.generate(
            solution_ids + meta_ids, args.n, SamplingParams(args.temperature, 1.0, longest), max_tokens=limits
        )
        return sum(r.num_tokens for g in groups for r in g)

    return {"separate calls (trainer)": separate, "one merged call": merged}


if __name__ == "__main__":
    main()
