#!/usr/bin/env bash
# Builds spx_core and the checkpoint benchmark on a machine without the model
# (the GPU machine's CPU: 16 cores), makes a SmolLM2-shaped model with seeded
# random weights (speed does not depend on the values) and runs the benchmark.
#   bench/checkpoint/run_device.sh OUT_JSON [contexts] [threads]
set -euo pipefail
out=${1:?out json}
contexts=${2:-4096,8128}
threads=${3:-0}
build=/tmp/spx-ckpt-bench
cmake -S native -B "$build" -G Ninja -DSPX_CUDA=OFF -DSPX_BUILD_TESTS=OFF -DSPX_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" --target spx_core -j "$(nproc)" >/dev/null
g++ -O2 -std=c++17 -march=native -Inative/src bench/checkpoint/checkpoint_bench.cc \
  "$build/libspx_core.a" -lpthread -fopenmp -o "$build/checkpoint_bench"
model=/tmp/smollm2-random
[[ -f $model/model.safetensors ]] || "$build/checkpoint_bench" --make-random-smollm2 "$model"
"$build/checkpoint_bench" "$model" --contexts "$contexts" --threads "$threads" --dir /dev/shm | tee "$out"
