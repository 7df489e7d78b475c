#!/usr/bin/env bash
# What only a GPU can show (issue 18): raw-loop MFU of GPT-2 124M, train.py's MFU on it and their ratio, peak
# memory, trainer=fsdp on one GPU -> bench/results/gpu.json, in under 8 minutes on an H100/H200-class GPU.
#   bash bench/gpu.sh                 # needs CUDA
#   bash bench/gpu.sh --smoke --out /tmp/gpu.json    # CPU, tiny GPT: the code path (run by tests/test_gpu_script.py)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" bench/gpu.py "$@"
