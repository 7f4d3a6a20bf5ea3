#!/usr/bin/env bash
# One GPU-machine call for the engine's recorded decode step (CUDA graphs,
# docs/cuda.md): builds what it needs, makes random checkpoints (llama-mid,
# qwen3-mid, and the Llama-3.1-8B shape when time allows) in the background
# while building, runs cuda_graph_test and cuda_model_test, engine_bench with
# graphs on and off, dense_bench's graph decode on the 8B shape, and
# compute-sanitizer on the graph test (tiny fixtures). Raw JSON lines and
# logs go to OUT; a summary is printed last.
#   tools/gpu_graph_bench.sh OUT [--no-8b]
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?out dir}"
big=1
[[ "${2:-}" == --no-8b ]] && big=0
mkdir -p "$out"
export PATH="/usr/local/cuda/bin:$PATH"
t_start=$SECONDS
summary=()
note() { summary+=("$*"); echo "== $*" | tee -a "$out/summary.txt"; }
elapsed() { echo $((SECONDS - t_start)); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt"

# ---- checkpoints, in the background while building
(
  for shape in llama-mid qwen3-mid; do
    python3 "$root/tools/make_random_weights.py" --shape "$shape" --out "/tmp/spx-g-$shape" \
      >>"$out/weights.log" 2>&1 && touch "/tmp/spx-g-$shape/.ok"
  done
  if [[ $big == 1 ]]; then
    python3 "$root/tools/make_random_weights.py" --shape llama-3.1-8b --out /tmp/spx-g-llama-8b \
      >>"$out/weights.log" 2>&1 && touch /tmp/spx-g-llama-8b/.ok
  fi
) &
wpid=$!

# ---- build
build="$root/native/build-gpu"
gtest_arg=()
[[ -d "$root/.carry/googletest" ]] && gtest_arg=(-DSPX_GTEST_SRC="$root/.carry/googletest")
if cmake -S "$root/native" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" "${gtest_arg[@]}" >"$out/build.log" 2>&1 &&
  ninja -C "$build" -j"$(nproc)" cuda_graph_test cuda_model_test engine_bench dense_bench \
    >>"$out/build.log" 2>&1; then
  note "build ok ($(elapsed) s)"
else
  tail -40 "$out/build.log"
  note "BUILD FAILED"
  kill "$wpid" 2>/dev/null
  exit 1
fi

# ---- the mid checkpoints (the 8B one may still be writing)
for i in $(seq 1 120); do
  [[ -f /tmp/spx-g-llama-mid/.ok && -f /tmp/spx-g-qwen3-mid/.ok ]] && break
  kill -0 "$wpid" 2>/dev/null || break
  sleep 1
done
dirs=()
for s in llama-mid qwen3-mid; do [[ -f /tmp/spx-g-$s/.ok ]] && dirs+=("/tmp/spx-g-$s"); done
note "checkpoints ready: ${dirs[*]:-none} ($(elapsed) s)"

fail=0
run_test() {  # name, env dirs, filter
  local name=$1 t0=$SECONDS
  if SPX_CUDA_MODEL_DIRS="$2" "$build/$name" --gtest_filter="$3" >"$out/$name.log" 2>&1; then
    st=ok
  else
    st=FAILED
    fail=1
  fi
  note "$name: $st (passed $(grep -c '^\[       OK \]' "$out/$name.log"), failed $(grep -c '^\[  FAILED  \]' "$out/$name.log"), $((SECONDS - t0)) s)"
  grep -E 'bit for bit|tokens equal|differ|Failure|FAILED' "$out/$name.log" | head -20
}
run_test cuda_graph_test "$(IFS=,; echo "${dirs[*]:-}")" '*'
run_test cuda_model_test "" '*CudaTinyModel.*:CudaEngine.*'

# ---- benchmarks, after the checkpoint writer is done (it would share the GPU)
for i in $(seq 1 100); do
  kill -0 "$wpid" 2>/dev/null || break
  sleep 1
done
kill "$wpid" 2>/dev/null
note "checkpoint writer done ($(elapsed) s)"
bench() {  # label, model dir, context, new, requests, graphs [, prefill chunk]
  local line chunk=${7:-$(($3 * $5))}
  # By default one prefill chunk holds every prompt: all requests decode
  # together from the first token on, so the window is steady batched decode.
  # A smaller chunk staggers them: requests join the decode batch one by one.
  line=$("$build/engine_bench" "$2" --device cuda:0 --context "$3" --new "$4" --requests "$5" \
    --chunk "$chunk" --graphs "$6" 2>>"$out/engine_bench.log" | tail -1)
  echo "{\"model\":\"$1\",\"graphs\":$6,\"chunk\":$chunk,\"run\":${line:-null}}" >>"$out/engine-runs.jsonl"
  echo "$1 ctx $3 bs $5 graphs $6: $line"
}
if [[ -f /tmp/spx-g-llama-mid/.ok ]]; then
  for r in 1 8; do
    for g in 0 1; do bench llama-mid /tmp/spx-g-llama-mid 1024 128 "$r" "$g"; done
  done
  note "engine_bench llama-mid done ($(elapsed) s)"
fi
if [[ $big == 1 ]]; then
  "$build/dense_bench" --model llama-3.1-8b --prefill 2048 --decode 2048 --batch 1,8 --steps 32 \
    --json "$out/dense-llama-8b.json" >"$out/dense_bench.log" 2>&1 &&
    note "dense_bench llama-3.1-8b ok ($(elapsed) s)" || note "dense_bench FAILED"
  if [[ -f /tmp/spx-g-llama-8b/.ok && $(elapsed) -lt 200 ]]; then
    for r in 1 8; do
      for g in 0 1; do bench llama-3.1-8b /tmp/spx-g-llama-8b 2048 64 "$r" "$g"; done
    done
    for g in 0 1; do bench llama-3.1-8b /tmp/spx-g-llama-8b 2048 64 8 "$g" 2048; done
    note "engine_bench llama-3.1-8b done ($(elapsed) s)"
  else
    note "engine_bench llama-3.1-8b skipped (checkpoint not ready or out of time, $(elapsed) s)"
  fi
fi

# ---- compute-sanitizer on the recorded step (tiny fixtures only)
if [[ $(elapsed) -lt 230 ]]; then
  cs="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  SPX_CUDA_MODEL_DIRS="" timeout 40 "$cs" --tool memcheck --error-exitcode 99 "$build/cuda_graph_test" \
    --gtest_filter='CudaGraph.DecodeStep*' >"$out/memcheck_graph.log" 2>&1
  note "memcheck cuda_graph_test (tiny): rc $? $(grep -E 'ERROR SUMMARY' "$out/memcheck_graph.log" | tail -1)"
fi

echo
echo "==================== summary ($(elapsed) s)"
printf '%s\n' "${summary[@]}"
exit $fail
