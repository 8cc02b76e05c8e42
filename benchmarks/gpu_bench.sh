#!/usr/bin/env bash
# GPU benchmark in under 5 minutes on one H100/H200 (prepared for the device tool; nothing here
# needs a network). Installs the project into a fresh venv from the working tree, then runs the
# benchmark in fp32 and bf16 autocast; tables go to $OUT (or ./runs).
# DRY_RUN=1 installs and runs nothing: each benchmark command's arguments are parsed by that
# script's own parser (all of them at the end, in one $PYTHON, an interpreter that has the
# project installed), so a renamed flag fails here rather than on the GPU machine.
set -euo pipefail
OUT=${OUT:-runs}
mkdir -p "$OUT"
if [[ -n "${DRY_RUN:-}" ]]; then
    DRY_CMDS=$(mktemp)
    py() { printf '%s\x1f' "$@" >> "$DRY_CMDS"; echo >> "$DRY_CMDS"; }  # one command a line, \x1f between arguments
    pip() { echo "dry run: pip $*"; }
    gpu_name() { echo "dry run: nvidia-smi"; }
else
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -q -e '.[test]'
    py() { /tmp/venv/bin/python "$@"; }
    pip() { /tmp/venv/bin/pip "$@"; }
    gpu_name() { nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"; }
fi
export PYTHONUNBUFFERED=1
gpu_name
# The sample photos do not travel with the repo: the view benchmark then uses synthetic images
# and the end-to-end part is skipped unless shared/imagenet-sample is present.
py benchmarks/bench_tta.py --device cuda --batch 64 --repeats 5 --out "$OUT/bench_gpu_fp32.md"
py benchmarks/bench_tta.py --device cuda --batch 64 --repeats 5 --amp bf16 --evaluate-images 0 \
    --out "$OUT/bench_gpu_bf16.md"
# Backends on the GPU, next to torch eager / bf16 autocast / torch.compile: ONNX Runtime's CUDA
# provider (and its TensorRT provider with TRT=1: engine builds take minutes, so it is opt-in).
# onnxruntime-gpu replaces the CPU wheel (same module); a provider that cannot load here is
# skipped with a line in the log, so the torch rows still come out.
pip uninstall -q -y onnxruntime || true
pip install -q onnx onnxscript 'onnxruntime-gpu==1.31.1' ${TRT:+tensorrt-cu12} \
    || echo "onnxruntime-gpu not installed: the onnxruntime rows will be skipped"
py benchmarks/bench_backends.py --device cuda --batches 1,16,64 --repeats 5 --ttach-images 0 \
    --backends "torch,torch-bf16,torch-compile,onnxruntime-cuda${TRT:+,onnxruntime-tensorrt}" \
    --out "$OUT/bench_backends_gpu.md"
if [[ -n "${DRY_RUN:-}" ]]; then
    "${PYTHON:-python3}" -c 'import sys; sys.path[:0] = ["benchmarks"]; from bench_common import check_args_file; check_args_file(sys.argv[1])' "$DRY_CMDS"
    rm -f "$DRY_CMDS"
fi
