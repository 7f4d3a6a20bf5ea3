// The small glue kernels of the engine's backend interface: residual add,
// f32 <-> bf16 conversion (the interface speaks f32 on the host side) and
// row gathers. Grid-stride loops; all memory-bound and rarely hot.
#pragma once

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

__global__ void add_forward_kernel(bf16* x, const bf16* y, size_t n) {  // x[n] += y[n]
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    x[i] = __hadd(x[i], y[i]);
}

__global__ void f32_to_bf16_kernel(bf16* out, const float* in, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(in[i]);
}

// f16 -> f32 is exact, so this rounds as f32_to_bf16 does after an f32 load.
__global__ void f16_to_bf16_kernel(bf16* out, const __half* in, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(__half2float(in[i]));
}

__global__ void bf16_to_f32_kernel(float* out, const bf16* in, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = __bfloat162float(in[i]);
}

// out[r] = x[rows[r]]; one block per output row.
__global__ void gather_rows_kernel(bf16* out,             // [n_rows, dim]
                                   const bf16* x,         // [?, dim]
                                   const int32_t* rows,   // [n_rows]
                                   int dim) {
  const size_t src = static_cast<size_t>(rows[blockIdx.x]) * dim;
  const size_t dst = static_cast<size_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) out[dst + i] = x[src + i];
}

inline int grid_for(size_t n) {
  const size_t blocks = (n + 255) / 256;
  return static_cast<int>(blocks < 8192 ? (blocks ? blocks : 1) : 8192);
}

}  // namespace spx::cuda
