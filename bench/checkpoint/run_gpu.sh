#!/usr/bin/env bash
# The checkpoint benchmark on the GPU machine: the Llama-3.1-8B shape (seeded random
# bf16 weights made on the GPU by tools/make_random_weights.py; speed does not depend
# on the values) at 32k tokens of context, through the engine on cuda:0: resume from
# the host-memory checkpoint (validate + restore + one step) vs re-prefill.
#   bench/checkpoint/run_gpu.sh OUT_DIR [contexts]
set -uo pipefail
out=${1:?out dir}
contexts=${2:-32768}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
build=${SPX_CKPT_BUILD:-native/build-ckpt}  # reuse tools/gpu_test.sh's native/build-gpu to save a build
[[ -f $build/build.ninja ]] ||
  cmake -S native -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" \
    -DSPX_BUILD_TESTS=OFF >"$out/ckpt-build.log" 2>&1 &&
  ninja -C "$build" -j"$(nproc)" checkpoint_bench >>"$out/ckpt-build.log" 2>&1 ||
  { tail -30 "$out/ckpt-build.log"; exit 1; }
model=/tmp/spx-llama-3.1-8b
[[ -f $model/config.json ]] ||
  python3 tools/make_random_weights.py --shape llama-3.1-8b --out "$model" >"$out/ckpt-weights.log" 2>&1 ||
  { tail -20 "$out/ckpt-weights.log"; exit 1; }
# The store lives in host memory (/dev/shm) when it has room for a 32k checkpoint
# (format v3 keeps the GPU's bf16 rows: 128 KiB per token, 4.3 GB at 32k; older files kept
# f32, twice that; the bench keeps a copy of the file).
need=$((20 * 1024 * 1024))  # KiB
dir=/dev/shm
(( $(df -Pk /dev/shm | awk 'NR==2 {print $4}') > need )) || dir=/tmp
echo "checkpoint dir: $dir ($(df -h "$dir" | awk 'NR==2 {print $4}') free)"
"$build/checkpoint_bench" "$model" --device cuda:0 --contexts "$contexts" --single 1 --dir "$dir" \
  >"$out/checkpoint-h200.json" 2>"$out/ckpt-bench.log"
rc=$?
cat "$out/checkpoint-h200.json"; tail -5 "$out/ckpt-bench.log"
exit $rc
