"""Every way a user can get `masa` wrong ends with exit code 2 and one unwrapped line on stderr."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from masa import cli
from masa.meta.record import META_RECORD_FILE
from masa.models import tiny_random_model

NOT_UTF8 = b'{"problem": "caf\xe9 au lait?", "answer": "1"}\n'


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    made = {
        "latin1.jsonl": NOT_UTF8,
        "latin1.yaml": b"train:\n  run_name: caf\xe9\n",
        "no_answer.jsonl": json.dumps({"problem": "1+1?", "solution": "2"}).encode() + b"\n",
        "good.jsonl": json.dumps({"problem": "1+1?", "answer": "2"}).encode() + b"\n",
    }
    for name, data in made.items():
        (root / name).write_bytes(data)
    tiny_random_model(64).save_pretrained(root / "no_tokenizer")  # weights without their tokenizer
    unknown_style = {"prompt": "short", "reasoning": False, "notions": False}
    for name, record in {
        "record_unknown_style": json.dumps(unknown_style),
        "record_cut_off": '{"prompt": "te',
    }.items():
        (root / name).mkdir()
        (root / name / META_RECORD_FILE).write_text(record)
    run = root / "runs" / "old"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("")  # what a kill used to leave
    (root / "runs" / "taken").mkdir()
    (root / "runs" / "taken" / "config.yaml").write_text("train:\n  steps: 2\n")
    (root / "evals" / "good").mkdir(parents=True)
    (root / "evals" / "good" / "problems.jsonl").write_text('{"id": "good-0"}\n')
    return {**{name: root / name for name in made}, "root": root, "no_tokenizer": root / "no_tokenizer"}


def _train(f, *args):
    return ["train", "--preset", "tiny", f"train.output_dir={f['root'] / 'runs'}", *args]


def _eval(f, *args, bench="good.jsonl"):
    return ["eval", "tiny-random", "--benchmark", str(f[bench]), "--out", str(f["root"] / "evals"), *args]


def _eval_model(f, model):
    return ["eval", str(model), "--benchmark", str(f["good.jsonl"]), "--out", "o"]


CASES = {
    "unknown key": (lambda f: _train(f, "algo.lrr=1"), "unknown key 'algo.lrr'"),
    "group of one": (lambda f: _train(f, "rollout.n=1"), "rollout.n=1 is not valid"),
    "meta group of one": (lambda f: _train(f, "algo=masa", "meta.n=1"), "meta.n=1 is not valid"),
    "missing config file": (lambda f: [*_train(f), "--config", "absent.yaml"], "config file not found"),
    "config not UTF-8": (lambda f: [*_train(f), "--config", str(f["latin1.yaml"])], "is not UTF-8"),
    "train data not UTF-8": (
        lambda f: _train(f, f"data.train={f['latin1.jsonl']}"),
        "latin1.jsonl, row 1: not UTF-8 (byte 0xe9)",
    ),
    "eval data not UTF-8": (
        lambda f: _train(f, f"data.eval={f['latin1.jsonl']}"),
        "latin1.jsonl, row 1: not UTF-8",
    ),
    "no answer column": (
        lambda f: _train(f, f"data.train={f['no_answer.jsonl']}"),
        "name it with data.answer_field=FIELD (masa train)",
    ),
    "model without tokenizer": (
        lambda f: _train(f, f"model.name={f['no_tokenizer']}"),
        "has no tokenizer",
    ),
    "unknown model": (lambda f: _train(f, "model.name=no-such-org/no-such-model"), "cannot load model"),
    "resume what is not a run": (
        lambda f: ["train", "--resume", str(f["root"] / "nowhere")],
        "is not a masa run folder",
    ),
    "resume with --config": (
        lambda f: ["train", "--resume", str(f["root"] / "runs" / "taken"), "--config", "x.yaml"],
        "--resume keeps the run's own config",
    ),
    "resume a damaged config": (
        lambda f: ["train", "--resume", str(f["root"] / "runs" / "old")],
        "config.yaml is empty or damaged",
    ),
    "run name taken": (lambda f: _train(f, "train.run_name=taken"), "masa train --resume"),
    "unknown option": (lambda f: ["train", "--bogus"], "unrecognized arguments: --bogus"),
    "k above n": (lambda f: _eval(f, "--n", "2", "--k", "4"), "pass@4 needs at least 4 samples"),
    "unknown benchmark": (lambda f: ["eval", "tiny-random", "--benchmark", "nope", "--out", "o"], "unknown"),
    "benchmark not UTF-8": (lambda f: _eval(f, bench="latin1.jsonl"), "latin1.jsonl, row 1: not UTF-8"),
    "benchmark without answers": (lambda f: _eval(f, bench="no_answer.jsonl"), "--answer-field FIELD"),
    "eval model without tokenizer": (lambda f: _eval_model(f, f["no_tokenizer"]), "has no tokenizer"),
    "eval results exist": (lambda f: _eval(f), "continue them with --resume"),
    "eval model's meta record unknown": (
        lambda f: _eval_model(f, f["root"] / "record_unknown_style"),
        "names a meta prompt masa does not know",
    ),
    "eval model's meta record damaged": (
        lambda f: _eval_model(f, f["root"] / "record_cut_off"),
        "masa_meta.json is not a readable meta record",
    ),
    "eval limit": (lambda f: _eval(f, "--limit", "0"), "--limit must be at least 1"),
    "report of no run": (lambda f: ["report", str(f["root"] / "nowhere")], "does not exist"),
}


@pytest.mark.parametrize("case", CASES)
def test_user_errors_are_one_unwrapped_line(case, files, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.chdir(files["root"])
    make_args, expected = CASES[case]
    try:
        code = cli.main(make_args(files))
    except SystemExit as exited:  # argparse's own errors
        code = exited.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and expected in err, err


def test_a_real_process_prints_no_traceback(files):
    """The same in a subprocess, where warnings and tracebacks of libraries would show up too."""
    env = {**os.environ, "COLUMNS": "40", "PYTHONPATH": os.pathsep.join(sys.path)}
    args = ["eval", str(files["no_tokenizer"]), "--benchmark", str(files["latin1.jsonl"]), "--out", "o"]
    done = subprocess.run(
        [sys.executable, "-m", "masa.cli", *args], env=env, cwd=files["root"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: {files['latin1.jsonl']}, row 1: not UTF-8 (byte 0xe9); save the file as UTF-8"
    ]
