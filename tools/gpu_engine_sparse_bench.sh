#!/usr/bin/env bash
# One GPU-machine call for the engine's SpeContext decode step at the
# Llama-3.1-8B shape (issue 6), beside the benchmark path's step in the same
# call: builds engine_bench and specontext_bench, makes the random 8B
# checkpoint (in the background while building), then runs
#   - engine_bench on cuda:0, dense and --budget 2048 (self-derived head,
#     --dlm-layers 1: the target's layer 0 scores, every layer sparse; a
#     random checkpoint has no distilled head), prompts of 16k and 32k, 8
#     requests (and 16 at 32k when time allows), one sparse run with
#     SPX_SPARSE_GRAPHS=0 and one with the recommended head (time allowing);
#   - specontext_bench (bench_model.cuh's forward with the engine's kernels,
#     random EAGLE-like head) at the same contexts and batches: its dense
#     ("ours-dense") and SpeContext rows, every layer on the device.
# Every engine setting runs twice: greedy tokens on the device (the default)
# and with SPX_DEVICE_ARGMAX=0 (logits downloaded, host samplers).
# Raw JSON lines, the results JSON, a summary table and logs.tgz go to OUT.
#   SPX_COMMIT=<sha> tools/gpu_engine_sparse_bench.sh OUT
# SPX_BENCH_BUILD: the build directory (default native/build-gpu-h3; another
# script's build of the same tree saves the rebuild); SPX_BENCH_SECONDS: the
# seconds this script may take (default 570: a call of its own).
# Then, on the development machine:
#   python3 bench/engine/sparse_report.py --dir OUT --commit <sha> \
#       --json bench/results/cuda-engine-sparse-h200.json
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
final="${1:?out dir}"
mkdir -p "$final"
# Everything is written here; at most 8 files go to OUT at the end (the
# device machine returns no more): the results, the table and logs.tgz.
out="$(mktemp -d)"
export PATH="/usr/local/cuda/bin:$PATH"
commit="${SPX_COMMIT:-unknown}"
t_start=$SECONDS
budget_s="${SPX_BENCH_SECONDS:-570}"
summary=()
note() { summary+=("$*"); echo "== $*" | tee -a "$out/summary.txt"; }
elapsed() { echo $((SECONDS - t_start)); }
left() { echo $((budget_s - SECONDS + t_start)); }
finish() {
  echo
  echo "==================== summary ($(elapsed) s, commit $commit)"
  printf '%s\n' "${summary[@]}"
  [[ -f "$out/table.txt" ]] && cat "$out/table.txt"
  tar czf "$final/logs.tgz" -C "$out" . 2>/dev/null
  for f in summary.txt table.txt engine-runs.jsonl bench-path-b8.json bench-path-b16.json \
    cuda-engine-sparse-h200.json; do
    [[ -f "$out/$f" ]] && cp "$out/$f" "$final/"
  done
}
echo "$commit" >"$out/commit.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt"
grep -E 'MemTotal|MemAvailable' /proc/meminfo >"$out/host-mem.txt"
nproc >"$out/nproc.txt"

# ---- the 8B checkpoint, in the background while building (kept when an
# earlier script of the same call made it: ckpt/.ok)
ckpt=/tmp/spx-h3-llama-8b
wpid=""
if [[ ! -f "$ckpt/.ok" ]]; then
  (
    timeout 240 python3 "$root/tools/make_random_weights.py" --shape llama-3.1-8b --out "$ckpt" \
      >"$out/weights.log" 2>&1 && touch "$ckpt/.ok"
  ) &
  wpid=$!
fi

# ---- build (tests off: only the two benchmarks and what they link)
build="${SPX_BENCH_BUILD:-$root/native/build-gpu-h3}"
gtest_arg=()
[[ -d "$root/.carry/googletest" ]] && gtest_arg=(-DSPX_GTEST_SRC="$root/.carry/googletest")
if timeout 300 cmake -S "$root/native" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DSPX_BUILD_TESTS=OFF "${gtest_arg[@]}" \
    >"$out/build.log" 2>&1 &&
  timeout 300 ninja -C "$build" -j"$(nproc)" engine_bench specontext_bench >>"$out/build.log" 2>&1; then
  note "build ok ($(elapsed) s)"
else
  tail -40 "$out/build.log"
  note "BUILD FAILED ($(elapsed) s)"
  [[ -n $wpid ]] && kill "$wpid" 2>/dev/null
  finish
  exit 1
fi

# Everything below shares the GPU: wait for the checkpoint writer first.
[[ -n $wpid ]] && wait "$wpid"
if [[ -f "$ckpt/.ok" ]]; then
  note "checkpoint ready ($(elapsed) s, $(du -sh "$ckpt" | cut -f1))"
else
  tail -20 "$out/weights.log"
  note "CHECKPOINT FAILED ($(elapsed) s): engine runs skipped"
fi

# ---- the benchmark path: dense and SpeContext rows at the common batch,
# positions at the prompt's end and 64 tokens on (every layer on the device).
bench_path() {  # batch, settings, label
  local t0=$SECONDS limit=$(left)
  ((limit > 200)) && limit=200
  timeout "$limit" "$build/specontext_bench" --settings "$2" --common "$1" --search none --skip-offload \
    --positions-short 2 --json "$out/bench-path-$3.json" >"$out/bench-path-$3.log" 2>&1
  note "specontext_bench $3 (batch $1, $2): rc $? ($((SECONDS - t0)) s)"
}

# ---- the engine: one process per run (load, prefill, decode)
fail=0
engine() {  # label, context, requests, new, budget, dlm layers (0: recommended head), extra env...
  local label=$1 ctx=$2 req=$3 new=$4 budget=$5 dlm=$6 t0=$SECONDS line rc limit
  shift 6
  local args=("$ckpt" --device cuda:0 --context "$ctx" --requests "$req" --new "$new" --chunk "$ctx")
  [[ $budget -gt 0 ]] && args+=(--budget "$budget")
  [[ $budget -gt 0 && $dlm -gt 0 ]] && args+=(--dlm-layers "$dlm")
  # Never past the call's 10 minutes: what is left, less the report's share.
  limit=$(left)
  ((limit > 240)) && limit=240
  if ((limit < 30)); then
    note "engine $label skipped (out of time, $(elapsed) s)"
    return
  fi
  env "$@" timeout "$limit" "$build/engine_bench" "${args[@]}" >"$out/engine-$label.out" \
    2>"$out/engine-$label.log"
  rc=$?
  line=$(tail -1 "$out/engine-$label.out")
  [[ -z "$line" || "${line:0:1}" != "{" ]] && line=null && fail=1
  echo "{\"label\":\"$label\",\"env\":\"$*\",\"commit\":\"$commit\",\"run\":$line}" >>"$out/engine-runs.jsonl"
  note "engine $label: rc $rc ($((SECONDS - t0)) s) $(echo "$line" | head -c 700)"
}
# Each setting with the device argmax (default), then with the host samplers.
both() {  # label, then engine()'s other arguments
  local label=$1
  shift
  engine "$label" "$@"
  engine "$label-hostargmax" "$@" SPX_DEVICE_ARGMAX=0
}
if [[ -f "$ckpt/.ok" ]]; then
  both dense-16k-8 16384 8 48 0 0
  both sparse-16k-8 16384 8 48 2048 1
  both dense-32k-8 32768 8 48 0 0
  both sparse-32k-8 32768 8 48 2048 1
  if [[ $(left) -gt 130 ]]; then
    both dense-32k-16 32768 16 64 0 0
    both sparse-32k-16 32768 16 64 2048 1
  else
    note "engine batch 16 skipped ($(elapsed) s)"
  fi
fi
# The benchmark path after the engine runs (the engine's A/B first when time is short).
if [[ $(left) -gt 60 ]]; then
  bench_path 8 16384:64,32768:64 b8
else
  note "specontext_bench b8 skipped ($(elapsed) s)"
fi
if [[ $(left) -gt 50 ]]; then
  bench_path 16 32768:64 b16
else
  note "specontext_bench b16 skipped ($(elapsed) s)"
fi
if [[ -f "$ckpt/.ok" ]]; then
  if [[ $(left) -gt 100 ]]; then
    engine sparse-32k-8-nographs 32768 8 48 2048 1 SPX_SPARSE_GRAPHS=0
  else
    note "sparse-32k-8-nographs skipped ($(elapsed) s)"
  fi
  # The product's default head for this shape (self-derived, first 8 layers:
  # layers 0-6 dense), when time is left.
  if [[ $(left) -gt 80 ]]; then
    engine sparse-32k-8-default-head 32768 8 48 2048 0
  else
    note "sparse-32k-8-default-head skipped ($(elapsed) s)"
  fi
fi

# ---- the table (the report script also writes the results JSON)
python3 "$root/bench/engine/sparse_report.py" --dir "$out" --commit "$commit" \
  --device "$(cut -d, -f1 "$out/gpu.txt" | head -1)" --json "$out/cuda-engine-sparse-h200.json" \
  >"$out/table.txt" 2>"$out/report.log" || note "report FAILED: $(tail -3 "$out/report.log")"
finish
exit $fail
