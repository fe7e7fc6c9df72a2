"""The update's seconds on real training batches, replayed: the same batches through every variant.

A verdict's step times differ between arms and seeds mostly through what each run happens to sample (how
many groups carry a signal, how long the solutions grow), so an update change worth a fraction of a second
hides in their noise. This records the batches a real run hands its learner, then replays them: every
variant (config overrides on top of the recorded run's config, or another checkout's library through
PYTHONPATH) starts from the same model and updates it with the same batches, so per-step differences are
the update's own.

    # record 16 steps of a MASA run (HF engine, one thread), then replay them two ways, interleaved
    python benchmarks/update_replay.py record --steps 16 --out /tmp/masa.jsonl -- algo=masa train.batch_problems=4
    python benchmarks/update_replay.py replay /tmp/masa.jsonl --variant bf16: --variant fp32:model.precision=fp32

A variant is ``NAME:key=value,key=value``. Within one replay, variants take turns on each batch, so the
machine's drift falls on all alike. ``--skip`` leaves the first steps out of the means (warm-up).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from masa.config import load_config
from masa.learner import Learner
from masa.models import cpu_name, describe_precision, load_model, resolve_autocast
from masa.runfiles import write_text
from masa.trainer import Trainer
from masa.update import KINDS, TrainSequence

MIN_TIMED_SECONDS = 0.1


def record(args: argparse.Namespace) -> None:
    overrides = [*args.overrides, f"train.steps={args.steps}", f"model.threads={args.threads}"]
    overrides += [f"train.output_dir={args.run_dir}", "train.eval_every=0", "train.save_every=0"]
    config = load_config(args.preset, overrides=overrides)
    trainer = Trainer(config)
    batches: list[list[dict]] = []
    update = trainer.learner.update

    def recording(sequences, rng, *, grad_stats=False):
        batches.append([asdict(s) for s in sequences])
        return update(sequences, rng, grad_stats=grad_stats)

    trainer.learner.update = recording
    try:
        for step in range(args.steps):
            log = trainer.train_step()
            trainer.step += 1
            print(f"step {step + 1}: {len(batches[-1])} sequences, update {log['perf/update_seconds']:.2f} s")
    finally:
        trainer.engine.close()
    lines = [json.dumps({"preset": args.preset, "overrides": args.overrides})]
    lines += [json.dumps(batch) for batch in batches]
    write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def replay(args: argparse.Namespace) -> None:
    header, *batches = [json.loads(line) for line in args.batches.read_text().splitlines()]
    steps = [[TrainSequence(**s) for s in batch] for batch in batches]
    if args.limit:
        steps = steps[: args.limit]
    torch.set_num_threads(args.threads)
    learners = {}
    for spec in args.variant:
        name, _, sets = spec.partition(":")
        overrides = [*header["overrides"], *[s for s in sets.split(",") if s]]
        config = load_config(header["preset"], overrides=overrides)
        model, tokenizer = load_model(config.model.name, seed=config.train.seed)
        dtype = resolve_autocast(config.model.precision, torch.device("cpu"))
        print(f"{name}: {describe_precision(config.model.precision, torch.device('cpu'), dtype)}")
        learners[name] = Learner(model, config, pad_id=tokenizer.pad_token_id, autocast_dtype=dtype)
    seconds: dict[str, list[float]] = {name: [] for name in learners}
    for index, sequences in enumerate(steps):
        order = list(learners) if index % 2 == 0 else list(reversed(learners))
        line = []
        for name in order:
            started = time.perf_counter()
            learners[name].update(sequences, random.Random(index))
            seconds[name].append(time.perf_counter() - started)
            line.append(f"{name} {seconds[name][-1]:.2f} s")
        kinds = {k: sum(s.kind == k and s.has_signal for s in sequences) for k in KINDS}
        print(f"step {index + 1} ({kinds}): " + ", ".join(line), flush=True)
    rows = summary_rows(seconds, args.skip)
    first = rows[0]["variant"]
    print(
        f"\n{len(steps) - args.skip} steps counted (first {args.skip} left out); {cpu_name()}, "
        f"{args.threads} thread(s)"
    )
    print(f"| variant | mean s | median s | × {first}, ratio of means | × {first}, per step (mean ± SE) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['mean_seconds']:.2f} | {row['median_seconds']:.2f} | "
            f"{row['ratio_of_means']:.3f} | {row['per_step_ratio']:.3f} ± {row['per_step_ratio_se']:.3f} |"
        )
    if args.out:
        record_ = {
            "command": " ".join(["python benchmarks/update_replay.py", *sys.argv[1:]]),
            "cpu": cpu_name(),
            "threads": args.threads,
            "batches": str(args.batches),
            "recorded": header,
            "skip": args.skip,
            "rows": rows,
        }
        write_text(args.out, json.dumps(record_, indent=2) + "\n")
        print(f"wrote {args.out}")


def summary_rows(seconds: dict[str, list[float]], skip: int) -> list[dict]:
    """Each variant's mean and median seconds over the counted steps, and its ratios to the first variant.

    Per-step ratios leave out steps on which the first variant ran no micro-batch (no group had a signal,
    so the update only returned): there both times are a few milliseconds of bookkeeping.
    """
    first = next(iter(seconds))
    base = seconds[first][skip:]
    ran = [i for i, value in enumerate(base) if value >= MIN_TIMED_SECONDS]
    rows = []
    for name, values in seconds.items():
        kept = values[skip:]
        ratios = [kept[i] / base[i] for i in ran]
        rows.append(
            {
                "variant": name,
                "mean_seconds": statistics.mean(kept),
                "median_seconds": statistics.median(kept),
                "ratio_of_means": sum(kept) / sum(base),
                "per_step_ratio": statistics.mean(ratios),
                "per_step_ratio_se": statistics.stdev(ratios) / len(ratios) ** 0.5
                if len(ratios) > 1
                else 0.0,
                "steps_in_ratio": len(ratios),
                "seconds": values,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run training steps and write the batches each update got")
    rec.add_argument("--preset", default="smollm2-arith")
    rec.add_argument("--steps", type=int, default=16)
    rec.add_argument("--threads", type=int, default=1)
    rec.add_argument("--run-dir", type=Path, default=Path("/tmp/update_replay_runs"))
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("overrides", nargs="*", help="section.key=value overrides of the run")
    rep = sub.add_parser("replay", help="time every variant's update on the recorded batches")
    rep.add_argument("batches", type=Path)
    rep.add_argument("--variant", action="append", required=True, help="NAME:key=value,key=value")
    rep.add_argument("--threads", type=int, default=1)
    rep.add_argument("--skip", type=int, default=2)
    rep.add_argument("--limit", type=int, default=0, help="replay only the first this many batches")
    rep.add_argument("--out", type=Path)
    args = parser.parse_args()
    record(args) if args.command == "record" else replay(args)


if __name__ == "__main__":
    main()
