// Greedy tokens on the GPU (issue 6): one block per logits row, each thread
// over 16-byte vectors of the row, then a warp-shuffle and a cross-warp
// reduction. Exactly sampling::argmax's rules on the bf16 values (the host
// compares the same values widened to f32): the first index of the largest,
// -0 == +0, NaN never wins, a NaN at element 0 gives 0. The pair comparison
// (value, then lower index) makes the result independent of which thread saw
// which element, so the vector and scalar paths agree.
#pragma once

#include <climits>

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

constexpr int kArgmaxThreads = 1024;

// (v, i) replaces (bv, bi) when larger, or equal at a lower index. NaN
// compares false both ways, so it never enters; -inf enters over the
// "nothing yet" pair (-inf, INT_MAX) by index.
__device__ __forceinline__ void argmax_take(float v, int i, float& bv, int& bi) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

__device__ __forceinline__ void argmax_warp(float& bv, int& bi) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    argmax_take(ov, oi, bv, bi);
  }
}

__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_rows_forward_kernel(int32_t* ids,       // [rows]
                               const bf16* logits,  // [rows, vocab]
                               int vocab) {
  __shared__ float warp_val[32];
  __shared__ int warp_idx[32];
  const int row = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const bf16* x = logits + static_cast<size_t>(row) * vocab;
  float bv = -INFINITY;
  int bi = INT_MAX;  // nothing yet
  int tail = 0;      // first element the scalar loop covers
  if ((reinterpret_cast<uintptr_t>(x) & 15) == 0) {
    const int nvec = vocab / 8;
    const Bf16x8* xv = reinterpret_cast<const Bf16x8*>(x);
    for (int j = tid; j < nvec; j += blockDim.x) {
      const Bf16x8 p = xv[j];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 f = __bfloat1622float2(p.v[k]);
        argmax_take(f.x, 8 * j + 2 * k, bv, bi);
        argmax_take(f.y, 8 * j + 2 * k + 1, bv, bi);
      }
    }
    tail = nvec * 8;
  }
  for (int i = tail + tid; i < vocab; i += blockDim.x) argmax_take(__bfloat162float(x[i]), i, bv, bi);

  argmax_warp(bv, bi);
  if (lane == 0) {
    warp_val[warp] = bv;
    warp_idx[warp] = bi;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = (blockDim.x + 31) >> 5;
    bv = lane < warps ? warp_val[lane] : -INFINITY;
    bi = lane < warps ? warp_idx[lane] : INT_MAX;
    argmax_warp(bv, bi);
    if (lane == 0) {
      // The host's argmax starts from element 0: a NaN there is never beaten.
      const bool nan0 = vocab > 0 && isnan(__bfloat162float(x[0]));
      ids[row] = nan0 || bi == INT_MAX ? 0 : bi;
    }
  }
}

}  // namespace spx::cuda
