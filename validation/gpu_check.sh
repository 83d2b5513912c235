#!/usr/bin/env bash
# One prepared GPU check (for a machine with cupy and a CUDA GPU), sized for a few minutes:
#   1. every test marked `gpu` (ops, optimisers, rules, linalg, data augmentation: cupy against numpy);
#   2. the step benchmark with --backend cupy (ssaref on the GPU against PyTorch on the CPU, same process);
#   3. a short SSA and DFA training run on the GPU (synthetic data: no dataset files needed).
# Usage: bash validation/gpu_check.sh [OUTDIR]      (logs go to OUTDIR, default ./gpu_check)
# It cannot pass vacuously: any failing step fails the script (set -e, pipefail), a missing cupy or device fails
# at once, and SSAREF_REQUIRE_GPU=1 turns pytest's GPU skips into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=ci
export SSAREF_REQUIRE_GPU=1
python - <<'PY' 2>&1 | tee "$out/env.log"
import sys
import ssaref.backend as b
if not b.cupy_available():
    sys.exit("gpu_check: cupy or a CUDA device is not usable")
import cupy as cp
print("cupy", cp.__version__, "device", cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
      "CUDA runtime", cp.cuda.runtime.runtimeGetVersion())
PY
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee -a "$out/env.log"
python -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
python -m ssaref.bench --backend cupy --repeats 10 --json "$out/bench_cupy.json" 2>&1 | tee "$out/bench.log"
for m in ssa dfa; do
  python -m ssaref.train --backend cupy --method "$m" --dataset synthetic --epochs 2 --no-progress \
    --out "$out/$m.h5" 2>&1 | tee "$out/train_$m.log"
done
