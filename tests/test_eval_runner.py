"""The evaluation runner: pass@k and meta metrics from known completions, incremental saving, resume."""

import json
import math
import sys

import pytest

from masa.data.problem import Problem
from masa.eval.runner import (
    PROBLEMS_FILE,
    RESULTS_FILE,
    EvalSettings,
    EvalSetupError,
    evaluate_benchmark,
    summary_tables,
    write_results,
)
from masa.rollout.types import FinishReason, Rollout

PROBLEMS = [
    Problem("add", "What is 2 + 3?", "5", {"difficulty": 1}),
    Problem("mul", "What is 7 * 6?", "42", {"difficulty": 2}),
]
# Two of four right on "add", none on "mul" (a zero-variance group).
SOLUTIONS = {
    "2 + 3": ["So \\boxed{5}", "It is \\boxed{5}", "\\boxed{4}", "\\boxed{6}"],
    "7 * 6": ["\\boxed{41}"] * 4,
}
# The JSON alone, as the default meta prompt (compact, no reasoning) asks.
META = '{"math_notion": ["carry"], "pass_rate": 4, "solution_length": 5}'


class ScriptedEngine:
    """Returns fixed completions chosen by the problem in the prompt, and records what it was asked."""

    def __init__(self, tokenizer, belief=None):
        self.tokenizer = tokenizer
        self.belief = belief  # the distribution over watched tokens at every meta position, if any
        self.calls: list[int] = []
        self.meta_prompts: list[str] = []

    def generate(self, prompts, n, params, max_tokens=None):
        self.calls.append(len(prompts))
        groups = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            if '"pass_rate"' in text:  # a meta prompt, in either wording
                self.meta_prompts.append(text)
                completions = [META] * n
            else:
                completions = next(v for k, v in SOLUTIONS.items() if k in text)[:n]
            watch = params.watch_token_ids and self.belief is not None
            groups.append([self._rollout(ids, c, self.belief if watch else None) for c in completions])
        return groups

    def _rollout(self, prompt_ids, text, belief=None):
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        watched = None if belief is None else [[math.log(p) if p else -math.inf for p in belief]] * len(ids)
        return Rollout(list(prompt_ids), ids, [0.0] * len(ids), FinishReason.STOP, watched)


def _run(tiny, tmp_path, settings, **kwargs):
    model, tokenizer = tiny
    engine = kwargs.pop("engine", None) or ScriptedEngine(tokenizer)
    result = evaluate_benchmark(
        model, tokenizer, PROBLEMS, settings, tmp_path / "bench", engine=engine, **kwargs
    )
    return result, engine


def test_k_larger_than_n_is_rejected_at_construction():
    with pytest.raises(EvalSetupError, match=r"pass@8 needs at least 8 samples.*n is 4"):
        EvalSettings(n=4, ks=(1, 8))


def test_pass_at_k_and_per_problem_rows(tiny, tmp_path):
    result, _ = _run(tiny, tmp_path, EvalSettings(n=4, ks=(1, 4), max_tokens=16))
    assert [(row["id"], row["n"], row["c"]) for row in result.problems] == [("add", 4, 2), ("mul", 4, 0)]
    assert result.pass_at_k[1].mean == pytest.approx(0.25)
    assert result.pass_at_k[4].mean == pytest.approx(0.5)
    first = result.problems[0]["completions"][0]
    assert first["text"] == "So \\boxed{5}" and first["correct"] and first["finish_reason"] == "stop"
    assert first["num_tokens"] > 0
    assert result.meta is None and result.plots == []
    saved = (tmp_path / "bench" / PROBLEMS_FILE).read_text().splitlines()
    assert [json.loads(line)["id"] for line in saved] == ["add", "mul"]

    path = write_results(tmp_path / RESULTS_FILE, result.settings, [result])
    document = json.loads(path.read_text())
    bench = document["benchmarks"]["bench"]
    assert bench["pass_at_k"]["1"]["mean"] == pytest.approx(0.25)
    assert set(bench["pass_at_k"]["4"]) == {"mean", "std", "stderr", "n_problems"}
    assert bench["problems"][1]["completions"][0]["num_tokens"] > 0
    assert document["settings"]["n"] == 4
    assert len(summary_tables([result])) == 1


def test_meta_metrics_and_plots(tiny, tmp_path):
    result, engine = _run(tiny, tmp_path, EvalSettings(n=4, meta=True, meta_n=3, max_tokens=16))
    meta = result.meta
    assert meta["samples"] == 6 and meta["parse_rate"] == 1.0
    # Both problems are predicted at 4/8; they score 2/4 and 0/4.
    assert meta["pass_rate"]["mae"] == pytest.approx(0.25)
    assert meta["pass_rate"]["pearson"] is None  # constant predictions
    # "mul" is zero-variance, and no prediction is confident enough to gate it.
    assert all(score["positives"] == 1 and score["gated"] == 0 for score in meta["gating"])
    assert [score["sigma"] for score in meta["gating"]] == [0.05, 0.1, 0.15, 0.2, 0.3]
    assert meta["cutoff"]["n_correct"] == 2 and meta["cutoff"]["n_incorrect"] == 6
    assert [m["pass_rate"] for m in result.problems[0]["meta"]] == [4, 4, 4]
    assert sorted(p.name for p in result.plots) == [
        "calibration.png",
        "cutoff_histograms.png",
        "gating_vs_sigma.png",
        "length_scatter.png",
        "pass_rate_scatter.png",
    ]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in result.plots)
    assert len(summary_tables([result])) == 2
    # One solution call and one meta call for the single batch.
    assert engine.calls == [2, 2]
    # The default meta prompt: the compact one, asking for the JSON alone.
    assert all("Reply with this JSON only" in t and "<meta>" not in t for t in engine.meta_prompts)


def test_paper_meta_prompt_with_reasoning_reads_the_json_after_the_block(tiny, tmp_path, monkeypatch):
    # A model trained on the paper's prompt is asked with it, and answers with reasoning first.
    monkeypatch.setattr(sys.modules[__name__], "META", "<meta>small sums</meta>" + META)
    settings = EvalSettings(n=4, meta=True, meta_n=3, max_tokens=16, meta_prompt="paper", meta_reasoning=True)
    result, engine = _run(tiny, tmp_path, settings)
    assert engine.meta_prompts and all(
        "Do not solve" in t and "Think briefly inside <meta>" in t for t in engine.meta_prompts
    )
    assert result.meta["parse_rate"] == 1.0
    assert [m["pass_rate"] for m in result.problems[0]["meta"]] == [4, 4, 4]
    assert result.meta["pass_rate"]["mae"] == pytest.approx(0.25)


def test_terse_meta_prompt_is_asked_without_the_default_system_turn(tiny, tmp_path):
    # A model trained on the terse prompt is asked it as it was trained: without SmolLM's system turn.
    settings = EvalSettings(n=4, meta=True, meta_n=3, max_tokens=16, meta_prompt="terse")
    result, engine = _run(tiny, tmp_path, settings)
    assert engine.meta_prompts and all(
        "tries as JSON only" in t and "SmolLM" not in t for t in engine.meta_prompts
    )
    assert result.meta["parse_rate"] == 1.0


def test_predictions_are_also_read_as_the_models_expected_count(tiny, tmp_path):
    model, tokenizer = tiny
    belief = [0, 0, 0, 0, 0.5, 0, 0, 0, 0.5]  # states 4/8 (META), believes 6/8 on average
    engine = ScriptedEngine(tokenizer, belief)
    result, _ = _run(tiny, tmp_path, EvalSettings(n=4, meta=True, meta_n=2, max_tokens=16), engine=engine)
    assert [m["expected_pass_rate"] for m in result.problems[0]["meta"]] == [0.75, 0.75]
    assert result.meta["expected_readout_rate"] == 1.0
    assert result.meta["pass_rate"]["mae"] == pytest.approx(0.25)  # the sampled 4/8 against 2/4 and 0/4
    assert result.meta["pass_rate_expected"]["mae"] == pytest.approx(0.5)  # 6/8 against 2/4 and 0/4
    # One problem per level: the level alone tells each pass rate, and nothing is left within a level.
    for key in ("pass_rate_beyond_level", "pass_rate_expected_beyond_level"):
        assert result.meta[key] == {
            "n": 2,
            "levels": 2,
            "level_baseline_pearson": pytest.approx(1.0),
            "within_level_pearson": None,
        }
    # Neither reading is near 0 or 1, so neither gate closes.
    assert [g["gated"] for g in result.meta["gating_expected"]] == [0] * 5
    saved = json.loads((tmp_path / "bench" / PROBLEMS_FILE).read_text().splitlines()[0])
    assert saved["meta"][0]["expected_pass_rate"] == 0.75


def test_a_copy_of_the_prompt_example_counts_as_unparsed(tiny, tmp_path, monkeypatch):
    # As in training: the format example's own notions say nothing about the problem.
    copy = '{"math_notion": ["concept one", "concept two"], "pass_rate": 4, "solution_length": 5}'
    monkeypatch.setattr(sys.modules[__name__], "META", copy)
    result, _ = _run(tiny, tmp_path, EvalSettings(n=4, meta=True, meta_n=2, max_tokens=16))
    assert result.meta["parse_rate"] == 0.0 and result.meta["example_copy_rate"] == 1.0
    assert all(m["example_copy"] and m["pass_rate"] is None for m in result.problems[0]["meta"])


def test_resume_redoes_nothing_finished(tiny, tmp_path):
    settings = EvalSettings(n=4, meta=True, meta_n=2, max_tokens=16)
    first, _ = _run(tiny, tmp_path, settings)

    again, engine = _run(tiny, tmp_path, settings, resume=True)
    assert engine.calls == []
    assert again.resumed_problems == 2
    assert again.problems == first.problems

    # Only "add" survived the interruption: only "mul" is generated.
    path = tmp_path / "bench" / PROBLEMS_FILE
    path.write_text(path.read_text().splitlines()[0] + "\n")
    partial, engine = _run(tiny, tmp_path, settings, resume=True)
    assert engine.calls == [1, 1]
    assert [row["id"] for row in partial.problems] == ["add", "mul"]
    assert partial.pass_at_k[1].mean == pytest.approx(0.25)


def test_a_row_cut_short_by_a_kill_is_redone(tiny, tmp_path):
    settings = EvalSettings(n=4, max_tokens=16)
    _run(tiny, tmp_path, settings)
    path = tmp_path / "bench" / PROBLEMS_FILE
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:20])

    resumed, engine = _run(tiny, tmp_path, settings, resume=True)
    assert engine.calls == [1]
    assert [row["id"] for row in resumed.problems] == ["add", "mul"]
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["add", "mul"]


def test_resume_refuses_other_settings_and_a_fresh_run_refuses_old_results(tiny, tmp_path):
    _run(tiny, tmp_path, EvalSettings(n=4, max_tokens=16))
    with pytest.raises(EvalSetupError, match=r"n: saved 4, now 2"):
        _run(tiny, tmp_path, EvalSettings(n=2, max_tokens=16), resume=True)
    with pytest.raises(EvalSetupError, match="--resume"):
        _run(tiny, tmp_path, EvalSettings(n=4, max_tokens=16))
    # Which k are summarised does not change the samples, so it may differ.
    resumed, _ = _run(tiny, tmp_path, EvalSettings(n=4, ks=(1, 2), max_tokens=16), resume=True)
    assert sorted(resumed.pass_at_k) == [1, 2]


def test_duplicate_ids_are_rejected(tiny, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(EvalSetupError, match="duplicate problem id 'add'"):
        evaluate_benchmark(model, tokenizer, [PROBLEMS[0]] * 2, EvalSettings(n=1), tmp_path)
