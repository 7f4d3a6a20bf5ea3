#!/usr/bin/env bash
# Checks the pipelined wgmma prefill kernel (v3p) on the H200: build, prefill_bench v1/v2/v3/v3p, attention tests with v3p,
# dense_bench v3p and v3, cuda_model_test (llama-mid) with v3p and v3 if time allows.
# run(command="bash tools/gpu_prefill_check.sh", carry=[".carry/googletest"]); about 60-70 s plus the start.
set -uo pipefail
out="${OUT:-/tmp/out}"; mkdir -p "$out"
export PATH="/usr/local/cuda/bin:$PATH"
b=native/build-t6c; t0=$SECONDS
( python3 tools/make_random_weights.py --shape llama-mid --out /tmp/spx-llama-mid --reference >"$out/weights.log" 2>&1 ) &
wpid=$!
cmake -S native -B $b -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" \
  -DSPX_GTEST_SRC="$PWD/.carry/googletest" >"$out/build.log" 2>&1 &&
ninja -C $b -j16 cuda_attention_test prefill_bench dense_bench cuda_model_test >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; echo BUILD FAILED; exit 1; }
echo "build $((SECONDS-t0)) s"
SPX_PREFILL_KERNEL=v3p timeout 30 $b/prefill_bench --tokens 2048,16384,32768 --chunk 8192 >"$out/prefill_bench.txt" 2>&1; echo "bench rc=$?"
grep -E "v3|32768 +v2" "$out/prefill_bench.txt"
t1=$SECONDS
SPX_PREFILL_KERNEL=v3p timeout 40 $b/cuda_attention_test --gtest_filter='*Prefill*' >"$out/attn_test.txt" 2>&1; echo "attn test rc=$? $((SECONDS-t1)) s"
grep -E "^\[  (PASSED|FAILED) |FAILED|mismatch|Failure" "$out/attn_test.txt" | head -12; grep -c "v3p" "$out/attn_test.txt"
for k in v3p v3; do
  SPX_PREFILL_KERNEL=$k timeout 25 $b/dense_bench --prefill 16384,32768 --decode "" --batch 1 >"$out/dense_$k.txt" 2>&1
  echo "dense $k rc=$?"; grep -E "^prefill" "$out/dense_$k.txt"
done
if (( SECONDS - t0 < 70 )); then
  wait $wpid; echo "weights rc=$? $((SECONDS-t0)) s"
  for k in v3p v3; do
    SPX_CUDA_MODEL_DIRS=/tmp/spx-llama-mid SPX_PREFILL_KERNEL=$k timeout 30 $b/cuda_model_test >"$out/model_$k.txt" 2>&1
    echo "model test $k rc=$?"; grep -E "^\[  (PASSED|FAILED) |FAILED|SKIPPED" "$out/model_$k.txt" | head -8
  done
else echo "skip model test (time)"; kill $wpid 2>/dev/null; fi
echo "total $((SECONDS-t0)) s"
