"""The training loop: rollouts -> rewards -> advantages -> update, with evaluation and checkpoints."""

from __future__ import annotations

import contextlib
import copy
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers.utils import logging as hf_logging

from masa.advantages import group_advantages
from masa.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint, set_rng_state
from masa.config import Config, config_from_dict
from masa.data.arithmetic import arithmetic_splits
from masa.data.loaders import FieldMap, load_problems
from masa.data.problem import Problem
from masa.data.sampler import ProblemSampler
from masa.eval.heldout import heldout_accuracy
from masa.models import load_model, resolve_autocast, resolve_device
from masa.prompts import DEFAULT_SOLUTION_TEMPLATE, encode_user_message, solution_prompt
from masa.rewards import solution_rewards
from masa.rollout.engine import HFEngine
from masa.rollout.types import FinishReason, Rollout, SamplingParams
from masa.tracking import MetricsWriter, format_step_line
from masa.update import TrainSequence, UpdateSettings, policy_update

CONFIG_FILE = "config.yaml"

RewardFn = Callable[[Problem, list[str], list[Rollout]], Sequence[float]]
"""A custom solution reward: (problem, decoded completions, rollouts) -> one reward per rollout."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    final_model_dir: Path | None
    steps_completed: int
    interrupted: bool


class Trainer:
    """Owns the model, optimiser, data position and run folder; ``train_step`` is one step of the algorithm."""

    def __init__(
        self,
        config: Config,
        *,
        run_dir: Path | None = None,
        resume: bool = False,
        console: Console | None = None,
        reward_fn: RewardFn | None = None,
    ):
        self.cfg = config
        self.reward_fn = reward_fn
        self.console = console or Console()
        hf_logging.disable_progress_bar()  # weight-loading bars would drown the per-step lines
        if config.model.threads:
            torch.set_num_threads(config.model.threads)
        _seed_everything(config.train.seed)
        self.device = resolve_device(config.model.device)
        self.autocast_dtype = resolve_autocast(config.model.precision, self.device)
        self.run_dir = run_dir or _default_run_dir(config)
        if not resume and self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise FileExistsError(
                f"run folder {self.run_dir} already exists; resume it with `masa train --resume {self.run_dir}` "
                "or pick another train.run_name"
            )
        resume_from = latest_checkpoint(self.run_dir / "checkpoints") if resume else None
        if resume and resume_from is None:
            raise FileNotFoundError(
                f"nothing to resume: {self.run_dir / 'checkpoints'} holds no complete checkpoint"
            )

        self.train_problems, self.eval_problems = _load_data(config)
        model_source = str(resume_from) if resume_from else config.model.name
        self.model, self.tokenizer = load_model(model_source, seed=config.train.seed)
        self.model.to(self.device)
        if config.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.ref_model = None
        if config.algo.kl_coef > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)

        self.engine = HFEngine(
            self.model,
            self.tokenizer,
            max_batch_sequences=config.rollout.max_batch_sequences,
            autocast_dtype=self.autocast_dtype,
        )
        self.sampling = SamplingParams(
            config.rollout.temperature, config.rollout.top_p, config.rollout.max_new_tokens
        )
        a = config.algo
        self.update_settings = UpdateSettings(
            clip_low=a.clip_low,
            clip_high=a.clip_high,
            kl_coef=a.kl_coef,
            ppo_epochs=a.ppo_epochs,
            mini_batches=a.mini_batches,
            micro_batch_sequences=a.micro_batch_sequences,
            grad_clip=a.grad_clip,
            temperature=config.rollout.temperature,
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=a.lr, betas=tuple(a.betas), weight_decay=a.weight_decay
        )
        warmup = a.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0
        )
        self.sampler = ProblemSampler(
            self.train_problems, seed=config.train.seed, shuffle=config.data.shuffle
        )
        self.update_rng = random.Random(config.train.seed)
        self.step = 0
        self.elapsed = 0.0
        if resume_from is not None:
            self._restore(load_trainer_state(resume_from))
            self.console.print(f"[bold]Resumed[/] {self.run_dir} at step {self.step} from {resume_from.name}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        self.writer = MetricsWriter(
            self.run_dir,
            config=config.to_dict(),
            resume_step=self.step if resume else None,
            tensorboard=config.train.tensorboard,
            wandb=config.train.wandb,
            wandb_project=config.train.wandb_project,
        )
        self._stop_requested = False

    # ---------------------------------------------------------------- one step of the algorithm
    def train_step(self) -> dict[str, float]:
        """Sample G solutions per problem, score them, normalise within each problem, update the policy."""
        started = time.perf_counter()
        problems = self.sampler.take(self.cfg.train.batch_problems)
        prompts = [self._solution_ids(p) for p in problems]
        groups = self.engine.generate(prompts, self.cfg.rollout.n, self.sampling)
        generated = time.perf_counter()

        rewards = [self._score(problem, rollouts) for problem, rollouts in zip(problems, groups, strict=True)]
        adv = group_advantages(rewards, eps=self.cfg.algo.adv_eps, scale=self.cfg.algo.scale_advantages)
        sequences = [
            TrainSequence(r.prompt_ids, r.completion_ids, a)
            for rollouts, advantages in zip(groups, adv.advantages, strict=True)
            for r, a in zip(rollouts, advantages, strict=True)
        ]
        update_metrics = policy_update(
            self.model,
            self.optimizer,
            self.scheduler,
            sequences,
            self.update_settings,
            pad_id=self.tokenizer.pad_token_id,
            autocast_dtype=self.autocast_dtype,
            ref_model=self.ref_model,
            rng=self.update_rng,
        )
        finished = time.perf_counter()

        rollouts = [r for g in groups for r in g]
        solution_tokens = sum(r.num_tokens for r in rollouts)
        flat_rewards = [x for g in rewards for x in g]
        return {
            "reward/solution": sum(flat_rewards) / len(flat_rewards),
            "groups/zero_variance_fraction": sum(adv.zero_variance) / len(adv.zero_variance),
            "solution/truncated_fraction": _share(rollouts, FinishReason.LENGTH),
            "solution/mean_tokens": solution_tokens / len(rollouts),
            "tokens/solution": solution_tokens,
            "tokens/generated": solution_tokens,
            "perf/step_seconds": finished - started,
            "perf/generate_seconds": generated - started,
            "perf/update_seconds": finished - generated,
            "perf/tokens_per_second": solution_tokens / max(generated - started, 1e-9),
            **update_metrics,
        }

    # ---------------------------------------------------------------- pieces the step composes
    def _solution_ids(self, problem: Problem) -> list[int]:
        return encode_user_message(self.tokenizer, solution_prompt(problem.prompt, DEFAULT_SOLUTION_TEMPLATE))

    def _decode(self, rollouts: list[Rollout]) -> list[str]:
        return self.tokenizer.batch_decode([r.completion_ids for r in rollouts], skip_special_tokens=True)

    def _score(self, problem: Problem, rollouts: list[Rollout]) -> list[float]:
        texts = self._decode(rollouts)
        if self.reward_fn is not None:
            return [float(x) for x in self.reward_fn(problem, texts, rollouts)]
        return solution_rewards(
            texts,
            [r.finish_reason for r in rollouts],
            problem.answer,
            fallback=self.cfg.data.answer_fallback,
            timeout_s=self.cfg.data.verify_timeout_s,
        )

    # ---------------------------------------------------------------- evaluation, checkpoints, loop
    def evaluate(self) -> dict[str, float]:
        if not self.eval_problems:
            return {}
        params = SamplingParams(
            temperature=self.cfg.rollout.eval_temperature,
            top_p=self.cfg.rollout.top_p,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
        )
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
            )
        metrics = {"eval/accuracy": result.accuracy, "eval/mean_tokens": result.mean_tokens}
        metrics.update({f"eval/accuracy_level_{k}": v for k, v in result.by_difficulty.items()})
        return metrics

    def trainer_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "update_rng": self.update_rng.getstate(),
            "elapsed": self.elapsed,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.update_rng.setstate(state["update_rng"])
        self.elapsed = state["elapsed"]
        self.step = state["step"]
        set_rng_state(state["rng"])

    def save(self) -> Path:
        return save_checkpoint(
            self.run_dir / "checkpoints",
            self.step,
            self.model,
            self.tokenizer,
            self.trainer_state(),
            keep=self.cfg.train.keep_checkpoints,
        )

    def fit(self) -> TrainResult:
        cfg = self.cfg.train
        interrupted = False
        try:
            with self._graceful_interrupt(), _progress(self.console) as progress:
                task = progress.add_task("training", total=cfg.steps, completed=self.step)
                if self.step == 0 and cfg.eval_every:
                    baseline = self.evaluate()
                    self.writer.log(0, {**baseline, "time/elapsed_s": 0.0})
                    progress.console.print(format_step_line(0, baseline))
                while self.step < cfg.steps:
                    metrics = self.train_step()
                    self.step += 1
                    self.elapsed += metrics["perf/step_seconds"]
                    metrics["time/elapsed_s"] = self.elapsed
                    if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                        metrics.update(self.evaluate())
                    self.writer.log(self.step, metrics)
                    progress.console.print(format_step_line(self.step, metrics))
                    progress.update(task, completed=self.step)
                    if self._stop_requested:
                        interrupted = True
                        break
                    if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                        self.save()
            checkpoint = self.save()
            self.console.print(f"checkpoint: {checkpoint}")
            final_dir = None
            if not interrupted:
                final_dir = self.run_dir / "final"
                self.model.save_pretrained(final_dir)
                self.tokenizer.save_pretrained(final_dir)
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
    return Trainer(config, run_dir=run_dir, resume=resume, reward_fn=reward_fn).fit()


def load_run_config(run_dir: Path) -> Config:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a masa run folder (no {CONFIG_FILE})")
    return config_from_dict(yaml.safe_load(path.read_text()))


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


def _load_data(config: Config) -> tuple[list[Problem], list[Problem]]:
    d = config.data
    arith_train, arith_eval = arithmetic_splits(
        seed=config.train.seed,
        n_train=d.arithmetic_train_size,
        n_eval=d.eval_size,
        levels=d.arithmetic_levels,
    )
    fields = _field_map(config)
    train = (
        arith_train if d.train == "arithmetic" else load_problems(d.train, fields=fields, split=d.train_split)
    )
    if d.eval is None:
        evaluation: list[Problem] = []
    elif d.eval == "arithmetic":
        evaluation = arith_eval
    else:
        evaluation = load_problems(d.eval, fields=fields, split=d.eval_split)
    return train, evaluation[: d.eval_size]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
