"""The policy update: clipped-ratio policy gradient over sampled sequences, token-mean aggregated."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from masa.distributed import SINGLE_PROCESS, Ranks
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


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, P + C): prompts padded on the left, completions on the right
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_ids: torch.Tensor  # (B, C)
    completion_mask: torch.Tensor  # (B, C) float, 1 on real completion tokens
    advantages: torch.Tensor  # (B,)
    token_weights: torch.Tensor  # (B,)


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
    return PackedBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        completion_ids=input_ids[:, prompt_width:].to(device),
        completion_mask=completion_mask.to(device),
        advantages=torch.tensor([s.advantage for s in sequences], dtype=torch.float32, device=device),
        token_weights=torch.tensor([s.token_weight for s in sequences], dtype=torch.float32, device=device),
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
) -> tuple[torch.Tensor, LossStats]:
    """PPO's pessimistic clipped objective with separate lower/upper clip ("clip-higher").

    Per token: max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high)) with r = exp(logp - old_logp).
    Token-mean aggregation: the sum over every masked token divided by ``normaliser``, the token count of
    the whole optimiser batch, so micro-batches with gradient accumulation give the same gradient as one
    big batch. With ``kl_coef`` > 0, adds the k3 estimate of KL(pi || ref) per token.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
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
    ranks: Ranks = SINGLE_PROCESS,
) -> dict[str, float]:
    """Optimise the policy on one batch of rollouts; returns averaged loss statistics.

    Old log-probs are recomputed once, before any parameter changes, when the batch is used for more than
    one optimiser step; with a single step the ratio is exactly 1 at the start, so the current log-probs
    detached serve and the extra forward pass is skipped.

    With several ranks, ``sequences`` is the whole step's batch on every rank: mini-batches are drawn from
    it identically everywhere, each rank runs its share of every mini-batch, and the normaliser is the
    mini-batch's global token count divided by the world size, because FSDP averages the ranks' gradients.
    The result is the single-process update (up to the order of floating-point sums).
    """
    device = next(model.parameters()).device
    rng = rng or random.Random(0)
    count = len(sequences)
    order = list(range(count)) if settings.mini_batches == 1 else rng.sample(range(count), count)
    with_kl = ref_model is not None and settings.kl_coef > 0
    plans: list[tuple[float, list[_Micro]]] = []
    for part in range(settings.mini_batches):
        mini = order[part :: settings.mini_batches]
        if not mini:
            continue
        normaliser = float(max(sum(len(sequences[i].completion_ids) for i in mini), 1))
        # A zero-advantage sequence adds exactly zero policy gradient, so without a KL term it is not run at
        # all; its tokens stay in the normaliser, so the token-mean gradient is unchanged.
        active = [i for i in mini if with_kl or sequences[i].advantage != 0.0]
        plans.append((normaliser / ranks.world, _micro_batches(sequences, active, settings, ranks)))
    packed = {
        (p, m): pack([sequences[i] for i in micro.indices], pad_id, device)
        for p, (_, micros) in enumerate(plans)
        for m, micro in enumerate(micros)
    }

    reuse_current = settings.ppo_epochs == 1 and settings.mini_batches == 1
    old: dict[tuple[int, int], torch.Tensor] = {}
    ref: dict[tuple[int, int], torch.Tensor] = {}
    with torch.no_grad(), autocast_context(device.type, autocast_dtype):
        for key, batch in packed.items():
            if not reuse_current:
                old[key] = token_logprobs(model, batch, settings.temperature)
            if with_kl:
                ref[key] = token_logprobs(ref_model, batch, settings.temperature)

    names = ("loss", "clip_low_fraction", "clip_high_fraction", "approx_kl", "ref_kl")
    totals = dict.fromkeys((*names, "micro_steps", "trained_sequences"), 0.0)
    grad_norms: list[float] = []
    skipped = 0
    model.train()
    indexed = list(enumerate(plans))
    for _ in range(settings.ppo_epochs):
        for p, (normaliser, micros) in indexed if len(indexed) == 1 else rng.sample(indexed, len(indexed)):
            if not micros:
                # No learning signal in this mini-batch: no optimiser step, so the weights (and the
                # warm-up, which counts optimiser steps) stay where they are.
                skipped += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            for m, micro in enumerate(micros):
                batch = packed[(p, m)]
                with autocast_context(device.type, autocast_dtype):
                    logprobs = token_logprobs(model, batch, settings.temperature)
                loss, stats = clipped_policy_loss(
                    logprobs,
                    logprobs.detach() if reuse_current else old[(p, m)],
                    batch.advantages,
                    batch.completion_mask,
                    clip_low=settings.clip_low,
                    clip_high=settings.clip_high,
                    normaliser=normaliser,
                    token_weights=batch.token_weights,
                    ref_logprobs=ref.get((p, m)),
                    kl_coef=settings.kl_coef,
                )
                (loss * micro.scale).backward()
                if micro.scale:
                    totals["loss"] += float(loss.detach())
                    for name in names[1:]:
                        totals[name] += getattr(stats, name)
                    totals["micro_steps"] += 1
                    totals["trained_sequences"] += len(micro.indices)
            grad_norms.append(_clip_gradients(model, settings.grad_clip))
            optimizer.step()
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    totals = dict(zip(totals, ranks.sum(list(totals.values())), strict=True))
    metrics = {f"update/{k}": totals[k] / max(totals["micro_steps"], 1) for k in names[1:]}
    # Each rank's losses are scaled up by the world size (see the docstring), hence the division.
    metrics["update/loss"] = totals["loss"] / ranks.world / max(settings.ppo_epochs * len(plans), 1)
    metrics["update/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
    metrics["update/skipped_minibatches"] = skipped
    metrics["update/trained_sequences"] = totals["trained_sequences"] / settings.ppo_epochs
    metrics["update/lr"] = scheduler.get_last_lr()[0]
    return metrics


@dataclass(frozen=True)
class _Micro:
    indices: tuple[int, ...]
    scale: float = 1.0
    """0 for a stand-in: a rank with less work repeats a sequence at zero weight, because under FSDP every
    rank must run the same number of forward and backward passes (each one all-gathers parameters)."""


def _micro_batches(
    sequences: Sequence[TrainSequence], active: list[int], settings: UpdateSettings, ranks: Ranks
) -> list[_Micro]:
    """This rank's micro-batches of one mini-batch, as many on every rank.

    Sorting by length keeps padding small within a micro-batch; dealing the sorted list out in turn gives
    the ranks near-equal token counts.
    """
    if not active:
        return []
    ordered = sorted(active, key=lambda i: len(sequences[i].prompt_ids) + len(sequences[i].completion_ids))
    mine = ordered[ranks.rank :: ranks.world]
    step = settings.micro_batch_sequences
    micros = [_Micro(tuple(mine[j : j + step])) for j in range(0, len(mine), step)]
    per_rank = -(-len(ordered) // ranks.world)
    micros += [_Micro((ordered[0],), 0.0)] * (-(-per_rank // step) - len(micros))
    return micros


def _clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
    # Under FSDP2 the norm is a DTensor over the ranks' shards.
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def sft_step(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    sequences: Sequence[TrainSequence],
    *,
    pad_id: int,
    micro_batch_sequences: int = 16,
    grad_clip: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
    ranks: Ranks = SINGLE_PROCESS,
) -> float:
    """One supervised step: token-mean cross-entropy on the completion tokens only; returns the loss.

    With several ranks each runs its share of ``sequences`` (the same list everywhere), as ``policy_update``.
    """
    device = next(model.parameters()).device
    normaliser = float(max(sum(len(s.completion_ids) for s in sequences), 1)) / ranks.world
    settings = UpdateSettings(micro_batch_sequences=micro_batch_sequences)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for micro in _micro_batches(sequences, list(range(len(sequences))), settings, ranks):
        batch = pack([sequences[i] for i in micro.indices], pad_id, device)
        with autocast_context(device.type, autocast_dtype):
            logprobs = token_logprobs(model, batch)
        loss = -(logprobs * batch.completion_mask).sum() / normaliser
        (loss * micro.scale).backward()
        loss_sum += float(loss.detach()) * micro.scale
    _clip_gradients(model, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return ranks.sum([loss_sum])[0] / ranks.world
