"""Rollout throughput: HFEngine against plain `model.generate` on the same batch, and vLLM with --vllm.

Both decode the same 64 sequences (8 arithmetic prompts x 8 samples) with the same seed, sampling
settings and precision, so they generate the same tokens; the difference is the engine's bookkeeping
(warping and recording log-probs, per-sequence limits, splitting results). Target: at most 10% overhead.
With --vllm (run it in the vLLM venv) the same workload also runs on masa's VLLMEngine (in-process, same
dtype as the HF runners, seeded per round); targets: >= 2x HFEngine tokens/s on CPU, >= 10x on a GPU.

    .venv/bin/python benchmarks/engine_throughput.py
    .venv-vllm/bin/python benchmarks/engine_throughput.py --vllm
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from timing import print_table, time_runners, workload_parser
from transformers import GenerationConfig

from masa.config import RolloutConfig
from masa.data.arithmetic import arithmetic_splits
from masa.models import cpu_name, load_model, resolve_autocast
from masa.prompts import DEFAULT_SOLUTION_TEMPLATE, encode_user_message, solution_prompt
from masa.rollout import build_engine
from masa.rollout.engine import HFEngine
from masa.rollout.types import SamplingParams
from masa.update import TrainSequence, pack, token_logprobs

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = workload_parser(__doc__)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--vllm", action="store_true", help="also time VLLMEngine (needs vLLM installed)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    model, tokenizer = load_model(args.model)
    model.to(device)
    autocast = resolve_autocast("auto", device)
    engine = HFEngine(model, tokenizer, max_batch_sequences=args.problems * args.n, autocast_dtype=autocast)
    problems = arithmetic_splits(seed=0, n_train=10, n_eval=args.problems)[1]
    prompts = [
        encode_user_message(tokenizer, solution_prompt(p.prompt, DEFAULT_SOLUTION_TEMPLATE)) for p in problems
    ]
    expanded = [ids for ids in prompts for _ in range(args.n)]
    width = max(map(len, expanded))
    input_ids = torch.tensor(
        [[tokenizer.pad_token_id] * (width - len(x)) + x for x in expanded], device=device
    )
    attention_mask = (
        (torch.arange(width)[None, :] >= torch.tensor([width - len(x) for x in expanded])[:, None])
        .long()
        .to(device)
    )
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
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=plain_config
            )
        completions = out[:, width:]
        is_end = torch.isin(completions, torch.tensor(engine.eos_ids, device=device))
        ended = is_end.any(1)
        lengths = torch.where(ended, is_end.int().argmax(1) + 1, completions.shape[1])
        return int(lengths.sum())

    def ours() -> int:
        groups = engine.generate(prompts, args.n, params)
        return sum(r.num_tokens for g in groups for r in g)

    model.eval()
    runners = {"plain generate": plain, "HFEngine": ours}
    result: dict = {"settings": vars(args)}
    if args.vllm:
        # Same weights and precision as the HF runners: the dtype autocast gives them.
        dtype = {None: "fp32", torch.bfloat16: "bf16"}[autocast]
        vllm_engine = build_engine(
            RolloutConfig(engine="vllm", dtype=dtype), model, tokenizer, model_source=args.model
        )
        seeds = iter(range(10**6))
        result["vllm_dtype"] = dtype

        def on_vllm() -> int:
            groups = vllm_engine.generate(prompts, args.n, params, seed=next(seeds))
            return sum(r.num_tokens for g in groups for r in g)

        runners["VLLMEngine"] = on_vllm
    rows = time_runners(runners, args.repeats)
    print(
        f"\n{args.problems} prompts x {args.n} samples, max {args.max_new_tokens} new tokens, autocast={autocast}, "
        f"{device} ({cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name()})"
    )
    print_table(rows, "runner")
    seconds = {row["runner"]: row["median_seconds"] for row in rows}
    speed = {row["runner"]: row["tokens_per_second"] for row in rows}
    result["overhead"] = seconds["HFEngine"] / seconds["plain generate"] - 1
    print(f"engine overhead on wall time: {result['overhead'] * 100:+.1f}% (target <= +10%)")
    if args.vllm:
        result["vllm_speedup"] = speed["VLLMEngine"] / speed["HFEngine"]
        target = 10 if device.type == "cuda" else 2
        print(f"VLLMEngine / HFEngine tokens/s: {result['vllm_speedup']:.2f}x (target >= {target}x)")
        result["logprob_gap"] = _logprob_gap(
            model, tokenizer, vllm_engine.generate(prompts, 2, params, seed=0), params
        )
        print(
            f"vLLM ({dtype}) sampled-token log-probs vs an fp32 HF recomputation: mean |gap| "
            f"{result['logprob_gap']['mean']:.2e}, max {result['logprob_gap']['max']:.2e}"
        )
    result["rows"] = rows
    name = "engine_throughput" + ("_vllm" if args.vllm else "") + ("_cuda" if device.type == "cuda" else "")
    out = ROOT / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


def _logprob_gap(model, tokenizer, groups, params: SamplingParams) -> dict[str, float]:
    """|vLLM's log-prob - the fp32 policy's| over every sampled token (what the trainer's old log-probs see)."""
    rollouts = [r for g in groups for r in g]
    batch = pack(
        [
            TrainSequence(r.prompt_ids, r.completion_ids, 0.0, temperature=params.temperature)
            for r in rollouts
        ],
        tokenizer.pad_token_id,
        model.device,
    )
    with torch.no_grad():
        recomputed = token_logprobs(model, batch).cpu()
    gaps = torch.cat(
        [(torch.tensor(r.logprobs) - recomputed[i, : r.num_tokens]).abs() for i, r in enumerate(rollouts)]
    )
    return {"mean": float(gaps.mean()), "max": float(gaps.max()), "tokens": int(gaps.numel())}


if __name__ == "__main__":
    main()
