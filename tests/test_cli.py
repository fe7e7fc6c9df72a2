"""The `masa` command line: train help, eval end to end with resume, report, and user errors."""

import json

import pytest

from masa import cli
from masa.meta.record import META_RECORD_FILE
from masa.rollout.engine import HFEngine

EVAL_ARGS = ["--n", "4", "--k", "1", "4", "--max-tokens", "4", "--batch-size", "16"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    # Rich wraps at the terminal width (80 without a terminal); messages are checked unwrapped.
    monkeypatch.setenv("COLUMNS", "1000")


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "two.jsonl"
    rows = [{"problem": "What is 2 + 3?", "answer": "5"}, {"problem": "What is 7 * 6?", "answer": "42"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def generate_calls(monkeypatch):
    """Counts the prompts each engine call gets, still generating for real."""
    calls: list[int] = []
    real = HFEngine.generate

    def counting(self, prompts, n, params, max_tokens=None):
        calls.append(len(prompts))
        return real(self, prompts, n, params, max_tokens)

    monkeypatch.setattr(HFEngine, "generate", counting)
    return calls


def test_train_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "algo.lr=" in out and "rollout.n=" in out


def test_eval_rejects_k_above_n_before_loading_anything(problems_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("masa.models.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    args = ["eval", "tiny-random", "--benchmark", str(problems_file), "--out", str(tmp_path)]
    code = cli.main([*args, "--n", "4", "--k", "8"])
    assert code == 2
    assert "pass@8 needs at least 8 samples" in capsys.readouterr().err
    code = cli.main(["eval", "tiny-random", "--benchmark", "nope", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_eval_end_to_end_then_resume(problems_file, tmp_path, capsys, generate_calls):
    out = tmp_path / "eval"
    args = ["eval", "tiny-random", "--benchmark", str(problems_file), "--out", str(out), *EVAL_ARGS]
    args += ["--meta", "--meta-n", "2"]
    assert cli.main(args) == 0
    assert "pass@4" in capsys.readouterr().out
    assert generate_calls == [2, 2]  # solutions and meta predictions of both problems, one batch

    document = json.loads((out / "results.json").read_text())
    bench = document["benchmarks"]["two"]
    assert set(bench["pass_at_k"]) == {"1", "4"}
    assert [(row["n"], len(row["completions"])) for row in bench["problems"]] == [(4, 4), (4, 4)]
    completion = bench["problems"][0]["completions"][0]
    assert completion["finish_reason"] in {"stop", "length"} and 1 <= completion["num_tokens"] <= 4
    assert bench["meta"]["samples"] == 4
    assert all((out / "two" / name).is_file() for name in ("pass_rate_scatter.png", "calibration.png"))

    generate_calls.clear()
    assert cli.main([*args, "--resume"]) == 0
    assert generate_calls == []
    resumed = json.loads((out / "results.json").read_text())["benchmarks"]["two"]
    assert resumed["problems"] == bench["problems"]

    # An interruption after the first problem: resuming generates only the second.
    saved = out / "two" / "problems.jsonl"
    saved.write_text(saved.read_text().splitlines()[0] + "\n")
    assert cli.main([*args, "--resume"]) == 0
    assert generate_calls == [1, 1]

    capsys.readouterr()
    assert cli.main(args) == 2  # results exist and --resume was not given
    assert "--resume" in capsys.readouterr().err


def test_report_of_a_tiny_training_run(tmp_path, capsys):
    overrides = [f"train.output_dir={tmp_path}", "train.run_name=r"]
    assert cli.main(["train", "--preset", "tiny", *overrides]) == 0
    assert not (tmp_path / "r" / "final" / META_RECORD_FILE).exists()  # GRPO never asked a meta question
    report = tmp_path / "report.html"
    assert cli.main(["report", str(tmp_path / "r"), "--out", str(report)]) == 0
    assert report.read_text().startswith("<!DOCTYPE html>")

    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err


def test_eval_asks_a_masa_model_the_meta_question_it_was_trained_on(problems_file, tmp_path, capsys):
    overrides = [
        "algo=masa",
        "meta.prompt=terse",
        "train.steps=1",
        "train.save_every=1",
        "train.eval_every=0",
    ]
    overrides += [f"train.output_dir={tmp_path}", "train.run_name=r"]
    assert cli.main(["train", "--preset", "tiny", *overrides]) == 0
    run = tmp_path / "r"
    for folder in (run / "final", next((run / "checkpoints").iterdir())):
        recorded = json.loads((folder / META_RECORD_FILE).read_text())
        assert recorded == {"prompt": "terse", "reasoning": False, "notions": False}  # arithmetic: no notions

    def asked(*flags: str) -> dict:
        out = tmp_path / f"eval{len(flags)}"
        args = ["eval", str(run / "final"), "--benchmark", str(problems_file), "--out", str(out), *EVAL_ARGS]
        assert cli.main([*args, "--meta", "--meta-n", "2", *flags]) == 0
        settings = json.loads((out / "results.json").read_text())["settings"]
        return {key: settings[key] for key in ("meta_prompt", "meta_reasoning", "meta_notions")}

    assert asked() == {"meta_prompt": "terse", "meta_reasoning": False, "meta_notions": False}
    assert "meta prompt: terse, no reasoning, no notions" in capsys.readouterr().out
    # A flag given wins over the record, and only for what it names.
    assert asked("--meta-prompt", "paper", "--meta-reasoning") == {
        "meta_prompt": "paper",
        "meta_reasoning": True,
        "meta_notions": False,
    }
