"""Sampling speed in fp32 and in bf16 on this CPU, for HFEngine and (with --vllm) VLLMEngine.

``model.precision=auto`` and ``rollout.dtype=auto`` pick bf16 from the CPU's flags. Whether bf16 is faster
depends on more than one flag (AMX tiles or only AVX512-BF16 dot products), so this times both precisions
on the same workload (8 arithmetic prompts x 8 samples, 64 new tokens at most, same seed per round) and
prints which flags the CPU has. The update's side of the question is ``update_replay.py``.

    .venv/bin/python benchmarks/cpu_precision.py --threads 1
    .venv-vllm/bin/python benchmarks/cpu_precision.py --threads 1 --vllm --out results/cpu_precision_X.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from timing import print_table, time_runners, workload_parser

from masa.config import RolloutConfig
from masa.data.arithmetic import arithmetic_splits
from masa.models import cpu_flags, cpu_name, load_model
from masa.prompts import encode_user_message, solution_prompt
from masa.rollout import build_engine
from masa.rollout.engine import HFEngine
from masa.rollout.types import SamplingParams
from masa.runfiles import write_text

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def main() -> None:
    parser = workload_parser(__doc__)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--vllm", action="store_true", help="also time VLLMEngine (needs vLLM installed)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model(args.model)
    model.eval()
    problems = arithmetic_splits(seed=0, n_train=10, n_eval=args.problems)[1]
    prompts = [encode_user_message(tokenizer, solution_prompt(p.prompt)) for p in problems]
    params = SamplingParams(args.temperature, 1.0, args.max_new_tokens)
    runners = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        engine = HFEngine(model, tokenizer, max_batch_sequences=args.problems * args.n, autocast_dtype=dtype)

        def on_hf(engine: HFEngine = engine) -> int:
            groups = engine.generate(prompts, args.n, params)
            return sum(r.num_tokens for g in groups for r in g)

        runners[f"HFEngine {name}"] = on_hf
    if args.vllm:
        for name in ("fp32", "bf16"):
            config = RolloutConfig(engine="vllm", dtype=name)
            engine = build_engine(config, model, tokenizer, model_source=args.model, threads=args.threads)
            seeds = iter(range(10**6))

            def on_vllm(engine=engine, seeds=seeds) -> int:
                groups = engine.generate(prompts, args.n, params, seed=next(seeds))
                return sum(r.num_tokens for g in groups for r in g)

            runners[f"VLLMEngine {name}"] = on_vllm
    rows = time_runners(runners, args.repeats)
    flags = [flag for flag in FLAGS if flag in cpu_flags()]
    print(f"\n{cpu_name()}; flags: {', '.join(flags)}; {torch.get_num_threads()} thread(s)")
    print_table(rows, "runner")
    if args.out:
        record = {
            "command": " ".join(["python benchmarks/cpu_precision.py", *sys.argv[1:]]),
            "cpu": cpu_name(),
            "flags": flags,
            "threads": torch.get_num_threads(),
            "rows": rows,
        }
        write_text(args.out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
