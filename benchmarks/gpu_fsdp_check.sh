#!/usr/bin/env bash
# 5 timed steps of `masa train` at world size 1 and N on this node's GPUs: seconds per step, peak GiB per GPU.
# Usage: bash benchmarks/gpu_fsdp_check.sh N [--model NAME] [section.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?number of GPUs}
shift
for world in 1 "$N"; do
    python -m torch.distributed.run --standalone --nproc-per-node "$world" benchmarks/gpu_fsdp_check.py "$@"
done
