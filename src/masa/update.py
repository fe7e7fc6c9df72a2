"""The policy update: clipped-ratio policy gradient over sampled sequences, token-mean aggregated."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from masa.models import autocast_context


@dataclass
class TrainSequence:
    """One sampled completion with the advantage it is trained towards."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    token_weight: float = 1.0
    """Multiplies this sequence's per-token loss (MASA's meta-token weight)."""
    kind: str = "solution"
    sampler_logprobs: list[float] | None = None
    """The engine's log-probability of each completion token when it was sampled (for off-policy
    correction when the sampler is not the policy module itself, e.g. vLLM)."""


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, P + C): prompts padded on the left, completions on the right
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_ids: torch.Tensor  # (B, C)
    completion_mask: torch.Tensor  # (B, C) float, 1 on real completion tokens
    advantages: torch.Tensor  # (B,)
    token_weights: torch.Tensor  # (B,)
    sampler_logprobs: torch.Tensor | None = None  # (B, C), when every sequence carries them


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
    sampler = None
    if all(s.sampler_logprobs is not None for s in sequences):
        sampler = torch.zeros((rows, completion_width), dtype=torch.float32)
        for row, seq in enumerate(sequences):
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
        advantages=torch.tensor([s.advantage for s in sequences], dtype=torch.float32, device=device),
        token_weights=torch.tensor([s.token_weight for s in sequences], dtype=torch.float32, device=device),
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
    big batch. With ``kl_coef`` > 0, adds the k3 estimate of KL(pi || ref) per token. ``is_weights``
    (per token, from ``truncated_importance_weights``) scale the policy-gradient term, not the KL term.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1)
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
) -> dict[str, float]:
    """Optimise the policy on one batch of rollouts; returns averaged loss statistics.

    Old log-probs are recomputed once, before any parameter changes, when the batch is used for more than
    one optimiser step or ``settings.recompute_old_logprobs`` asks for it; otherwise (one step, rollouts
    from the policy module itself) the ratio is exactly 1 at the start, so the current log-probs detached
    serve and the extra forward pass is skipped. With recomputed old log-probs and the sampler's own, the
    gap between them is reported and, with ``settings.importance_sampling_cap``, corrected for.
    """
    device = next(model.parameters()).device
    rng = rng or random.Random(0)
    count = len(sequences)
    order = list(range(count)) if settings.mini_batches == 1 else rng.sample(range(count), count)
    with_kl = ref_model is not None and settings.kl_coef > 0
    plans: list[tuple[float, list[tuple[int, ...]]]] = []
    for part in range(settings.mini_batches):
        mini = order[part :: settings.mini_batches]
        if not mini:
            continue
        normaliser = float(max(sum(len(sequences[i].completion_ids) for i in mini), 1))
        # A zero-advantage sequence adds exactly zero policy gradient, so without a KL term it is not run at
        # all; its tokens stay in the normaliser, so the token-mean gradient is unchanged.
        active = sorted(
            (i for i in mini if with_kl or sequences[i].advantage != 0.0),
            key=lambda i: len(sequences[i].prompt_ids) + len(sequences[i].completion_ids),
        )
        step = settings.micro_batch_sequences
        plans.append((normaliser, [tuple(active[j : j + step]) for j in range(0, len(active), step)]))
    packed = {key: pack([sequences[i] for i in key], pad_id, device) for _, micro in plans for key in micro}

    reuse_current = (
        settings.ppo_epochs == 1 and settings.mini_batches == 1 and not settings.recompute_old_logprobs
    )
    old: dict[tuple[int, ...], torch.Tensor] = {}
    ref: dict[tuple[int, ...], torch.Tensor] = {}
    with torch.no_grad(), autocast_context(device.type, autocast_dtype):
        for key, batch in packed.items():
            if not reuse_current:
                old[key] = token_logprobs(model, batch, settings.temperature)
            if with_kl:
                ref[key] = token_logprobs(ref_model, batch, settings.temperature)
    is_weights: dict[tuple[int, ...], torch.Tensor] = {}
    off_policy: dict[str, float] = {}
    sampled = {key: batch for key, batch in packed.items() if batch.sampler_logprobs is not None}
    gaps = torch.cat(
        [
            (old[k] - b.sampler_logprobs).abs()[b.completion_mask.bool()]
            for k, b in sampled.items()
            if k in old
        ]
        or [torch.zeros(0)]
    )
    if gaps.numel():
        off_policy = {
            "rollout/logprob_gap_mean": float(gaps.mean()),
            "rollout/logprob_gap_max": float(gaps.max()),
        }
        if settings.importance_sampling_cap is not None:
            for key, batch in sampled.items():
                is_weights[key] = truncated_importance_weights(
                    old[key], batch.sampler_logprobs, settings.importance_sampling_cap
                )
            weights = torch.cat([w[sampled[k].completion_mask.bool()] for k, w in is_weights.items()])
            off_policy["rollout/is_weight_mean"] = float(weights.mean())
            off_policy["rollout/is_capped_fraction"] = float(
                (weights >= settings.importance_sampling_cap).float().mean()
            )

    totals = dict.fromkeys(("loss", "clip_low_fraction", "clip_high_fraction", "approx_kl", "ref_kl"), 0.0)
    grad_norms: list[float] = []
    micro_steps = 0
    skipped = 0
    model.train()
    for _ in range(settings.ppo_epochs):
        for normaliser, micro in plans if len(plans) == 1 else rng.sample(plans, len(plans)):
            if not micro:
                # No learning signal in this mini-batch: no optimiser step, so the weights (and the
                # warm-up, which counts optimiser steps) stay where they are.
                skipped += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            for key in micro:
                batch = packed[key]
                with autocast_context(device.type, autocast_dtype):
                    logprobs = token_logprobs(model, batch, settings.temperature)
                loss, stats = clipped_policy_loss(
                    logprobs,
                    logprobs.detach() if reuse_current else old[key],
                    batch.advantages,
                    batch.completion_mask,
                    clip_low=settings.clip_low,
                    clip_high=settings.clip_high,
                    normaliser=normaliser,
                    token_weights=batch.token_weights,
                    ref_logprobs=ref.get(key),
                    kl_coef=settings.kl_coef,
                    is_weights=is_weights.get(key),
                )
                loss.backward()
                totals["loss"] += float(loss.detach())
                for name in ("clip_low_fraction", "clip_high_fraction", "approx_kl", "ref_kl"):
                    totals[name] += getattr(stats, name)
                micro_steps += 1
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)))
            optimizer.step()
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    metrics = {f"update/{k}": v / max(micro_steps, 1) for k, v in totals.items() if k != "loss"}
    metrics["update/loss"] = totals["loss"] / max(settings.ppo_epochs * len(plans), 1)
    metrics["update/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
    metrics["update/skipped_minibatches"] = skipped
    metrics["update/trained_sequences"] = sum(len(key) for _, micro in plans for key in micro)
    metrics["update/lr"] = scheduler.get_last_lr()[0]
    metrics.update(off_policy)
    return metrics


def sft_step(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    sequences: Sequence[TrainSequence],
    *,
    pad_id: int,
    micro_batch_sequences: int = 16,
    grad_clip: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """One supervised step: token-mean cross-entropy on the completion tokens only; returns the loss."""
    device = next(model.parameters()).device
    total_tokens = float(max(sum(len(s.completion_ids) for s in sequences), 1))
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for start in range(0, len(sequences), micro_batch_sequences):
        batch = pack(sequences[start : start + micro_batch_sequences], pad_id, device)
        with autocast_context(device.type, autocast_dtype):
            logprobs = token_logprobs(model, batch)
        loss = -(logprobs * batch.completion_mask).sum() / total_tokens
        loss.backward()
        loss_sum += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum
