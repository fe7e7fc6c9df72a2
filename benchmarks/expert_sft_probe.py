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
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from masa.checkpoint import load_trainer_state
from masa.config import Config
from masa.data.problem import Problem
from masa.meta.parse import parse_meta_prediction
from masa.models import load_model, resolve_autocast
from masa.prompts import run_meta_prompt_ids
from masa.rollout.engine import HFEngine
from masa.rollout.types import SamplingParams
from masa.trainer import load_problem_splits, load_run_config
from masa.update import TrainSequence, UpdateSettings, policy_update

ROOT = Path(__file__).resolve().parent
Buffer = list[tuple[list[int], list[int]]]


def target_pass_rates_by_level(
    buffer: Buffer,
    tokenizer: PreTrainedTokenizerBase,
    levels_by_prompt: dict[tuple[int, ...], int],
    scale: int,
) -> dict[int, float]:
    levels: dict[int, list[int]] = defaultdict(list)
    for prompt_ids, target_ids in buffer:
        level = levels_by_prompt.get(tuple(prompt_ids))
        prediction = parse_meta_prediction(
            tokenizer.decode(target_ids, skip_special_tokens=True), pass_rate_scale=scale
        )
        if level is not None and prediction.pass_rate is not None:
            levels[level].append(prediction.pass_rate)
    return {level: statistics.fmean(v) / scale for level, v in sorted(levels.items())}


def predicted_by_level(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    config: Config,
    args: argparse.Namespace,
    autocast: torch.dtype | None,
) -> tuple[dict[int, float], float, float | None]:
    """Mean predicted pass rate per level, the parse rate, and the level-prediction correlation."""
    mc, scale = config.meta, config.meta.pass_rate_scale
    engine = HFEngine(model, tokenizer, max_batch_sequences=64, autocast_dtype=autocast)
    prompts = [run_meta_prompt_ids(tokenizer, p.prompt, config) for p in problems]
    torch.manual_seed(args.seed)
    params = SamplingParams(config.rollout.temperature, config.rollout.top_p, mc.max_new_tokens)
    groups = engine.generate(prompts, args.meta_n, params)
    levels: dict[int, list[float]] = defaultdict(list)
    parsed = total = 0
    for problem, group in zip(problems, groups, strict=True):
        for rollout in group:
            total += 1
            text = tokenizer.decode(rollout.completion_ids, skip_special_tokens=True)
            prediction = parse_meta_prediction(text, pass_rate_scale=scale)
            if prediction.pass_rate is not None:
                parsed += 1
                levels[problem.difficulty].append(prediction.pass_rate / scale)
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
    parser.add_argument("--checkpoint", type=Path, required=True, help="RUN/checkpoints/step-N of a MASA run")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 1e-4])
    parser.add_argument("--steps", type=int, default=24, help="supervised steps per learning rate")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--problems", type=int, default=40, help="held-out problems of the run")
    parser.add_argument("--meta-n", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Prompts, sampling and problem split are the run's own, read from its config.
    config = load_run_config(args.checkpoint.parent.parent)
    scale = config.meta.pass_rate_scale
    buffer: Buffer = load_trainer_state(args.checkpoint)["expert_buffer"]
    train, held_out = load_problem_splits(config)
    autocast = resolve_autocast("auto", torch.device("cpu"))
    _, tokenizer = load_model(str(args.checkpoint))
    levels_by_prompt = {tuple(run_meta_prompt_ids(tokenizer, p.prompt, config)): p.difficulty for p in train}
    targets = target_pass_rates_by_level(buffer, tokenizer, levels_by_prompt, scale)
    problems = held_out[: args.problems]
    rows = []
    for lr in [0.0, *args.lrs]:
        model, _ = load_model(str(args.checkpoint))
        if lr:
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
            settings = UpdateSettings(micro_batch_sequences=config.algo.micro_batch_sequences)
            rng = random.Random(args.seed)
            for _ in range(args.steps):
                picks = rng.sample(buffer, min(args.batch, len(buffer)))
                # Expert rows alone: a pure supervised step of the learner's one update.
                policy_update(
                    model,
                    optimizer,
                    scheduler,
                    [TrainSequence(prompt, target, 0.0, kind="expert") for prompt, target in picks],
                    settings,
                    pad_id=tokenizer.pad_token_id,
                    autocast_dtype=autocast,
                )
        means, parse_rate, correlation = predicted_by_level(
            model, tokenizer, problems, config, args, autocast
        )
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
    settings = {**vars(args), "checkpoint": str(args.checkpoint)}
    out.write_text(json.dumps({"settings": settings, "targets": targets, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
