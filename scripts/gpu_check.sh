#!/usr/bin/env bash
# `make gpu-check`: the GPU variants of densenet121 at batch sizes 1, 16 and 256, and the
# JPEG path with each decoder, in a few minutes, on a machine with an NVIDIA GPU. Runs the package from the tree (no install), so
# it works on an image that brings its own PyTorch. Writes a run directory and prints the
# summary table last.
#
#   OUT=/some/dir bash scripts/gpu_check.sh      (default OUT: ./gpu-check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DENSEBENCH_RUNS="$OUT/runs" DENSEBENCH_ARTIFACTS="$OUT/artifacts"
PY="${PYTHON:-python3}"

"$PY" -m densebench env --json > "$OUT/env.json" || exit 1
"$PY" -m densebench env

variants="eager,channels-last,amp-fp16,amp-bf16,torchscript,compile"
# ONNX Runtime only where its CUDA provider exists (a CPU-only build cannot measure it)
if "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
  variants="$variants,onnxruntime"
else
  echo "onnxruntime: no CUDA provider in this build; not measured" | tee "$OUT/onnxruntime-skipped.txt"
fi

"$PY" -m densebench run --device cuda --model densenet121 --variant "$variants" \
  --compile-mode default,reduce-overhead --batch-size 1,16,256 \
  --warmup 10 --min-iters 30 --min-time 1 --max-time 3 --timeout 400 \
  --name gpu-check --json > "$OUT/summary.json"
rc=$?
"$PY" -m densebench show gpu-check
# the JPEG path on the GPU: nvJPEG (torchvision-cuda) against Pillow and torchvision on the
# CPU, amp-fp16 at batch 64, where the time goes (kept apart: a failure here is its own)
for dec in torchvision-cuda torchvision pil; do
  "$PY" -m densebench run --device cuda --model densenet121 --variant amp-fp16 \
    --mode e2e-jpeg --input jpeg:synthetic --decoder "$dec" --batch-size 64 \
    --warmup 3 --min-iters 10 --min-time 1 --max-time 3 --timeout 300 \
    --name "gpu-jpeg-$dec" --json > "$OUT/jpeg-$dec.json" && \
    "$PY" -m densebench show "gpu-jpeg-$dec"
done
exit $rc
