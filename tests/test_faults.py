"""kill -9 a real `masa train` at random moments, resume it, and get exactly the uninterrupted run.

The kill moments are drawn over the whole life of the process (imports, loading, steps, evaluation,
checkpoint and final saves, log writes), so over the seeds they land in every window a user could hit.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import masa

SRC = Path(masa.__file__).resolve().parents[1]
# A MASA run (so the prediction log is written too) with an evaluation and a checkpoint every few steps.
OVERRIDES = [
    "algo=masa",
    "train.steps=5",
    "train.save_every=2",
    "train.eval_every=3",
    "train.batch_problems=2",
    "rollout.n=2",
    "meta.n=2",
    "model.threads=1",
]
VOLATILE = ("perf/", "time/")  # wall-clock measurements differ between any two runs


def _masa_train(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "120"}
    return subprocess.Popen(
        [sys.executable, "-m", "masa.cli", "train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _new_run(out: Path) -> subprocess.Popen:
    return _masa_train("--preset", "tiny", f"train.output_dir={out}", "train.run_name=run", *OVERRIDES)


def _finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err


def _record(run: Path) -> tuple[dict, dict, list]:
    weights = load_file(run / "final" / "model.safetensors")
    metrics: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row["step"] not in metrics, f"step {row['step']} logged twice"
        metrics[row["step"]] = {k: v for k, v in row.items() if not k.startswith(VOLATILE)}
    predictions = [json.loads(line) for line in (run / "meta_predictions.jsonl").read_text().splitlines()]
    return weights, metrics, predictions


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[tuple, float]:
    out = tmp_path_factory.mktemp("reference")
    started = time.monotonic()
    _finish(_new_run(out))
    return _record(out / "run"), time.monotonic() - started


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_anywhere_then_resume_gives_the_uninterrupted_run(seed, reference, tmp_path):
    (weights, metrics, predictions), lifetime = reference
    assert sorted(metrics) == [0, 1, 2, 3, 4, 5] and len(predictions) == 10
    rng = random.Random(seed)
    run = tmp_path / "run"
    process = _new_run(tmp_path)
    # Seed 2 is killed twice: the second kill may hit a resume's own start-up and log truncation.
    for _ in range(2 if seed == 2 else 1):
        time.sleep(rng.uniform(0.2, 1.0) * lifetime)  # the first fifth is mostly imports
        process.send_signal(signal.SIGKILL)
        process.wait()
        # What a user does next: resume a run folder, or run the same command again if none was made yet.
        started = (run / "config.yaml").is_file()
        process = _masa_train("--resume", str(run)) if started else _new_run(tmp_path)
    _finish(process)

    resumed_weights, resumed_metrics, resumed_predictions = _record(run)
    assert resumed_weights.keys() == weights.keys()
    assert all(resumed_weights[k].equal(weights[k]) for k in weights)
    assert resumed_metrics == metrics
    assert resumed_predictions == predictions
    assert [p for p in run.rglob(".*")] == []  # no leftovers of the killed writes
