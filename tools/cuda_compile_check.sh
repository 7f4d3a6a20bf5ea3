#!/usr/bin/env bash
# Compiles every native/src/**/*.cu (and bench/cuda/*.cu) for sm_90a (as
# native/cuda.cmake builds spx_cuda; sm_90a assembles the wgmma kernels) without a
# GPU: the CI check that the CUDA backend still builds. Compile only; exits
# non-zero on the first error.
#
#   tools/cuda_compile_check.sh [path/to/nvcc]
# Default nvcc: $NVCC, else the PyPI wheel venv .venv-cuda (see
# infra/requirements-cuda.txt), else nvcc on PATH.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
nvcc="${1:-${NVCC:-}}"
if [[ -z "$nvcc" ]]; then
  wheel_nvcc="$(ls "$root"/.venv-cuda/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -1 || true)"
  nvcc="${wheel_nvcc:-$(command -v nvcc || true)}"
fi
if [[ -z "$nvcc" || ! -x "$nvcc" ]]; then
  echo "cuda_compile_check: no nvcc (pass a path, set NVCC, or pip install -r infra/requirements-cuda.txt into .venv-cuda)" >&2
  exit 2
fi
# The wheels put headers and libraries beside bin/ (nvidia/cu13/include).
cuda_root="$(cd "$(dirname "$nvcc")/.." && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
mapfile -t sources < <(cd "$root" && find native/src bench/cuda -name '*.cu' 2>/dev/null | sort)
if [[ ${#sources[@]} -eq 0 ]]; then
  echo "cuda_compile_check: no .cu sources"
  exit 0
fi
"$nvcc" --version | tail -1
fail=0
for src in "${sources[@]}"; do
  obj="$out/$(echo "$src" | tr '/' '_').o"
  if "$nvcc" -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90 \
      --expt-relaxed-constexpr -Xptxas=-warn-spills -I"$root/native/src" -I"$cuda_root/include" \
      -DSPX_HAVE_CUDA=1 -DSPX_CUDA_SM90A=1 -c "$root/$src" -o "$obj" 2>"$out/err.txt"; then
    echo "ok    $src"
    grep -i -E "warning|spill" "$out/err.txt" | grep -v " 0 bytes spill" || true
  else
    echo "FAIL  $src"
    cat "$out/err.txt"
    fail=1
  fi
done
exit $fail
