"""Headless figures of a run: meta-awareness scatters, gating and cutoff analyses, training curves.

Every plotting function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on training machines; must precede the pyplot import

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from masa.eval.meta_metrics import CalibrationRow, CutoffAnalysis, GatingScore, pearson
from masa.runfiles import atomic_writer, read_jsonl
from masa.tracking import METRICS_FILE

TRAINING_CURVE_KEYS = (
    "reward/solution",
    "eval/accuracy",
    "groups/zero_variance_fraction",
    "tokens/solution",
    "tokens/meta",
    "meta/parse_rate",
    "meta/pass_rate_mae",
    "meta/pass_rate_pearson",
    "meta/pass_rate_pearson_expected",
    "meta/length_hit_rate",
    "meta/reward",
    "gate/gated_fraction",
    "perf/step_seconds",
)

_DPI = 110
_PANEL_COLUMNS = 3


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of ``RUN_DIR/metrics.jsonl``, one per step in step order.

    Rows sharing a step are merged, later values winning: a resumed run that logs a step again replaces
    it, and an evaluation logged as a row of its own still joins its step's training metrics.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in run directory {run_dir}")
    by_step: dict[int, dict[str, Any]] = {}
    for row in read_jsonl(path):
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            warnings.warn(f"{path}: skipping a row without an integer 'step': {row}", stacklevel=2)
            continue
        by_step.setdefault(step, {}).update(row)
    return [by_step[step] for step in sorted(by_step)]


def metric_series(
    rows: Sequence[dict[str, Any]], key: str, x_key: str = "step"
) -> tuple[list[float], list[float]]:
    """The (x, value) pairs of the rows where both are finite numbers."""
    xs, ys = [], []
    for row in rows:
        x, y = row.get(x_key), row.get(key)
        if _is_number(x) and _is_number(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def plot_pass_rate_scatter(
    predicted: Sequence[float | None],
    actual: Sequence[float],
    path: str | os.PathLike[str],
    title: str = "Predicted vs actual pass rate",
) -> Path:
    """Figure 1 of the paper: one point per problem, jittered because both axes sit on a grid of 1/8."""
    return _prediction_scatter(predicted, actual, path, title=title, unit="pass rate", limits=(0.0, 1.0))


def plot_length_scatter(
    predicted: Sequence[int | None],
    actual: Sequence[float],
    path: str | os.PathLike[str],
    title: str = "Predicted vs actual solution length",
) -> Path:
    return _prediction_scatter(predicted, actual, path, title=title, unit="length (tokens)", limits=None)


def plot_calibration(rows: Sequence[CalibrationRow], path: str | os.PathLike[str]) -> Path:
    """Reliability diagram over the buckets of ``calibration_table``, with their counts below."""
    filled = [row for row in rows if row.count]
    with _saved_figure(path, figsize=(5.5, 6.5)) as fig:
        top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
        top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        top.plot(
            [row.mean_predicted for row in filled],
            [row.mean_actual for row in filled],
            marker="o",
            label="model",
        )
        # A little room past [0, 1], so the points of the outer buckets are not cut in half.
        top.set(
            ylabel="mean actual pass rate",
            xlim=(-0.03, 1.03),
            ylim=(-0.03, 1.03),
            title="Pass-rate calibration",
        )
        top.legend(loc="upper left")
        bottom.bar(
            [(row.bucket_low + row.bucket_high) / 2 for row in rows],
            [row.count for row in rows],
            width=[(row.bucket_high - row.bucket_low) * 0.9 for row in rows],
            color="tab:blue",
            alpha=0.6,
        )
        bottom.set(xlabel="predicted pass rate", ylabel="count")
    return Path(path)


def plot_gating_vs_sigma(scores: Sequence[GatingScore], path: str | os.PathLike[str]) -> Path:
    """Gate precision, recall and F1 against the threshold sigma; undefined values leave gaps."""
    sigmas = [score.sigma for score in scores]
    with _saved_figure(path, figsize=(6, 4)) as fig:
        ax = fig.subplots()
        for name in ("precision", "recall", "f1"):
            values = [_nan_if_none(getattr(score, name)) for score in scores]
            ax.plot(sigmas, values, marker="o", label=name)
        ax.set(xlabel="sigma", ylabel="score", ylim=(0, 1.05), title="Predictive gating vs zero variance")
        ax.legend()
        ax.grid(alpha=0.3)
    return Path(path)


def plot_cutoff_histograms(analysis: CutoffAnalysis, path: str | os.PathLike[str]) -> Path:
    """Distribution of actual minus predicted length for correct and incorrect solutions, overlaid."""
    correct = analysis["differences_correct"]
    incorrect = analysis["differences_incorrect"]
    with _saved_figure(path, figsize=(6.5, 4)) as fig:
        ax = fig.subplots()
        both = correct + incorrect
        # Shared bins, so the two histograms compare bar by bar.
        bins = np.histogram_bin_edges(both, bins=30) if both else 10
        ax.hist(correct, bins=bins, alpha=0.6, label=f"correct (n={len(correct)})", color="tab:green")
        ax.hist(incorrect, bins=bins, alpha=0.6, label=f"incorrect (n={len(incorrect)})", color="tab:red")
        ax.axvline(0, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel="actual - predicted length (tokens)", ylabel="solutions", title="Length error")
        ax.legend()
    return Path(path)


def plot_training_curves(run_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """One panel per metric of ``TRAINING_CURVE_KEYS`` that the run logged, against step."""
    rows = read_metrics(run_dir)
    present = [key for key in TRAINING_CURVE_KEYS if metric_series(rows, key)[0]]
    if not present:
        raise ValueError(f"{Path(run_dir) / METRICS_FILE} has none of the metrics {TRAINING_CURVE_KEYS}")
    columns = min(_PANEL_COLUMNS, len(present))
    lines = math.ceil(len(present) / columns)
    with _saved_figure(path, figsize=(4.2 * columns, 3.0 * lines)) as fig:
        axes = fig.subplots(lines, columns, squeeze=False).ravel()
        for ax, key in zip(axes, present, strict=False):
            steps, values = metric_series(rows, key)
            # Evaluations are sparse; markers keep a handful of points readable.
            ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3)
            ax.set(title=key, xlabel="step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        for ax in axes[len(present) :]:
            ax.set_visible(False)
        fig.suptitle(Path(run_dir).resolve().name)
    return Path(path)


def plot_accuracy_vs_time(
    run_dirs: Sequence[str | os.PathLike[str]],
    path: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
) -> Path:
    """Held-out accuracy against wall-clock time, one line per run: the paper's efficiency comparison."""
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"got {len(labels)} labels for {len(run_dirs)} runs")
    names = list(labels) if labels is not None else [Path(d).resolve().name for d in run_dirs]
    series = [metric_series(read_metrics(d), "eval/accuracy", x_key="time/elapsed_s") for d in run_dirs]
    longest = max((max(seconds) for seconds, _ in series if seconds), default=0.0)
    unit, scale = _time_unit(longest)
    with _saved_figure(path, figsize=(6.5, 4)) as fig:
        ax = fig.subplots()
        for name, (seconds, accuracy) in zip(names, series, strict=True):
            ax.plot([s / scale for s in seconds], accuracy, marker="o", markersize=3, label=name)
        ax.set(xlabel=f"wall-clock time ({unit})", ylabel="held-out accuracy", title="Accuracy vs time")
        ax.legend()
        ax.grid(alpha=0.3)
    return Path(path)


def _prediction_scatter(
    predicted: Sequence[float | None],
    actual: Sequence[float],
    path: str | os.PathLike[str],
    *,
    title: str,
    unit: str,
    limits: tuple[float, float] | None,
) -> Path:
    if len(predicted) != len(actual):
        raise ValueError(f"inputs must have the same length, got {len(predicted)} and {len(actual)}")
    pairs = [(p, a) for p, a in zip(predicted, actual, strict=True) if p is not None]
    xs = np.array([a for _, a in pairs], dtype=np.float64)
    ys = np.array([p for p, _ in pairs], dtype=np.float64)
    low, high = limits if limits else _span(np.concatenate([xs, ys]))
    # Fixed seed: the same data always gives the same picture.
    rng = np.random.default_rng(0)
    jitter = 0.012 * (high - low)
    r = pearson(ys.tolist(), xs.tolist())
    with _saved_figure(path, figsize=(5, 5)) as fig:
        ax = fig.subplots()
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="y = x")
        ax.scatter(
            xs + rng.uniform(-jitter, jitter, xs.size),
            ys + rng.uniform(-jitter, jitter, ys.size),
            s=12,
            alpha=0.5,
            label=f"n={len(pairs)}" + (f", r={r:.2f}" if r is not None else ""),
        )
        margin = 2 * jitter
        ax.set(
            xlabel=f"actual {unit}",
            ylabel=f"predicted {unit}",
            xlim=(low - margin, high + margin),
            ylim=(low - margin, high + margin),
            title=title,
        )
        ax.set_aspect("equal")
        ax.legend(loc="upper left")
    return Path(path)


@contextmanager
def _saved_figure(path: str | os.PathLike[str], *, figsize: tuple[float, float]) -> Iterator[Figure]:
    """A fresh figure, saved to ``path`` if the body succeeds and closed either way (pyplot keeps it)."""
    fig = plt.figure(figsize=figsize, layout="constrained")
    try:
        yield fig
        with atomic_writer(path, "wb") as stream:
            fig.savefig(stream, dpi=_DPI, format="png")
    finally:
        plt.close(fig)


def _span(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low - 1.0, high + 1.0)


def _time_unit(longest_seconds: float) -> tuple[str, float]:
    if longest_seconds >= 3 * 3600:
        return "hours", 3600.0
    if longest_seconds >= 3 * 60:
        return "minutes", 60.0
    return "seconds", 1.0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value
