"""Peak memory and time of one update, by micro-batch size and library (what the logits cost).

Each arm is its own process: it loads the embedded model, runs a warm-up update of one sequence per
micro-batch (so AdamW's state exists and the process's peak so far is small), then the timed update of the
whole batch; the peak RSS the timed update adds is what its micro-batches cost (activations and logits; the
weights, gradients and optimiser state are there before it). The batch is G=8 solutions of
``--completion-tokens`` random tokens for each of ``--problems`` arithmetic prompts, all with a learning
signal, in training's precision on this CPU. ``--library NAME=SRC`` runs the arms against another checkout's
``src`` too (the same batch), e.g. the library before ``selected_logprobs``:

    git worktree add /tmp/before cf2d76c
    python benchmarks/update_memory.py --library before=/tmp/before/src --micro 16 32 64
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> None:
    import torch

    from masa.data.arithmetic import arithmetic_splits
    from masa.models import cpu_name, load_model, resolve_autocast
    from masa.prompts import encode_user_message, solution_prompt
    from masa.update import TrainSequence, UpdateSettings, policy_update

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, seed=0)
    autocast_dtype = resolve_autocast("auto", torch.device("cpu"))
    problems, _ = arithmetic_splits(seed=0, n_train=args.problems, n_eval=1, levels=[1, 2, 3, 4, 5])
    rng = random.Random(0)
    sequences = [
        TrainSequence(
            encode_user_message(tokenizer, solution_prompt(problem.prompt)),
            [rng.randrange(100, 40000) for _ in range(args.completion_tokens)],
            rng.choice([-1.0, 1.0]),
        )
        for problem in problems
        for _ in range(8)
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

    def update(micro: int) -> float:
        settings = UpdateSettings(micro_batch_sequences=micro, prefix_sharing=True)
        started = time.perf_counter()
        policy_update(
            model, optimizer, scheduler, sequences, settings, pad_id=tokenizer.pad_token_id,
            autocast_dtype=autocast_dtype,
        )  # fmt: skip
        return time.perf_counter() - started

    update(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = update(args.micro[0])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "peak_rss_mib": after,
                "update_adds_mib": after - before,
                "update_s": seconds,
                "cpu": cpu_name(),
                "dtype": str(autocast_dtype),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--completion-tokens", type=int, default=64, help="the preset's solution limit")
    parser.add_argument("--micro", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--library", action="append", default=[], metavar="NAME=SRC")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "update_memory.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    libraries = {"this": str(ROOT.parent / "src")}
    libraries.update(item.split("=", 1) for item in args.library)
    rows = []
    for micro in args.micro:
        for name, src in libraries.items():
            command = [
                sys.executable, __file__, "--child", "--model", args.model, "--problems", str(args.problems),
                "--completion-tokens", str(args.completion_tokens), "--micro", str(micro),
                "--threads", str(args.threads),
            ]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": src}
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            row = {
                "library": name,
                "micro_batch_sequences": micro,
                **json.loads(result.stdout.splitlines()[-1]),
            }
            rows.append(row)
            print(row, flush=True)
    print(
        f"\n{rows[0]['cpu']}, {rows[0]['dtype']}; {args.problems} prompts x 8 completions of "
        f"{args.completion_tokens} tokens, prefix-shared"
    )
    print("| micro-batch | library | update adds (MiB) | peak RSS (MiB) | update s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['micro_batch_sequences']} | {r['library']} | {r['update_adds_mib']:.0f} | "
            f"{r['peak_rss_mib']:.0f} | {r['update_s']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    record = {"command": shlex.join(["python", *sys.argv]), "libraries": libraries, "rows": rows}
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
