// RMSNorm, optionally fused with the residual add, and the per-head q/k norm.
//
// Memory-bound: one read of the row (two with the residual) and one write.
// Rows of up to 1024 elements go one per warp (decode batches and q/k heads
// are many short rows); longer rows one per block. Rows whose length is a
// multiple of 8 use 16-byte accesses, others (odd test sizes) scalar ones.
#pragma once

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

// Sum of squares of one row's slice handled by this thread; with ADD, also
// writes residual = residual + in (bf16) and reads the rounded sum, as HF does.
template <bool ADD, bool VEC>
__device__ __forceinline__ float rmsnorm_row_sumsq(bf16* res_row, const bf16* in_row, int dim,
                                                   int first, int stride) {
  float ss = 0.f;
  if (VEC) {
    for (int i = first * 8; i < dim; i += stride * 8) {
      Bf16x8 x = *reinterpret_cast<const Bf16x8*>(in_row + i);
      if (ADD) {
        Bf16x8 r = *reinterpret_cast<const Bf16x8*>(res_row + i);
#pragma unroll
        for (int j = 0; j < 4; ++j) x.v[j] = __hadd2(r.v[j], x.v[j]);
        *reinterpret_cast<Bf16x8*>(res_row + i) = x;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __bfloat1622float2(x.v[j]);
        ss += f.x * f.x + f.y * f.y;
      }
    }
  } else {
    for (int i = first; i < dim; i += stride) {
      bf16 x = in_row[i];
      if (ADD) {
        x = __hadd(res_row[i], x);
        res_row[i] = x;
      }
      const float f = __bfloat162float(x);
      ss += f * f;
    }
  }
  return ss;
}

template <bool VEC>
__device__ __forceinline__ void rmsnorm_row_write(bf16* out_row, const bf16* src_row,
                                                  const bf16* weight, int dim, float r,
                                                  int first, int stride) {
  if (VEC) {
    for (int i = first * 8; i < dim; i += stride * 8) {
      const Bf16x8 x = *reinterpret_cast<const Bf16x8*>(src_row + i);
      const Bf16x8 w = *reinterpret_cast<const Bf16x8*>(weight + i);
      Bf16x8 y;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __bfloat1622float2(x.v[j]);
        const __nv_bfloat162 n = __floats2bfloat162_rn(f.x * r, f.y * r);
        y.v[j] = __hmul2(n, w.v[j]);
      }
      *reinterpret_cast<Bf16x8*>(out_row + i) = y;
    }
  } else {
    for (int i = first; i < dim; i += stride) {
      const bf16 n = __float2bfloat16(__bfloat162float(src_row[i]) * r);
      out_row[i] = __hmul(n, weight[i]);
    }
  }
}

// One warp per row. in may alias out (head norm in place).
template <bool ADD, bool VEC>
__global__ void rmsnorm_warp_forward_kernel(bf16* out,           // [rows, dim]
                                            bf16* residual,      // [rows, dim] if ADD
                                            const bf16* in,      // [rows, dim]
                                            const bf16* weight,  // [dim]
                                            int rows, int dim, float eps) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x & 31;
  const size_t off = static_cast<size_t>(row) * dim;
  const float ss = warp_sum(rmsnorm_row_sumsq<ADD, VEC>(residual + (ADD ? off : 0), in + off,
                                                        dim, lane, 32));
  const float r = rsqrtf(ss / dim + eps);
  rmsnorm_row_write<VEC>(out + off, ADD ? residual + off : in + off, weight, dim, r, lane, 32);
}

// One block per row.
template <bool ADD, bool VEC>
__global__ void rmsnorm_block_forward_kernel(bf16* out, bf16* residual, const bf16* in,
                                             const bf16* weight, int rows, int dim, float eps) {
  __shared__ float scratch[32];
  const size_t off = static_cast<size_t>(blockIdx.x) * dim;
  const float ss = block_sum(rmsnorm_row_sumsq<ADD, VEC>(residual + (ADD ? off : 0), in + off,
                                                         dim, threadIdx.x, blockDim.x),
                             scratch);
  const float r = rsqrtf(ss / dim + eps);
  rmsnorm_row_write<VEC>(out + off, ADD ? residual + off : in + off, weight, dim, r,
                         threadIdx.x, blockDim.x);
}

template <bool ADD>
inline cudaError_t rmsnorm_launch(bf16* out, bf16* residual, const bf16* in, const bf16* weight,
                                  int rows, int dim, float eps, cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return cudaSuccess;
  const bool vec = dim % 8 == 0;
  if (dim <= 1024) {
    const int warps = 4;
    const dim3 grid((rows + warps - 1) / warps);
    if (vec)
      rmsnorm_warp_forward_kernel<ADD, true><<<grid, warps * 32, 0, stream>>>(out, residual, in,
                                                                            weight, rows, dim, eps);
    else
      rmsnorm_warp_forward_kernel<ADD, false><<<grid, warps * 32, 0, stream>>>(
          out, residual, in, weight, rows, dim, eps);
  } else {
    const int per = vec ? 8 : 1;
    int threads = (dim / per + 31) / 32 * 32;
    threads = threads > 512 ? 512 : threads;
    if (vec)
      rmsnorm_block_forward_kernel<ADD, true><<<rows, threads, 0, stream>>>(out, residual, in,
                                                                          weight, rows, dim, eps);
    else
      rmsnorm_block_forward_kernel<ADD, false><<<rows, threads, 0, stream>>>(
          out, residual, in, weight, rows, dim, eps);
  }
  return cudaGetLastError();
}

}  // namespace spx::cuda
