#!/usr/bin/env bash
# One prepared GPU check (for a machine with cupy and a CUDA GPU), sized for a few minutes:
#   0. the NVRTC compile test of every fused kernel (tests/test_kernels_nvrtc.py, no skip allowed);
#   1. every test marked `gpu` (ops, optimisers, rules, linalg, data augmentation: cupy against numpy);
#   2. the step benchmark with --backend cupy (ssaref on the GPU against PyTorch on CUDA, same process), and
#      issue 26's SSA / SVD-BP rows (full and scheduled rank, device pool peak per --conv-save mode);
#   3. a short SSA and DFA training run on the GPU (synthetic data: no dataset files needed).
# Usage: bash validation/gpu_check.sh [--overwrite] [OUTDIR]   (logs go to OUTDIR, default gpu_check in the repo)
# OUTDIR is the check's own folder (it writes a .gpu_check marker there): an existing one is refused unless
# --overwrite is given, and --overwrite never writes into a non-empty folder without the marker.
# It cannot pass vacuously: any failing step fails the script (set -e, pipefail), a missing cupy or device fails
# at once, SSAREF_REQUIRE_GPU=1 turns pytest's GPU skips into a failure, SSAREF_REQUIRE_NVRTC=1 the compile
# test's.
set -euo pipefail
overwrite=0
args=()
for a in "$@"; do
  case "$a" in
    --overwrite) overwrite=1 ;;
    -*) echo "error: gpu_check.sh: unknown option $a (usage: gpu_check.sh [--overwrite] [OUTDIR])" >&2; exit 2 ;;
    *) args+=("$a") ;;
  esac
done
if [ "${#args[@]}" -gt 1 ]; then
  echo "error: gpu_check.sh: one OUTDIR at most (usage: gpu_check.sh [--overwrite] [OUTDIR])" >&2; exit 2
fi
cd "$(dirname "$0")/.."
out="${args[0]:-${OUT:-gpu_check}}"   # relative to the repository's root
if [ -e "$out" ] && [ ! -d "$out" ]; then
  echo "error: gpu_check.sh: $out exists and is not a folder" >&2; exit 2
fi
if [ -d "$out" ] && [ -n "$(ls -A "$out")" ]; then
  if [ ! -e "$out/.gpu_check" ]; then
    echo "error: gpu_check.sh: $out is not empty and is not a gpu_check folder; choose another OUTDIR" >&2; exit 2
  fi
  if [ "$overwrite" != 1 ]; then
    echo "error: gpu_check.sh: $out holds an earlier check; pass --overwrite to replace it" >&2; exit 2
  fi
fi
mkdir -p "$out"
touch "$out/.gpu_check"
ow=()
[ "$overwrite" = 1 ] && ow=(--overwrite)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=ci
export SSAREF_REQUIRE_GPU=1 SSAREF_REQUIRE_NVRTC=1
python - <<'PY' 2>&1 | tee "$out/env.log"
import sys
import ssaref.backend as b
if not b.cupy_available():
    sys.exit(f"gpu_check: cupy or a CUDA device is not usable ({b._CUPY_ERROR})")
import cupy as cp
print("cupy", cp.__version__, "device", cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
      "CUDA runtime", cp.cuda.runtime.runtimeGetVersion())
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$out/env.log"
python -m pytest -q -rs -p no:cacheprovider tests/test_kernels_nvrtc.py 2>&1 | tee "$out/nvrtc_compile.log"
python -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
python -m ssaref.bench --backend cupy --repeats 10 --json "$out/bench_cupy.json" ${ow[@]+"${ow[@]}"} 2>&1 \
  | tee "$out/bench.log"
# issue 26 on the device: SSA / SVD-BP at full and scheduled rank, and the pool peak in columns / input / recompute
python -m ssaref.bench --backend cupy --models mlp,smallconv --method bp,ssa,ssa:epochs=10,svd-bp,svd-bp:epochs=10 \
  --conv-save all --statistic mean --repeats 10 --json "$out/bench_cupy_svd.json" ${ow[@]+"${ow[@]}"} 2>&1 \
  | tee "$out/bench_svd.log"
for m in ssa dfa; do
  python -m ssaref.train --backend cupy --method "$m" --dataset synthetic --epochs 2 --no-progress \
    --out "$out/$m.h5" ${ow[@]+"${ow[@]}"} 2>&1 | tee "$out/train_$m.log"
done
