"""Where metrics go: metrics.jsonl in the run folder, plus TensorBoard and Weights & Biases when asked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from masa.config import ConfigError
from masa.runfiles import append_jsonl, keep_rows_up_to, read_jsonl

# What a run folder holds; the trainer writes these, `masa report` and the plots read them.
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
PREDICTIONS_FILE = "meta_predictions.jsonl"


def parallel_stage_predictions(run_dir: Path) -> list[dict[str, Any]]:
    """The prediction log's rows from parallel-stage steps, where every problem was rolled out whatever
    was predicted: what a replay of the gate or the stage switch observes."""
    return [row for row in read_jsonl(run_dir / PREDICTIONS_FILE) if row["stage"] == "parallel"]


class MetricsWriter:
    def __init__(
        self,
        run_dir: Path,
        *,
        config: dict[str, Any],
        resume_step: int | None = None,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "masa",
    ):
        self.path = run_dir / METRICS_FILE
        if resume_step is not None:
            for name in (METRICS_FILE, PREDICTIONS_FILE):
                keep_rows_up_to(run_dir / name, resume_step)
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError(
                    "train.tensorboard=true needs tensorboard: pip install 'masa[tensorboard]'"
                ) from exc
            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as exc:
                raise ConfigError("train.wandb=true needs wandb: pip install 'masa[wandb]'") from exc
            self._wandb = wandb_module.init(
                project=wandb_project, name=run_dir.name, config=config, resume="allow"
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        append_jsonl(self.path, [{"step": step, **metrics}])
        numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def append(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Rows for another log of the run folder (e.g. the meta predictions)."""
        append_jsonl(self.path.parent / name, rows)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


STEP_LINE_KEYS = (
    ("reward/solution", "reward", "{:.3f}"),
    ("solution/accuracy", "acc", "{:.3f}"),
    ("groups/zero_variance_fraction", "zero-var", "{:.2f}"),
    ("meta/parse_rate", "meta-parse", "{:.2f}"),
    ("meta/pass_rate_mae", "mae", "{:.3f}"),
    ("gate/gated_fraction", "gated", "{:.2f}"),
    ("tokens/generated", "tokens", "{:.0f}"),
    ("perf/step_seconds", "s/step", "{:.1f}"),
    ("perf/tokens_per_second", "tok/s", "{:.0f}"),
    ("eval/accuracy", "EVAL acc", "{:.3f}"),
)


def format_step_line(step: int, metrics: dict[str, Any]) -> str:
    parts = [f"step {step:>4}"]
    for key, label, fmt in STEP_LINE_KEYS:
        value = metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            parts.append(f"{label} {fmt.format(value)}")
    return " | ".join(parts)


def progress_bar(console: Console) -> Progress:
    """The progress bar training and evaluation share."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
