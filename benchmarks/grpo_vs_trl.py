"""Seconds per GRPO step: masa against TRL's GRPOTrainer, same model, batch, group size and lengths.

Workload (the issue's): SmolLM2-135M-Instruct, 8 arithmetic problems x 8 completions, at most 32
completion tokens, temperature 0.7, clip 0.2/0.28, no KL, one optimisation pass per batch. TRL runs with
its defaults otherwise (fp32, gradient checkpointing on), then with bf16; masa runs in fp32 and with its
default precision (bf16 autocast on CPUs with native bf16). The first step of each run is a warm-up and is
not counted. Needs `pip install -e ".[bench]"` (trl==1.16.0).

    .venv/bin/python benchmarks/grpo_vs_trl.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def masa_seconds(precision: str, steps: int, args: argparse.Namespace) -> list[float]:
    from masa.config import load_config
    from masa.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            overrides=[
                f"model.name={args.model}",
                f"model.precision={precision}",
                f"train.output_dir={tmp}",
                "data.eval=null",
                f"train.batch_problems={args.problems}",
                f"rollout.n={args.n}",
                f"rollout.max_new_tokens={args.max_tokens}",
                f"rollout.max_batch_sequences={args.problems * args.n}",
                "algo.lr=1e-6",
                "algo.warmup_steps=0",
            ]
        )
        trainer = Trainer(config, run_dir=Path(tmp) / "run")
        times = [trainer.train_step()["perf/step_seconds"] for _ in range(steps + 1)]
        trainer.writer.close()
    return times[1:]


def trl_seconds(bf16: bool, steps: int, args: argparse.Namespace) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from masa.data.arithmetic import arithmetic_splits
    from masa.models import load_model
    from masa.prompts import DEFAULT_SOLUTION_TEMPLATE, solution_prompt
    from masa.verify import check_answer

    problems = arithmetic_splits(seed=0, n_train=args.problems * (steps + 2), n_eval=1)[0]
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": solution_prompt(p.prompt, DEFAULT_SOLUTION_TEMPLATE)}],
                "answer": p.answer,
            }
            for p in problems
        ]
    )

    def reward(completions, answer, **_):
        return [float(check_answer(c[0]["content"], a)) for c, a in zip(completions, answer, strict=True)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *_, **__):
            self._start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self._start)

    model, tokenizer = load_model(args.model)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=args.problems * args.n,
            num_generations=args.n,
            max_completion_length=args.max_tokens,
            temperature=0.7,
            learning_rate=1e-6,
            epsilon=0.2,
            epsilon_high=0.28,
            beta=0.0,
            max_steps=steps + 1,
            use_cpu=True,
            bf16=bf16,
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            shuffle_dataset=False,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tokenizer
        )
        trainer.add_callback(timer)
        trainer.train()
    return timer.times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--model", default="smollm2-135m-instruct", help="tiny-random: a seconds-long smoke run"
    )
    args = parser.parse_args()

    runs = {
        "TRL GRPOTrainer, fp32 (default)": lambda: trl_seconds(False, args.steps, args),
        "TRL GRPOTrainer, bf16": lambda: trl_seconds(True, args.steps, args),
        "masa, fp32": lambda: masa_seconds("fp32", args.steps, args),
        "masa, default precision (auto)": lambda: masa_seconds("auto", args.steps, args),
    }
    results = {}
    for name, run in runs.items():
        times = run()
        results[name] = {"step_seconds": times, "median": statistics.median(times)}
        print(f"{name}: {[round(t, 1) for t in times]}", flush=True)

    trl_default = results["TRL GRPOTrainer, fp32 (default)"]["median"]
    print(
        f"\n{args.problems} problems x {args.n} completions, <= {args.max_tokens} tokens; median seconds per step"
    )
    print("| runner | s/step | vs TRL default |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['median']:.1f} | {r['median'] / trl_default:.2f}x |")
    if args.model != "smollm2-135m-instruct":
        return
    out = ROOT / "results" / "grpo_vs_trl.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
