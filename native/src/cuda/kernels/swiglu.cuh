// SwiGLU of the fused gate_up projection: out = silu(gate) * up.
// HF computes silu in bf16 and multiplies in bf16; we round silu(gate) to
// bf16 before the multiply to stay on the same rounding path.
#pragma once

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

__device__ __forceinline__ float silu_bf16(float g) {
  return __bfloat162float(__float2bfloat16(g / (1.f + __expf(-g))));
}

// Grid-stride over rows * inter elements; 8 at a time when the sizes allow.
// gate and up rows are `stride` apart: 2 * inter for the fused projection
// (up = gate + inter), inter for separate tensors. out may alias gate.
template <bool VEC>
__global__ void swiglu_forward_kernel(bf16* out,         // [rows, inter]
                                      const bf16* gate,  // [rows, stride]
                                      const bf16* up,    // [rows, stride]
                                      int rows, int inter, int stride) {
  const size_t per = VEC ? 8 : 1;
  const size_t n = static_cast<size_t>(rows) * inter / per;
  for (size_t e = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t row = e * per / inter, col = e * per % inter;
    const bf16* g = gate + row * stride + col;
    const bf16* u = up + row * stride + col;
    if (VEC) {
      const Bf16x8 gv = *reinterpret_cast<const Bf16x8*>(g);
      const Bf16x8 uv = *reinterpret_cast<const Bf16x8*>(u);
      Bf16x8 o;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 gf = __bfloat1622float2(gv.v[j]);
        const float2 uf = __bfloat1622float2(uv.v[j]);
        o.v[j] = __floats2bfloat162_rn(silu_bf16(gf.x) * uf.x, silu_bf16(gf.y) * uf.y);
      }
      *reinterpret_cast<Bf16x8*>(out + row * inter + col) = o;
    } else {
      out[row * inter + col] =
          __float2bfloat16(silu_bf16(__bfloat162float(*g)) * __bfloat162float(*u));
    }
  }
}

inline cudaError_t swiglu_launch(bf16* out, const bf16* gate, const bf16* up, int rows,
                                 int inter, int stride, cudaStream_t stream) {
  if (rows <= 0 || inter <= 0) return cudaSuccess;
  const bool vec = inter % 8 == 0 && stride % 8 == 0 &&
                   reinterpret_cast<uintptr_t>(up) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(gate) % 16 == 0;
  const size_t n = static_cast<size_t>(rows) * inter / (vec ? 8 : 1);
  const int threads = 256;
  const size_t blocks = (n + threads - 1) / threads;
  const int grid = static_cast<int>(blocks < 4096 ? blocks : 4096);
  if (vec)
    swiglu_forward_kernel<true><<<grid, threads, 0, stream>>>(out, gate, up, rows, inter, stride);
  else
    swiglu_forward_kernel<false><<<grid, threads, 0, stream>>>(out, gate, up, rows, inter, stride);
  return cudaGetLastError();
}

}  // namespace spx::cuda
