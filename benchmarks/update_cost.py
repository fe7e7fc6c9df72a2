"""What the cheap meta path saves: meta prompt tokens, and the update's time with and without prefix sharing.

One training step's update batch is rebuilt from the preset's shape (problems x G solutions, problems x M
metas) with the real solution and meta prompts of arithmetic problems and completions of the lengths a
SmolLM2 MASA run produces (token ids drawn at random: an update's cost depends on lengths, not on which
tokens). Every arm updates a fresh copy of the same model from the same batch; arms run interleaved, and
both wall-clock and process CPU seconds are reported (CPU seconds are the steadier number on a shared
machine). The default is one problem's share of the preset's step (1 of 8 problems: 8 solutions and 8
metas, all with a learning signal), so that it fits in minutes on a 2-core CPU. Compute runs in the precision
training would pick on this CPU (bf16 autocast where it has AVX512-BF16 or AMX). ``--micro-batch-sequences``
times several micro-batch sizes (each micro-batch is one forward and backward with a fixed overhead).

    nice -n 10 python benchmarks/update_cost.py            # writes benchmarks/results/update_cost.json
    python benchmarks/update_cost.py --problems 4 --micro-batch-sequences 8 32 --repeats 2

Run against another checkout's library (``PYTHONPATH=that/src``) to compare update implementations.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
from pathlib import Path

import torch

from masa.config import load_config, meta_rollouts
from masa.data.arithmetic import arithmetic_splits
from masa.meta.prompt import build_meta_prompt, render_meta_json
from masa.models import cpu_name, load_model, resolve_autocast
from masa.prompts import encode_meta_prompt, encode_user_message, solution_prompt
from masa.update import TrainSequence, UpdateSettings, policy_update

ROOT = Path(__file__).resolve().parent
# Mean completion lengths of the 24-step SmolLM2 MASA run in benchmarks/README.md (tokens per rollout).
SOLUTION_TOKENS = 22
REASONED_META_TOKENS = 40

META_PATHS = {  # name -> (meta.prompt, meta.reasoning)
    "paper": ("paper", True),
    "compact": ("compact", True),
    "compact, JSON only": ("compact", False),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--problems", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="timed updates per arm; 0 counts tokens only")
    parser.add_argument(
        "--timed-paths",
        nargs="+",
        default=["paper", "compact, JSON only"],
        choices=list(META_PATHS),
        help="meta paths whose update is timed (all get their token counts)",
    )
    parser.add_argument("--zero-variance-groups", type=float, default=0.5, help="share of solution groups")
    parser.add_argument(
        "--micro-batch-sequences",
        type=int,
        nargs="+",
        help="algo.micro_batch_sequences values to time (default: the preset's)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "update_cost.json")
    args = parser.parse_args()

    config = load_config("smollm2-arith")
    model, tokenizer = load_model(args.model)
    # The precision training would use here: bf16 autocast on a CPU with AVX512-BF16 or AMX, else fp32.
    autocast_dtype = resolve_autocast(config.model.precision, torch.device("cpu"))
    problems, _ = arithmetic_splits(seed=0, n_train=args.problems, n_eval=1, levels=[1, 2, 3, 4, 5])
    rng = random.Random(0)
    limits = {"max_response_tokens": config.rollout.max_new_tokens, "min_length": config.meta.min_length}
    # A JSON-only answer naming one concept, as the expert targets are written, plus end of sequence.
    json_only_tokens = len(tokenizer(render_meta_json(["addition"], 4, 32))["input_ids"]) + 1

    meta_prompts = {
        name: [
            encode_meta_prompt(
                tokenizer, build_meta_prompt(p.prompt, **limits, style=style, reasoning=reasoning), style
            )
            for p in problems
        ]
        for name, (style, reasoning) in META_PATHS.items()
    }
    meta_lengths = {
        name: REASONED_META_TOKENS if reasoning else json_only_tokens
        for name, (_, reasoning) in META_PATHS.items()
    }

    def completion(mean: int) -> list[int]:
        return [rng.randrange(100, 40000) for _ in range(rng.randint(mean // 2, mean * 3 // 2))]

    def group(prompt: list[int], size: int, mean: int, flat: bool, kind: str, temperature: float) -> list:
        advantages = [0.0] * size if flat else [rng.gauss(0, 1) for _ in range(size)]
        return [
            TrainSequence(prompt, completion(mean), a, kind=kind, temperature=temperature) for a in advantages
        ]

    flat_groups = round(args.zero_variance_groups * args.problems)
    solutions = [
        seq
        for i, p in enumerate(problems)
        for seq in group(
            encode_user_message(tokenizer, solution_prompt(p.prompt)),
            config.rollout.n,
            SOLUTION_TOKENS,
            i < flat_groups,
            "solution",
            config.rollout.temperature,
        )
    ]
    batches = {"GRPO (solutions only)": solutions}
    for name in args.timed_paths:
        prompts = meta_prompts[name]
        metas = [
            seq
            for prompt in prompts
            for seq in group(
                prompt, meta_rollouts(config), meta_lengths[name], False, "meta", config.rollout.temperature
            )
        ]
        batches[f"MASA, {name} meta prompt"] = solutions + metas

    a = config.algo
    micro_batches = args.micro_batch_sequences or [a.micro_batch_sequences]
    arms = [(shared, micro) for micro in micro_batches for shared in (True, False)]
    rows = []
    timings: dict[tuple[str, bool, int], list[tuple[float, float]]] = {}
    for repeat in range(args.repeats):
        for name, sequences in batches.items():
            for shared, micro in arms:
                policy = copy.deepcopy(model)
                optimizer = torch.optim.AdamW(policy.parameters(), lr=a.lr, betas=tuple(a.betas))
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
                settings = UpdateSettings(
                    micro_batch_sequences=micro, grad_clip=a.grad_clip, prefix_sharing=shared
                )
                wall, cpu = time.perf_counter(), time.process_time()
                policy_update(
                    policy,
                    optimizer,
                    scheduler,
                    sequences,
                    settings,
                    pad_id=tokenizer.pad_token_id,
                    autocast_dtype=autocast_dtype,
                )
                timings.setdefault((name, shared, micro), []).append(
                    (time.perf_counter() - wall, time.process_time() - cpu)
                )
                wall_s, cpu_s = timings[name, shared, micro][-1]
                print(
                    f"round {repeat} {name} shared={shared} micro-batch={micro}: {wall_s:.1f} s, {cpu_s:.1f} CPU s",
                    flush=True,
                )

    for name, sequences in batches.items():
        active = [s for s in sequences if s.advantage != 0.0]
        unshared_tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in active)
        distinct_prompts = {tuple(s.prompt_ids) for s in active}
        # Shared: each prompt once, then every completion but its last token (the packed row's length).
        shared_tokens = sum(map(len, distinct_prompts)) + sum(len(s.completion_ids) - 1 for s in active)
        row = {"batch": name, "sequences": len(sequences), "trained_sequences": len(active)}
        row["update_tokens_unshared"] = unshared_tokens
        row["update_tokens_shared"] = shared_tokens
        for shared, micro in arms if args.repeats else ():
            row[arm_key("wall_s", shared, micro)] = statistics.median(
                w for w, _ in timings[name, shared, micro]
            )
            row[arm_key("cpu_s", shared, micro)] = statistics.median(
                c for _, c in timings[name, shared, micro]
            )
        rows.append(row)

    # Prompt lengths over many problems (all levels), not only the timed ones.
    counted, _ = arithmetic_splits(seed=0, n_train=200, n_eval=1, levels=[1, 2, 3, 4, 5])
    prompt_rows = []
    for name, (style, reasoning) in META_PATHS.items():
        prompt_tokens = statistics.fmean(
            len(
                encode_meta_prompt(
                    tokenizer, build_meta_prompt(p.prompt, **limits, style=style, reasoning=reasoning), style
                )
            )
            for p in counted
        )
        completion_tokens = meta_lengths[name]
        m = meta_rollouts(config)
        prompt_rows.append(
            {
                "meta_path": name,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "update_tokens_per_meta_rollout_unshared": prompt_tokens + completion_tokens,
                "update_tokens_per_meta_rollout_shared": prompt_tokens / m + completion_tokens,
            }
        )

    print(
        "\n| meta path | prompt tokens | completion tokens | update tokens per meta rollout, unshared → shared |"
    )
    print("|---|---|---|---|")
    for r in prompt_rows:
        print(
            f"| {r['meta_path']} | {r['prompt_tokens']:.1f} | {r['completion_tokens']} | "
            f"{r['update_tokens_per_meta_rollout_unshared']:.0f} → {r['update_tokens_per_meta_rollout_shared']:.0f} |"
        )
    print(f"\n{cpu_name()}, {autocast_dtype or torch.float32} compute; CPU seconds per update, median")
    print(
        "| update batch | trained seqs | tokens unshared → shared | "
        + " | ".join(f"{'shared' if shared else 'unshared'}, micro-batch {micro}" for shared, micro in arms)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(arms))
    for r in rows if args.repeats else ():
        cells = " | ".join(f"{r[arm_key('cpu_s', shared, micro)]:.1f}" for shared, micro in arms)
        print(
            f"| {r['batch']} | {r['trained_sequences']} | {r['update_tokens_unshared']} → "
            f"{r['update_tokens_shared']} | {cells} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "threads": torch.get_num_threads(),
                "cpu": cpu_name(),
                "compute_dtype": str(autocast_dtype or torch.float32),
                "solution_tokens_mean": SOLUTION_TOKENS,
                "reasoned_meta_tokens_mean": REASONED_META_TOKENS,
                "meta_paths": prompt_rows,
                "updates": rows,
            },
            indent=2,
        )
    )
    tmp.replace(args.out)


def arm_key(measure: str, shared: bool, micro: int) -> str:
    return f"{measure}_{'shared' if shared else 'unshared'}_mb{micro}"


if __name__ == "__main__":
    main()
