"""Rollout throughput: HFEngine against plain `model.generate` on the same batch.

Both decode the same 64 sequences (8 arithmetic prompts x 8 samples) with the same seed, sampling
settings and precision, so they generate the same tokens; the difference is the engine's bookkeeping
(warping and recording log-probs, per-sequence limits, splitting results). Target: at most 10% overhead.

    .venv/bin/python benchmarks/engine_throughput.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from timing import print_table, time_runners, workload_parser
from transformers import GenerationConfig

from masa.data.arithmetic import arithmetic_splits
from masa.models import load_model, resolve_autocast
from masa.prompts import DEFAULT_SOLUTION_TEMPLATE, encode_user_message, solution_prompt
from masa.rollout.engine import HFEngine
from masa.rollout.types import SamplingParams

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = workload_parser(__doc__)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    autocast = resolve_autocast("auto", torch.device("cpu"))
    engine = HFEngine(model, tokenizer, max_batch_sequences=args.problems * args.n, autocast_dtype=autocast)
    problems = arithmetic_splits(seed=0, n_train=10, n_eval=args.problems)[1]
    prompts = [
        encode_user_message(tokenizer, solution_prompt(p.prompt, DEFAULT_SOLUTION_TEMPLATE)) for p in problems
    ]
    expanded = [ids for ids in prompts for _ in range(args.n)]
    width = max(map(len, expanded))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in expanded])
    attention_mask = (
        torch.arange(width)[None, :] >= torch.tensor([width - len(x) for x in expanded])[:, None]
    ).long()
    params = SamplingParams(args.temperature, 1.0, args.max_new_tokens)
    plain_config = GenerationConfig(
        do_sample=True,
        temperature=args.temperature,
        top_p=1.0,
        max_new_tokens=args.max_new_tokens,
        eos_token_id=engine.eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )

    def plain() -> int:
        with torch.no_grad(), torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=plain_config
            )
        completions = out[:, width:]
        is_end = torch.isin(completions, torch.tensor(engine.eos_ids))
        ended = is_end.any(1)
        lengths = torch.where(ended, is_end.int().argmax(1) + 1, torch.tensor(completions.shape[1]))
        return int(lengths.sum())

    def ours() -> int:
        groups = engine.generate(prompts, args.n, params)
        return sum(r.num_tokens for g in groups for r in g)

    model.eval()
    rows = time_runners({"plain generate": plain, "HFEngine": ours}, args.repeats)
    print(
        f"\n{args.problems} prompts x {args.n} samples, max {args.max_new_tokens} new tokens, autocast={autocast}"
    )
    print_table(rows, "runner")
    seconds = {row["runner"]: row["median_seconds"] for row in rows}
    overhead = seconds["HFEngine"] / seconds["plain generate"] - 1
    print(f"engine overhead on wall time: {overhead * 100:+.1f}% (target <= +10%)")
    out = ROOT / "results" / "engine_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "rows": rows, "overhead": overhead}, indent=2))


if __name__ == "__main__":
    main()
