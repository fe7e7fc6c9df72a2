"""Does the pass-rate digit collapse under the paper's reward, and which objectives avoid it? (issue 11)

A toy of the meta path's one decisive token: per difficulty level a softmax over the digits 0..8, trained
by GRPO on the meta reward against G sampled solution outcomes per problem. Two model kinds: ``shared``
(one softmax for every level: a model that cannot yet tell problems apart, as the 135M one early on) and
``per-level`` (it can). Per step: 8 problems drawn uniformly from the levels, G = 8 outcomes each at the
level's true pass rate, M = 8 sampled digits, reward = mean of the pass-rate component and a length
component (hit with probability 0.5 when some solution was right, else 0; notions score 0, as on
arithmetic), group advantages, one plain policy-gradient step. Starts peaked on 4 (the prompt example).

    .venv/bin/python benchmarks/pass_digit_toy.py

Prints mean predicted pass rate per level after training for each (reward, advantage scaling, model),
averaged over seeds, and writes benchmarks/results/pass_digit_toy.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from masa.meta.rewards import pass_rate_reward, solution_stats

ROOT = Path(__file__).resolve().parent
# Late-run per-level pass rates of the MASA arm (benchmarks/README.md, "What the predictions are").
RATES = (0.93, 0.83, 0.08, 0.15, 0.0)
SCALE = 8


def run(kind: str, scale_adv: bool, shared: bool, seed: int, steps: int, lr: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    levels = len(RATES)
    logits = np.zeros((1 if shared else levels, SCALE + 1))
    logits[:, SCALE // 2] = 3.0  # the prompt example's 4 of 8
    table = {
        c: [
            pass_rate_reward(q, solution_stats(["x"] * 8, [i < c for i in range(8)], [1] * 8), kind=kind)
            for q in range(9)
        ]
        for c in range(9)
    }
    for _ in range(steps):
        grad = np.zeros_like(logits)
        for level in rng.integers(0, levels, size=8):
            row = 0 if shared else level
            probs = np.exp(logits[row] - logits[row].max())
            probs /= probs.sum()
            correct = int(rng.binomial(8, RATES[level]))
            digits = rng.choice(SCALE + 1, size=8, p=probs)
            length = (rng.random(8) < 0.5) * (correct > 0)
            rewards = np.array([table[correct][d] for d in digits]) / 2 + length / 2
            if np.all(rewards == rewards[0]):
                continue
            adv = rewards - rewards.mean()
            if scale_adv:
                adv /= rewards.std(ddof=1) + 1e-6
            for d, a in zip(digits, adv, strict=True):
                one_hot = np.zeros(SCALE + 1)
                one_hot[d] = 1.0
                grad[row] += a * (one_hot - probs)
        logits += lr * grad / 8
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    means = probs @ (np.arange(SCALE + 1) / SCALE)
    return np.repeat(means, levels) if shared else means


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=4.0)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    print(
        "| reward | advantages | model | "
        + " | ".join(f"L{i + 1} ({r:.2f})" for i, r in enumerate(RATES))
        + " | MAE |"
    )
    print("|---|---|---|" + "---|" * (len(RATES) + 1))
    for shared in (True, False):
        for kind in ("exp", "brier", "log"):
            for scale_adv in (True, False):
                means = np.mean(
                    [run(kind, scale_adv, shared, s, args.steps, args.lr) for s in range(args.seeds)], axis=0
                )
                mae = float(np.mean(np.abs(means - np.array(RATES))))
                rows.append(
                    {
                        "reward": kind,
                        "std_scaled": scale_adv,
                        "shared": shared,
                        "predicted": means.tolist(),
                        "mae": mae,
                    }
                )
                print(
                    f"| {kind} | {'std-scaled' if scale_adv else 'mean-centred'} | {'shared' if shared else 'per-level'} | "
                    + " | ".join(f"{m:.2f}" for m in means)
                    + f" | {mae:.3f} |"
                )
    out = ROOT / "results" / "pass_digit_toy.json"
    out.write_text(json.dumps({"settings": vars(args), "true_rates": RATES, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
