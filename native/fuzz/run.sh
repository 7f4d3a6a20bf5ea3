#!/usr/bin/env bash
# Builds the parser fuzzer with clang (libFuzzer + ASan + UBSan) and runs it.
#   native/fuzz/run.sh [SECONDS]     (default 180)
# Needs clang (Debian: apt-get install clang). Not part of the default build.
# Seeds come from the committed tiny fixtures; findings land in
# native/build-fuzz/crashes/ and the script exits non-zero.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/native/build-fuzz"
seconds="${1:-180}"
mkdir -p "$out/corpus" "$out/crashes"

src="$root/native/src"
clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$src" "$here/parse_fuzzer.cc" "$src/util/json.cc" "$src/util/mapped_file.cc" \
  "$src/model/safetensors.cc" "$src/model/config.cc" -o "$out/parse_fuzzer"

# Seeds: mode byte + real files (safetensors headers cut to 4 KB of data).
for dir in "$root"/test/fixtures/tiny-*; do
  name="$(basename "$dir")"
  for st in "$dir"/*.safetensors; do
    [ -f "$st" ] && { printf '\x00'; head -c 8192 "$st"; } > "$out/corpus/$name-$(basename "$st")"
  done
  [ -f "$dir/config.json" ] || continue
  { printf '\x01'; cat "$dir/config.json"; } > "$out/corpus/$name-config"
  { printf '\x02'; cat "$dir/config.json"; } > "$out/corpus/$name-json"
done
python3 - "$out/corpus/small-st" <<'PY'
import json, struct, sys
h = json.dumps({"__metadata__": {"format": "pt"},
                "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}).encode()
open(sys.argv[1], "wb").write(b"\x00" + struct.pack("<Q", len(h)) + h + bytes(22))
PY

cd "$out"
"$out/parse_fuzzer" -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
  -dict="$here/safetensors.dict" -artifact_prefix="$out/crashes/" -print_final_stats=1 \
  "$out/corpus" 2>&1 | tee "$out/fuzz.log" | grep -E "^#[0-9]+.*(pulse|DONE)|ERROR|SUMMARY|stat::" || true
if ls "$out/crashes"/* >/dev/null 2>&1; then
  echo "fuzz: findings in $out/crashes" >&2
  exit 1
fi
echo "fuzz: no findings in ${seconds}s ($(grep -c . "$out/fuzz.log" >/dev/null; grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$out/fuzz.log" | grep -Eo '[0-9]+$') executions)"
