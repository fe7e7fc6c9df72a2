"""Rollout engines: sample completions with their log-probabilities and a per-prompt token limit."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from masa.models import autocast_context
from masa.rollout.types import FinishReason, GenerationRequest, Rollout, SamplingParams


class RolloutEngine(Protocol):
    """What the trainer and evaluator need from a generator (``HFEngine``, ``VLLMEngine``).

    An engine either shares the policy module (HF: nothing to send) or holds its own copy of the weights
    (vLLM, or a future remote ``vllm serve`` fleet): ``load_weights`` replaces that copy and records the
    policy version it now holds, so a trainer can refuse to sample from a stale engine.
    """

    weights_version: int

    def generate(
        self,
        prompts: Sequence[list[int]],
        n: int,
        params: SamplingParams,
        max_tokens: Sequence[int] | None = None,
        seed: int | None = None,
    ) -> list[list[Rollout]]:
        """``n`` completions of each prompt; ``max_tokens[i]`` caps prompt i's completions below
        ``params.max_new_tokens`` (finish reason CUTOFF when it bites). With a ``seed`` the samples
        depend on it alone, not on (and without changing) the global RNG."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Hold these weights (checkpoint names, as ``model.named_parameters()``) as policy ``version``."""
        ...

    def close(self) -> None:
        """Release what the engine holds (workers, memory, process groups); it generates no more."""
        ...


def generate_together(
    engine: RolloutEngine, requests: Sequence[GenerationRequest]
) -> list[list[list[Rollout]]]:
    """Each request's groups, as ``generate`` would return them; an engine with ``generate_many`` (vLLM)
    schedules all requests in one batch, so short completions decode beside long ones rather than after.

    Each sequence still draws from its own request's seed, but a batching engine's numerics can depend
    on what else is in the batch, so the samples may differ slightly from separate calls.
    """
    batched = getattr(engine, "generate_many", None)
    if batched is not None:
        return batched(requests)
    return [engine.generate(r.prompts, r.n, r.params, max_tokens=r.max_tokens, seed=r.seed) for r in requests]


def prompt_limits(
    prompts: Sequence[list[int]], params: SamplingParams, max_tokens: Sequence[int] | None
) -> list[int]:
    """Each prompt's token limit: its own ``max_tokens`` entry, clamped to [1, ``params.max_new_tokens``]."""
    if max_tokens is not None and len(max_tokens) != len(prompts):
        raise ValueError(f"max_tokens has {len(max_tokens)} entries for {len(prompts)} prompts")
    if max_tokens is None:
        return [params.max_new_tokens] * len(prompts)
    return [max(1, min(int(limit), params.max_new_tokens)) for limit in max_tokens]


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends a completion: the generation config's EOS ids and the tokenizer's."""
    return combine_eos_ids(model.generation_config.eos_token_id, tokenizer)


def combine_eos_ids(eos: int | list[int] | None, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if i is not None)


def limit_reason(limit: int, params: SamplingParams) -> FinishReason:
    """Why a completion that reached its limit stopped: its own cutoff, or the global maximum."""
    return FinishReason.CUTOFF if limit < params.max_new_tokens else FinishReason.LENGTH


class _SampleAndRecord(LogitsProcessor):
    """Applies temperature and top-p itself, then records each chosen token's log-probability.

    transformers runs user processors before its own warpers, so a recorder placed there would see the
    un-warped logits; owning the warping makes the recorded value the probability the token was actually
    sampled with. A processor only learns which token was chosen at the next call, so it keeps the previous
    step's log-probabilities and gathers then; ``finish`` gathers the last step.
    """

    def __init__(self, temperature: float, top_p: float, watch: Sequence[int] = ()):
        self._watch = list(watch)
        self.watched: list[torch.Tensor] = []
        self._warpers = []
        if temperature > 0:
            self._warpers.append(TemperatureLogitsWarper(temperature))
            if top_p < 1.0:
                self._warpers.append(TopPLogitsWarper(top_p))
        self._previous: torch.Tensor | None = None
        self.chosen_logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._watch:  # before the warpers: the model's own distribution, whatever the temperature
            self.watched.append(torch.log_softmax(scores[:, self._watch].float(), dim=-1))
        for warp in self._warpers:
            scores = warp(input_ids, scores)
        self._gather(input_ids[:, -1])
        self._previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _gather(self, tokens: torch.Tensor) -> None:
        if self._previous is not None:
            self.chosen_logprobs.append(self._previous.gather(1, tokens[:, None]).squeeze(1))

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        self._gather(sequences[:, -1])
        self._previous = None
        return torch.stack(self.chosen_logprobs, dim=1)


class _PerSequenceLimit(StoppingCriteria):
    def __init__(self, prompt_length: int, limits: torch.Tensor):
        self.prompt_length = prompt_length
        self.limits = limits

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_length) >= self.limits


class HFEngine:
    """Batched ``model.generate`` with left padding and a KV cache.

    Sequences are decoded in chunks of at most ``max_batch_sequences`` so memory stays bounded; each
    sequence stops at its own token limit, so a cut-off rollout never produces tokens past it.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_sequences: int = 64,
        autocast_dtype: torch.dtype | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_sequences = max_batch_sequences
        self.autocast_dtype = autocast_dtype
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.weights_version = 0

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Nothing to copy: this engine samples from the policy module itself."""
        self.weights_version = version

    def close(self) -> None:
        """Nothing to release: the policy module is the trainer's."""

    def generate(
        self,
        prompts: Sequence[list[int]],
        n: int,
        params: SamplingParams,
        max_tokens: Sequence[int] | None = None,
        seed: int | None = None,
    ) -> list[list[Rollout]]:
        if seed is None:
            return self._generate(prompts, n, params, max_tokens)
        device = self.model.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return self._generate(prompts, n, params, max_tokens)

    @torch.no_grad()
    def _generate(
        self,
        prompts: Sequence[list[int]],
        n: int,
        params: SamplingParams,
        max_tokens: Sequence[int] | None,
    ) -> list[list[Rollout]]:
        limits = prompt_limits(prompts, params, max_tokens)
        jobs = [(i, limits[i]) for i in range(len(prompts)) for _ in range(n)]
        results: list[list[Rollout]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(jobs), self.max_batch_sequences):
                chunk = jobs[start : start + self.max_batch_sequences]
                for (prompt_index, _), rollout in zip(
                    chunk, self._generate_chunk(prompts, chunk, params), strict=True
                ):
                    results[prompt_index].append(rollout)
        finally:
            self.model.train(was_training)
        return results

    def _generate_chunk(
        self, prompts: Sequence[list[int]], chunk: list[tuple[int, int]], params: SamplingParams
    ) -> Iterator[Rollout]:
        device = self.model.device
        width = max(len(prompts[i]) for i, _ in chunk)
        input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (i, _) in enumerate(chunk):
            ids = prompts[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        limits = torch.tensor([limit for _, limit in chunk], device=device)
        recorder = _SampleAndRecord(params.temperature, params.top_p, params.watch_token_ids)
        config = GenerationConfig(
            do_sample=params.temperature > 0,
            # Temperature, top-p and top-k stay unset: the recorder warps, and generate must not warp again.
            max_new_tokens=int(limits.max()),
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        with autocast_context(self.model.device.type, self.autocast_dtype):
            sequences = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
                logits_processor=LogitsProcessorList([recorder]),
                stopping_criteria=StoppingCriteriaList([_PerSequenceLimit(width, limits)]),
            )
        logprobs = recorder.finish(sequences).cpu()
        watched = torch.stack(recorder.watched, dim=1).cpu() if recorder.watched else None
        completions = sequences[:, width:].cpu()
        eos = torch.tensor(self.eos_ids)
        for row, (i, limit) in enumerate(chunk):
            tokens = completions[row, :limit]
            is_eos = torch.isin(tokens, eos).nonzero()
            # Rows that stopped early are padded with the pad token, which may equal EOS; only an EOS before
            # the row's own limit can have been sampled, and the first one ends the completion.
            if len(is_eos):
                length, reason = int(is_eos[0]) + 1, FinishReason.STOP
            else:
                length, reason = len(tokens), limit_reason(limit, params)
            yield Rollout(
                prompt_ids=list(prompts[i]),
                completion_ids=tokens[:length].tolist(),
                logprobs=logprobs[row, :length].tolist(),
                finish_reason=reason,
                watched_logprobs=watched[row, :length].tolist() if watched is not None else None,
            )
