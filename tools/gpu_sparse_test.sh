#!/usr/bin/env bash
# GPU runner for the SpeContext kernels alone (faster than tools/gpu_test.sh):
# builds only cuda_sparse_kernels_test and cuda_attention_test (the dense
# decode kernel the sparse one extends), runs both, then compute-sanitizer
# memcheck on the sparse kernels' correctness tests. Summary last; logs in
# $SPX_GPU_OUT (default /tmp/spx-gpu-sparse).
#
#   tools/gpu_sparse_test.sh [SOURCE_ROOT]
# SOURCE_ROOT (default: this checkout) lets a run build a clean export of a
# commit (git archive) while the working tree holds others' unfinished edits.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$(cd "${1:-$root}" && pwd)"
out="${SPX_GPU_OUT:-/tmp/spx-gpu-sparse}"
mkdir -p "$out"
export PATH="/usr/local/cuda/bin:$PATH"
build="$src/native/build-gpu"
summary=()
note() { summary+=("$*"); echo "== $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
gtest_arg=()
[[ -d "$root/.carry/googletest" ]] && gtest_arg=(-DSPX_GTEST_SRC="$root/.carry/googletest")
t0=$SECONDS
if cmake -S "$src/native" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" "${gtest_arg[@]}" >"$out/build.log" 2>&1 &&
  ninja -C "$build" -j"$(nproc)" cuda_sparse_kernels_test cuda_attention_test >>"$out/build.log" 2>&1; then
  note "build ok ($((SECONDS - t0)) s)"
else
  tail -40 "$out/build.log"
  note "BUILD FAILED (see build.log)"
  printf '%s\n' "${summary[@]}"
  exit 1
fi

fail=0
for name in cuda_sparse_kernels_test cuda_attention_test; do
  t0=$SECONDS
  if "$build/$name" >"$out/$name.log" 2>&1; then status=ok; else status=FAILED; fail=1; fi
  passed=$(grep -c '^\[       OK \]' "$out/$name.log")
  failed=$(grep -c '^\[  FAILED  \]' "$out/$name.log")
  note "$name: $status (passed $passed, failed $failed, $((SECONDS - t0)) s)"
  [[ $status == FAILED ]] && grep -E 'FAILED|mismatch|Failure|differs|entry|error' "$out/$name.log" | head -25
done
grep '^TIMING' "$out/cuda_sparse_kernels_test.log" | sed 's/^TIMING /   /'

t0=$SECONDS
filter='CudaSparseKernels.*:-CudaSparseKernels.Timings'
if timeout 240 compute-sanitizer --tool memcheck --error-exitcode 3 \
    "$build/cuda_sparse_kernels_test" --gtest_filter="$filter" >"$out/memcheck.log" 2>&1; then
  note "memcheck: 0 errors ($((SECONDS - t0)) s)"
else
  note "memcheck FAILED or timed out (rc $?, see memcheck.log)"
  grep -E 'ERROR SUMMARY|Invalid|FAILED' "$out/memcheck.log" | head -10
  fail=1
fi
echo
echo "==== summary"
printf '%s\n' "${summary[@]}"
exit $fail
