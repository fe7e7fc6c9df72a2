"""The policy update: clipped-ratio policy gradient over sampled sequences, token-mean within each kind.

One optimiser step minimises ``L = sum_k w_k * L_k`` over the kinds of sequence in the batch: solution
rollouts, meta rollouts (MASA) and expert meta targets (supervised, MASA's expert SFT). Each ``L_k`` is the
token-mean of its own kind, so the share of the update a kind gets is its weight, not its token count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedModel

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

    @property
    def has_signal(self) -> bool:
        if self.kind == "expert":
            return True
        if self.token_advantages is not None:
            return any(a != 0.0 for a in self.token_advantages)
        return self.advantage != 0.0


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, P + C): prompts padded on the left, completions on the right
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_ids: torch.Tensor  # (B, C)
    completion_mask: torch.Tensor  # (B, C) float, 1 on real completion tokens
    advantages: torch.Tensor  # (B, C): each row's advantage, or its per-token advantages
    sampler_logprobs: torch.Tensor | None = None  # (B, C); NaN on rows the engine did not sample (expert)


def pack(sequences: Sequence[TrainSequence], pad_id: int, device: torch.device | str = "cpu") -> PackedBatch:
    prompt_width = max(len(s.prompt_ids) for s in sequences)
    completion_width = max(max(len(s.completion_ids) for s in sequences), 1)
    rows = len(sequences)
    input_ids = torch.full((rows, prompt_width + completion_width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(sequences):
        start = prompt_width - len(seq.prompt_ids)
        end = prompt_width + len(seq.completion_ids)
        input_ids[row, start:end] = torch.tensor(seq.prompt_ids + seq.completion_ids, dtype=torch.long)
        attention_mask[row, start:end] = 1
    # Positions count real tokens only, exactly as generate() numbers a left-padded prompt.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    completion_mask = attention_mask[:, prompt_width:].float()
    advantages = torch.zeros((rows, completion_width), dtype=torch.float32)
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
        sampler = torch.full((rows, completion_width), math.nan, dtype=torch.float32)
        for row, seq in enumerate(sequences):
            if seq.sampler_logprobs is not None:
                sampler[row, : len(seq.sampler_logprobs)] = torch.tensor(
                    seq.sampler_logprobs, dtype=torch.float32
                )
        sampler = sampler.to(device)
    return PackedBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        completion_ids=input_ids[:, prompt_width:].to(device),
        completion_mask=completion_mask.to(device),
        advantages=advantages.to(device),
        sampler_logprobs=sampler,
    )


def token_logprobs(model: PreTrainedModel, batch: PackedBatch, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token) for every completion position, under the same temperature the rollouts used."""
    width = batch.completion_ids.shape[1]
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=width + 1,  # the lm-head runs only where completion tokens are predicted
        use_cache=False,
    ).logits[:, :-1]
    logits = logits.float() / temperature
    chosen = logits.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)


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
    grad_clip: float = 1.0
    temperature: float = 1.0
    recompute_old_logprobs: bool = False
    """Compute the old log-probs with the policy before updating even for a single optimiser step: needed
    when the rollouts were not sampled by the policy module itself (vLLM), where ratio == 1 would not hold."""
    importance_sampling_cap: float | None = None
    """Cap of the truncated importance-sampling weight against the sampler's log-probs; None disables it."""
    kind_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 1.0))
    """w_k of each kind's token-mean loss."""
    aggregation: Literal["per_kind", "joint"] = "per_kind"
    """per_kind: each kind is its own token-mean. joint: solutions and metas share one token-mean (the
    paper's GRPO batch), so the kind with more tokens owns more of the update; expert rows stay their own."""


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
    is that kind's gradient. Holds one copy of the gradients per kind plus a snapshot, so it runs only on
    sampled steps.
    """

    def __init__(self, model: PreTrainedModel):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.before = [torch.zeros_like(p) for p in self.params]
        self.grads: dict[str, list[torch.Tensor]] = {}

    def close_kind(self, kind: str) -> None:
        now = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self.grads[kind] = [n - b for n, b in zip(now, self.before, strict=True)]
        self.before = now

    def metrics(self) -> dict[str, float]:
        def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
            return math.fsum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True))

        norms = {k: math.sqrt(dot(g, g)) for k, g in self.grads.items()}
        out = {f"grad/norm_{k}": v for k, v in norms.items()}
        kinds = list(self.grads)
        for a_index, a in enumerate(kinds):
            for b in kinds[a_index + 1 :]:
                denominator = norms[a] * norms[b]
                out[f"grad/cos_{a}_{b}"] = (
                    dot(self.grads[a], self.grads[b]) / denominator if denominator else math.nan
                )
        return out


def _off_policy_correction(
    old: dict[tuple[int, ...], torch.Tensor], packed: dict[tuple[int, ...], PackedBatch], cap: float | None
) -> tuple[dict[tuple[int, ...], torch.Tensor], dict[str, float]]:
    """The gap between recomputed old log-probs and the sampler's, and (with ``cap``) the per-token
    truncated importance weights of each micro-batch; nothing without recomputed old log-probs."""
    sampled = {k: b for k, b in packed.items() if k in old and b.sampler_logprobs is not None}
    valid = {k: b.completion_mask.bool() & ~b.sampler_logprobs.isnan() for k, b in sampled.items()}
    if not any(v.any() for v in valid.values()):
        return {}, {}
    gaps = torch.cat([(old[k] - b.sampler_logprobs).abs()[valid[k]] for k, b in sampled.items()])
    log = {"rollout/logprob_gap_mean": float(gaps.mean()), "rollout/logprob_gap_max": float(gaps.max())}
    if cap is None:
        return {}, log
    is_weights = {
        # Rows the engine did not sample (NaN) get weight 1.
        k: truncated_importance_weights(old[k], b.sampler_logprobs, cap).nan_to_num(1.0)
        for k, b in sampled.items()
    }
    kept = torch.cat([w[valid[k]] for k, w in is_weights.items()])
    log["rollout/is_weight_mean"] = float(kept.mean())
    log["rollout/is_capped_fraction"] = float((kept >= cap).float().mean())
    return is_weights, log


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
) -> dict[str, float]:
    """Optimise the policy on one batch of rollouts (and expert targets); returns averaged statistics.

    Old log-probs are recomputed once, before any parameter changes, when the batch is used for more than
    one optimiser step or ``settings.recompute_old_logprobs`` asks for it; otherwise (one step, rollouts
    from the policy module itself) the ratio is exactly 1 at the start, so the current log-probs detached
    serve and the extra forward pass is skipped. With recomputed old log-probs and the sampler's own, the
    gap between them is reported and, with ``settings.importance_sampling_cap``, corrected for.
    ``grad_stats`` adds each kind's gradient norm and the cosines between kinds, measured on the first
    optimiser step.
    """
    device = next(model.parameters()).device
    rng = rng or random.Random(0)
    count = len(sequences)
    order = list(range(count)) if settings.mini_batches == 1 else rng.sample(range(count), count)
    with_kl = ref_model is not None and settings.kl_coef > 0
    plans: list[tuple[dict[int, float], list[tuple[int, ...]]]] = []
    token_totals = torch.zeros(len(KINDS), dtype=torch.float64)
    for part in range(settings.mini_batches):
        mini = order[part :: settings.mini_batches]
        if not mini:
            continue
        counts = kind_token_counts(sequences, mini)
        token_totals += counts
        scales = row_scales(sequences, mini, counts, settings)
        # A zero-advantage (or zero-weight) sequence adds exactly zero gradient, so without a KL term it
        # is not run at all; its tokens stay in the normaliser, so the token-mean gradient is unchanged.
        active = [
            i
            for i in mini
            if scales[i] > 0 and (sequences[i].has_signal or (with_kl and sequences[i].kind != "expert"))
        ]
        # Micro-batches hold one kind each: similar prompts pad less, and per-kind gradients can be read.
        active.sort(
            key=lambda i: (
                KINDS.index(sequences[i].kind),
                len(sequences[i].prompt_ids) + len(sequences[i].completion_ids),
            )
        )
        step = settings.micro_batch_sequences
        micro: list[tuple[int, ...]] = []
        for kind in KINDS:
            rows = [i for i in active if sequences[i].kind == kind]
            micro += [tuple(rows[j : j + step]) for j in range(0, len(rows), step)]
        plans.append((scales, micro))
    packed = {key: pack([sequences[i] for i in key], pad_id, device) for _, micro in plans for key in micro}
    weights = {
        key: torch.tensor([scales[i] for i in key], dtype=torch.float32, device=device)
        for scales, micro in plans
        for key in micro
    }

    def is_rl(key: tuple[int, ...]) -> bool:
        return sequences[key[0]].kind != "expert"

    reuse_current = (
        settings.ppo_epochs == 1 and settings.mini_batches == 1 and not settings.recompute_old_logprobs
    )
    old: dict[tuple[int, ...], torch.Tensor] = {}
    ref: dict[tuple[int, ...], torch.Tensor] = {}
    with torch.no_grad(), autocast_context(device.type, autocast_dtype):
        for key, batch in packed.items():
            if not is_rl(key):
                continue
            if not reuse_current:
                old[key] = token_logprobs(model, batch, settings.temperature)
            if with_kl:
                ref[key] = token_logprobs(ref_model, batch, settings.temperature)
    is_weights, off_policy = _off_policy_correction(old, packed, settings.importance_sampling_cap)

    totals = dict.fromkeys(("loss", "clip_low_fraction", "clip_high_fraction", "approx_kl", "ref_kl"), 0.0)
    kind_losses = dict.fromkeys(KINDS, 0.0)
    grad_norms: list[float] = []
    rl_micro_steps = 0
    skipped = 0
    by_kind = _GradientsByKind(model) if grad_stats else None
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
            for position, key in enumerate(micro):
                batch = packed[key]
                kind = sequences[key[0]].kind
                if is_rl(key):
                    with autocast_context(device.type, autocast_dtype):
                        logprobs = token_logprobs(model, batch, settings.temperature)
                    loss, stats = clipped_policy_loss(
                        logprobs,
                        logprobs.detach() if reuse_current else old[key],
                        batch.advantages,
                        batch.completion_mask,
                        clip_low=settings.clip_low,
                        clip_high=settings.clip_high,
                        normaliser=1.0,
                        token_weights=weights[key],
                        ref_logprobs=ref.get(key),
                        kl_coef=settings.kl_coef,
                        is_weights=is_weights.get(key),
                    )
                    for name in ("clip_low_fraction", "clip_high_fraction", "approx_kl", "ref_kl"):
                        totals[name] += getattr(stats, name)
                    rl_micro_steps += 1
                else:
                    with autocast_context(device.type, autocast_dtype):
                        logprobs = token_logprobs(model, batch)
                    # Cross-entropy on the target tokens, weighted and normalised like any other kind.
                    loss = -(logprobs * batch.completion_mask * weights[key].unsqueeze(-1)).sum()
                loss.backward()
                totals["loss"] += float(loss.detach())
                kind_losses[kind] += float(loss.detach())
                last_of_kind = position + 1 == len(micro) or sequences[micro[position + 1][0]].kind != kind
                if by_kind is not None and last_of_kind:
                    by_kind.close_kind(kind)
            if by_kind is not None:
                grad_log = by_kind.metrics()
                by_kind = None
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)))
            optimizer.step()
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    metrics = {f"update/{k}": v / max(rl_micro_steps, 1) for k, v in totals.items() if k != "loss"}
    passes = max(settings.ppo_epochs * len(plans), 1)
    metrics["update/loss"] = totals["loss"] / passes
    for kind, total in kind_losses.items():
        if token_totals[KINDS.index(kind)] > 0:
            metrics[f"update/loss_{kind}"] = total / passes
            metrics[f"update/tokens_{kind}"] = float(token_totals[KINDS.index(kind)])
    metrics["update/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
    metrics["update/skipped_minibatches"] = skipped
    metrics["update/trained_sequences"] = sum(len(key) for _, micro in plans for key in micro)
    metrics["update/lr"] = scheduler.get_last_lr()[0]
    metrics.update(off_policy)
    metrics.update(grad_log)
    return metrics
