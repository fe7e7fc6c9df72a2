"""What the number-only answer check costs the untrained model: its greedy answers to one seed's held-out
arithmetic problems, scored with math-verify's equivalence and as plain numbers, and every answer the two
score differently.

    python benchmarks/number_only_base.py --seed 0 --problems 50
"""

from __future__ import annotations

import argparse

import torch

from masa.data.arithmetic import arithmetic_splits
from masa.models import load_model
from masa.prompts import encode_user_message, solution_prompt
from masa.rollout.engine import HFEngine
from masa.rollout.types import SamplingParams
from masa.verify import check_answer, extract_answer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    model.eval()
    _, problems = arithmetic_splits(seed=args.seed, n_eval=args.problems)
    engine = HFEngine(model, tokenizer, max_batch_sequences=64)
    prompts = [encode_user_message(tokenizer, solution_prompt(p.prompt)) for p in problems]
    groups = engine.generate(prompts, 1, SamplingParams(0.0, 1.0, 64))
    equivalent = number_only = 0
    for problem, (rollout,) in zip(problems, groups, strict=True):
        text = tokenizer.decode(rollout.completion_ids, skip_special_tokens=True)
        before = check_answer(text, problem.answer)
        after = check_answer(text, problem.answer, number_only=True)
        equivalent, number_only = equivalent + before, number_only + after
        if before != after:
            print(f"{problem.prompt!r}: answer {extract_answer(text)!r}, reference {problem.answer}")
    print(f"| check | correct of {len(problems)} |\n|---|---|")
    print(f"| math-verify equivalence | {equivalent} |\n| number only | {number_only} |")


if __name__ == "__main__":
    main()
