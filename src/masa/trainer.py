"""The training loop: rollouts -> rewards -> advantages -> update, with evaluation and checkpoints."""

from __future__ import annotations

import contextlib
import functools
import math
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import Progress
from transformers.utils import logging as hf_logging

from masa.advantages import group_advantages
from masa.checkpoint import (
    CHECKPOINTS_DIR,
    load_trainer_state,
    resume_point,
    rng_state,
    set_rng_state,
)
from masa.config import (
    Config,
    ConfigError,
    config_from_dict,
    meta_prompt_style,
    meta_rollouts,
    task_has_notions,
    with_algorithm_defaults,
)
from masa.data.arithmetic import arithmetic_splits
from masa.data.loaders import DataError, FieldMap, load_problems
from masa.data.problem import Problem
from masa.data.sampler import ProblemSampler
from masa.distributed import NullWriter, SplitEngine, close_ranks, init_ranks
from masa.efficient.cutoff import cutoff_limit
from masa.efficient.gating import GATING_REASONS, GateDecision, PredictiveGate, gate_reason
from masa.efficient.switch import CalibrationSwitch
from masa.eval.heldout import heldout_accuracy
from masa.eval.meta_metrics import gate_side_matches
from masa.learner import Learner, weights_source
from masa.meta.credit import MetaAdvantages, meta_advantages, token_char_ends
from masa.meta.expert import build_expert_target, fallback_notions, select_expert_meta
from masa.meta.parse import MetaPrediction
from masa.meta.prompt import parse_meta_answer
from masa.meta.readout import count_token_ids, read_rollout
from masa.meta.record import META_RECORD_FILE, MetaPromptRecord
from masa.meta.rewards import MetaRewardWeights, SolutionStats, meta_reward, notion_reward, solution_stats
from masa.meta.rollouts import MetaRollout, meta_step_metrics
from masa.models import describe_precision, load_model, resolve_autocast, resolve_device
from masa.prompts import DEFAULT_SOLUTION_TEMPLATE, encode_user_message, run_meta_prompt_ids, solution_prompt
from masa.rewards import solution_rewards
from masa.rng import RngStreams, stream_seed
from masa.rollout import build_engine
from masa.rollout.engine import generate_together
from masa.rollout.sync import SyncedEngine
from masa.rollout.types import FinishReason, GenerationRequest, Rollout, SamplingParams
from masa.runfiles import write_text
from masa.tracking import (
    CONFIG_FILE,
    PREDICTIONS_FILE,
    MetricsWriter,
    format_step_line,
    progress_bar,
)
from masa.update import TrainSequence
from masa.verify import verify_timeouts

RewardFn = Callable[[Problem, list[str], list[Rollout]], Sequence[float]]
"""A custom solution reward: (problem, decoded completions, rollouts) -> one reward per rollout."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    final_model_dir: Path | None
    steps_completed: int
    interrupted: bool


class Trainer:
    """Owns the data position, the algorithm's state and the run folder; ``train_step`` is one step of the
    algorithm. The learner owns the policy's optimisation (and its sharding under torchrun)."""

    def __init__(
        self,
        config: Config,
        *,
        run_dir: Path | None = None,
        resume: bool = False,
        console: Console | None = None,
        reward_fn: RewardFn | None = None,
    ):
        config = self.cfg = with_algorithm_defaults(config)
        self.reward_fn = reward_fn
        self.ranks = init_ranks(config.model.device)
        # Under torchrun every rank runs this same code; only rank 0 speaks and writes the run folder.
        self.console = console or Console(quiet=not self.ranks.is_main)
        hf_logging.disable_progress_bar()  # weight-loading bars would drown the per-step lines
        if config.model.threads:
            torch.set_num_threads(config.model.threads)
        _seed_everything(config.train.seed)
        self.device = resolve_device(config.model.device)
        self.autocast_dtype = resolve_autocast(config.model.precision, self.device)
        self.console.print(describe_precision(config.model.precision, self.device, self.autocast_dtype))
        self.run_dir = run_dir or _default_run_dir(config)
        resume_from = resume_point(self.run_dir, resume=resume)
        if resume and resume_from is None:
            self.console.print(f"{self.run_dir} has no checkpoint yet: starting again from step 0")

        self.train_problems, self.eval_problems = load_problem_splits(config)
        model_source = weights_source(config, resume_from)
        self.console.print(
            f"data: {len(self.train_problems)} training problems ({config.data.train}), "
            f"{len(self.eval_problems)} held-out ({config.data.eval}); loading model {model_source}"
        )
        model, self.tokenizer = load_model(model_source, seed=config.train.seed, notify=self.console.print)
        # The KL term anchors to the model the run started from, not to the checkpoint it resumes.
        reference = (
            load_model(config.model.name, seed=config.train.seed)[0].to(self.device)
            if config.algo.kl_coef > 0 and model_source != config.model.name
            else None
        )
        self.learner = Learner(
            model.to(self.device),
            config,
            pad_id=self.tokenizer.pad_token_id,
            autocast_dtype=self.autocast_dtype,
            ranks=self.ranks,
            resume_from=resume_from,
            reference=reference,
        )
        if self.ranks.distributed or config.train.checkpoint_format == "sharded":
            self.console.print(_describe_checkpoints(self.learner))
        self.ranks.seed_generation(config.train.seed)
        # Built from the weights just loaded (the checkpoint's, on resume), before any optimiser step.
        engine = SyncedEngine(
            build_engine(
                config.rollout,
                self.learner.generation_model,
                self.tokenizer,
                model_source=model_source,
                autocast_dtype=self.autocast_dtype,
                seed=config.train.seed,
                threads=config.model.threads,
            ),
            # Tied weights under every name: vLLM's CPU backend keeps its own packed copy of a tied lm_head.
            functools.partial(self.learner.full_weights, remove_duplicate=False),
        )
        if resume_from is not None and model_source != str(resume_from):
            # An engine that loads its own copy (vLLM) started from the base model, not from the adapter or
            # shards the learner restored on top of it.
            engine.load_weights(self.learner.full_weights(remove_duplicate=False), engine.weights_version)
        self.engine = SplitEngine(engine, self.ranks) if self.ranks.distributed else engine
        self.sampling = SamplingParams(
            config.rollout.temperature, config.rollout.top_p, config.rollout.max_new_tokens
        )
        meta_temperature = (
            config.rollout.temperature if config.meta.temperature is None else config.meta.temperature
        )
        # The engine records the distribution over the count digits, so each meta rollout's expected
        # pass rate can be read beside its sampled one.
        self.count_ids = count_token_ids(self.tokenizer, config.meta.pass_rate_scale)
        if config.efficient.gate_readout == "expected" and not self.count_ids:
            raise ConfigError(
                "efficient.gate_readout=expected needs every count 0..meta.pass_rate_scale to be one token; "
                "this tokenizer splits some of them (use efficient.gate_readout=sampled)"
            )
        self.meta_sampling = SamplingParams(
            meta_temperature, config.rollout.top_p, config.meta.max_new_tokens, self.count_ids
        )
        self.sampler = ProblemSampler(
            self.train_problems, seed=config.train.seed, shuffle=config.data.shuffle
        )
        self.streams = RngStreams(config.train.seed)
        self.update_rng = self.streams.generator("update")
        mc, e = config.meta, config.efficient
        self.notions = task_has_notions(config)
        # Written into every checkpoint and the final model, so that `masa eval --meta` asks the question the
        # model learnt (masa.meta.record); a GRPO model never learnt one.
        self.model_files = (
            {
                META_RECORD_FILE: MetaPromptRecord(
                    meta_prompt_style(config), mc.reasoning, self.notions
                ).to_json()
            }
            if config.algo.name != "grpo"
            else {}
        )
        self.meta_weights = MetaRewardWeights(
            mc.weight_length, mc.weight_pass_rate, mc.weight_notion if self.notions else 0.0
        )
        self.gate = PredictiveGate(
            sigma=e.gate_sigma,
            tolerance=e.gate_tolerance,
            min_parsed=e.gate_min_parsed,
            audit_fraction=e.audit_fraction,
            seed=stream_seed(config.train.seed, "audits"),
        )
        self.sequential_since: int | None = None
        self.shadow_streak = 0
        self.calibration = CalibrationSwitch(e.switch_window, e.switch_precision, e.switch_pearson)
        self.expert_buffer: list[tuple[list[int], list[int]]] = []
        self.step = 0
        self.elapsed = 0.0
        if resume_from is not None:
            self._restore(load_trainer_state(resume_from))
            self.console.print(f"[bold]Resumed[/] {self.run_dir} at step {self.step} from {resume_from.name}")
        # After restoring: loading optimiser state is no optimiser step the engine would have to catch up on.
        self.engine.track(self.learner.optimizer)
        # Every rank has looked at the run folder before rank 0 writes to it.
        self.ranks.barrier()
        self.writer = (
            self._open_run_folder(resume, resume_from is not None) if self.ranks.is_main else NullWriter()
        )
        self._stop_requested = False

    # ---------------------------------------------------------------- one step of the algorithm
    def train_step(self) -> dict[str, float]:
        """One step of GRPO, MASA (parallel) or MASA-efficient (sequential after its warm-up).

        1. (sequential stage) meta rollouts first; gate problems predicted trivial or unsolvable; refill.
        2. G solution rollouts per problem (cut off at l x predicted length in the sequential stage).
        3. Solution rewards; (parallel stage) M meta rollouts of the same problems.
        4. Meta rewards against this step's solution statistics.
        5. GRPO advantages in separate groups: solutions per problem, metas per problem.
        6. One optimiser step on L_solution + w_meta * L_meta (+ w_expert * the expert targets' SFT loss).
        7. The rollout engine gets the new weights before it samples again.
        """
        started = time.perf_counter()
        timeouts_before = verify_timeouts()
        masa = self.cfg.algo.name != "grpo"
        sequential = self._in_sequential_stage()
        batch_size = self.cfg.train.batch_problems
        problems = self.sampler.take(batch_size)
        metas: list[list[MetaRollout]] = []
        decisions: list[GateDecision | None] = [None] * len(problems)
        gate_log: dict[str, float] = {}
        if sequential:
            problems, metas, decisions, gate_log = self._predict_and_gate(problems)

        limits = [self._cutoff_limit(group) for group in metas] if sequential else None
        hints = (
            [self._hints(group) for group in metas]
            if sequential and self.cfg.efficient.notion_hints
            else None
        )
        prompts = [self._solution_ids(p, hints[i] if hints else None) for i, p in enumerate(problems)]
        requests = [
            GenerationRequest(
                prompts,
                self.cfg.rollout.n,
                self.sampling,
                max_tokens=limits,
                seed=self.streams.draw("solutions"),
            )
        ]
        parallel_metas = masa and not sequential
        if parallel_metas and self.cfg.meta.sample_with_solutions:
            requests.append(self._meta_request(problems))
        generated_groups = generate_together(self.engine, requests)
        groups = generated_groups[0]
        if parallel_metas:
            meta_groups = generated_groups[1] if len(generated_groups) > 1 else self._generate_metas(problems)
            metas = self._meta_rollouts(meta_groups)
        texts = [self._decode(g) for g in groups]
        rewards = [self._score(p, t, g) for p, t, g in zip(problems, texts, groups, strict=True)]
        generated = time.perf_counter()

        stats = [
            solution_stats(t, [r > 0 for r in rw], [x.num_tokens for x in g])
            for t, rw, g in zip(texts, rewards, groups, strict=True)
        ]
        meta_scores = [self._meta_rewards(p, m, st) for p, m, st in zip(problems, metas, stats, strict=False)]

        eps, scale = self.cfg.algo.adv_eps, self.cfg.algo.scale_advantages
        solution_adv = group_advantages(rewards, eps=eps, scale=scale)
        meta_adv = self._meta_advantages(metas, meta_scores)
        sequences = [
            TrainSequence(
                r.prompt_ids,
                r.completion_ids,
                a,
                sampler_logprobs=r.logprobs,
                temperature=self.sampling.temperature,
            )
            for group, advantages in zip(groups, solution_adv.advantages, strict=True)
            for r, a in zip(group, advantages, strict=True)
        ] + [
            TrainSequence(
                m.rollout.prompt_ids,
                m.rollout.completion_ids,
                a,
                kind="meta",
                temperature=self.meta_sampling.temperature,
                token_advantages=t,
                sampler_logprobs=m.rollout.logprobs,
            )
            for group, advantages, per_token in zip(
                metas, meta_adv.advantages, meta_adv.token_advantages, strict=False
            )
            for m, a, t in zip(group, advantages, per_token, strict=True)
        ]
        expert_log: dict[str, float] = {}
        if masa and self.cfg.meta.expert_sft:
            expert, expert_log = self._expert_sequences(problems, metas, stats)
            sequences += expert
        every = self.cfg.train.grad_stats_every
        update_log = self.learner.update(
            sequences, self.update_rng, grad_stats=bool(every) and self.step % every == 0
        )
        sync_seconds = self.engine.sync()
        finished = time.perf_counter()

        if sequential:
            for decision, group_is_flat, st in zip(decisions, solution_adv.zero_variance, stats, strict=True):
                self.gate.record_outcome(decision, group_is_flat, st.pass_rate)
            gate_log.update(self._gate_metrics())
        elif masa:
            gate_log.update(self._shadow_gate(metas, solution_adv.zero_variance, stats))
        self._log_predictions(problems, metas, stats, decisions, sequential)

        rollouts = [r for g in groups for r in g]
        solution_tokens = sum(r.num_tokens for r in rollouts)
        # Skipped problems' meta rollouts were paid for too.
        meta_tokens = sum(m.rollout.num_tokens for g in metas for m in g) + gate_log.get(
            "gate/skipped_meta_tokens", 0
        )
        flat_rewards = [x for g in rewards for x in g]
        log = {
            "stage/sequential": float(sequential),
            "reward/solution": sum(flat_rewards) / max(len(flat_rewards), 1),
            "reward/verify_timeouts": verify_timeouts() - timeouts_before,
            "groups/zero_variance_fraction": _mean([float(z) for z in solution_adv.zero_variance]),
            "solution/truncated_fraction": _share(rollouts, FinishReason.LENGTH),
            "solution/mean_tokens": solution_tokens / max(len(rollouts), 1),
            "tokens/solution": solution_tokens,
            "tokens/solution_per_problem": solution_tokens / max(len(problems), 1),
            "tokens/meta": meta_tokens,
            "tokens/generated": solution_tokens + meta_tokens,
            "perf/step_seconds": finished - started,
            "perf/generate_seconds": generated - started,
            "perf/update_seconds": finished - generated,
            "perf/weight_sync_seconds": sync_seconds,
            "perf/tokens_per_second": (solution_tokens + meta_tokens) / max(generated - started, 1e-9),
            **update_log,
            **expert_log,
            **gate_log,
        }
        if masa:
            log.update(
                meta_step_metrics(metas, meta_scores, stats, self.cfg.meta.pass_rate_scale, self.notions)
            )
            log["meta/token_share"] = meta_tokens / max(solution_tokens + meta_tokens, 1)
            log["groups/meta_zero_variance_fraction"] = _mean([float(z) for z in meta_adv.zero_variance])
            log["groups/meta_pass_constant_fraction"] = _mean(
                [float(z) for z in meta_adv.pass_component_constant]
            )
        if limits is not None:
            cut = [r for r in rollouts if r.finish_reason is FinishReason.CUTOFF]
            log["cutoff/cut_fraction"] = len(cut) / max(len(rollouts), 1)
            # An upper bound: a cut rollout might have stopped on its own before the full limit.
            log["cutoff/tokens_saved"] = sum(
                (self.cfg.rollout.max_new_tokens - limit)
                * sum(r.finish_reason is FinishReason.CUTOFF for r in g)
                for limit, g in zip(limits, groups, strict=True)
            )
            log["cutoff/mean_limit"] = _mean([float(x) for x in limits])
        return log

    # ---------------------------------------------------------------- pieces the step composes
    def _solution_ids(self, problem: Problem, hints: list[str] | None = None) -> list[int]:
        return encode_user_message(
            self.tokenizer, solution_prompt(problem.prompt, DEFAULT_SOLUTION_TEMPLATE, hints)
        )

    def _meta_ids(self, problem: Problem) -> list[int]:
        return run_meta_prompt_ids(self.tokenizer, problem.prompt, self.cfg)

    def _decode(self, rollouts: list[Rollout]) -> list[str]:
        return self.tokenizer.batch_decode([r.completion_ids for r in rollouts], skip_special_tokens=True)

    def _score(self, problem: Problem, texts: list[str], rollouts: list[Rollout]) -> list[float]:
        if self.reward_fn is not None:
            return [float(x) for x in self.reward_fn(problem, texts, rollouts)]
        return solution_rewards(
            texts,
            [r.finish_reason for r in rollouts],
            problem.answer,
            fallback=self.cfg.data.answer_fallback,
            timeout_s=self.cfg.data.verify_timeout_s,
            grade_cutoff=self.cfg.efficient.grade_cutoff,
            number_only=problem.numeric_answer,
        )

    def _meta_request(self, problems: list[Problem]) -> GenerationRequest:
        return GenerationRequest(
            [self._meta_ids(p) for p in problems],
            meta_rollouts(self.cfg),
            self.meta_sampling,
            seed=self.streams.draw("metas"),
        )

    def _generate_metas(self, problems: list[Problem]) -> list[list[Rollout]]:
        return generate_together(self.engine, [self._meta_request(problems)])[0] if problems else []

    def _meta_rollouts(self, groups: list[list[Rollout]]) -> list[list[MetaRollout]]:
        return [
            [self._meta_rollout(r, text) for r, text in zip(group, self._decode(group), strict=True)]
            for group in groups
        ]

    def _meta_rollout(self, rollout: Rollout, text: str) -> MetaRollout:
        prediction = self._parse_meta(text)
        char_ends = (
            tuple(token_char_ends(rollout.completion_ids, self._decode_ids))
            if self.cfg.meta.field_credit
            else None
        )
        expected = read_rollout(
            rollout, text, prediction.pass_rate, self.count_ids, self._decode_ids, char_ends
        )
        return MetaRollout(rollout, text, prediction, expected, char_ends)

    def _parse_meta(self, text: str) -> MetaPrediction:
        mc = self.cfg.meta
        prediction, _ = parse_meta_answer(
            text,
            pass_rate_scale=mc.pass_rate_scale,
            max_response_tokens=self.cfg.rollout.max_new_tokens,
            min_length=mc.min_length,
        )
        return prediction

    def _meta_rewards(self, problem: Problem, metas: list[MetaRollout], stats: SolutionStats) -> list:
        mc = self.cfg.meta
        return [
            meta_reward(
                m.prediction,
                problem.prompt,
                stats,
                scale=mc.pass_rate_scale,
                base=mc.reward_base,
                weights=self.meta_weights,
                pass_rate_kind=mc.pass_rate_reward,
            )
            for m in metas
        ]

    def _decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)  # as MetaRollout.text is decoded

    def _meta_advantages(self, metas: list[list[MetaRollout]], scores: list[list]) -> MetaAdvantages:
        mc = self.cfg.meta
        return meta_advantages(
            scores,
            weights=self.meta_weights,
            eps=self.cfg.algo.adv_eps,
            scale=mc.scale_advantages,
            field_credit=mc.field_credit,
            texts=[[m.text for m in group] for group in metas],
            char_ends=[[m.char_ends for m in group] for group in metas] if mc.field_credit else [],
        )

    def _predict_and_gate(
        self, problems: list[Problem]
    ) -> tuple[list[Problem], list[list[MetaRollout]], list[GateDecision | None], dict[str, float]]:
        """Meta rollouts first, then the gate; gated problems are replaced by fresh ones for a few rounds, and
        (efficient.fill_from_gated) a batch still short is filled with the first gated problems examined."""
        wanted = len(problems)
        kept: list[tuple[Problem, list[MetaRollout], GateDecision]] = []
        skipped: list[tuple[Problem, list[MetaRollout], GateDecision]] = []
        examined = gated = 0
        candidates = problems
        for round_index in range(self.cfg.efficient.refill_rounds + 1):
            for problem, group in zip(
                candidates, self._meta_rollouts(self._generate_metas(candidates)), strict=True
            ):
                decision = self.gate.decide([self._gate_fraction(m) for m in group])
                examined += 1
                gated += decision.gated
                (kept if decision.rolled_out else skipped).append((problem, group, decision))
            missing = wanted - len(kept)
            if missing <= 0 or round_index == self.cfg.efficient.refill_rounds:
                break
            candidates = self.sampler.take(missing)
        filled = skipped[: max(wanted - len(kept), 0)] if self.cfg.efficient.fill_from_gated else []
        kept += [(p, group, self.gate.roll_out_anyway(d)) for p, group, d in filled]
        skipped = skipped[len(filled) :]
        log = {
            "gate/examined": examined,
            "gate/gated": gated,
            "gate/gated_fraction": gated / max(examined, 1),
            "gate/skipped": len(skipped),
            # A skipped problem's meta rollouts cost tokens but get no reward and stay out of the update.
            "gate/skipped_meta_tokens": sum(m.rollout.num_tokens for _, group, _ in skipped for m in group),
            "gate/audited": sum(d.audited for _, _, d in kept),
            "gate/filled": len(filled),
            "gate/batch_shortfall": wanted - len(kept),
        }
        return [p for p, _, _ in kept], [m for _, m, _ in kept], [d for _, _, d in kept], log

    def _fraction(self, meta: MetaRollout) -> float | None:
        return meta.prediction.pass_rate_fraction(self.cfg.meta.pass_rate_scale)

    def _gate_fraction(self, meta: MetaRollout) -> float | None:
        return (
            meta.expected_pass_rate if self.cfg.efficient.gate_readout == "expected" else self._fraction(meta)
        )

    def _cutoff_limit(self, metas: list[MetaRollout]) -> int:
        e = self.cfg.efficient
        max_tokens = self.cfg.rollout.max_new_tokens
        return cutoff_limit(
            [m.prediction.solution_length for m in metas],
            factor=e.cutoff_factor,
            min_tokens=min(e.cutoff_min_tokens, max_tokens),
            max_tokens=max_tokens,
            aggregate=e.cutoff_aggregate,
        )

    @staticmethod
    def _hints(metas: list[MetaRollout]) -> list[str]:
        """Concepts predicted by at least two meta rollouts, most frequent first (at most five).

        The paper takes the best-scoring rollout's notions, but notion scores need solutions, which the
        sequential stage has not generated yet; agreement between predictions is the signal available.
        """
        counts = Counter(
            n.strip().lower() for m in metas for n in set(m.prediction.notions or []) if n.strip()
        )
        return [notion for notion, count in counts.most_common(5) if count >= 2]

    def _in_sequential_stage(self) -> bool:
        if self.cfg.algo.name != "masa-efficient":
            return False
        e = self.cfg.efficient
        if self.sequential_since is None and (
            (e.switch == "steps" and self.step >= e.warmup_steps)
            or (e.switch == "precision" and self.shadow_streak >= e.switch_patience)
            or (e.switch == "calibration" and self.calibration.ready())
        ):
            self.sequential_since = self.step
            self.console.print(
                f"[bold]step {self.step + 1}: entering the sequential stage (gating, cutoff)[/]"
            )
        return self.sequential_since is not None

    def _shadow_gate(
        self, metas: list[list[MetaRollout]], zero_variance: list[bool], stats: list[SolutionStats]
    ) -> dict[str, float]:
        """In the parallel stage, what the gate would have decided, scored against the real outcomes.

        Zero-variance precision counts any gate of a flat group; the direction-aware one also needs the
        predicted side (unsolvable / trivial) to be the outcome's (all wrong / all right).
        """
        e = self.cfg.efficient
        fractions = [[f for m in group if (f := self._gate_fraction(m)) is not None] for group in metas]
        reasons = [gate_reason(f, e.gate_sigma, e.gate_tolerance, e.gate_min_parsed)[0] for f in fractions]
        would = [r in GATING_REASONS for r in reasons]
        actual = [st.pass_rate for st in stats]
        hits = sum(w and z for w, z in zip(would, zero_variance, strict=True))
        right_side = sum(
            w and z and gate_side_matches(r, a)
            for w, z, r, a in zip(would, zero_variance, reasons, actual, strict=True)
        )
        precision = hits / sum(would) if any(would) else math.nan
        self.shadow_streak = self.shadow_streak + 1 if precision >= e.switch_precision else 0
        log = {
            "gate/shadow_gated_fraction": sum(would) / max(len(would), 1),
            "gate/shadow_precision": precision,
            "gate/shadow_recall": hits / sum(zero_variance) if any(zero_variance) else math.nan,
            "gate/shadow_precision_direction": right_side / sum(would) if any(would) else math.nan,
            "gate/shadow_recall_direction": right_side / sum(zero_variance)
            if any(zero_variance)
            else math.nan,
        }
        predicted = [sum(f) / len(f) if f else None for f in fractions]
        log.update(self.calibration.observe(predicted, actual, reasons))
        return log

    def _gate_metrics(self) -> dict[str, float]:
        window = self.gate.metrics()
        total = self.gate.metrics(cumulative=True)
        self.gate.reset_metrics()
        return {
            "gate/precision": window["precision"],
            "gate/recall": window["recall"],
            "gate/precision_cumulative": total["precision"],
            "gate/recall_cumulative": total["recall"],
            "gate/f1_cumulative": total["f1"],
            "gate/precision_direction": window["precision_direction"],
            "gate/recall_direction": window["recall_direction"],
            "gate/precision_direction_cumulative": total["precision_direction"],
            "gate/recall_direction_cumulative": total["recall_direction"],
            "gate/f1_direction_cumulative": total["f1_direction"],
        }

    def _expert_sequences(
        self, problems: list[Problem], metas: list[list[MetaRollout]], stats: list[SolutionStats]
    ) -> tuple[list[TrainSequence], dict[str, float]]:
        """Corrected expert meta trajectories of this step's problems; every K steps, a sample of them (or of
        the buffer of recent ones) joins the update."""
        mc = self.cfg.meta
        targets = [
            target
            for problem, group, st in zip(problems, metas, stats, strict=True)
            if (target := self._expert_target(problem, group, st)) is not None
        ]
        log: dict[str, float] = {"expert/targets_added": len(targets)}
        if mc.expert_source == "buffer":
            self.expert_buffer += targets
            del self.expert_buffer[: -mc.expert_buffer]
            targets = self.expert_buffer
            log["expert/buffer"] = len(self.expert_buffer)
        if (self.step + 1) % mc.expert_every or not targets:
            return [], log
        picks = self.update_rng.sample(targets, min(mc.expert_batch, len(targets)))
        log["expert/targets_trained"] = len(picks)
        return [TrainSequence(prompt, target, 0.0, kind="expert") for prompt, target in picks], log

    def _expert_target(
        self, problem: Problem, metas: list[MetaRollout], stats: SolutionStats
    ) -> tuple[list[int], list[int]] | None:
        mc = self.cfg.meta
        notion_scores = [notion_reward(m.prediction.notions, problem.prompt, stats) for m in metas]
        best = select_expert_meta(
            [m.text for m in metas], [m.prediction for m in metas], notion_scores, mc.expert_threshold
        )
        if best is None and not mc.expert_fallback:
            return None
        chosen = metas[best] if best is not None else None
        predictions = [m.prediction for m in metas]
        text = build_expert_target(
            chosen.text if chosen else None,
            stats,
            chosen.prediction.notions if chosen else fallback_notions(predictions, notion_scores),
            scale=mc.pass_rate_scale,
            max_response_tokens=self.cfg.rollout.max_new_tokens,
            min_length=mc.min_length,
            notion_word=mc.notion_word,
            reasoning=mc.reasoning,
            with_notions=self.notions,
        )
        target = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return self._meta_ids(problem), target

    def _log_predictions(
        self,
        problems: list[Problem],
        metas: list[list[MetaRollout]],
        stats: list[SolutionStats],
        decisions: list[GateDecision | None],
        sequential: bool,
    ) -> None:
        if not metas:
            return
        rows = []
        for problem, group, st, decision in zip(problems, metas, stats, decisions, strict=True):
            rows.append(
                {
                    "step": self.step + 1,
                    "problem_id": problem.id,
                    "difficulty": problem.difficulty,
                    "actual_pass_rate": st.pass_rate,
                    "predicted_pass_rates": [self._fraction(m) for m in group],
                    "expected_pass_rates": [m.expected_pass_rate for m in group],
                    "correct_length_range": None if st.l_min is None else [st.l_min, st.l_max],
                    "predicted_lengths": [m.prediction.solution_length for m in group],
                    "predicted_notions": [m.prediction.notions for m in group],
                    "stage": "sequential" if sequential else "parallel",
                    "gated": bool(decision and decision.gated),
                }
            )
        self.writer.append(PREDICTIONS_FILE, rows)

    # ---------------------------------------------------------------- evaluation, checkpoints, loop
    def evaluate(self, progress: Progress | None = None) -> dict[str, float]:
        """Held-out accuracy; with ``progress``, a bar shows the problems done (evaluations can be long)."""
        if not self.eval_problems:
            return {}
        params = SamplingParams(
            temperature=self.cfg.rollout.eval_temperature,
            top_p=self.cfg.rollout.top_p,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
        )
        bar = progress or Progress(disable=True)
        task = bar.add_task("evaluating", total=len(self.eval_problems))
        # A private RNG stream: evaluating must not change what training samples next, or a resumed run
        # (which may evaluate at different points) would diverge from an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed + 7919)
            result = heldout_accuracy(
                self.engine,
                self.tokenizer,
                self.eval_problems,
                params,
                samples_per_problem=self.cfg.rollout.eval_samples,
                template=DEFAULT_SOLUTION_TEMPLATE,
                fallback=self.cfg.data.answer_fallback,
                timeout_s=self.cfg.data.verify_timeout_s,
                chunk_problems=max(1, self.cfg.rollout.max_batch_sequences // self.cfg.rollout.eval_samples),
                on_progress=lambda done: bar.update(task, completed=done),
            )
        bar.remove_task(task)
        metrics = {"eval/accuracy": result.accuracy, "eval/mean_tokens": result.mean_tokens}
        metrics.update({f"eval/accuracy_level_{k}": v for k, v in result.by_difficulty.items()})
        return metrics

    @property
    def model(self) -> torch.nn.Module:
        return self.learner.model

    def trainer_state(self) -> dict[str, Any]:
        """What a checkpoint stores besides the weights (collective under torchrun)."""
        return {
            **self.learner.state_dict(),
            "rank_rng": self.ranks.gather(rng_state()),
            "sampler": self.sampler.state_dict(),
            "rng_streams": self.streams.state_dict(),
            "elapsed": self.elapsed,
            "gate": self.gate.state_dict(),
            "sequential_since": self.sequential_since,
            "shadow_streak": self.shadow_streak,
            "calibration_switch": self.calibration.state_dict(),
            "expert_buffer": self.expert_buffer,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
        self.streams.load_state_dict(state["rng_streams"])
        self.elapsed = state["elapsed"]
        self.step = state["step"]
        self.gate.load_state_dict(state["gate"])
        self.sequential_since = state["sequential_since"]
        self.shadow_streak = state["shadow_streak"]
        self.calibration.load_state_dict(state["calibration_switch"])
        self.expert_buffer = state["expert_buffer"]
        per_rank = state["rank_rng"]
        if len(per_rank) == self.ranks.world:
            set_rng_state(per_rank[self.ranks.rank])
        else:
            # Another world size: the data, gate and update streams carry over exactly; sampling cannot.
            set_rng_state(state["rng"])
            self.ranks.seed_generation(self.cfg.train.seed + self.step)

    def save(self) -> Path:
        return self.learner.save_checkpoint(
            self.run_dir / CHECKPOINTS_DIR,
            self.step,
            self.tokenizer,
            self.trainer_state(),
            keep=self.cfg.train.keep_checkpoints,
            extra_files=self.model_files,
        )

    def _open_run_folder(self, resume: bool, resumed: bool) -> MetricsWriter:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / CONFIG_FILE, yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        t = self.cfg.train
        return MetricsWriter(
            self.run_dir,
            config=self.cfg.to_dict(),
            # Starting again from step 0, the killed attempt's rows are all redone: none are kept.
            resume_step=(self.step if resumed else -1) if resume else None,
            tensorboard=t.tensorboard,
            wandb=t.wandb,
            wandb_project=t.wandb_project,
        )

    def fit(self) -> TrainResult:
        cfg = self.cfg.train
        interrupted = False
        try:
            with self._graceful_interrupt(), progress_bar(self.console) as progress:
                task = progress.add_task("training", total=cfg.steps, completed=self.step)
                if self.step == 0 and cfg.eval_every:
                    baseline = self.evaluate(progress)
                    self.writer.log(0, {**baseline, "time/elapsed_s": 0.0})
                    progress.console.print(format_step_line(0, baseline))
                while self.step < cfg.steps:
                    metrics = self.train_step()
                    self.step += 1
                    self.elapsed += metrics["perf/step_seconds"]
                    metrics["time/elapsed_s"] = self.elapsed
                    if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                        metrics.update(self.evaluate(progress))
                    self.writer.log(self.step, metrics)
                    progress.console.print(format_step_line(self.step, metrics))
                    progress.update(task, completed=self.step)
                    if self.ranks.any(self._stop_requested):
                        interrupted = True
                        break
                    if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                        self.save()
            checkpoint = self.save()
            self.console.print(f"checkpoint: {checkpoint}")
            final_dir = None
            if not interrupted:
                final_dir = self.learner.save_final(self.run_dir / "final", self.tokenizer, self.model_files)
                self.console.print(f"[bold green]done[/]: final model in {final_dir}")
            else:
                self.console.print(
                    f"stopped at step {self.step}; continue with: masa train --resume {self.run_dir}"
                )
        finally:
            self.writer.close()
        return TrainResult(self.run_dir, final_dir, self.step, interrupted)

    @contextlib.contextmanager
    def _graceful_interrupt(self) -> Iterator[None]:
        """First Ctrl-C: finish the running step, save, exit. Second: stop at once (last checkpoint kept)."""
        try:
            previous = signal.getsignal(signal.SIGINT)
        except ValueError:  # not the main thread: leave signals alone
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            self.console.print(
                "[yellow]Ctrl-C: finishing this step, then saving a checkpoint. "
                "Press Ctrl-C again to stop now (the last saved checkpoint is kept).[/]"
            )

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def train(
    config: Config, *, run_dir: Path | None = None, resume: bool = False, reward_fn: RewardFn | None = None
) -> TrainResult:
    """Train with ``config`` (or continue the run in ``run_dir`` with ``resume=True``).

    ``reward_fn`` replaces answer checking for tasks with their own verifier.
    """
    trainer = Trainer(config, run_dir=run_dir, resume=resume, reward_fn=reward_fn)
    try:
        return trainer.fit()
    finally:
        try:
            trainer.engine.close()  # before the process group its engine may have built groups from
        finally:
            close_ranks(trainer.ranks)


def load_run_config(run_dir: Path) -> Config:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a masa run folder (no {CONFIG_FILE})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is damaged: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is empty or damaged: expected a mapping of sections")
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _describe_checkpoints(learner: Learner) -> str:
    size = f"{learner.checkpoint_bytes / 1e9:.2f} GB of trainable weights and optimiser state"
    if learner.sharded_checkpoints:
        return f"checkpoints: sharded, every rank writes its shards ({size})"
    if learner.ranks.distributed:
        return f"checkpoints: full, gathered and written by rank 0 ({size})"
    return "checkpoints: full (train.checkpoint_format=sharded shards only under torchrun)"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _share(rollouts: list[Rollout], reason: FinishReason) -> float:
    return sum(r.finish_reason is reason for r in rollouts) / max(len(rollouts), 1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _default_run_dir(config: Config) -> Path:
    name = config.train.run_name or f"{config.algo.name}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(config.train.output_dir) / name


def _field_map(config: Config) -> FieldMap | None:
    d = config.data
    if d.prompt_field is None and d.answer_field is None and d.id_field is None:
        return None
    return FieldMap(prompt=d.prompt_field or "prompt", answer=d.answer_field or "answer", id=d.id_field)


def load_problem_splits(config: Config) -> tuple[list[Problem], list[Problem]]:
    """The training problems and the held-out evaluation problems a run with ``config`` uses."""
    d = config.data
    arith_train, arith_eval = arithmetic_splits(
        seed=config.train.seed,
        n_train=d.arithmetic_train_size,
        n_eval=d.eval_size,
        levels=d.arithmetic_levels,
    )
    train = arith_train if d.train == "arithmetic" else _load_data_file(config, d.train, d.train_split)
    if d.eval is None:
        evaluation: list[Problem] = []
    elif d.eval == "arithmetic":
        evaluation = arith_eval
    else:
        evaluation = _load_data_file(config, d.eval, d.eval_split)
    return train, evaluation[: d.eval_size]


def _load_data_file(config: Config, source: str, split: str) -> list[Problem]:
    d = config.data
    try:
        return load_problems(source, fields=_field_map(config), split=split, skip_invalid=d.skip_invalid)
    except DataError as exc:
        if exc.row is None or d.skip_invalid:
            raise
        raise DataError(
            f"{exc.reason} (data.skip_invalid=true drops malformed rows with a warning)",
            source=exc.source,
            row=exc.row,
            field=exc.field,
        ) from exc
