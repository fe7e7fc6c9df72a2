"""The policy update: clipped-ratio policy gradient over sampled sequences, token-mean within each kind.

One optimiser step minimises ``L = sum_k w_k * L_k`` over the kinds of sequence in the batch: solution
rollouts, meta rollouts (MASA) and expert meta targets (supervised, MASA's expert SFT). Each ``L_k`` is the
token-mean of its own kind, so the share of the update a kind gets is its weight, not its token count.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedModel

from masa.distributed import SINGLE_PROCESS, Ranks
from masa.models import autocast_context

KINDS = ("solution", "meta", "expert")
"""Sequence kinds, in the order their micro-batches run. ``expert`` rows are supervised targets."""


@dataclass
class TrainSequence:
    """One sampled completion with the advantage it is trained towards."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    kind: str = "solution"
    token_advantages: list[float] | None = None
    """Per completion token, replacing ``advantage`` (field-level credit of meta rewards)."""
    sampler_logprobs: list[float] | None = None
    """The engine's log-probability of each completion token when it was sampled (for off-policy
    correction when the sampler is not the policy module itself, e.g. vLLM)."""
    temperature: float = 1.0
    """The temperature the completion was sampled at; its log-probs are taken under the same one."""

    @property
    def has_signal(self) -> bool:
        if self.kind == "expert":
            return True
        if self.token_advantages is not None:
            return any(a != 0.0 for a in self.token_advantages)
        return self.advantage != 0.0


@dataclass
class PackedBatch:
    """Sequences laid out for the forward pass: prompt rows, and completion rows that each continue one.

    Completion row b continues prompt row ``prompt_index[b]``. Unshared, every completion has a prompt row
    of its own; shared, the completions of one prompt point at a single row, which is forwarded once,
    followed by all of them (``_shared_prompt_logprobs``). Every per-token tensor is (B, C), aligned with
    ``completion_ids``, whatever the prompt layout.
    """

    prompt_ids: torch.Tensor  # (U, P), padded on the left
    prompt_mask: torch.Tensor  # (U, P) long, 1 on real prompt tokens
    prompt_index: torch.Tensor  # (B,) the prompt row of each completion
    completion_ids: torch.Tensor  # (B, C), padded on the right
    completion_mask: torch.Tensor  # (B, C) float, 1 on real completion tokens
    advantages: torch.Tensor  # (B, C): each row's advantage, or its per-token advantages
    temperatures: torch.Tensor  # (B,)
    shared_layout: SharedLayout | None = None  # the shared rows, or None for one row per completion
    sampler_logprobs: torch.Tensor | None = None  # (B, C); NaN on rows the engine did not sample (expert)

    @property
    def shared(self) -> bool:
        return self.shared_layout is not None

    @property
    def input_ids(self) -> torch.Tensor:
        """(B, P + C): each completion after its own copy of its prompt, as an unshared forward sees it."""
        return torch.cat([self.prompt_ids[self.prompt_index], self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask[self.prompt_index], self.completion_mask.long()], dim=1)


MAX_SHARED_ROW_TOKENS = 4096
"""Longest row of the shared layout. A row's attention grows with the square of its length while its
completions never attend to each other, so past this a prompt opens a new row rather than growing one. At
the paper's lengths (solutions of 4k-8k tokens) a row then holds one completion: there the prompt is a few
percent of the tokens, so little sharing is lost."""


def pack(
    sequences: Sequence[TrainSequence],
    pad_id: int,
    device: torch.device | str = "cpu",
    *,
    share_prompts: bool = False,
    max_shared_row: int = MAX_SHARED_ROW_TOKENS,
) -> PackedBatch:
    """Lay ``sequences`` out for one forward; ``share_prompts`` gives the completions of one prompt a
    single row (more than one if they would make it longer than ``max_shared_row`` tokens).

    Either layout is a single forward pass, so under FSDP (where each forward all-gathers the parameters
    and every rank must gather alike) ranks stay in step whichever layout their micro-batches get.
    """
    plan = _RowPlan(share_prompts, max_shared_row).added(sequences)
    prompt_index, prompts = plan.index, plan.prompts
    prompt_ids = torch.full((len(prompts), max(len(p) for p in prompts)), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    for row, prompt in enumerate(prompts):
        if prompt:
            prompt_ids[row, -len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            prompt_mask[row, -len(prompt) :] = 1
    width = max(len(s.completion_ids) for s in sequences)
    completion_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros(len(sequences), width)
    for row, seq in enumerate(sequences):
        completion_ids[row, : len(seq.completion_ids)] = torch.tensor(seq.completion_ids, dtype=torch.long)
        completion_mask[row, : len(seq.completion_ids)] = 1.0
    advantages = torch.zeros((len(sequences), width), dtype=torch.float32)
    for row, seq in enumerate(sequences):
        if seq.token_advantages is None:
            advantages[row] = seq.advantage
        else:
            if len(seq.token_advantages) != len(seq.completion_ids):
                raise ValueError(
                    f"{len(seq.token_advantages)} token advantages for {len(seq.completion_ids)} tokens"
                )
            advantages[row, : len(seq.token_advantages)] = torch.tensor(seq.token_advantages)
    sampler = None
    if any(s.sampler_logprobs is not None for s in sequences):
        sampler = torch.full((len(sequences), width), math.nan, dtype=torch.float32)
        for row, seq in enumerate(sequences):
            if seq.sampler_logprobs is not None:
                sampler[row, : len(seq.sampler_logprobs)] = torch.tensor(
                    seq.sampler_logprobs, dtype=torch.float32
                )
        sampler = sampler.to(device)
    shared = plan.shared
    return PackedBatch(
        prompt_ids=prompt_ids.to(device),
        prompt_mask=prompt_mask.to(device),
        prompt_index=torch.tensor(prompt_index, dtype=torch.long, device=device),
        completion_ids=completion_ids.to(device),
        completion_mask=completion_mask.to(device),
        advantages=advantages.to(device),
        temperatures=torch.tensor([s.temperature for s in sequences], dtype=torch.float32, device=device),
        shared_layout=SharedLayout(prompts, prompt_index, sequences, width, device) if shared else None,
        sampler_logprobs=sampler,
    )


def forward_tokens(
    sequences: Sequence[TrainSequence], *, share_prompts: bool, max_shared_row: int = MAX_SHARED_ROW_TOKENS
) -> int:
    """Token positions the forward of ``pack(sequences, ...)`` runs, padding included."""
    return _RowPlan(share_prompts, max_shared_row).added(sequences).forward_tokens()


class _RowPlan:
    """The rows ``pack`` lays sequences out in, built one sequence at a time, and the size of their forward.

    Shared, a prompt's completions fill its newest row in turn (each adds all its tokens but the last) until
    the next would pass ``max_row``; then it opens another. Unshared, every sequence has a row of its own.
    One sequence at a time, so that micro-batches can grow under a token cap without re-planning each one.
    """

    def __init__(self, share_prompts: bool, max_row: int = MAX_SHARED_ROW_TOKENS):
        self.share_prompts = share_prompts
        self.max_row = max_row
        self.index: list[int] = []  # each sequence's row
        self.prompts: list[list[int]] = []  # each row's prompt
        self.lengths: list[int] = []  # each row's length in the shared layout
        self.newest: dict[tuple[int, ...], int] = {}  # a prompt's newest row
        self.prompts_nonempty = True
        self.longest_row = self.longest_prompt = self.longest_completion = 0

    def _place(self, seq: TrainSequence) -> tuple[int, int]:
        """The row ``seq`` would join and that row's length with it."""
        added = max(len(seq.completion_ids) - 1, 0)
        row = self.newest.get(tuple(seq.prompt_ids), -1) if self.share_prompts else -1
        if row >= 0 and self.lengths[row] + added <= self.max_row:
            return row, self.lengths[row] + added
        return len(self.prompts), len(seq.prompt_ids) + added

    def add(self, seq: TrainSequence) -> None:
        row, length = self._place(seq)
        if row == len(self.prompts):
            self.prompts.append(list(seq.prompt_ids))
            self.lengths.append(length)
            if self.share_prompts:
                self.newest[tuple(seq.prompt_ids)] = row
            self.prompts_nonempty = self.prompts_nonempty and bool(seq.prompt_ids)
        self.lengths[row] = length
        self.index.append(row)
        self.longest_row = max(self.longest_row, length)
        self.longest_prompt = max(self.longest_prompt, len(seq.prompt_ids))
        self.longest_completion = max(self.longest_completion, len(seq.completion_ids))

    def added(self, sequences: Sequence[TrainSequence]) -> _RowPlan:
        """This plan with ``sequences`` added."""
        for seq in sequences:
            self.add(seq)
        return self

    def extended(self, sequences: Sequence[TrainSequence]) -> _RowPlan:
        """A copy of this plan with ``sequences`` added."""
        return copy.deepcopy(self).added(sequences)

    @property
    def shared(self) -> bool:
        # A shared row needs a prompt position to predict each completion's first token.
        return len(self.prompts) < len(self.index) and self.prompts_nonempty

    def forward_tokens(self, extra: TrainSequence | None = None) -> int:
        """Token positions ``pack``'s forward runs for the sequences added (and ``extra``, were it added)."""
        count, rows, nonempty, longest_row = (
            len(self.index),
            len(self.prompts),
            self.prompts_nonempty,
            self.longest_row,
        )
        longest_prompt, longest_completion = self.longest_prompt, self.longest_completion
        if extra is not None:
            row, length = self._place(extra)
            count += 1
            if row == rows:
                rows += 1
                nonempty = nonempty and bool(extra.prompt_ids)
            longest_row = max(longest_row, length)
            longest_prompt = max(longest_prompt, len(extra.prompt_ids))
            longest_completion = max(longest_completion, len(extra.completion_ids))
        if rows < count and nonempty:
            return rows * longest_row
        return count * (longest_prompt + longest_completion)


def token_logprobs(model: PreTrainedModel, batch: PackedBatch) -> torch.Tensor:
    """(B, C): log pi(token) at every completion position, under the temperature each was sampled at."""
    if batch.shared:
        return _shared_prompt_logprobs(model, batch)
    attention_mask = batch.attention_mask
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=attention_mask,
        position_ids=_positions(attention_mask),
        logits_to_keep=batch.completion_ids.shape[1] + 1,  # the lm-head runs only where completions are
        use_cache=False,
    ).logits[:, :-1]
    temperatures = batch.temperatures[:, None].expand_as(batch.completion_ids)
    return selected_logprobs(logits, batch.completion_ids, temperatures)


LOGPROB_CHUNK_ELEMENTS = 1 << 24
"""Logits converted to float32 at a time by ``selected_logprobs`` (64 MB)."""


def selected_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperatures: torch.Tensor
) -> torch.Tensor:
    """``log_softmax(logits / temperatures)`` at ``targets``, shape ``targets.shape``, in float32 at least.

    The obvious form keeps float32 copies of the whole (tokens, vocabulary) logits for the backward: 12 bytes
    per vocabulary entry per token at peak, as much as all of a small model's activations. This keeps only
    the logits as the model returned them (2 bytes in bf16) and each token's log-normaliser, and recomputes
    the softmax a chunk at a time in the backward; the values are the same.
    """
    vocab = logits.shape[-1]
    return _SelectedLogprobs.apply(
        logits.reshape(-1, vocab), targets.reshape(-1), temperatures.reshape(-1).to(_working_dtype(logits))
    ).view(targets.shape)


def _working_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


class _SelectedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
        chosen = torch.empty(logits.shape[0], dtype=_working_dtype(logits), device=logits.device)
        normalisers = torch.empty_like(chosen)
        for rows in _row_chunks(logits):
            scaled = logits[rows].to(chosen.dtype) / temperatures[rows, None]
            normalisers[rows] = torch.logsumexp(scaled, dim=-1)
            chosen[rows] = scaled.gather(-1, targets[rows, None]).squeeze(-1)
        ctx.save_for_backward(logits, targets, temperatures, normalisers)
        return chosen - normalisers

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets, temperatures, normalisers = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        # d/dz_i of (z_target - logsumexp z) / T is (1[i = target] - softmax_i) / T.
        for rows in _row_chunks(logits):
            scale = (grad[rows] / temperatures[rows])[:, None]
            chunk = torch.exp(
                logits[rows].to(grad.dtype) / temperatures[rows, None] - normalisers[rows, None]
            )
            chunk = -chunk * scale
            chunk.scatter_add_(-1, targets[rows, None], scale)
            grad_logits[rows] = chunk
        return grad_logits, None, None


def _row_chunks(logits: torch.Tensor) -> list[slice]:
    step = max(1, LOGPROB_CHUNK_ELEMENTS // logits.shape[-1])
    return [slice(start, start + step) for start in range(0, logits.shape[0], step)]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # Positions count real tokens only, exactly as generate() numbers a left-padded prompt.
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _shared_prompt_logprobs(model: PreTrainedModel, batch: PackedBatch) -> torch.Tensor:
    """Each distinct prompt once, followed in the same row by every completion that continues it.

    A completion's tokens attend to its prompt and, causally, to themselves only (a 4D mask), and sit at the
    positions they would have right after the prompt, so each sees exactly what an unshared forward shows
    it: the same log-probs, from one row of P + sum(C_b - 1) tokens per prompt instead of B rows padded to
    P + C. Gradients of every completion reach the prompt's activations through its keys and values. The
    last prompt position predicts each completion's token 0; a completion's tokens 0..C-2 predict the rest
    (its last token is never an input), each read at its row position.
    """
    layout = batch.shared_layout
    assert layout is not None
    # The lm-head runs from the shortest prompt's last position on, not over every prompt token.
    offset = int(layout.last_prompt_positions.min())
    logits = model(
        input_ids=layout.input_ids,
        attention_mask=layout.attention_mask,
        position_ids=layout.position_ids,
        logits_to_keep=layout.input_ids.shape[1] - offset,
        use_cache=False,
    ).logits
    rows = torch.arange(logits.shape[0], device=logits.device)
    last_prompt_logits = _repeat_rows(logits[rows, layout.last_prompt_positions - offset], batch.prompt_index)
    first = selected_logprobs(last_prompt_logits, batch.completion_ids[:, 0], batch.temperatures)[:, None]
    if batch.completion_ids.shape[1] == 1:
        return first
    in_rows = selected_logprobs(logits, layout.next_tokens[:, offset:], layout.temperatures[:, offset:])
    rest = in_rows[batch.prompt_index[:, None], (layout.completion_positions - offset).clamp(min=0)]
    return torch.cat([first, rest], dim=1)


class SharedLayout:
    """The rows of ``_shared_prompt_logprobs``: prompt u, then each of its completions but the last token.

    Built once per micro-batch by ``pack``, from the token lists it lays out. ``attention_mask`` (U, 1, T, T)
    lets a token see the prompt and, causally, its own completion: it follows from each token's segment (0:
    the prompt, b + 1: completion b, -1: padding). ``completion_positions[b, t]`` is the row position of
    completion b's token t (t < C_b - 1), the position whose logits predict its token t + 1; that token and
    its completion's sampling temperature are ``next_tokens`` and ``temperatures`` at the position (0 and 1
    where no completion token is predicted: prompt and padding).
    """

    def __init__(
        self,
        prompts: list[list[int]],
        prompt_index: list[int],
        sequences: Sequence[TrainSequence],
        width: int,
        device: torch.device | str,
    ):
        tokens = [list(p) for p in prompts]
        positions = [list(range(len(p))) for p in prompts]
        segments = [[0] * len(p) for p in prompts]
        next_tokens = [[0] * len(p) for p in prompts]
        temperatures = [[1.0] * len(p) for p in prompts]
        completion_positions = torch.zeros(len(sequences), max(width - 1, 0), dtype=torch.long)
        for b, (u, seq) in enumerate(zip(prompt_index, sequences, strict=True)):
            inputs = seq.completion_ids[:-1]
            start = len(tokens[u])
            completion_positions[b, : len(inputs)] = torch.arange(start, start + len(inputs))
            tokens[u] += inputs
            positions[u] += range(len(prompts[u]), len(prompts[u]) + len(inputs))
            segments[u] += [b + 1] * len(inputs)
            next_tokens[u] += seq.completion_ids[1:]
            temperatures[u] += [seq.temperature] * len(inputs)
        row_width = max(len(t) for t in tokens)
        input_ids = torch.zeros(len(tokens), row_width, dtype=torch.long)
        position_ids = torch.zeros(len(tokens), row_width, dtype=torch.long)
        segment = torch.full((len(tokens), row_width), -1, dtype=torch.long)
        targets = torch.zeros(len(tokens), row_width, dtype=torch.long)
        row_temperatures = torch.ones(len(tokens), row_width, dtype=torch.float32)
        for u in range(len(tokens)):
            width_u = len(tokens[u])
            input_ids[u, :width_u] = torch.tensor(tokens[u], dtype=torch.long)
            position_ids[u, :width_u] = torch.tensor(positions[u], dtype=torch.long)
            segment[u, :width_u] = torch.tensor(segments[u], dtype=torch.long)
            targets[u, :width_u] = torch.tensor(next_tokens[u], dtype=torch.long)
            row_temperatures[u, :width_u] = torch.tensor(temperatures[u], dtype=torch.float32)
        query, key = segment[:, :, None], segment[:, None, :]
        causal = torch.ones(row_width, row_width, dtype=torch.bool).tril()
        # Padding queries see the prompt, so no softmax row is empty (NaN); nothing reads their outputs.
        mask = causal & (key >= 0) & ((key == 0) | (key == query))
        self.input_ids = input_ids.to(device)
        self.position_ids = position_ids.to(device)
        self.attention_mask = mask.unsqueeze(1).to(device)
        self.completion_positions = completion_positions.to(device)
        self.next_tokens = targets.to(device)
        self.temperatures = row_temperatures.to(device)
        self.last_prompt_positions = torch.tensor([len(p) - 1 for p in prompts], device=device)


def _repeat_rows(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[index]``, with a backward that sums each row's copies in a fixed order.

    Indexing with repeated indices backpropagates through an accumulating scatter whose order changes from
    run to run on a multi-threaded CPU, so a resumed run would not repeat the original bit for bit;
    expand's backward is an ordinary reduction, and the final permutation moves each row once.
    """
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=rows.shape[0]).tolist()
    grouped = torch.cat([rows[u : u + 1].expand(n, *rows.shape[1:]) for u, n in enumerate(counts) if n])
    return grouped.index_select(0, torch.argsort(order))


def honours_shared_layout(model: PreTrainedModel) -> bool:
    """Whether ``model`` applies a custom 4D attention mask, as the shared layout needs: two completions of
    one prompt get the same log-probabilities shared as unshared. A model that ignored the mask would let
    each completion attend to the other, and the update would be silently wrong."""
    prompt, completions = [1, 2, 3, 4, 5], [[6, 7, 8], [9, 10, 11, 12]]
    sequences = [TrainSequence(prompt, c, 0.0) for c in completions]
    device = next(model.parameters()).device
    shared = pack(sequences, pad_id=0, device=device, share_prompts=True)
    unshared = pack(sequences, pad_id=0, device=device)
    was_training = model.training
    model.eval()  # no dropout: the two layouts must see the same function
    try:
        with torch.no_grad():
            gap = (token_logprobs(model, shared) - token_logprobs(model, unshared)) * shared.completion_mask
    finally:
        model.train(was_training)
    return float(gap.abs().max()) < 1e-3


def truncated_importance_weights(
    old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """Per-token min(exp(old - sampler), cap), detached (TRL's vllm_importance_sampling_correction).

    The rollouts were drawn from the sampler's distribution, not exactly the policy's (other kernels and
    precision); weighting each token by pi_old / pi_sampler makes the gradient an estimate under the
    policy again, and the cap bounds the variance a token the sampler found unlikely would add.
    """
    return torch.exp(old_logprobs - sampler_logprobs).clamp(max=cap).detach()


@dataclass(frozen=True)
class LossStats:
    clip_low_fraction: float
    clip_high_fraction: float
    approx_kl: float
    ref_kl: float


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    normaliser: float,
    token_weights: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """PPO's pessimistic clipped objective with separate lower/upper clip ("clip-higher").

    Per token: max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high)) with r = exp(logp - old_logp).
    Token-mean aggregation: the sum over every masked token divided by ``normaliser``, the token count of
    the whole optimiser batch, so micro-batches with gradient accumulation give the same gradient as one
    big batch. ``advantages`` is per row (B,) or per token (B, C); ``token_weights`` (B,) scales rows.
    With ``kl_coef`` > 0, adds the k3 estimate of KL(pi || ref) per token. ``is_weights`` (per token, from
    ``truncated_importance_weights``) scale the policy-gradient term, not the KL term.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights
    ref_kl = torch.zeros((), device=logprobs.device)
    if ref_logprobs is not None and kl_coef > 0:
        delta = ref_logprobs - logprobs
        k3 = torch.exp(delta) - delta - 1.0
        per_token = per_token + kl_coef * k3
        ref_kl = (k3 * mask).sum()
    if token_weights is not None:
        per_token = per_token * token_weights.unsqueeze(-1)
    loss = (per_token * mask).sum() / normaliser
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1)
        low = ((ratio < 1.0 - clip_low) & (adv < 0)).float()
        high = ((ratio > 1.0 + clip_high) & (adv > 0)).float()
        stats = LossStats(
            clip_low_fraction=float((low * mask).sum() / tokens),
            clip_high_fraction=float((high * mask).sum() / tokens),
            approx_kl=float(((ratio - 1 - log_ratio) * mask).sum() / tokens),
            ref_kl=float(ref_kl / tokens),
        )
    return loss, stats


@dataclass(frozen=True)
class UpdateSettings:
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0
    ppo_epochs: int = 1
    mini_batches: int = 1
    micro_batch_sequences: int = 16
    micro_batch_tokens: int | None = None
    """Also cap a micro-batch at this many forward tokens (``forward_tokens``); a longer sequence goes alone."""
    grad_clip: float = 1.0
    off_policy: bool = False
    """The rollouts were not sampled by the policy module itself (vLLM): report the gap between the policy's
    log-probs before the update and the sampler's (and, with ``importance_sampling_cap``, correct for it)."""
    importance_sampling_cap: float | None = None
    """Cap of the truncated importance-sampling weight against the sampler's log-probs; None disables it."""
    prefix_sharing: bool = False
    """Forward each distinct prompt of a micro-batch once for all its completions (same gradient)."""
    kind_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 1.0))
    """w_k of each kind's token-mean loss."""
    aggregation: Literal["per_kind", "joint"] = "per_kind"
    """per_kind: each kind is its own token-mean. joint: solutions and metas share one token-mean (the
    paper's GRPO batch), so the kind with more tokens owns more of the update; expert rows stay their own."""
    auxiliary_alone: bool = True
    """False: a mini-batch in which no solution row has a learning signal trains nothing (no optimiser step),
    so the meta and expert terms never move the weights by themselves."""


def kind_token_counts(sequences: Sequence[TrainSequence], indices: Sequence[int]) -> torch.Tensor:
    """Completion tokens of each kind (in ``KINDS`` order) among ``indices``: the loss normalisers."""
    counts = torch.zeros(len(KINDS), dtype=torch.float64)
    for i in indices:
        counts[KINDS.index(sequences[i].kind)] += len(sequences[i].completion_ids)
    return counts


def row_scales(
    sequences: Sequence[TrainSequence], indices: Sequence[int], counts: torch.Tensor, settings: UpdateSettings
) -> dict[int, float]:
    """Per sequence, the factor its per-token loss sum gets: w_kind / (tokens of its normaliser group)."""
    joint = float(counts[KINDS.index("solution")] + counts[KINDS.index("meta")])
    scales = {}
    for i in indices:
        kind = sequences[i].kind
        shared = settings.aggregation == "joint" and kind != "expert"
        tokens = joint if shared else float(counts[KINDS.index(kind)])
        scales[i] = settings.kind_weights.get(kind, 1.0) / max(tokens, 1.0)
    return scales


class _GradientsByKind:
    """Gradient norm of each kind's weighted loss and their cosines, from micro-batches run kind by kind.

    After each kind the accumulated gradient is compared with the snapshot taken before it; the difference
    is that kind's gradient. Costs two copies of the gradients, so it runs only on sampled steps. Under
    FSDP each rank holds a shard of every gradient; the dot products are summed over the ranks.
    """

    def __init__(self, model: PreTrainedModel, ranks: Ranks):
        self.model = model
        self.ranks = ranks
        self.before: list[torch.Tensor] | None = None
        self.grads: dict[str, list[torch.Tensor]] = {}

    def close_kind(self, kind: str) -> None:
        # The parameters are looked up now, after the backward pass: FSDP2 registers unsharded stand-ins
        # while a module is gathered (the root can stay gathered after a no-grad forward), and only the
        # sharded parameters hold the reduced gradients.
        params = [p for p in self.model.parameters() if p.requires_grad]
        now = [
            _local(p.grad.detach()).clone() if p.grad is not None else torch.zeros_like(_local(p.detach()))
            for p in params
        ]
        before = self.before or [torch.zeros_like(n) for n in now]
        self.grads[kind] = [n - b for n, b in zip(now, before, strict=True)]
        self.before = now

    def metrics(self) -> dict[str, float]:
        def local_dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
            # BLAS dots per tensor, summed exactly: float64 copies of every gradient made a sampled step of a
            # 135M model several seconds slower, for a logged norm that needs no more than float32.
            return math.fsum(
                float(torch.dot(x.reshape(-1), y.reshape(-1))) for x, y in zip(a, b, strict=True)
            )

        kinds = list(self.grads)
        pairs = [(a, b) for i, a in enumerate(kinds) for b in kinds[i:]]
        dots = dict(
            zip(
                pairs,
                self.ranks.sum([local_dot(self.grads[a], self.grads[b]) for a, b in pairs]),
                strict=True,
            )
        )

        def dot(a: str, b: str) -> float:
            return dots[(a, b)]

        norms = {k: math.sqrt(max(dot(k, k), 0.0)) for k in kinds}
        out = {f"grad/norm_{k}": v for k, v in norms.items()}
        for a_index, a in enumerate(kinds):
            for b in kinds[a_index + 1 :]:
                denominator = norms[a] * norms[b]
                out[f"grad/cos_{a}_{b}"] = dot(a, b) / denominator if denominator else math.nan
        return out


def _length_order(seq: TrainSequence, settings: UpdateSettings) -> tuple:
    if settings.prefix_sharing:
        return len(seq.prompt_ids), tuple(seq.prompt_ids), len(seq.completion_ids)
    return (len(seq.prompt_ids) + len(seq.completion_ids),)


class _OffPolicyGap:
    """The gap between the policy's log-probs before the update and the sampler's, and (with ``cap``) the
    per-token truncated importance weights of each micro-batch.

    The logged statistics are over the whole batch: each rank counts its own rows (not its stand-ins) and
    ``metrics`` sums them over the ranks, so every rank must call it.
    """

    def __init__(self, cap: float | None):
        self.cap = cap
        self.gap_sum = 0.0
        self.gap_max = 0.0
        self.tokens = 0
        self.weight_sum = 0.0
        self.capped = 0

    def weigh(self, old: torch.Tensor, batch: PackedBatch, *, standin: bool) -> torch.Tensor | None:
        """Importance weights for ``batch`` given its old log-probs (None without a cap or sampler
        log-probs); the gap is counted unless the batch is a stand-in."""
        if batch.sampler_logprobs is None:
            return None
        old = old.detach()
        valid = batch.completion_mask.bool() & ~batch.sampler_logprobs.isnan()
        weights = (
            # Rows the engine did not sample (NaN) get weight 1.
            truncated_importance_weights(old, batch.sampler_logprobs, self.cap).nan_to_num(1.0)
            if self.cap is not None
            else None
        )
        if not standin:
            gaps = (old - batch.sampler_logprobs).abs()[valid].float()
            self.gap_sum += float(gaps.sum())
            self.gap_max = max(self.gap_max, float(gaps.max()) if gaps.numel() else 0.0)
            self.tokens += gaps.numel()
            if weights is not None:
                kept = weights[valid].float()
                self.weight_sum += float(kept.sum())
                self.capped += int((kept >= self.cap).sum())
        return weights

    def metrics(self, ranks: Ranks) -> dict[str, float]:
        gap_sum, tokens, weight_sum, capped = ranks.sum(
            [self.gap_sum, self.tokens, self.weight_sum, self.capped]
        )
        gap_max = max(ranks.gather(self.gap_max))
        if not tokens:
            return {}
        log = {"rollout/logprob_gap_mean": gap_sum / tokens, "rollout/logprob_gap_max": gap_max}
        if self.cap is not None:
            log["rollout/is_weight_mean"] = weight_sum / tokens
            log["rollout/is_capped_fraction"] = capped / tokens
        return log


def policy_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sequences: Sequence[TrainSequence],
    settings: UpdateSettings,
    *,
    pad_id: int,
    autocast_dtype: torch.dtype | None = None,
    ref_model: PreTrainedModel | None = None,
    rng: random.Random | None = None,
    grad_stats: bool = False,
    ranks: Ranks = SINGLE_PROCESS,
) -> dict[str, float]:
    """Optimise the policy on one batch of rollouts (and expert targets); returns averaged statistics.

    Old log-probs are the policy's before any parameter changes. When the batch is used for more than one
    optimiser step they are computed once, up front; for a single step the training forward runs on those
    very parameters, so its log-probs, detached, are the old ones and no extra forward pass is made. With
    ``settings.off_policy`` (rollouts sampled by another engine, such as vLLM) the gap between the old
    log-probs and the sampler's is reported and, with ``settings.importance_sampling_cap``, corrected for.
    ``grad_stats`` adds each kind's gradient norm and the cosines between kinds, measured on the first
    optimiser step.

    With several ranks, ``sequences`` is the whole step's batch on every rank: mini-batches and their
    per-kind token counts come from it identically everywhere, each rank runs its share of every
    mini-batch, and each row's loss scale is multiplied by the world size, because FSDP averages the
    ranks' gradients. The result is the single-process update (up to the order of floating-point sums).
    """
    device = next(model.parameters()).device
    rng = rng or random.Random(0)
    count = len(sequences)
    order = list(range(count)) if settings.mini_batches == 1 else rng.sample(range(count), count)
    with_kl = ref_model is not None and settings.kl_coef > 0
    plans: list[tuple[dict[int, float], list[tuple[int, ...]]]] = []
    standins: set[tuple[int, ...]] = set()
    token_totals = torch.zeros(len(KINDS), dtype=torch.float64)
    for part in range(settings.mini_batches):
        mini = order[part :: settings.mini_batches]
        if not mini:
            continue
        counts = kind_token_counts(sequences, mini)
        token_totals += counts
        # The counts are global already (every rank holds the whole batch); FSDP's average over ranks is undone.
        scales = {
            i: scale * ranks.world for i, scale in row_scales(sequences, mini, counts, settings).items()
        }
        # A zero-advantage (or zero-weight) sequence adds exactly zero gradient, so without a KL term it
        # is not run at all; its tokens stay in the normaliser, so the token-mean gradient is unchanged.
        active = [
            i
            for i in mini
            if scales[i] > 0 and (sequences[i].has_signal or (with_kl and sequences[i].kind != "expert"))
        ]
        if not settings.auxiliary_alone and not any(
            sequences[i].kind == "solution" and sequences[i].has_signal for i in active
        ):
            active = []
        # Micro-batches hold one kind each (similar prompts pad less; per-kind gradients can be read), except
        # that expert targets, which have meta prompts, run with the meta rows (see _lanes). With prefix
        # sharing, a prompt's completions sit together to share one prompt pass.
        lanes = _lanes(sequences, active, share=settings.prefix_sharing and not grad_stats)
        active.sort(
            key=lambda i: (
                KINDS.index(lanes[i]),
                *_length_order(sequences[i], settings),
                KINDS.index(sequences[i].kind),
            )
        )
        micro: list[tuple[int, ...]] = []
        for lane in KINDS:
            rows = [i for i in active if lanes[i] == lane]
            lane_micro, lane_standins = _rank_micro_batches(rows, sequences, settings, ranks)
            micro += lane_micro
            standins.update(lane_standins)
        plans.append((scales, micro))
    packed = {
        key: pack(
            [sequences[i] for i in key],
            pad_id,
            device,
            share_prompts=settings.prefix_sharing,
        )
        for _, micro in plans
        for key in micro
    }
    weights = {
        key: torch.tensor(
            [0.0 if key in standins else scales[i] for i in key], dtype=torch.float32, device=device
        )
        for scales, micro in plans
        for key in micro
    }

    def expert_rows(key: tuple[int, ...]) -> torch.Tensor:
        return torch.tensor([sequences[i].kind == "expert" for i in key], device=device)

    def lane(key: tuple[int, ...]) -> str:
        """The kind of a micro-batch: its RL rows' (expert rows may ride in a meta one), else expert."""
        return next((sequences[i].kind for i in key if sequences[i].kind != "expert"), "expert")

    def is_rl(key: tuple[int, ...]) -> bool:
        return lane(key) != "expert"

    # One optimiser step on the batch: the policy before the update is the policy of the training forward,
    # so its log-probs, detached, are the old ones, and no extra forward pass is needed.
    reuse_current = settings.ppo_epochs == 1 and settings.mini_batches == 1
    gap = _OffPolicyGap(settings.importance_sampling_cap) if settings.off_policy else None
    old: dict[tuple[int, ...], torch.Tensor] = {}
    ref: dict[tuple[int, ...], torch.Tensor] = {}
    is_weights: dict[tuple[int, ...], torch.Tensor | None] = {}
    with torch.no_grad(), autocast_context(device.type, autocast_dtype):
        for key, batch in packed.items():
            if not is_rl(key):
                continue
            if not reuse_current:
                old[key] = token_logprobs(model, batch)
                if gap is not None:
                    is_weights[key] = gap.weigh(old[key], batch, standin=key in standins)
            if with_kl:
                ref[key] = token_logprobs(ref_model, batch)

    totals = dict.fromkeys(("loss", "clip_low_fraction", "clip_high_fraction", "approx_kl", "ref_kl"), 0.0)
    kind_losses = dict.fromkeys(KINDS, 0.0)
    # Where the update's time goes (forward and backward by kind, then clipping and the optimiser), so a
    # costly meta path shows which part of it costs. Expert targets riding in a meta micro-batch count as meta.
    kind_seconds = dict.fromkeys(KINDS, 0.0)
    optimizer_seconds = 0.0
    grad_norms: list[float] = []
    rl_micro_steps = 0
    skipped = 0
    by_kind = _GradientsByKind(model, ranks) if grad_stats else None
    grad_log: dict[str, float] = {}
    model.train()
    for _ in range(settings.ppo_epochs):
        for _, micro in plans if len(plans) == 1 else rng.sample(plans, len(plans)):
            if not micro:
                # No learning signal in this mini-batch: no optimiser step, so the weights (and the
                # warm-up, which counts optimiser steps) stay where they are.
                skipped += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            # The micro-batches of one optimiser step see the same weights, so they share one low-precision
            # copy of them (see _weight_casts_kept).
            with _weight_casts_kept(device.type, autocast_dtype, sharded=ranks.world > 1):
                for position, key in enumerate(micro):
                    started = time.perf_counter()
                    batch = packed[key]
                    kind = lane(key)
                    expert = expert_rows(key)
                    with autocast_context(device.type, autocast_dtype):
                        logprobs = token_logprobs(model, batch)
                    parts: dict[str, torch.Tensor] = {}
                    if is_rl(key):
                        if reuse_current and gap is not None:
                            is_weights[key] = gap.weigh(logprobs, batch, standin=key in standins)
                        parts[kind], stats = clipped_policy_loss(
                            logprobs,
                            logprobs.detach() if reuse_current else old[key],
                            batch.advantages,
                            batch.completion_mask * ~expert.unsqueeze(-1),
                            clip_low=settings.clip_low,
                            clip_high=settings.clip_high,
                            normaliser=1.0,
                            token_weights=weights[key],
                            ref_logprobs=ref.get(key),
                            kl_coef=settings.kl_coef,
                            is_weights=is_weights.get(key),
                        )
                        if key not in standins:
                            for name in ("clip_low_fraction", "clip_high_fraction", "approx_kl", "ref_kl"):
                                totals[name] += getattr(stats, name)
                            rl_micro_steps += 1
                    if bool(expert.any()):
                        # Cross-entropy on the target tokens, weighted and normalised like any other kind.
                        rows = weights[key] * expert
                        parts["expert"] = -(logprobs * batch.completion_mask * rows.unsqueeze(-1)).sum()
                    loss = sum(parts.values())
                    loss.backward()
                    kind_seconds[kind] += time.perf_counter() - started
                    totals["loss"] += float(loss.detach())
                    for part_kind, part in parts.items():
                        kind_losses[part_kind] += float(part.detach())
                    last_of_kind = position + 1 == len(micro) or lane(micro[position + 1]) != kind
                    if by_kind is not None and last_of_kind:
                        by_kind.close_kind(kind)
            if by_kind is not None:
                grad_log = by_kind.metrics()
                by_kind = None
            started = time.perf_counter()
            grad_norms.append(_clip_gradients(model, settings.grad_clip))
            optimizer.step()
            scheduler.step()
            optimizer_seconds += time.perf_counter() - started
    optimizer.zero_grad(set_to_none=True)
    # Every rank saw its share: sum over ranks (losses were scaled up by the world size, see above).
    trained = sum(len(key) for _, micro in plans for key in micro if key not in standins)
    names = [*totals, *(f"loss_{k}" for k in KINDS), *(f"seconds_{k}" for k in KINDS), "optimizer_seconds"]
    names += ["rl_micro_steps", "trained"]
    values = [*totals.values(), *kind_losses.values(), *kind_seconds.values(), optimizer_seconds]
    summed = dict(zip(names, ranks.sum([*values, rl_micro_steps, trained]), strict=True))
    totals = {k: summed[k] for k in totals}
    kind_losses = {k: summed[f"loss_{k}"] / ranks.world for k in KINDS}
    totals["loss"] /= ranks.world
    rl_micro_steps = summed["rl_micro_steps"]
    metrics = {f"update/{k}": v / max(rl_micro_steps, 1) for k, v in totals.items() if k != "loss"}
    passes = max(settings.ppo_epochs * len(plans), 1)
    metrics["update/loss"] = totals["loss"] / passes
    for kind, total in kind_losses.items():
        if token_totals[KINDS.index(kind)] > 0:
            metrics[f"update/loss_{kind}"] = total / passes
            metrics[f"update/tokens_{kind}"] = float(token_totals[KINDS.index(kind)])
            # Seconds are the mean over ranks.
            metrics[f"perf/update_seconds_{kind}"] = summed[f"seconds_{kind}"] / ranks.world
    metrics["perf/optimizer_seconds"] = summed["optimizer_seconds"] / ranks.world
    metrics["update/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
    metrics["update/skipped_minibatches"] = skipped
    metrics["update/trained_sequences"] = summed["trained"]
    metrics["update/lr"] = scheduler.get_last_lr()[0]
    if gap is not None:  # the same on every rank, so the collective runs on all or none
        metrics.update(gap.metrics(ranks))
    metrics.update(grad_log)
    return metrics


def _lanes(sequences: Sequence[TrainSequence], active: Sequence[int], *, share: bool) -> dict[int, str]:
    """The kind of micro-batch each active row runs in: its own, or (with ``share``) ``meta`` for every expert
    target. One whose prompt an active meta row has shares that row's prompt pass; the others (their meta
    group was constant, or the target is buffered) still save a forward and backward of their own: a lone
    expert row cost 1.3 s on one CPU core, three quarters of a micro-batch of five meta rows
    (benchmarks/README.md)."""
    return {i: "meta" if share and sequences[i].kind == "expert" else sequences[i].kind for i in active}


def _rank_micro_batches(
    rows: list[int], sequences: Sequence[TrainSequence], settings: UpdateSettings, ranks: Ranks
) -> tuple[list[tuple[int, ...]], set[tuple[int, ...]]]:
    """This rank's micro-batches of one kind's rows (sorted by length), as many on every rank.

    The rows are dealt out to the ranks in turn, so shares differ by at most one row and near-equal in
    tokens. Every rank holds the whole batch, so each works out every rank's micro-batches alike; one with
    fewer than the most repeats another rank's row at zero weight (a stand-in, also returned), because
    under FSDP every rank must run the same forward and backward passes: each one all-gathers parameters.
    """
    if not rows:
        return [], set()
    shares = [_micro_batches(rows[r :: ranks.world], sequences, settings) for r in range(ranks.world)]
    micro = shares[ranks.rank]
    missing = max(len(share) for share in shares) - len(micro)
    if not missing:
        return micro, set()
    # Rank 0 holds rows[0] and rank 1 rows[1]; a rank short of micro-batches is not the only one with rows.
    standin = (rows[1 if ranks.rank == 0 else 0],)
    return micro + [standin] * missing, {standin}


def _micro_batches(
    rows: list[int], sequences: Sequence[TrainSequence], settings: UpdateSettings
) -> list[tuple[int, ...]]:
    """Consecutive runs of ``rows`` within the sequence and token caps (a row over the token cap alone).

    With prefix sharing, a prompt's rows (consecutive) that fit in one micro-batch are not split across two:
    each part would forward the prompt again, which for a group of short answers to a long prompt (meta
    rollouts and their expert target) costs more than the extra pass of a micro-batch closed early.
    """
    batches: list[tuple[int, ...]] = []
    current: list[int] = []
    plan = _RowPlan(settings.prefix_sharing)

    def fits(plan: _RowPlan, count: int, group: list[TrainSequence]) -> bool:
        if count + len(group) > settings.micro_batch_sequences:
            return False
        return settings.micro_batch_tokens is None or plan.extended(group).forward_tokens() <= (
            settings.micro_batch_tokens
        )

    for group_rows in _prompt_runs(rows, sequences, settings.prefix_sharing):
        group = [sequences[i] for i in group_rows]
        if (
            current
            and len(group) > 1
            and not fits(plan, len(current), group)
            and fits(_RowPlan(settings.prefix_sharing), 0, group)
        ):
            batches.append(tuple(current))
            current, plan = [], _RowPlan(settings.prefix_sharing)
        for row, seq in zip(group_rows, group, strict=True):
            if current and (
                len(current) + 1 > settings.micro_batch_sequences
                or (
                    settings.micro_batch_tokens is not None
                    and plan.forward_tokens(extra=seq) > settings.micro_batch_tokens
                )
            ):
                batches.append(tuple(current))
                current, plan = [], _RowPlan(settings.prefix_sharing)
            current.append(row)
            plan.add(seq)
    if current:
        batches.append(tuple(current))
    return batches


def _prompt_runs(rows: list[int], sequences: Sequence[TrainSequence], share_prompts: bool) -> list[list[int]]:
    """``rows`` cut into maximal runs of one prompt (shared), or one row each (unshared)."""
    runs: list[list[int]] = []
    for row in rows:
        if share_prompts and runs and sequences[runs[-1][-1]].prompt_ids == sequences[row].prompt_ids:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


def _weight_casts_kept(
    device_type: str, dtype: torch.dtype | None, *, sharded: bool
) -> contextlib.AbstractContextManager:
    """A region in which autocast keeps its low-precision copy of each weight it casts.

    Autocast drops its casts when the outermost autocast region exits, so each micro-batch's forward would
    cast every weight again (0.0-0.5 s per micro-batch of the 135M model on one CPU core, whatever it holds:
    benchmarks/README.md). Inside this (disabled) region the micro-batches' own autocast regions are nested,
    so the casts outlive them; the region must close before the optimiser changes the weights. Sharded
    weights are gathered one layer at a time precisely so that they are not all held at once; keeping their
    casts would hold them all, so then nothing is kept.
    """
    if dtype is None or sharded:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype, enabled=False)


def _clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
    # Under FSDP2 the norm is a DTensor over the ranks' shards.
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 (DTensor) parameter or gradient; a plain tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
