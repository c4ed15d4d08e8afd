#!/usr/bin/env bash
# One device-tool call for a session that has a GPU (issue 6): build the CUDA extension in place with the
# machine's own torch (2.11 + CUDA 13 there), run the CUDA tests, then the GPU benchmark. Everything it
# needs is in that machine's image (torch, numpy, pytest, matplotlib, ninja, pybind11); laspy-based tests skip.
#   device run:  bash tools/gpu_session.sh            (results and logs land in $OUT)
#   stages:      STAGES="build test" bash tools/gpu_session.sh
set -uo pipefail
OUT=${OUT:-build/gpu_session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STAGES=${STAGES:-"build test bench"}
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for stage in $STAGES; do
  case $stage in
    build)
      FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
        $PY setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
      $PY -c "import sparseconv, json; print(json.dumps(sparseconv.build_info()))" | tee "$OUT/build_info.json" ;;
    test)
      $PY -m pytest -q -x -p no:cacheprovider tests/test_cuda.py tests/test_build_info.py 2>&1 \
        | tee "$OUT/test_cuda.log" | tail -30 ;;
    bench)
      $PY benchmarks/bench_cuda.py --out-dir "$OUT" 2>&1 | tee "$OUT/bench_cuda.log" | tail -40 ;;
    *) echo "unknown stage $stage (build, test, bench)"; exit 2 ;;
  esac
done
