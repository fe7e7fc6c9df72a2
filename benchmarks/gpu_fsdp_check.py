"""Seconds per step and peak memory per GPU of `masa train` at one world size (run it under torchrun).

    # world size 1 and N on one node, same settings; prints one table per run and appends to the JSON
    torchrun --standalone --nproc-per-node 1 benchmarks/gpu_fsdp_check.py --model smollm2-135m-instruct
    torchrun --standalone --nproc-per-node 8 benchmarks/gpu_fsdp_check.py --model smollm2-135m-instruct
    bash benchmarks/gpu_fsdp_check.sh 8      # both of the above

Steps are timed after a first warm-up step (CUDA kernels, allocator); peak memory is
`torch.cuda.max_memory_allocated` on each rank over the timed steps. `--device cpu` runs the same code on CPU
(gloo) to check the script itself; it then reports no memory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from masa.config import load_config
from masa.distributed import close_ranks
from masa.trainer import Trainer

RESULTS = Path(__file__).parent / "results" / "gpu_fsdp_check.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--preset", default="smollm2-arith")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="extra section.key=value config overrides")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            args.preset,
            overrides=[
                f"model.name={args.model}",
                f"model.device={args.device}",
                f"train.steps={args.steps + 1}",
                "train.eval_every=0",
                "train.save_every=0",
                f"train.output_dir={tmp}",
                "train.run_name=bench",
                *args.overrides,
            ],
        )
        trainer = Trainer(cfg)
        on_gpu = trainer.device.type == "cuda"
        seconds = []
        for step in range(args.steps + 1):
            if on_gpu:
                torch.cuda.synchronize()
                if step == 1:
                    torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            metrics = trainer.train_step()
            trainer.step += 1
            if on_gpu:
                torch.cuda.synchronize()
            if step:
                seconds.append(time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
        peaks = trainer.ranks.gather(peak)
        trainer.writer.close()
        close_ranks(trainer.ranks)
    if not trainer.ranks.is_main:
        return
    row = {
        "world_size": trainer.ranks.world,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "model": args.model,
        "overrides": args.overrides,
        "timed_steps": args.steps,
        "seconds_per_step": sum(seconds) / len(seconds),
        "peak_memory_gib_per_rank": peaks,
        "tokens_last_step": metrics["tokens/generated"],
    }
    print("| world size | device | s/step | peak GiB per rank |\n|---|---|---|---|")
    print(
        f"| {row['world_size']} | {row['device']} | {row['seconds_per_step']:.2f} | "
        + ", ".join("n/a" if p is None else f"{p:.2f}" for p in peaks)
        + " |"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.write_text(json.dumps([*rows, row], indent=2))


if __name__ == "__main__":
    main()
