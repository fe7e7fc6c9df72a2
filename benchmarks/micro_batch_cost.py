"""What one micro-batch of the update costs: a forward and backward of the embedded SmolLM2-135M on update
rows shaped like a training step's (arithmetic meta and solution prompts, completions of the lengths a
MASA run produces; token ids drawn at random, since cost depends on lengths, not on which tokens), with
each forward casting the weights again and with the casts kept across micro-batches as ``policy_update``
now keeps them for one optimiser step. Gradients accumulate across repeats, as across the micro-batches of
a step, so the first touch of the gradient buffers is not timed. Compute runs in the precision training
would pick on this CPU (bf16 autocast where it has AVX512-BF16 or AMX; without it there is no cast and
both columns time the same thing).

    taskset -c 0 python benchmarks/micro_batch_cost.py --threads 1   # writes results/micro_batch_cost.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from masa.data.arithmetic import arithmetic_splits
from masa.meta.prompt import build_meta_prompt
from masa.models import autocast_context, cpu_name, load_model, resolve_autocast
from masa.prompts import encode_user_message, solution_prompt
from masa.runfiles import write_text
from masa.update import TrainSequence, forward_tokens, pack, token_logprobs

ROOT = Path(__file__).resolve().parent
# Mean completion lengths of the 40-step masa-lean runs (tokens per rollout).
SOLUTION_TOKENS = 19
META_TOKENS = 20
EXPERT_TOKENS = 18


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "micro_batch_cost.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model(args.model)
    model.train()
    dtype = resolve_autocast("auto", torch.device("cpu"))
    problems, _ = arithmetic_splits(seed=0, n_train=4, n_eval=1)
    rng = random.Random(0)

    def completion(mean: int) -> list[int]:
        return [rng.randrange(100, 40000) for _ in range(rng.randint(mean // 2, mean * 3 // 2))]

    def meta_prompt(problem) -> list[int]:
        text = build_meta_prompt(
            problem.prompt,
            max_response_tokens=64,
            min_length=1,
            style="compact",
            reasoning=False,
            notions=False,
        )
        return encode_user_message(tokenizer, text)

    def metas(count: int, per_prompt: int) -> list[TrainSequence]:
        return [
            TrainSequence(meta_prompt(p), completion(META_TOKENS), 1.0, kind="meta")
            for p in problems[:count]
            for _ in range(per_prompt)
        ]

    def solutions(count: int) -> list[TrainSequence]:
        return [
            TrainSequence(
                encode_user_message(tokenizer, solution_prompt(p.prompt)), completion(SOLUTION_TOKENS), 1.0
            )
            for p in problems[:count]
            for _ in range(8)
        ]

    shapes = {
        "1 expert target alone": [
            TrainSequence(meta_prompt(problems[0]), completion(EXPERT_TOKENS), 1.0, kind="expert")
        ],
        "1 meta prompt x 5 rows": metas(1, 5),
        "3 meta prompts x 5 rows": metas(3, 5),
        "4 meta prompts x 5 rows": metas(4, 5),
        "2 solution prompts x 8 rows": solutions(2),
        "4 solution prompts x 8 rows": solutions(4),
    }

    def step(batch) -> None:
        with autocast_context("cpu", dtype):
            logprobs = token_logprobs(model, batch)
        (logprobs * batch.completion_mask).sum().backward()

    rows = []
    for name, sequences in shapes.items():
        batch = pack(sequences, tokenizer.pad_token_id, share_prompts=True)
        step(batch)  # gradient buffers exist from here on, as after a step's first micro-batch
        timings: dict[str, list[float]] = {"recast": [], "kept": []}
        for _ in range(args.repeats):
            started = time.perf_counter()
            step(batch)
            timings["recast"].append(time.perf_counter() - started)
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=False):
                step(batch)  # the first forward in the region casts; the timed one reuses its casts
                started = time.perf_counter()
                step(batch)
                timings["kept"].append(time.perf_counter() - started)
        row = {
            "micro_batch": name,
            "rows": len(sequences),
            "forward_tokens": forward_tokens(sequences, share_prompts=True),
            "seconds_recast": statistics.median(timings["recast"]),
            "seconds_casts_kept": statistics.median(timings["kept"]),
        }
        rows.append(row)
        print(
            f"{name:30s} {row['rows']:3d} rows {row['forward_tokens']:5d} tokens  "
            f"recast {row['seconds_recast']:.3f} s  casts kept {row['seconds_casts_kept']:.3f} s",
            flush=True,
        )
        model.zero_grad(set_to_none=True)

    record = {
        "command": "python benchmarks/micro_batch_cost.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "cpu": cpu_name(),
        "precision": str(dtype),
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
