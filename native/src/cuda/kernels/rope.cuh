// Rotary position embedding, HF "rotate_half" layout: element i of a head
// pairs with element i + head_dim/2. Frequencies come precomputed (with any
// llama3 / linear scaling folded in, see rope_freq.h); the angle is
// computed in f32 per element and cos/sin are rounded to bf16 first, as HF
// does, so long positions match the reference.
#pragma once

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

// One block per token; threads walk the (head, i) pairs of q then k.
__global__ void rope_forward_kernel(bf16* q,                  // [tokens, q_heads, head_dim]
                                    bf16* k,                  // [tokens, kv_heads, head_dim]
                                    const int32_t* positions, // [tokens]
                                    const float* inv_freq,    // [head_dim / 2]
                                    int q_heads, int kv_heads, int head_dim) {
  const int t = blockIdx.x;
  const int half = head_dim / 2;
  const float pos = static_cast<float>(positions[t]);
  const int pairs = (q_heads + kv_heads) * half;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int head = p / half, i = p % half;
    bf16* x = head < q_heads
                  ? q + (static_cast<size_t>(t) * q_heads + head) * head_dim
                  : k + (static_cast<size_t>(t) * kv_heads + (head - q_heads)) * head_dim;
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    c = __bfloat162float(__float2bfloat16(c));
    s = __bfloat162float(__float2bfloat16(s));
    const float x1 = __bfloat162float(x[i]), x2 = __bfloat162float(x[i + half]);
    x[i] = __float2bfloat16(x1 * c - x2 * s);
    x[i + half] = __float2bfloat16(x2 * c + x1 * s);
  }
}

inline cudaError_t rope_launch(bf16* q, bf16* k, const int32_t* positions, const float* inv_freq,
                               int tokens, int q_heads, int kv_heads, int head_dim,
                               cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  if (head_dim % 2) return cudaErrorInvalidValue;
  rope_forward_kernel<<<tokens, 256, 0, stream>>>(q, k, positions, inv_freq, q_heads, kv_heads,
                                                  head_dim);
  return cudaGetLastError();
}

// The same rotation with precomputed bf16 cos/sin tables per token (the
// engine backend interface computes the tables on the host).
__global__ void rope_table_forward_kernel(bf16* x,            // [tokens, heads, head_dim]
                                          const bf16* cos_t,  // [tokens, head_dim / 2]
                                          const bf16* sin_t,  // [tokens, head_dim / 2]
                                          int heads, int head_dim) {
  const int t = blockIdx.x;
  const int half = head_dim / 2;
  for (int p = threadIdx.x; p < heads * half; p += blockDim.x) {
    const int head = p / half, i = p % half;
    bf16* r = x + (static_cast<size_t>(t) * heads + head) * head_dim;
    const float c = __bfloat162float(cos_t[static_cast<size_t>(t) * half + i]);
    const float s = __bfloat162float(sin_t[static_cast<size_t>(t) * half + i]);
    const float x1 = __bfloat162float(r[i]), x2 = __bfloat162float(r[i + half]);
    r[i] = __float2bfloat16(x1 * c - x2 * s);
    r[i + half] = __float2bfloat16(x2 * c + x1 * s);
  }
}

inline cudaError_t rope_table_launch(bf16* x, const bf16* cos_t, const bf16* sin_t, int tokens,
                                     int heads, int head_dim, cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  rope_table_forward_kernel<<<tokens, 256, 0, stream>>>(x, cos_t, sin_t, heads, head_dim);
  return cudaGetLastError();
}

}  // namespace spx::cuda
