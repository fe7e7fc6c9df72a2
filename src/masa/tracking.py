"""Where metrics go: metrics.jsonl in the run folder, plus TensorBoard and Weights & Biases when asked."""

from __future__ import annotations

import json
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

# What a run folder holds; the trainer writes these, `masa report` and the plots read them.
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
PREDICTIONS_FILE = "meta_predictions.jsonl"


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
                truncate_jsonl_after(run_dir / name, resume_step)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError(
                    "train.tensorboard=true needs tensorboard: pip install 'masa[tensorboard]'"
                ) from exc
            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as exc:
                raise RuntimeError("train.wandb=true needs wandb: pip install 'masa[wandb]'") from exc
            self._wandb = wandb_module.init(
                project=wandb_project, name=run_dir.name, config=config, resume="allow"
            )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _finite(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
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
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def truncate_jsonl_after(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint being resumed, so each step appears once."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if row.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: _finite(v) for k, v in row.items()}) + "\n")


def _finite(value: Any) -> Any:
    # JSON has no NaN; a missing statistic (e.g. a correlation of constant values) is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
