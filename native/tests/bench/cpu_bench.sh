#!/usr/bin/env bash
# CPU throughput matrix of the engine: prefill / decode tokens/s at 512 and
# 4096 tokens of context, 1 and 8 requests, for each thread count given.
#
#   native/tests/bench/cpu_bench.sh MODEL_DIR OUT_JSONL [THREADS...]   (default: all cores)
#
# MODEL_DIR may be "random:CONFIG" to make a seeded random checkpoint of that
# config first (random_checkpoint.py) on machines the real model cannot reach.
# CONTEXTS and REQUESTS (space-separated) override the matrix.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
model="$1"; out="$2"; shift 2
threads=("$@"); [ ${#threads[@]} -eq 0 ] && threads=(0)
build="$root/native/build-bench"
cmake -S "$root/native" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPX_BUILD_TESTS=OFF \
  -DSPX_CUDA=OFF > "$build.log" 2>&1 || { cat "$build.log"; exit 1; }
cmake --build "$build" --target engine_bench -j"$(nproc)" >> "$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }
if [[ "$model" == random:* ]]; then
  dir="$(mktemp -d)"
  python3 "$root/native/tests/bench/random_checkpoint.py" "${model#random:}" "$dir"
  model="$dir"
fi
: > "$out"
for t in "${threads[@]}"; do
  for ctx in ${CONTEXTS:-512 4096}; do
    for r in ${REQUESTS:-1 8}; do
      line="$("$build/engine_bench" "$model" --context "$ctx" --requests "$r" --new 32 --threads "$t" --chunk 512)"
      echo "$line" | tee -a "$out"
    done
  done
done
