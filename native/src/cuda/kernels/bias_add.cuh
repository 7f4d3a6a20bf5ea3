// Bias add for projections that carry one (Qwen2-style q/k/v biases). Kept
// as its own pass: cuBLASLt's bias epilogue would fuse it, but only models
// with biases pay this, and they are not the ones we benchmark.
#pragma once

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

__global__ void bias_add_forward_kernel(bf16* x,           // [rows, dim]
                                        const bf16* bias,  // [dim]
                                        int rows, int dim) {
  const size_t n = static_cast<size_t>(rows) * dim;
  for (size_t e = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<size_t>(gridDim.x) * blockDim.x)
    x[e] = __hadd(x[e], bias[e % dim]);
}

inline cudaError_t bias_add_launch(bf16* x, const bf16* bias, int rows, int dim,
                                   cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return cudaSuccess;
  const size_t n = static_cast<size_t>(rows) * dim;
  const size_t blocks = (n + 255) / 256;
  bias_add_forward_kernel<<<static_cast<int>(blocks < 4096 ? blocks : 4096), 256, 0, stream>>>(
      x, bias, rows, dim);
  return cudaGetLastError();
}

}  // namespace spx::cuda
