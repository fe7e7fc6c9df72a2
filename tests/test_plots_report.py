import base64
import json
import re
from pathlib import Path

import pytest

from masa.eval.meta_metrics import calibration_table, cutoff_analysis, gating_scores
from masa.eval.plots import (
    plot_accuracy_vs_time,
    plot_calibration,
    plot_cutoff_histograms,
    plot_gating_vs_sigma,
    plot_length_scatter,
    plot_pass_rate_scatter,
    plot_training_curves,
    read_metrics,
)
from masa.report import pass_rate_points, summary_rows, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _make_run(root: Path, name: str, *, seconds_per_step: float = 10.0) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: tiny\nsigma: 0.1  # <b>not bold</b>\n", encoding="utf-8")
    rows = []
    for step in range(1, 5):
        rows.append(
            {
                "step": step,
                "time/elapsed_s": step * seconds_per_step,
                "reward/solution": 0.1 * step,
                "groups/zero_variance_fraction": 0.5,
                "tokens/solution": 1000 + step,
                "tokens/meta": 300,
                "meta/parse_rate": 0.5 + 0.1 * step,
                "meta/pass_rate_mae": 0.3 - 0.05 * step,
                "perf/step_seconds": seconds_per_step,
            }
        )
        if step % 2 == 0:
            rows.append(
                {"step": step, "time/elapsed_s": step * seconds_per_step, "eval/accuracy": 0.2 * step}
            )
    _write_jsonl(run / "metrics.jsonl", rows)
    predictions = []
    for step in (1, 4):
        for problem in range(6):
            predictions.append(
                {
                    "step": step,
                    "problem_id": f"p{problem}",
                    "actual_pass_rate": problem / 8,
                    "predicted_pass_rates": [problem / 8, None, (problem + step) % 9 / 8],
                    "correct_length_range": [100, 200] if problem else None,
                    "predicted_lengths": [150, None],
                    "gated": False,
                }
            )
    _write_jsonl(run / "meta_predictions.jsonl", predictions)
    return run


def test_meta_plots_write_pngs(tmp_path):
    predicted = [0.0, 0.125, None, 1.0, 0.5]
    actual = [0.0, 0.25, 0.5, 1.0, 0.375]
    assert _is_png(plot_pass_rate_scatter(predicted, actual, tmp_path / "pass.png", title="<t>"))
    assert _is_png(plot_length_scatter([100, 220, None], [120, 200, 50], tmp_path / "sub" / "len.png"))
    assert _is_png(plot_calibration(calibration_table(predicted, actual), tmp_path / "cal.png"))
    scores = gating_scores([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]], [True, False, False], [0.0, 0.1, 0.2])
    assert _is_png(plot_gating_vs_sigma(scores, tmp_path / "gate.png"))
    analysis = cutoff_analysis([100, 300, 500], [True, False, True], [120, 100, None])
    assert _is_png(plot_cutoff_histograms(analysis, tmp_path / "cut.png"))


def test_plots_handle_empty_input(tmp_path):
    assert _is_png(plot_pass_rate_scatter([None], [0.5], tmp_path / "pass.png"))
    empty = cutoff_analysis([], [], [])
    assert _is_png(plot_cutoff_histograms(empty, tmp_path / "cut.png"))


def test_read_metrics_merges_steps_and_skips_bad_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 2, "a": 1}\n\n{"step": 1, "a": 0}\n{"step": 2, "a": 5, "eval/accuracy": 0.5}\n'
        '{"step": 3, "a": \n[1, 2]\n{"a": 7}\n',
        encoding="utf-8",
    )
    with pytest.warns(UserWarning) as caught:
        rows = read_metrics(tmp_path)
    assert len(caught) == 3  # truncated line, non-object, row without step
    assert rows == [{"step": 1, "a": 0}, {"step": 2, "a": 5, "eval/accuracy": 0.5}]


def test_read_metrics_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(tmp_path)


def test_run_plots(tmp_path):
    fast = _make_run(tmp_path, "fast", seconds_per_step=10.0)
    slow = _make_run(tmp_path, "slow", seconds_per_step=100.0)
    assert _is_png(plot_training_curves(fast, tmp_path / "curves.png"))
    assert _is_png(plot_accuracy_vs_time([fast, slow], tmp_path / "time.png"))
    assert _is_png(plot_accuracy_vs_time([fast], tmp_path / "time1.png", labels=["mine"]))
    with pytest.raises(ValueError, match="labels"):
        plot_accuracy_vs_time([fast, slow], tmp_path / "bad.png", labels=["one"])


def test_training_curves_need_a_known_metric(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", [{"step": 1, "other": 1.0}])
    with pytest.raises(ValueError, match="none of the metrics"):
        plot_training_curves(tmp_path, tmp_path / "curves.png")


def test_summary_rows():
    rows = [
        {"step": 1, "time/elapsed_s": 30.0, "perf/step_seconds": 30.0, "meta/parse_rate": 0.5},
        {"step": 2, "time/elapsed_s": 90.0, "perf/step_seconds": 60.0, "eval/accuracy": 0.4},
        {"step": 3, "time/elapsed_s": 3725.0, "eval/accuracy": 0.3, "meta/parse_rate": 0.75},
    ]
    summary = dict(summary_rows(rows))
    assert summary["steps logged"] == "3"
    assert summary["last step"] == "3"
    assert summary["final eval/accuracy"] == "0.3"
    assert summary["best eval/accuracy"] == "0.4"
    assert summary["total time"] == "1h 02m 05s"
    assert summary["mean perf/step_seconds"] == "45"
    assert summary["meta/parse_rate"] == "0.5 (step 1) → 0.75 (step 3)"


def test_pass_rate_points_average_parsed_predictions():
    rows = [
        {"actual_pass_rate": 0.5, "predicted_pass_rates": [0.25, None, 0.75]},
        {"actual_pass_rate": 0.0, "predicted_pass_rates": [None]},
    ]
    assert pass_rate_points(rows) == ([0.5, None], [0.5, 0.0])


def test_report(tmp_path):
    runs = [_make_run(tmp_path, "masa-run"), _make_run(tmp_path, "grpo-run", seconds_per_step=20.0)]
    out = write_report(runs, tmp_path / "out" / "report.html")
    text = out.read_text(encoding="utf-8")
    assert "masa-run" in text and "grpo-run" in text
    assert "&lt;b&gt;not bold&lt;/b&gt;" in text and "<b>" not in text
    assert "src='http" not in text and "<link" not in text and "<script" not in text
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    # per run: training curves and the pass-rate scatter of its first and last step; plus the comparison
    assert len(images) == 2 * 3 + 1
    assert all(base64.b64decode(data)[:8] == PNG_MAGIC for data in images)
    assert "Accuracy" in text or "accuracy" in text


def test_report_of_one_run_without_extras(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    _write_jsonl(run / "metrics.jsonl", [{"step": 0, "time/elapsed_s": 1.0}])
    text = write_report([run], tmp_path / "report.html").read_text(encoding="utf-8")
    assert "No config.yaml" in text
    assert "No known metric" in text
    assert "data:image/png" not in text


def test_report_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report([tmp_path / "nope"], tmp_path / "report.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        write_report([tmp_path / "empty"], tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()
