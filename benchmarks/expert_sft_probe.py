"""Can expert meta SFT teach the embedded model difficulty-dependent pass rates, given a stronger step?

In the MASA + expert-SFT arm the model's predicted pass rates collapse to 0 on every problem, although its
buffered targets say 8/8 for most easy problems. This starts from that run's last checkpoint (weights and
expert buffer), runs supervised steps alone (no RL) at several learning rates from the same start, and
asks for meta predictions on held-out arithmetic problems of every level: if predictions then track the
level, the targets carry the signal and the 1e-5 SFT step was simply outweighed by the RL meta gradient.

    .venv/bin/python benchmarks/expert_sft_probe.py \
        --checkpoint benchmarks/results/compare_algorithms/masa-sft/checkpoints/step-24
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from masa.checkpoint import load_trainer_state
from masa.data.arithmetic import arithmetic_splits
from masa.meta.parse import parse_meta_prediction
from masa.meta.prompt import build_meta_prompt
from masa.models import load_model, resolve_autocast
from masa.prompts import encode_user_message
from masa.rollout.engine import HFEngine
from masa.rollout.types import SamplingParams
from masa.update import TrainSequence, sft_step

ROOT = Path(__file__).resolve().parent


def target_pass_rates_by_level(buffer: list, tokenizer, problems_by_prompt: dict) -> dict[int, float]:
    levels: dict[int, list[int]] = defaultdict(list)
    for prompt_ids, target_ids in buffer:
        level = problems_by_prompt.get(tuple(prompt_ids))
        prediction = parse_meta_prediction(tokenizer.decode(target_ids, skip_special_tokens=True))
        if level is not None and prediction.pass_rate is not None:
            levels[level].append(prediction.pass_rate)
    return {level: statistics.fmean(v) / 8 for level, v in sorted(levels.items())}


def predicted_by_level(model, tokenizer, problems, args, autocast) -> tuple[dict[int, float], float, float]:
    engine = HFEngine(model, tokenizer, max_batch_sequences=64, autocast_dtype=autocast)
    prompts = [
        encode_user_message(tokenizer, build_meta_prompt(p.prompt, max_response_tokens=args.max_tokens))
        for p in problems
    ]
    torch.manual_seed(args.seed)
    groups = engine.generate(prompts, args.meta_n, SamplingParams(args.temperature, 1.0, 96))
    levels: dict[int, list[float]] = defaultdict(list)
    parsed = total = 0
    for problem, group in zip(problems, groups, strict=True):
        for rollout in group:
            total += 1
            text = tokenizer.decode(rollout.completion_ids, skip_special_tokens=True)
            prediction = parse_meta_prediction(text)
            if prediction.pass_rate is not None:
                parsed += 1
                levels[problem.difficulty].append(prediction.pass_rate / 8)
    means = {level: statistics.fmean(v) for level, v in sorted(levels.items())}
    pairs = [(level, p) for level, v in levels.items() for p in v]
    correlation = (
        statistics.correlation([float(a) for a, _ in pairs], [b for _, b in pairs])
        if len({b for _, b in pairs}) > 1
        else None
    )
    return means, parsed / max(total, 1), correlation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 1e-4])
    parser.add_argument("--steps", type=int, default=24, help="supervised steps per learning rate")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--problems", type=int, default=40, help="held-out arithmetic problems")
    parser.add_argument("--meta-n", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-tokens", type=int, default=64, help="solution limit the meta prompt states")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    buffer = load_trainer_state(args.checkpoint)["expert_buffer"]
    # The comparison benchmark's split: 4000 training problems, 150 held out, seed 0.
    train, held_out = arithmetic_splits(seed=0, n_train=4000, n_eval=150)
    autocast = resolve_autocast("auto", torch.device("cpu"))
    _, tokenizer = load_model(str(args.checkpoint))
    by_prompt = {
        tuple(
            encode_user_message(tokenizer, build_meta_prompt(p.prompt, max_response_tokens=args.max_tokens))
        ): (p.difficulty)
        for p in train
    }
    targets = target_pass_rates_by_level(buffer, tokenizer, by_prompt)
    problems = held_out[: args.problems]
    rows = []
    for lr in [0.0, *args.lrs]:
        model, _ = load_model(str(args.checkpoint))
        if lr:
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
            rng = random.Random(args.seed)
            for _ in range(args.steps):
                picks = rng.sample(buffer, min(args.batch, len(buffer)))
                sft_step(
                    model,
                    optimizer,
                    [TrainSequence(prompt, target, 0.0) for prompt, target in picks],
                    pad_id=tokenizer.pad_token_id,
                    micro_batch_sequences=8,
                    autocast_dtype=autocast,
                )
        means, parse_rate, correlation = predicted_by_level(model, tokenizer, problems, args, autocast)
        rows.append({"lr": lr, "parse_rate": parse_rate, "level_correlation": correlation, "by_level": means})
        print(f"lr {lr:g}: parse {parse_rate:.2f}, corr(level, predicted) {correlation}, by level {means}")

    levels = sorted(targets)
    print(f"\n{args.steps} supervised steps of {args.batch} buffered targets from {args.checkpoint}")
    print(
        "| SFT lr | parse rate | corr(level, predicted pass rate) | "
        + " | ".join(f"L{x}" for x in levels)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(levels))
    print("| buffer targets | - | - | " + " | ".join(f"{targets[x]:.2f}" for x in levels) + " |")
    for r in rows:
        label = "none (checkpoint)" if r["lr"] == 0 else f"{r['lr']:g}"
        corr = "-" if r["level_correlation"] is None else f"{r['level_correlation']:.2f}"
        cells = " | ".join(f"{r['by_level'].get(x, float('nan')):.2f}" for x in levels)
        print(f"| {label} | {r['parse_rate']:.2f} | {corr} | {cells} |")
    out = ROOT / "results" / "expert_sft_probe.json"
    out.write_text(
        json.dumps(
            {
                "settings": {**vars(args), "checkpoint": str(args.checkpoint)},
                "targets": targets,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
