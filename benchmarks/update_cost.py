"""What the cheap meta path saves: meta prompt tokens, and the update's time with and without prefix sharing.

One training step's update batch is rebuilt from the preset's shape (problems x G solutions, problems x M
metas) with the real solution and meta prompts of arithmetic problems and completions of the lengths a
SmolLM2 MASA run produces (token ids drawn at random: an update's cost depends on lengths, not on which
tokens). Every arm updates a fresh copy of the same model from the same batch; arms run interleaved, and
both wall-clock and process CPU seconds are reported (CPU seconds are the steadier number on a shared
machine). The default is one problem's share of the preset's step (1 of 8 problems: 8 solutions and 8
metas, all with a learning signal), so that it fits in minutes on a 2-core CPU; the update's cost is linear
in the number of problems.

    nice -n 10 python benchmarks/update_cost.py            # writes benchmarks/results/update_cost.json
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

from masa.config import load_config
from masa.data.arithmetic import arithmetic_splits
from masa.meta.prompt import build_meta_prompt, render_meta_json
from masa.models import load_model
from masa.prompts import encode_user_message, solution_prompt
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
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "update_cost.json")
    args = parser.parse_args()

    config = load_config("smollm2-arith")
    model, tokenizer = load_model(args.model)
    problems, _ = arithmetic_splits(seed=0, n_train=args.problems, n_eval=1, levels=[1, 2, 3, 4, 5])
    rng = random.Random(0)
    limits = {"max_response_tokens": config.rollout.max_new_tokens, "min_length": config.meta.min_length}
    # A JSON-only answer naming one concept, as the expert targets are written, plus end of sequence.
    json_only_tokens = len(tokenizer(render_meta_json(["addition"], 4, 32))["input_ids"]) + 1

    meta_prompts = {
        name: [
            encode_user_message(
                tokenizer,
                build_meta_prompt(p.prompt, **limits, style=style, reasoning=reasoning),
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
                prompt, config.meta.n, meta_lengths[name], False, "meta", config.rollout.temperature
            )
        ]
        batches[f"MASA, {name} meta prompt"] = solutions + metas

    a = config.algo
    rows = []
    timings: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for repeat in range(args.repeats):
        for name, sequences in batches.items():
            for shared in (True, False):
                policy = copy.deepcopy(model)
                optimizer = torch.optim.AdamW(policy.parameters(), lr=a.lr, betas=tuple(a.betas))
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
                settings = UpdateSettings(
                    micro_batch_sequences=a.micro_batch_sequences,
                    grad_clip=a.grad_clip,
                    prefix_sharing=shared,
                )
                wall, cpu = time.perf_counter(), time.process_time()
                policy_update(
                    policy, optimizer, scheduler, sequences, settings, pad_id=tokenizer.pad_token_id
                )
                timings.setdefault((name, shared), []).append(
                    (time.perf_counter() - wall, time.process_time() - cpu)
                )
                wall_s, cpu_s = timings[name, shared][-1]
                print(f"round {repeat} {name} shared={shared}: {wall_s:.1f} s, {cpu_s:.1f} CPU s", flush=True)

    for name, sequences in batches.items():
        active = [s for s in sequences if s.advantage != 0.0]
        unshared_tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in active)
        distinct_prompts = {tuple(s.prompt_ids) for s in active}
        shared_tokens = sum(map(len, distinct_prompts)) + sum(len(s.completion_ids) for s in active)
        row = {"batch": name, "sequences": len(sequences), "trained_sequences": len(active)}
        row["update_tokens_unshared"] = unshared_tokens
        row["update_tokens_shared"] = shared_tokens
        for shared in (False, True) if args.repeats else ():
            key = "shared" if shared else "unshared"
            row[f"wall_s_{key}"] = statistics.median(w for w, _ in timings[name, shared])
            row[f"cpu_s_{key}"] = statistics.median(c for _, c in timings[name, shared])
        rows.append(row)

    # Prompt lengths over many problems (all levels), not only the timed ones.
    counted, _ = arithmetic_splits(seed=0, n_train=200, n_eval=1, levels=[1, 2, 3, 4, 5])
    prompt_rows = []
    for name, (style, reasoning) in META_PATHS.items():
        prompt_tokens = statistics.fmean(
            len(
                encode_user_message(
                    tokenizer, build_meta_prompt(p.prompt, **limits, style=style, reasoning=reasoning)
                )
            )
            for p in counted
        )
        completion_tokens = meta_lengths[name]
        m = config.meta.n
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
    print(
        "\n| update batch | trained seqs | tokens unshared → shared | wall s unshared → shared | CPU s unshared → shared |"
    )
    print("|---|---|---|---|---|")
    for r in rows if args.repeats else ():
        print(
            f"| {r['batch']} | {r['trained_sequences']} | {r['update_tokens_unshared']} → {r['update_tokens_shared']} | "
            f"{r['wall_s_unshared']:.1f} → {r['wall_s_shared']:.1f} | {r['cpu_s_unshared']:.1f} → {r['cpu_s_shared']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "threads": torch.get_num_threads(),
                "solution_tokens_mean": SOLUTION_TOKENS,
                "reasoned_meta_tokens_mean": REASONED_META_TOKENS,
                "meta_paths": prompt_rows,
                "updates": rows,
            },
            indent=2,
        )
    )
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
