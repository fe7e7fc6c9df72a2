"""One evaluation run of a model on one benchmark: sampling, answer checking, pass@k, meta-awareness, plots.

Every finished batch of problems is appended to ``problems.jsonl`` in the output folder and flushed, so an
interrupted run loses at most the batch in progress. ``resume=True`` skips the problems already there,
after checking that the settings saved next to them match; the summary is always computed from the saved
rows, so a resumed run reports the same way as an uninterrupted one. Torch is reseeded at every start, so
a resumed run draws other samples for the remaining problems than the uninterrupted run would have; each
problem's samples are still independent draws, so pass@k stays unbiased.

With meta predictions on, each problem also gets M meta rollouts, and the summary measures how well they
predicted that problem's own solutions (the paper's meta-awareness analysis). A problem's predicted pass
rate is the mean of its parsed predictions and its predicted length the median of the parsed ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from rich.table import Table
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from masa.config import EfficientConfig, MetaConfig
from masa.data.problem import Problem
from masa.eval.meta_metrics import (
    CalibrationRow,
    CutoffAnalysis,
    GatingScore,
    calibration_table,
    cutoff_analysis,
    gating_scores,
    length_hit_rate,
    level_alignment,
    pass_rate_alignment,
)
from masa.eval.passk import PassAtK, summarize_pass_at_k
from masa.eval.plots import (
    plot_calibration,
    plot_cutoff_histograms,
    plot_gating_vs_sigma,
    plot_length_scatter,
    plot_pass_rate_scatter,
)
from masa.meta.prompt import build_meta_prompt, parse_meta_answer
from masa.meta.readout import count_token_ids, read_rollout
from masa.meta.record import UNRECORDED
from masa.meta.rewards import SolutionStats, notion_reward, solution_stats
from masa.models import resolve_autocast
from masa.prompts import DEFAULT_SOLUTION_TEMPLATE, encode_meta_prompt, encode_user_message, solution_prompt
from masa.rollout.engine import HFEngine, RolloutEngine
from masa.rollout.types import FinishReason, Rollout, SamplingParams
from masa.runfiles import append_jsonl, write_text
from masa.tracking import progress_bar
from masa.verify import check_answers, verify_timeouts

__all__ = [
    "GATING_SIGMAS",
    "PROBLEMS_FILE",
    "RESULTS_FILE",
    "SETTINGS_FILE",
    "EvalResult",
    "EvalSettings",
    "EvalSetupError",
    "check_out_dir",
    "evaluate_benchmark",
    "summary_tables",
    "write_results",
]

PROBLEMS_FILE = "problems.jsonl"
SETTINGS_FILE = "settings.json"
RESULTS_FILE = "results.json"
GATING_SIGMAS = (0.05, 0.1, 0.15, 0.2, 0.3)
# The gate threshold and cutoff factor the console table shows (the paper's v1 settings).
_TABLE_GATE_SIGMA = 0.1
_TABLE_CUTOFF_FACTOR = 2.0

# Settings that change only how results are summarised or batched, not the samples: a run may be resumed
# with other values.
# Engines sample the same model, so a run may resume on another one; the engine is recorded, not compared.
_NOT_COMPARED_ON_RESUME = frozenset(
    {"ks", "max_batch_sequences", "gate_tolerance", "gate_min_parsed", "engine"}
)


class EvalSetupError(ValueError):
    """Settings or an output folder that an evaluation cannot start with; the message says what to change."""


@dataclass(frozen=True)
class EvalSettings:
    """How an evaluation samples and scores. Defaults are the paper's protocol except ``n`` and the lengths.

    The meta prompt defaults to what a model without a record is asked (``masa.meta.record.UNRECORDED``;
    `masa eval` reads a model's record); the gating defaults are the training defaults.
    """

    model: str = ""
    """What was evaluated (a name or path); recorded, and checked on resume."""
    n: int = 8
    ks: tuple[int, ...] = (1,)
    temperature: float = 0.6
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0
    meta: bool = False
    meta_n: int = 8
    template: str = DEFAULT_SOLUTION_TEMPLATE
    answer_fallback: Literal["last_number", "none"] = "last_number"
    verify_timeout_s: float = 2.0
    pass_rate_scale: int = MetaConfig.pass_rate_scale
    meta_min_length: int = MetaConfig.min_length
    notion_word: str = MetaConfig.notion_word
    meta_prompt: str = UNRECORDED.prompt
    meta_reasoning: bool = UNRECORDED.reasoning
    meta_notions: bool = UNRECORDED.notions
    """Ask for notions in the meta prompt (false: as trained on a task without notions)."""
    gate_tolerance: float = EfficientConfig.gate_tolerance
    gate_min_parsed: int = EfficientConfig.gate_min_parsed
    max_batch_sequences: int = 64
    engine: str = "hf"
    """The rollout engine that sampled (hf or vllm); recorded with the results."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))
        checks = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            (bool(self.ks) and min(self.ks) >= 1, f"every k must be at least 1, got {list(self.ks)}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must lie in (0, 1], got {self.top_p}"),
            (self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}"),
            (self.meta_n >= 1, f"meta_n must be at least 1, got {self.meta_n}"),
            (self.verify_timeout_s > 0, f"verify_timeout_s must be > 0, got {self.verify_timeout_s}"),
            (
                self.max_batch_sequences >= 1,
                f"max_batch_sequences must be >= 1, got {self.max_batch_sequences}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise EvalSetupError(message)
        too_big = [k for k in self.ks if k > self.n]
        if too_big:
            raise EvalSetupError(
                f"pass@{too_big[0]} needs at least {too_big[0]} samples per problem, but n is {self.n}: "
                f"raise n (--n) to {max(too_big)} or more, or drop k={', '.join(map(str, too_big))} (--k)"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ks"] = list(self.ks)
        return data


@dataclass
class EvalResult:
    name: str
    source: str
    settings: EvalSettings
    problems: list[dict[str, Any]]
    """One saved row per problem, in benchmark order (see ``problems.jsonl``)."""
    pass_at_k: dict[int, PassAtK]
    meta: dict[str, Any] | None
    plots: list[Path]
    resumed_problems: int
    """Problems found finished in the output folder and not generated again."""
    generated_completions: int
    generated_tokens: int
    generation_seconds: float
    """Time spent inside the engine in this call (meta rollouts included)."""
    wall_seconds: float
    out_dir: Path

    @property
    def mean_tokens(self) -> float:
        lengths = [c["num_tokens"] for row in self.problems for c in row["completions"]]
        return statistics.fmean(lengths)

    @property
    def truncated_fraction(self) -> float:
        reasons = [c["finish_reason"] for row in self.problems for c in row["completions"]]
        return sum(r == FinishReason.LENGTH for r in reasons) / len(reasons)

    def throughput(self) -> dict[str, float | None]:
        seconds = self.generation_seconds
        return {
            "completions": self.generated_completions,
            "tokens": self.generated_tokens,
            "generation_seconds": seconds,
            "completions_per_second": self.generated_completions / seconds if seconds else None,
            "tokens_per_second": self.generated_tokens / seconds if seconds else None,
        }

    def summary(self) -> dict[str, Any]:
        """Everything but the per-problem rows, as JSON-ready values."""
        return {
            "name": self.name,
            "source": self.source,
            "n_problems": len(self.problems),
            "pass_at_k": {str(k): dataclasses.asdict(v) for k, v in self.pass_at_k.items()},
            "mean_tokens": self.mean_tokens,
            "truncated_fraction": self.truncated_fraction,
            # Rows saved before this count existed have none.
            "verify_timeouts": sum(row.get("verify_timeouts", 0) for row in self.problems),
            **({"meta": self.meta} if self.meta is not None else {}),
            "plots": [str(p) for p in self.plots],
            "resumed_problems": self.resumed_problems,
            "throughput": self.throughput(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "problems": self.problems}


def evaluate_benchmark(
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    settings: EvalSettings,
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    source: str = "",
    resume: bool = False,
    engine: RolloutEngine | None = None,
    console: Console | None = None,
) -> EvalResult:
    """Sample ``settings.n`` solutions per problem (and ``settings.meta_n`` meta predictions with
    ``settings.meta``), check them, and summarise; per-problem rows and plots go to ``out_dir``.

    ``engine`` defaults to an ``HFEngine`` on the model's device with bf16 autocast where the hardware
    runs it fast. Torch is seeded from ``settings.seed``.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    name = name or out.name
    console = console or Console()
    if not problems:
        raise EvalSetupError(f"benchmark {name!r} has no problems to evaluate")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i, count in Counter(ids).items() if count > 1)
        raise EvalSetupError(f"benchmark {name!r} has duplicate problem id {duplicate!r}; ids must be unique")

    saved = _prepare_out_dir(out, settings, resume)
    wanted = set(ids)
    stale = sum(i not in wanted for i in saved)
    if stale:
        console.print(f"{name}: {stale} saved problems are not in this selection and are left out")
    todo = [p for p in problems if p.id not in saved]
    if engine is None:
        if model is None:
            raise ValueError("evaluate_benchmark needs the model or an engine")
        autocast = resolve_autocast("auto", model.device)
        engine = HFEngine(
            model, tokenizer, max_batch_sequences=settings.max_batch_sequences, autocast_dtype=autocast
        )
    torch.manual_seed(settings.seed)
    counters = _Counters()
    count_ids = count_token_ids(tokenizer, settings.pass_rate_scale) if settings.meta else ()
    per_problem = max(settings.n, settings.meta_n if settings.meta else 0)
    batch_size = max(1, settings.max_batch_sequences // per_problem)
    with progress_bar(console) as progress:
        task = progress.add_task(name, total=len(problems), completed=len(problems) - len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            finished = _evaluate_batch(engine, tokenizer, batch, settings, counters, count_ids)
            append_jsonl(out / PROBLEMS_FILE, finished)
            saved.update((row["id"], row) for row in finished)
            progress.advance(task, len(batch))

    rows = [saved[i] for i in ids]
    meta = _MetaView(rows, settings) if settings.meta else None
    return EvalResult(
        name=name,
        source=source,
        settings=settings,
        problems=rows,
        pass_at_k=summarize_pass_at_k([(row["n"], row["c"]) for row in rows], settings.ks),
        meta=meta.summary() if meta else None,
        plots=meta.plot(out) if meta else [],
        resumed_problems=len(problems) - len(todo),
        generated_completions=counters.completions,
        generated_tokens=counters.tokens,
        generation_seconds=counters.seconds,
        wall_seconds=time.perf_counter() - started,
        out_dir=out,
    )


def write_results(
    path: str | os.PathLike[str], settings: EvalSettings, results: Sequence[EvalResult]
) -> Path:
    """One JSON file with the settings and, per benchmark, its summary and per-problem rows."""
    document = {"settings": settings.to_dict(), "benchmarks": {r.name: r.to_dict() for r in results}}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return target


def summary_tables(results: Sequence[EvalResult]) -> list[Table]:
    """The pass@k table, and with meta predictions the meta-awareness table."""
    ks = sorted({k for r in results for k in r.pass_at_k})
    passk = Table(title="pass@k (% mean ± stderr over problems)")
    passk.add_column("benchmark", no_wrap=True)
    for column in ("problems", *(f"pass@{k}" for k in ks), "mean tokens", "truncated"):
        passk.add_column(column, justify="right")
    for r in results:
        cells = [
            f"{100 * r.pass_at_k[k].mean:.1f} ± {100 * r.pass_at_k[k].stderr:.1f}"
            if k in r.pass_at_k
            else "-"
            for k in ks
        ]
        passk.add_row(
            r.name, str(len(r.problems)), *cells, f"{r.mean_tokens:.0f}", f"{100 * r.truncated_fraction:.0f}%"
        )
    tables = [passk]
    with_meta = [r for r in results if r.meta is not None]
    if with_meta:
        meta = Table(
            title="meta-awareness",
            caption=(
                "Pearson E[k]: the predictions read as the model's expected count, not its sampled one; "
                "level: the Pearson of predicting each problem as its level's mean pass rate, which no "
                "prediction from the level alone beats; "
                f"gate F1 at sigma {_TABLE_GATE_SIGMA:g} (dir: the predicted side must match the outcome); "
                f"cut: correct solutions a "
                f"{_TABLE_CUTOFF_FACTOR:g}x predicted-length cutoff would stop, of all correct"
            ),
        )
        meta.add_column("benchmark", no_wrap=True)
        for column in (
            "parsed",
            "pass MAE",
            "Pearson",
            "Spearman",
            "Pearson E[k]",
            "level",
            "len hit",
            "notion",
            "gate F1",
            "gate F1 dir",
            "cut",
        ):
            meta.add_column(column, justify="right")
        for r in with_meta:
            m = r.meta or {}
            gate = next((g for g in m["gating"] if g["sigma"] == _TABLE_GATE_SIGMA), None)
            cut = next((c for c in m["cutoff"]["cutoffs"] if c["factor"] == _TABLE_CUTOFF_FACTOR), None)
            meta.add_row(
                r.name,
                _fmt(m["parse_rate"]),
                _fmt(m["pass_rate"]["mae"]),
                _fmt(m["pass_rate"]["pearson"]),
                _fmt(m["pass_rate"]["spearman"]),
                _fmt(m.get("pass_rate_expected", {}).get("pearson")),
                _fmt((m.get("pass_rate_beyond_level") or {}).get("level_baseline_pearson")),
                _fmt(m["length_hit_rate"]),
                _fmt(m["notion_reward"]),
                _fmt(gate["f1"] if gate else None),
                _fmt(gate.get("f1_direction") if gate else None),
                f"{cut['killed_correct']}/{m['cutoff']['n_correct']}" if cut else "-",
            )
        tables.append(meta)
    return tables


# ---------------------------------------------------------------------------------------------- sampling


@dataclass
class _Counters:
    completions: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def generate(
        self, engine: RolloutEngine, prompts: list[list[int]], n: int, params: SamplingParams
    ) -> list[list[Rollout]]:
        started = time.perf_counter()
        groups = engine.generate(prompts, n, params)
        self.seconds += time.perf_counter() - started
        self.completions += sum(len(g) for g in groups)
        self.tokens += sum(r.num_tokens for g in groups for r in g)
        return groups


def _evaluate_batch(
    engine: RolloutEngine,
    tokenizer: PreTrainedTokenizerBase,
    batch: list[Problem],
    settings: EvalSettings,
    counters: _Counters,
    count_ids: tuple[int, ...],
) -> list[dict[str, Any]]:
    params = SamplingParams(settings.temperature, settings.top_p, settings.max_tokens)
    prompts = [encode_user_message(tokenizer, solution_prompt(p.prompt, settings.template)) for p in batch]
    groups = counters.generate(engine, prompts, settings.n, params)
    meta_groups: list[list[Rollout]] = []
    if settings.meta:
        meta_prompts = [
            encode_meta_prompt(tokenizer, _meta_prompt(p, settings), settings.meta_prompt) for p in batch
        ]
        meta_params = dataclasses.replace(params, watch_token_ids=count_ids)
        meta_groups = counters.generate(engine, meta_prompts, settings.meta_n, meta_params)
    rows = []
    for index, (problem, rollouts) in enumerate(zip(batch, groups, strict=True)):
        texts = _decode(tokenizer, rollouts)
        timeouts_before = verify_timeouts()
        correct = check_answers(
            texts,
            problem.answer,
            timeout_s=settings.verify_timeout_s,
            fallback=settings.answer_fallback,
            number_only=problem.numeric_answer,
        )
        row: dict[str, Any] = {
            "id": problem.id,
            "answer": problem.answer,
            "difficulty": problem.difficulty,
            "n": len(rollouts),
            "c": sum(correct),
            # Answers scored wrong only because math-verify gave no verdict in time.
            "verify_timeouts": verify_timeouts() - timeouts_before,
            "completions": [
                {"text": t, "num_tokens": r.num_tokens, "finish_reason": str(r.finish_reason), "correct": ok}
                for t, r, ok in zip(texts, rollouts, correct, strict=True)
            ],
        }
        if settings.meta:
            stats = solution_stats(texts, correct, [r.num_tokens for r in rollouts])
            row["meta"] = [
                _meta_sample(text, rollout, problem, stats, settings, tokenizer, count_ids)
                for text, rollout in zip(
                    _decode(tokenizer, meta_groups[index]), meta_groups[index], strict=True
                )
            ]
        rows.append(row)
    return rows


def _meta_prompt(problem: Problem, settings: EvalSettings) -> str:
    return build_meta_prompt(
        problem.prompt,
        pass_rate_scale=settings.pass_rate_scale,
        max_response_tokens=settings.max_tokens,
        min_length=settings.meta_min_length,
        notion_word=settings.notion_word,
        style=settings.meta_prompt,
        reasoning=settings.meta_reasoning,
        notions=settings.meta_notions,
    )


def _meta_sample(
    text: str,
    rollout: Rollout,
    problem: Problem,
    stats: SolutionStats,
    settings: EvalSettings,
    tokenizer: PreTrainedTokenizerBase,
    count_ids: tuple[int, ...],
) -> dict[str, Any]:
    prediction, copied = parse_meta_answer(
        text,
        pass_rate_scale=settings.pass_rate_scale,
        max_response_tokens=settings.max_tokens,
        min_length=settings.meta_min_length,
    )
    expected = read_rollout(
        rollout,
        text,
        prediction.pass_rate,
        count_ids,
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
    )
    return {
        "text": text,
        "num_tokens": rollout.num_tokens,
        "finish_reason": str(rollout.finish_reason),
        "example_copy": copied,
        "pass_rate": prediction.pass_rate,
        "expected_pass_rate": expected,
        "solution_length": prediction.solution_length,
        "notions": prediction.notions,
        "notion_reward": notion_reward(prediction.notions, problem.prompt, stats),
    }


def _decode(tokenizer: PreTrainedTokenizerBase, rollouts: list[Rollout]) -> list[str]:
    return tokenizer.batch_decode([r.completion_ids for r in rollouts], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------- meta


@dataclass(frozen=True)
class PassRatePredictions:
    """The pass-rate predictions of an evaluation's rows (as ``problems.jsonl`` holds them), per problem and
    per meta answer, as fractions: the sampled counts over the scale, and the model's expected ones. None
    where an answer did not parse, and for expected ones in rows saved before the readout existed."""

    sampled: list[list[float | None]]
    expected: list[list[float | None]]

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], pass_rate_scale: int) -> PassRatePredictions:
        return cls(
            sampled=[
                [None if m["pass_rate"] is None else m["pass_rate"] / pass_rate_scale for m in row["meta"]]
                for row in rows
            ],
            expected=[[m.get("expected_pass_rate") for m in row["meta"]] for row in rows],
        )

    @staticmethod
    def per_problem(fractions: list[list[float | None]]) -> list[float | None]:
        """Each problem's predicted pass rate: the mean of its parsed answers (None if none parsed)."""
        return [_mean([f for f in answers if f is not None]) for answers in fractions]


class _MetaView:
    """The per-problem and per-solution series the meta-awareness metrics and plots are computed from."""

    def __init__(self, rows: list[dict[str, Any]], settings: EvalSettings):
        self.settings = settings
        self.samples = [m for row in rows for m in row["meta"]]
        predictions = PassRatePredictions.from_rows(rows, settings.pass_rate_scale)
        self.fractions = predictions.sampled
        self.predicted_pass = predictions.per_problem(predictions.sampled)
        self.expected_fractions = predictions.expected
        self.expected_pass = predictions.per_problem(predictions.expected)
        self.actual_pass = [row["c"] / row["n"] for row in rows]
        self.levels = [row.get("difficulty") for row in rows]
        self.zero_variance = [row["c"] in (0, row["n"]) for row in rows]
        self.predicted_length = [
            _median([m["solution_length"] for m in row["meta"] if m["solution_length"] is not None])
            for row in rows
        ]
        self.mean_length = [statistics.fmean(c["num_tokens"] for c in row["completions"]) for row in rows]
        self.correct_ranges = [_correct_range(row) for row in rows]
        self.lengths = [c["num_tokens"] for row in rows for c in row["completions"]]
        self.correct = [c["correct"] for row in rows for c in row["completions"]]
        self.solution_predicted_length = [
            pred for row, pred in zip(rows, self.predicted_length, strict=True) for _ in row["completions"]
        ]

    def summary(self) -> dict[str, Any]:
        s = self.settings
        parsed = {
            key: sum(m[key] is not None for m in self.samples) / len(self.samples)
            for key in ("pass_rate", "solution_length", "notions")
        }
        return {
            "samples": len(self.samples),
            "parse_rate": sum(_any_parsed(m) for m in self.samples) / len(self.samples),
            "field_parse_rates": parsed,
            # Counted as unparsed above (the rows saved before this existed have no such key).
            "example_copy_rate": sum(m.get("example_copy", False) for m in self.samples) / len(self.samples),
            # Per problem, over the problems with at least one parsed pass rate.
            "pass_rate": dict(pass_rate_alignment(self.predicted_pass, self.actual_pass)),
            # The same, each problem's predictions read as the model's expected count (masa.meta.readout).
            "pass_rate_expected": dict(pass_rate_alignment(self.expected_pass, self.actual_pass)),
            "expected_readout_rate": sum(m.get("expected_pass_rate") is not None for m in self.samples)
            / len(self.samples),
            # With problems of several difficulty levels: the level alone, and the predictions within levels.
            "pass_rate_beyond_level": self.beyond_level(self.predicted_pass),
            "pass_rate_expected_beyond_level": self.beyond_level(self.expected_pass),
            "calibration": [dataclasses.asdict(row) for row in self.calibration()],
            "length_hit_rate": length_hit_rate(self.predicted_length, self.correct_ranges),
            "notion_reward": statistics.fmean(m["notion_reward"] for m in self.samples),
            "gating": [dataclasses.asdict(score) for score in self.gating()],
            # The gate reading expected counts (efficient.gate_readout=expected).
            "gating_expected": [dataclasses.asdict(score) for score in self.gating(self.expected_fractions)],
            "gating_tolerance": s.gate_tolerance,
            "cutoff": dict(self.cutoff()),
        }

    def beyond_level(self, predicted: list[float | None]) -> dict[str, Any] | None:
        if None in self.levels or len(set(self.levels)) < 2:
            return None
        return dict(level_alignment(predicted, self.actual_pass, self.levels))

    def calibration(self) -> list[CalibrationRow]:
        return calibration_table(self.predicted_pass, self.actual_pass)

    def gating(self, fractions: list[list[float | None]] | None = None) -> list[GatingScore]:
        return gating_scores(
            self.fractions if fractions is None else fractions,
            self.zero_variance,
            GATING_SIGMAS,
            tolerance=self.settings.gate_tolerance,
            min_parsed=self.settings.gate_min_parsed,
            actual_pass_rates=self.actual_pass,
        )

    def cutoff(self) -> CutoffAnalysis:
        return cutoff_analysis(self.lengths, self.correct, self.solution_predicted_length)

    def plot(self, out: Path) -> list[Path]:
        return [
            plot_pass_rate_scatter(self.predicted_pass, self.actual_pass, out / "pass_rate_scatter.png"),
            plot_length_scatter(self.predicted_length, self.mean_length, out / "length_scatter.png"),
            plot_calibration(self.calibration(), out / "calibration.png"),
            plot_gating_vs_sigma(self.gating(), out / "gating_vs_sigma.png"),
            plot_cutoff_histograms(self.cutoff(), out / "cutoff_histograms.png"),
        ]


def _any_parsed(sample: dict[str, Any]) -> bool:
    return any(sample[key] is not None for key in ("pass_rate", "solution_length", "notions"))


def _correct_range(row: dict[str, Any]) -> tuple[int, int] | None:
    lengths = [c["num_tokens"] for c in row["completions"] if c["correct"]]
    return (min(lengths), max(lengths)) if lengths else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: list[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


# ---------------------------------------------------------------------------------------------- files


def check_out_dir(out: str | os.PathLike[str], settings: EvalSettings, resume: bool) -> None:
    """Raise ``EvalSetupError`` unless an evaluation with ``settings`` can start, or resume, in ``out``."""
    out = Path(out)
    problems_path, settings_path = out / PROBLEMS_FILE, out / SETTINGS_FILE
    if not (problems_path.is_file() and problems_path.stat().st_size > 0):
        return
    if not resume:
        raise EvalSetupError(
            f"{out} already holds evaluation results; continue them with --resume, or choose another output folder"
        )
    if not settings_path.is_file():
        raise EvalSetupError(
            f"cannot resume {out}: it has results but no {SETTINGS_FILE} to check them against"
        )
    _check_same_settings(out, json.loads(settings_path.read_text(encoding="utf-8")), settings)


def _prepare_out_dir(out: Path, settings: EvalSettings, resume: bool) -> dict[str, dict[str, Any]]:
    """The rows already finished in ``out`` (none unless resuming); saves the settings for a later resume."""
    check_out_dir(out, settings, resume)
    problems_path = out / PROBLEMS_FILE
    saved = _load_rows(problems_path) if resume and problems_path.is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / SETTINGS_FILE, json.dumps(settings.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return saved


def _check_same_settings(out: Path, saved: dict[str, Any], settings: EvalSettings) -> None:
    current = settings.to_dict()
    differences = [
        f"{key}: saved {saved.get(key, '(missing)')!r}, now {value!r}"
        for key, value in current.items()
        if key not in _NOT_COMPARED_ON_RESUME and saved.get(key) != value
    ]
    if differences:
        raise EvalSetupError(
            f"cannot resume {out}: the settings differ from the saved ones ({'; '.join(differences)}). "
            "Resume with the saved settings, or choose another output folder."
        )


def _load_rows(path: Path) -> dict[str, dict[str, Any]]:
    """Saved rows by id. A line cut short by a kill is dropped and the file rewritten without it, so that
    the next append does not glue a new row onto the broken one."""
    text = path.read_text(encoding="utf-8")
    rows: dict[str, dict[str, Any]] = {}
    damaged = not text.endswith("\n")
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            damaged = True
            continue
        if isinstance(row, dict) and "id" in row:
            rows[row["id"]] = row
        else:
            damaged = True
    if damaged:
        write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows.values()))
    return rows
