"""What a user sees before and while the first step runs: precision and why, loading, evaluation progress."""

import pytest
import torch
from scripted_engine import ScriptedEngine

from masa import models
from masa.data.arithmetic import arithmetic_splits
from masa.eval.heldout import heldout_accuracy
from masa.models import describe_precision, resolve_autocast
from masa.prompts import DEFAULT_SOLUTION_TEMPLATE
from masa.rollout.types import SamplingParams

CPU = torch.device("cpu")


def test_the_precision_line_says_what_was_picked_and_why(monkeypatch):
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    line = describe_precision("auto", CPU, resolve_autocast("auto", CPU))
    assert line.startswith("precision: fp32 on cpu") and "no AMX" in line
    forced = describe_precision("bf16", CPU, resolve_autocast("bf16", CPU))
    assert "bf16 autocast" in forced and "model.precision=bf16" in forced and "slower than fp32" in forced

    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: True)
    line = describe_precision("auto", CPU, resolve_autocast("auto", CPU))
    assert line.startswith("precision: bf16 autocast") and "has AMX" in line
    assert describe_precision("fp32", CPU, None) == "precision: fp32 on cpu (model.precision=fp32)"


def test_bf16_is_picked_only_on_a_cpu_with_amx():
    # AVX512-BF16 without AMX trained and sampled slower in bf16 than in fp32 (benchmarks/README.md).
    assert not models.bf16_is_fast({"avx2", "avx512f", "avx512_bf16"})
    assert not models.bf16_is_fast({"avx2"})
    assert models.bf16_is_fast({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})


def test_held_out_evaluation_reports_progress_chunk_by_chunk(tiny):
    _, tokenizer = tiny
    _, problems = arithmetic_splits(seed=0, n_eval=5)
    engine = ScriptedEngine(tokenizer, problems, lambda p, j: f"\\boxed{{{p.answer}}}", lambda p, j: "")
    done: list[int] = []
    result = heldout_accuracy(
        engine,
        tokenizer,
        problems,
        SamplingParams(0.0, 1.0, 16),
        template=DEFAULT_SOLUTION_TEMPLATE,
        chunk_problems=2,
        on_progress=done.append,
    )
    assert done == [2, 4, 5]
    assert [len(call) for call in engine.solution_calls] == [2, 2, 1]
    assert result.accuracy == 1.0 and result.samples == 5


def test_the_first_use_of_the_embedded_model_says_it_converts(monkeypatch, tmp_path):
    monkeypatch.setenv("MASA_CACHE", str(tmp_path))
    heard: list[str] = []
    calls = []

    def fake_from_pretrained(*args, **kwargs):
        calls.append(args)
        raise OSError("stop here: only the notice is under test")

    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    with pytest.raises(models.ModelLoadError):
        models.embedded_smollm2_path(heard.append)
    assert calls and len(heard) == 1 and "converting" in heard[0] and str(tmp_path) in heard[0]
