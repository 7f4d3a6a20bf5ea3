#!/usr/bin/env bash
# GPU test runner for a machine with an H200 (or any sm_90 GPU) and CUDA 13,
# no Node.js needed: builds the native tree with CMake, makes random
# checkpoints with transformers references, runs every native test binary
# (the CUDA ones run, the CPU ones too), compute-sanitizer memcheck on a
# small end-to-end run, and optionally the dense benchmark against HF
# transformers. Prints a short summary last; full logs go to $SPX_GPU_OUT (or
# /tmp/spx-gpu).
#
#   tools/gpu_test.sh [--no-tests] [--no-sanitizer] [--bench] [--bench-quick] [--only REGEX]
# --only runs just the test binaries whose names match REGEX (bash =~), and
# builds only those.
#
# GoogleTest: the Debian package if CMake finds it, else the sources in
# .carry/googletest (copy /usr/src/googletest there on a machine that has it).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${SPX_GPU_OUT:-/tmp/spx-gpu}"
mkdir -p "$out"
tests=1 sanitizer=1 bench=0 quick=0 only=''
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  a="${args[$i]}"
  case "$a" in
    --only) i=$((i + 1)); only="${args[$i]:-}" ;;
    --no-tests) tests=0 ;;
    --no-sanitizer) sanitizer=0 ;;
    --bench) bench=1 ;;
    --bench-quick) bench=1 quick=1 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
summary=()
note() { summary+=("$*"); echo "== $*"; }
export PATH="/usr/local/cuda/bin:$PATH"
build="$root/native/build-gpu"
jobs="$(nproc)"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
nvcc --version | tail -1

# ---- build
targets=()
if [[ -n "$only" ]]; then
  mapfile -t targets < <(cd "$root/native/tests" && ls *_test.cc | sed 's/\.cc$//' | grep -E "$only")
  [[ $sanitizer == 1 ]] && targets+=(cuda_model_test dense_bench)
fi
gtest_arg=()
[[ -d "$root/.carry/googletest" ]] && gtest_arg=(-DSPX_GTEST_SRC="$root/.carry/googletest")
t0=$SECONDS
if cmake -S "$root/native" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" "${gtest_arg[@]}" >"$out/build.log" 2>&1 &&
  ninja -C "$build" -j"$jobs" "${targets[@]}" >>"$out/build.log" 2>&1; then
  note "build ok ($((SECONDS - t0)) s)"
else
  tail -40 "$out/build.log"
  note "BUILD FAILED (see build.log)"
  printf '%s\n' "${summary[@]}"
  exit 1
fi

# ---- tests
fail=0
if [[ $tests == 1 ]]; then
  dirs=()
  for shape in llama-mid qwen3-mid; do
    d="/tmp/spx-$shape"
    if python3 "$root/tools/make_random_weights.py" --shape "$shape" --out "$d" --reference \
        >>"$out/weights.log" 2>&1; then
      dirs+=("$d")
    else
      note "make_random_weights $shape FAILED (see weights.log)"
      fail=1
    fi
  done
  export SPX_CUDA_MODEL_DIRS="$(IFS=,; echo "${dirs[*]}")"
  : >"$out/tests.log"
  for bin in "$build"/*_test; do
    name="$(basename "$bin")"
    [[ -n "$only" && ! "$name" =~ $only ]] && continue
    t0=$SECONDS
    if "$bin" >"$out/$name.log" 2>&1; then status=ok; else status=FAILED; fail=1; fi
    passed=$(grep -c '^\[       OK \]' "$out/$name.log")
    failed=$(grep -c '^\[  FAILED  \]' "$out/$name.log")
    skipped=$(grep -c '^\[  SKIPPED \]' "$out/$name.log")
    note "$name: $status (passed $passed, failed $failed, skipped $skipped, $((SECONDS - t0)) s)"
    cat "$out/$name.log" >>"$out/tests.log"
    [[ $status == FAILED ]] && grep -E 'FAILED|mismatch|Failure|error' "$out/$name.log" | head -15
    grep -E 'worst logits error' "$out/$name.log" || true
  done
fi

# ---- compute-sanitizer memcheck on a small end-to-end run
if [[ $sanitizer == 1 ]]; then
  cs="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  t0=$SECONDS
  "$cs" --tool memcheck --error-exitcode 99 "$build/cuda_model_test" \
    --gtest_filter='CudaTinyModel.*:CudaEngine.*' >"$out/memcheck_model.log" 2>&1
  rc1=$?
  "$cs" --tool memcheck --error-exitcode 99 "$build/dense_bench" --model tiny-128 \
    --prefill 300 --decode 200 --batch 3 --steps 2 --chunk 128 >"$out/memcheck_bench.log" 2>&1
  rc2=$?
  e1=$(grep -E 'ERROR SUMMARY' "$out/memcheck_model.log" | tail -1)
  e2=$(grep -E 'ERROR SUMMARY' "$out/memcheck_bench.log" | tail -1)
  note "memcheck engine e2e (tiny fixtures, cuda:0): rc $rc1, ${e1:-no summary}"
  note "memcheck dense_bench tiny (prefill + graph decode): rc $rc2, ${e2:-no summary}"
  note "memcheck took $((SECONDS - t0)) s"
  [[ $rc1 != 0 || $rc2 != 0 ]] && fail=1
fi

# ---- benchmark
if [[ $bench == 1 ]]; then
  res="$out"
  models=(llama-3.1-8b qwen3-8b)
  args=(--prefill 2048,16384,32768 --decode 2048,32768 --batch 1,8,32)
  kernels=(--kernels mma,simt)
  if [[ $quick == 1 ]]; then
    models=(llama-3.1-8b)
    args=(--prefill 2048 --decode 2048,32768 --batch 1,8)
  fi
  ours=() hf=()
  for m in "${models[@]}"; do
    t0=$SECONDS
    if "$build/dense_bench" --model "$m" "${args[@]}" "${kernels[@]}" --json "$res/ours-$m.json" \
        >"$res/bench-$m.log" 2>&1; then
      ours+=("$res/ours-$m.json")
      note "dense_bench $m ok ($((SECONDS - t0)) s)"
    else
      tail -5 "$res/bench-$m.log"
      note "dense_bench $m FAILED"
      fail=1
    fi
    cat "$res/bench-$m.log"
    t0=$SECONDS
    if PYTHONUNBUFFERED=1 python3 "$root/bench/cuda/hf_bench.py" --model "$m" "${args[@]}" \
        --json "$res/hf-$m.json" >"$res/hf-$m.log" 2>&1; then
      hf+=("$res/hf-$m.json")
      note "hf_bench $m ok ($((SECONDS - t0)) s)"
    else
      tail -5 "$res/hf-$m.log"
      note "hf_bench $m FAILED"
    fi
    grep -E '^hf ' "$res/hf-$m.log" || true
  done
  if [[ ${#ours[@]} -gt 0 ]]; then
    python3 "$root/bench/cuda/report.py" --ours "${ours[@]}" --hf "${hf[@]}" \
      --json "$res/cuda-dense-h200.json" --png "$res/cuda-dense-h200.png" \
      --md "$res/cuda-dense-h200.md" --device "$(cut -d, -f1 "$out/gpu.txt" | head -1)" \
      >"$res/report.log" 2>&1 || { tail -5 "$res/report.log"; note "report FAILED"; }
  fi
fi

echo
echo "==================== summary"
printf '%s\n' "${summary[@]}"
[[ -f "$out/cuda-dense-h200.md" ]] && cat "$out/cuda-dense-h200.md"
exit $fail
