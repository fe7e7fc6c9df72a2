import os

import pytest
import torch

import masa.models as models


@pytest.fixture
def quick_conversion(monkeypatch, tiny):
    """The cache's bookkeeping under test, without the half-minute GGUF de-quantization (which the first
    test to load the embedded model runs for real)."""
    monkeypatch.setattr(models, "plain_model_from_gguf", lambda gguf: tiny)


def test_interrupted_conversion_leaves_no_cache_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("MASA_CACHE", str(tmp_path))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-conversion

    monkeypatch.setattr(models, "plain_model_from_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        models.embedded_smollm2_path()
    leftovers = list((tmp_path / "models").iterdir())
    assert leftovers == []  # neither a half-written target nor the temporary folder


def test_a_folder_without_the_completion_marker_is_rebuilt(tmp_path, monkeypatch, quick_conversion):
    monkeypatch.setenv("MASA_CACHE", str(tmp_path))
    half_written = models.embedded_cache_dir(models.embedded_gguf_path())
    half_written.mkdir(parents=True)
    (half_written / "config.json").write_text("{truncated")
    path = models.embedded_smollm2_path()
    assert path == half_written
    assert (path / "model.safetensors").is_file()
    assert (path / "config.json").read_text().startswith("{\n")


def test_a_folder_marked_complete_without_weights_is_rebuilt(tmp_path, monkeypatch, quick_conversion):
    monkeypatch.setenv("MASA_CACHE", str(tmp_path))
    marked = models.embedded_cache_dir(models.embedded_gguf_path())
    marked.mkdir(parents=True)
    (marked / models._COMPLETE_MARKER).write_text("written by a rank whose save_pretrained wrote nothing")
    path = models.embedded_smollm2_path()
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def test_a_reinstalled_wheel_reuses_the_conversion_and_other_contents_do_not(tmp_path, monkeypatch):
    """A fresh venv unpacks the same GGUF with a new mtime; it must find the existing conversion rather
    than write another 540 MB copy, while a GGUF with other bytes must not share it."""
    monkeypatch.setenv("MASA_CACHE", str(tmp_path / "cache"))
    first, reinstalled, other = (tmp_path / name for name in ("first.gguf", "reinstalled.gguf", "other.gguf"))
    first.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    reinstalled.write_bytes(first.read_bytes())
    os.utime(reinstalled, (1_000_000_000, 1_000_000_000))
    other.write_bytes(b"GGUF" + bytes(range(255, -1, -1)) * 64)
    assert models.embedded_cache_dir(reinstalled) == models.embedded_cache_dir(first)
    assert models.embedded_cache_dir(other) != models.embedded_cache_dir(first)


def test_embedded_model_is_plain_and_trainable():
    model, tokenizer = models.load_model(models.SMOLLM2)
    assert getattr(model.config, "quantization_config", None) is None
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer.chat_template and tokenizer.padding_side == "left"


def test_unknown_model_names_fail_clearly(tmp_path):
    with pytest.raises(models.ModelLoadError, match="not a built-in"):
        models.load_model(str(tmp_path / "nowhere"))


def test_autocast_choice():
    assert models.resolve_autocast("fp32", torch.device("cpu")) is None
    assert models.resolve_autocast("bf16", torch.device("cpu")) is torch.bfloat16


def test_a_loaded_checkpoint_owns_aligned_memory(tmp_path, tiny):
    """A resumed run computes bit for bit what the run that saved it did (kernels round by alignment)."""
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = models.load_model(str(tmp_path))
    assert all(p.data_ptr() % 64 == 0 for p in loaded.parameters())
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # still tied
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_cpu_name_reads_the_model_name_and_survives_a_missing_cpuinfo(monkeypatch):
    monkeypatch.setattr(
        models.Path, "read_text", lambda self: "processor\t: 0\nmodel name\t: Test CPU 9000\n"
    )
    assert models.cpu_name() == "Test CPU 9000"

    def missing(self):
        raise FileNotFoundError(self)

    monkeypatch.setattr(models.Path, "read_text", missing)
    assert models.cpu_name() == "unknown CPU"
