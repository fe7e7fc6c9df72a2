"""A single self-contained HTML report of one or more training runs (figures embedded, nothing linked)."""

from __future__ import annotations

import base64
import html
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from masa.eval.plots import (
    TRAINING_CURVE_KEYS,
    metric_series,
    plot_accuracy_vs_time,
    plot_pass_rate_scatter,
    plot_training_curves,
    read_jsonl,
    read_metrics,
)
from masa.runfiles import write_text
from masa.tracking import CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
pre { background: #f5f5f5; padding: 0.8em; overflow-x: auto; max-height: 30em; }
img { max-width: 100%; }
figure { margin: 1em 0; }
"""


def write_report(run_dirs: Sequence[Path], out_path: Path) -> Path:
    """Write the report of ``run_dirs`` to ``out_path`` and return that path."""
    if not run_dirs:
        raise ValueError("write_report needs at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    for run_dir in dirs:
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run directory {run_dir} does not exist")
        if not (run_dir / METRICS_FILE).is_file():
            raise FileNotFoundError(f"run directory {run_dir} has no {METRICS_FILE}")
    names = [d.resolve().name for d in dirs]
    with tempfile.TemporaryDirectory() as folder:
        scratch = _Scratch(Path(folder))
        sections = [_run_section(d, name, scratch) for d, name in zip(dirs, names, strict=True)]
        if len(dirs) > 1:
            comparison = _data_uri(plot_accuracy_vs_time(dirs, scratch.next_path(), labels=names))
            sections.insert(0, f"<h2>Comparison</h2>\n{_figure(comparison, 'Held-out accuracy vs time')}")
    title = "MASA training report: " + ", ".join(names)
    document = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )
    return write_text(out_path, document)


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (label, value) lines of a run's summary table, for the metrics it logged."""
    lines = [("steps logged", str(len(rows))), ("last step", str(rows[-1]["step"]) if rows else "-")]
    _, accuracy = metric_series(rows, "eval/accuracy")
    if accuracy:
        lines += [("final eval/accuracy", _fmt(accuracy[-1])), ("best eval/accuracy", _fmt(max(accuracy)))]
    _, elapsed = metric_series(rows, "time/elapsed_s")
    if elapsed:
        lines.append(("total time", _duration(max(elapsed))))
    for key in ("perf/step_seconds", "tokens/solution", "tokens/meta"):
        _, values = metric_series(rows, key)
        if values:
            lines.append((f"mean {key}", _fmt(statistics.fmean(values))))
    meta_keys = sorted({key for row in rows for key in row if key.startswith(("meta/", "gate/"))})
    for key in meta_keys:
        steps, values = metric_series(rows, key)
        if values:
            lines.append(
                (key, f"{_fmt(values[0])} (step {steps[0]}) → {_fmt(values[-1])} (step {steps[-1]})")
            )
    return lines


def pass_rate_points(rows: Sequence[dict[str, Any]]) -> tuple[list[float | None], list[float]]:
    """Per problem of one step: the mean of its parsed predicted pass rates (None if none) and the truth."""
    predicted: list[float | None] = []
    actual: list[float] = []
    for row in rows:
        parsed = [p for p in row.get("predicted_pass_rates") or [] if p is not None]
        predicted.append(statistics.fmean(parsed) if parsed else None)
        actual.append(row["actual_pass_rate"])
    return predicted, actual


class _Scratch:
    """Fresh PNG paths in a temporary folder; the figures live only until they are embedded."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._count = 0

    def next_path(self) -> Path:
        self._count += 1
        return self._folder / f"figure{self._count}.png"


def _run_section(run_dir: Path, name: str, scratch: _Scratch) -> str:
    rows = read_metrics(run_dir)
    parts = [f"<h2>{html.escape(name)}</h2>", f"<p>{html.escape(str(run_dir.resolve()))}</p>"]
    config = run_dir / CONFIG_FILE
    parts.append("<h3>Config</h3>")
    if config.is_file():
        parts.append(f"<pre>{html.escape(config.read_text(encoding='utf-8'))}</pre>")
    else:
        parts.append(f"<p>No {CONFIG_FILE} in this run.</p>")
    parts += ["<h3>Summary</h3>", _table(summary_rows(rows))]
    parts.append("<h3>Training curves</h3>")
    if any(metric_series(rows, key)[0] for key in TRAINING_CURVE_KEYS):
        curves = _data_uri(plot_training_curves(run_dir, scratch.next_path()))
        parts.append(_figure(curves, f"Training curves of {name}"))
    else:
        parts.append("<p>No known metric was logged yet.</p>")
    predictions = run_dir / PREDICTIONS_FILE
    if predictions.is_file():
        parts.append(_meta_section(read_jsonl(predictions), name, scratch))
    return "\n".join(parts)


def _meta_section(prediction_rows: list[dict[str, Any]], name: str, scratch: _Scratch) -> str:
    by_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in prediction_rows:
        by_step[row["step"]].append(row)
    if not by_step:
        return f"<h3>Meta predictions</h3>\n<p>{PREDICTIONS_FILE} is empty.</p>"
    parts = ["<h3>Meta predictions</h3>"]
    for step in sorted({min(by_step), max(by_step)}):
        predicted, actual = pass_rate_points(by_step[step])
        title = f"{name}: pass rate at step {step}"
        uri = _data_uri(plot_pass_rate_scatter(predicted, actual, scratch.next_path(), title))
        parts.append(_figure(uri, title))
    return "\n".join(parts)


def _table(lines: list[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>" for label, value in lines
    )
    return f"<table>{body}</table>"


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _figure(data_uri: str, caption: str) -> str:
    alt = html.escape(caption, quote=True)
    return f"<figure><img src='{data_uri}' alt='{alt}'><figcaption>{alt}</figcaption></figure>"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"
