"""A rollout engine that plays scripted completions, so trainer behaviour can be checked exactly."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from masa.data.problem import Problem
from masa.rollout.types import FinishReason, Rollout, SamplingParams

Script = Callable[[Problem, int], str]


class ScriptedEngine:
    """Answers each prompt with ``solution(problem, j)`` or ``meta(problem, j)`` for the j-th sample.

    With ``belief``, meta samples come with that distribution over the engine's watched tokens (the
    count digits) at every position. Meta prompts are recognised by the "pass_rate" key they ask for (JSON-only ones have no <meta>). Token limits are honoured like the real
    engine: a completion longer than its limit is truncated and reported as CUTOFF or LENGTH.
    """

    def __init__(
        self,
        tokenizer,
        problems: Sequence[Problem],
        solution: Script,
        meta: Script,
        belief: Callable[[Problem, int], list[float]] | None = None,
    ):
        self.tokenizer = tokenizer
        self.belief = belief
        self.problems = sorted(problems, key=lambda p: -len(p.prompt))
        self.solution = solution
        self.meta = meta
        self.solution_calls: list[list[Problem]] = []
        self.meta_calls: list[list[Problem]] = []
        self.weights_version = 0

    def load_weights(self, named_tensors, version: int) -> None:
        self.weights_version = version

    def close(self) -> None:
        pass

    def _problem(self, text: str) -> Problem:
        return next(p for p in self.problems if p.prompt in text)

    def generate(
        self, prompts, n: int, params: SamplingParams, max_tokens=None, seed=None
    ) -> list[list[Rollout]]:
        texts = [self.tokenizer.decode(ids) for ids in prompts]
        is_meta = ['"pass_rate"' in t for t in texts]
        problems = [self._problem(t) for t in texts]
        (self.meta_calls if all(is_meta) else self.solution_calls).append(problems)
        out = []
        for i, (ids, problem) in enumerate(zip(prompts, problems, strict=True)):
            limit = params.max_new_tokens if max_tokens is None else min(max_tokens[i], params.max_new_tokens)
            group = []
            for j in range(n):
                script = self.meta if is_meta[i] else self.solution
                tokens = self.tokenizer(script(problem, j), add_special_tokens=False)["input_ids"]
                tokens.append(self.tokenizer.eos_token_id)
                reason = FinishReason.STOP
                if len(tokens) > limit:
                    tokens = tokens[:limit]
                    reason = FinishReason.CUTOFF if limit < params.max_new_tokens else FinishReason.LENGTH
                watched = None
                if params.watch_token_ids and self.belief is not None:
                    # The scripted model holds the same belief over the watched tokens at every position.
                    row = [math.log(p) if p > 0 else -math.inf for p in self.belief(problem, j)]
                    watched = [row] * len(tokens)
                group.append(Rollout(list(ids), tokens, [-1.0] * len(tokens), reason, watched))
            out.append(group)
        return out
