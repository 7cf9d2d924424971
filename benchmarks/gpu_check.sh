#!/usr/bin/env bash
# Run the GPU checks (benchmarks/gpu_check.py) on a machine with a CUDA GPU,
# writing gpu_check.json to $OUT (default: ./gpu-check-out).
#
# The machine needs torch with CUDA and kornia. If a folder .whl with wheels
# (kornia, kornia_rs, and for the loader section nvidia-dali, webdataset,
# open_clip_torch, ftfy, braceexpand) sits in the repository root, they are
# installed to /tmp/site first. Everything is bounded to about 9.5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" || true
timeout 570 "$PYTHON" -u benchmarks/gpu_check.py --out "$OUT" --budget 530 2>&1 | tee "$OUT/gpu_check.log"
