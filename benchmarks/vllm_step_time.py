"""Seconds per training step with the HF engine and the vLLM engine: GRPO and MASA, same config and seed.

Each arm runs ``--steps`` steps of the same (shrunk, see --help) smollm2-arith config in this process and
reports the median step time, its generation / update (split by kind) / weight-sync parts and tokens
generated; the first ``--skip`` steps are excluded from the medians (warm-up). Further arms: MASA's JSON-only
meta path (issue 11), and MASA on vLLM without prefix caching, to show what sharing a problem's prompt across
its G solutions / M meta rollouts saves. Targets: a MASA step >= 1.8x faster with vLLM (issue 9); a MASA step
<= 1.5x a GRPO step (issue 11). Run it in the vLLM venv:

    nice .venv-vllm/bin/python benchmarks/vllm_step_time.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from former_defaults import BEFORE_S14, BEFORE_S22, PAPER_REASONED

from masa.config import load_config
from masa.models import cpu_has_fast_bf16, cpu_name
from masa.trainer import Trainer

ROOT = Path(__file__).resolve().parent
JSON_COMPACT = [
    "algo=masa",
    "rollout.engine=vllm",
    "meta.prompt=compact",
    "meta.reasoning=false",
    *BEFORE_S14,
]
# The "masa" arms were measured on the paper's meta prompt with reasoning, masa's default then (the compact
# JSON-only path, JSON_COMPACT, is the default now); they pin it so that a rerun repeats them.
PAPER_REASONED_ARM = [*PAPER_REASONED, *BEFORE_S14]


def token_cap(tokens: int) -> list[str]:
    return ["algo.micro_batch_sequences=1024", f"algo.micro_batch_tokens={tokens}"]


ARMS = {
    "grpo hf": ["algo=grpo", "rollout.engine=hf"],
    "grpo vllm": ["algo=grpo", "rollout.engine=vllm"],
    "masa hf": ["algo=masa", "rollout.engine=hf", *PAPER_REASONED_ARM],
    "masa vllm": ["algo=masa", "rollout.engine=vllm", *PAPER_REASONED_ARM],
    "masa json-only vllm": [
        "algo=masa",
        "rollout.engine=vllm",
        "meta.prompt=paper",
        "meta.reasoning=false",
        *BEFORE_S14,
    ],
    "masa vllm, no prefix cache": [
        "algo=masa",
        "rollout.engine=vllm",
        "rollout.prefix_caching=false",
        *PAPER_REASONED_ARM,
    ],
    # The cheapest meta path (compact prompt, JSON alone; masa's default), and what two engine-level choices
    # give it.
    "masa json-compact vllm": JSON_COMPACT,
    "masa json-compact vllm, block 128": [*JSON_COMPACT, "rollout.block_size=128"],
    "masa json-compact vllm, micro-batch 32": [*JSON_COMPACT, "algo.micro_batch_sequences=32"],
    "grpo vllm, block 128": ["algo=grpo", "rollout.engine=vllm", "rollout.block_size=128"],
    "grpo vllm, micro-batch 32": ["algo=grpo", "rollout.engine=vllm", "algo.micro_batch_sequences=32"],
    # Micro-batches capped by forward tokens instead of sequences: a cap, not a count, bounds memory.
    "masa json-compact vllm, 2048-token micro-batches": [*JSON_COMPACT, *token_cap(2048)],
    "masa json-compact vllm, 4096-token micro-batches": [*JSON_COMPACT, *token_cap(4096)],
    "grpo vllm, 2048-token micro-batches": ["algo=grpo", "rollout.engine=vllm", *token_cap(2048)],
    "grpo vllm, 4096-token micro-batches": ["algo=grpo", "rollout.engine=vllm", *token_cap(4096)],
    # Expert targets of the step's own problems (each shares its prompt with its meta rollouts in the update),
    # with the buffer pinned on the arm above; and the same with M = 4.
    "masa json-compact vllm, step's expert targets": [*JSON_COMPACT, "meta.expert_source=step"],
    "masa lean vllm": [*JSON_COMPACT, "meta.expert_source=step", "meta.n=4"],
}
# All measured before verdict-s22's defaults; each arm's own keys come after, and win.
ARMS = {name: [*BEFORE_S22, *overrides] for name, overrides in ARMS.items()}


# Where the update's time goes: forward and backward by kind, then clipping and the optimiser step.
UPDATE_PARTS = {
    "solution": "perf/update_seconds_solution",
    "meta": "perf/update_seconds_meta",
    "expert": "perf/update_seconds_expert",
    "optimizer": "perf/optimizer_seconds",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--skip",
        type=int,
        default=1,
        help="first steps left out of the medians: 1 skips the warm-up; MASA's expert batch fills up "
        "(meta.expert_batch / train.batch_problems steps) before its update reaches its steady cost",
    )
    parser.add_argument("--problems", type=int, default=4, help="problems per step (preset: 8)")
    parser.add_argument("--n", type=int, default=8, help="G solutions and M metas per problem")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "vllm_step_time.json")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every arm")
    args = parser.parse_args()
    shared = [
        f"train.steps={args.steps}",
        f"train.batch_problems={args.problems}",
        f"rollout.n={args.n}",
        f"meta.n={args.n}",
        "train.eval_every=0",
        "train.save_every=0",
        *args.set,
    ]
    rows = []
    for arm in args.arms:
        with tempfile.TemporaryDirectory() as tmp:
            config = load_config(overrides=[*shared, *ARMS[arm], f"train.output_dir={tmp}"])
            trainer = Trainer(config, run_dir=Path(tmp) / "run")
            logs = []
            for _ in range(args.steps):
                logs.append(trainer.train_step())
                trainer.step += 1
            trainer.writer.close()
            trainer.engine.close()  # a vLLM engine left to the collector kept its memory: arms ran out of it
            del trainer
            gc.collect()
        timed = logs[args.skip :]

        def median(key: str, timed: list[dict] = timed) -> float:
            return statistics.median(log.get(key, 0.0) for log in timed)

        rows.append(
            {
                "arm": arm,
                "step_s": median("perf/step_seconds"),
                "generate_s": median("perf/generate_seconds"),
                "update_s": median("perf/update_seconds"),
                "sync_s": median("perf/weight_sync_seconds"),
                **{f"update_{part}_s": median(key) for part, key in UPDATE_PARTS.items()},
                "tokens": median("tokens/generated"),
                "tokens_per_s": median("perf/tokens_per_second"),
                "logprob_gap_max": max(
                    (log.get("rollout/logprob_gap_max", 0.0) for log in logs), default=0.0
                ),
                # The process's peak so far: one arm per process (--arms X) reads each arm's own.
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
        print(rows[-1], flush=True)
    print(
        f"\n{args.steps} steps per arm (medians over steps {args.skip + 1}..{args.steps}), "
        f"{args.problems} problems x {args.n}"
    )
    parts = " | ".join(f"{part} s" for part in UPDATE_PARTS)
    print(
        "| arm | s/step | generate s | update s (incl. sync) | "
        f"{parts} | sync s | tokens/step | gen tok/s | max logprob gap | peak RSS MiB |"
    )
    print("|---|---|---|---|" + "---|" * len(UPDATE_PARTS) + "---|---|---|---|---|")
    for r in rows:
        split = " | ".join(f"{r[f'update_{part}_s']:.1f}" for part in UPDATE_PARTS)
        print(
            f"| {r['arm']} | {r['step_s']:.1f} | {r['generate_s']:.1f} | {r['update_s']:.1f} | {split} | "
            f"{r['sync_s']:.2f} | {r['tokens']:.0f} | {r['tokens_per_s']:.0f} | {r['logprob_gap_max']:.1e} | "
            f"{r['peak_rss_mib']:.0f} |"
        )
    by_arm = {r["arm"]: r for r in rows}
    speedups = {}
    for algo in ("grpo", "masa"):
        if f"{algo} hf" in by_arm and f"{algo} vllm" in by_arm:
            speedups[algo] = by_arm[f"{algo} hf"]["step_s"] / by_arm[f"{algo} vllm"]["step_s"]
            print(
                f"{algo}: vLLM step {speedups[algo]:.2f}x faster than HF"
                + (" (target >= 1.8x)" if algo == "masa" else "")
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    tmp = args.out.with_suffix(".tmp")
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine(),
        "settings": settings,
        "rows": rows,
        "speedups": speedups,
    }
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(args.out)


def machine() -> str:
    """The CPU the numbers came from (they compare only within one machine), and when."""
    precision = "AMX (bf16)" if cpu_has_fast_bf16() else "no AMX (fp32)"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"{cpu_name()}, {os.cpu_count()} cores, {precision}, {when}, load average {os.getloadavg()[0]:.1f}"


if __name__ == "__main__":
    main()
