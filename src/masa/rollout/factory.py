"""One place that turns ``[rollout]`` settings into an engine, so callers never branch on the engine kind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from masa.config import RolloutConfig
from masa.models import SMOLLM2, TINY_RANDOM, embedded_smollm2_path, write_model_folder
from masa.rollout.engine import HFEngine, RolloutEngine, combine_eos_ids, eos_token_ids


def build_engine(
    settings: RolloutConfig,
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    *,
    model_source: str,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
    threads: int = 0,
) -> RolloutEngine:
    """The engine ``settings.engine`` names, holding ``model``'s current weights.

    ``model_source`` is what ``model`` was loaded from (a built-in name, folder or hub id); a vLLM engine
    loads the same weights from there, so a caller that never trains (``masa eval``) can pass no model
    and ``device`` instead, and the weights are held once, by vLLM. A disaggregated engine (a ``vllm
    serve`` fleet fed over NCCL) would be one more kind here: the trainer only sees ``generate`` and
    ``load_weights``.
    """
    if settings.engine == "hf":
        if model is None:
            raise ValueError("the hf engine samples the policy module itself; pass the model")
        return HFEngine(
            model, tokenizer, max_batch_sequences=settings.max_batch_sequences, autocast_dtype=autocast_dtype
        )
    from masa.rollout.vllm_engine import VLLMEngine, VLLMOptions

    folder, keep_alive = _vllm_folder(model_source, model, tokenizer)
    options = VLLMOptions(
        model=folder,
        device=model.device.type if model is not None else device,
        dtype=settings.dtype,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        cpu_kv_cache_gb=settings.cpu_kv_cache_gb,
        enforce_eager=settings.enforce_eager,
        tensor_parallel_size=settings.tensor_parallel_size,
        prefix_caching=settings.prefix_caching,
        block_size=settings.block_size,
        seed=seed if settings.seed is None else settings.seed,
        cpu_threads=threads,
    )
    eos = eos_token_ids(model, tokenizer) if model is not None else _folder_eos_ids(folder, tokenizer)
    engine = VLLMEngine(options, eos)
    if keep_alive is not None:
        keep_alive.cleanup()  # vLLM has read the folder; its weights now live in the engine
    return engine


def _vllm_folder(
    source: str, model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase
) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """A folder (or cached hub id) vLLM can start from with the same weights as ``model``."""
    if source == SMOLLM2:
        return str(embedded_smollm2_path()), None
    if source == TINY_RANDOM:  # built in memory: written out once for vLLM to read
        if model is None:
            raise ValueError(f"{TINY_RANDOM} exists only in memory; pass the model")
        tmp = tempfile.TemporaryDirectory(prefix="masa-vllm-")
        write_model_folder(model, tokenizer, Path(tmp.name))
        return tmp.name, tmp
    return (str(Path(source).resolve()) if Path(source).is_dir() else source), None


def _folder_eos_ids(folder: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The EOS ids a model loaded from ``folder`` would stop on, read without loading its weights."""
    try:
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:  # no generation_config.json: transformers derives one from the model config
        generation = GenerationConfig.from_model_config(AutoConfig.from_pretrained(folder))
    return combine_eos_ids(generation.eos_token_id, tokenizer)
