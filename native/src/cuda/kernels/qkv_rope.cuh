// The step between the fused QKV projection and attention, in one pass:
// split the [q | k | v] row, apply Qwen3's per-head q/k RMSNorm when the
// model has one, rotate q and k (rotate_half RoPE from inv_freq), write q
// out and append k and v to each token's cache slot at its position.
// Separately these are four kernels and three extra round trips through
// memory per layer; decode runs them 32-36 times per step.
//
// One warp per head row. With D = 128 a lane holds elements 2l, 2l+1 of the
// first half and their RoPE partners 64 + 2l, 64 + 2l + 1, so the rotation
// needs no shuffles and the norm one warp sum.
#pragma once

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

template <int D>
__global__ void qkv_rope_forward_kernel(bf16* q_out,              // [tokens, q_heads, D]
                                        bf16* k_cache,            // [slots, kv_heads, capacity, D]
                                        bf16* v_cache,            // [slots, kv_heads, capacity, D]
                                        const bf16* qkv,          // [tokens, (q_heads + 2 kv_heads) * D]
                                        const bf16* q_norm,       // [D] or nullptr
                                        const bf16* k_norm,       // [D] or nullptr
                                        const float* inv_freq,    // [D / 2]
                                        const int32_t* positions, // [tokens]
                                        const int32_t* slots,     // [tokens]
                                        int q_heads, int kv_heads, int capacity, float eps) {
  constexpr int kHalf = D / 2;
  constexpr int kPer = kHalf / 32;  // elements per lane in each half (1 or 2)
  static_assert(kPer == 1 || kPer == 2, "D must be 64 or 128");
  const int t = blockIdx.x;
  const int head = blockIdx.y * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  const int heads = q_heads + 2 * kv_heads;
  if (head >= heads) return;
  const bf16* src = qkv + (static_cast<size_t>(t) * heads + head) * D;
  const int pos = positions[t];
  const size_t slot = static_cast<size_t>(slots[t]);

  float a[kPer], b[kPer];  // first-half and second-half elements of this lane
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    a[j] = __bfloat162float(src[lane * kPer + j]);
    b[j] = __bfloat162float(src[kHalf + lane * kPer + j]);
  }

  if (head >= q_heads + kv_heads) {  // v: copy to the cache
    if (pos >= capacity) return;
    bf16* dst = v_cache + ((slot * kv_heads + (head - q_heads - kv_heads)) * capacity + pos) * D;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      dst[lane * kPer + j] = __float2bfloat16(a[j]);
      dst[kHalf + lane * kPer + j] = __float2bfloat16(b[j]);
    }
    return;
  }

  const bool is_q = head < q_heads;
  const bf16* norm = is_q ? q_norm : k_norm;
  if (norm != nullptr) {
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < kPer; ++j) ss += a[j] * a[j] + b[j] * b[j];
    const float r = rsqrtf(warp_sum(ss) / D + eps);
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      // Same rounding path as rmsnorm_forward: bf16(x * r) * w.
      a[j] = __bfloat162float(__hmul(__float2bfloat16(a[j] * r), norm[lane * kPer + j]));
      b[j] = __bfloat162float(__hmul(__float2bfloat16(b[j] * r), norm[kHalf + lane * kPer + j]));
    }
  }
  bf16* dst = is_q ? q_out + (static_cast<size_t>(t) * q_heads + head) * D
                   : (pos < capacity ? k_cache + ((slot * kv_heads + (head - q_heads)) * capacity +
                                                  pos) * D
                                     : nullptr);
  if (dst == nullptr) return;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    float s, c;
    sincosf(static_cast<float>(pos) * inv_freq[lane * kPer + j], &s, &c);
    c = __bfloat162float(__float2bfloat16(c));
    s = __bfloat162float(__float2bfloat16(s));
    dst[lane * kPer + j] = __float2bfloat16(a[j] * c - b[j] * s);
    dst[kHalf + lane * kPer + j] = __float2bfloat16(b[j] * c + a[j] * s);
  }
}

inline cudaError_t qkv_rope_launch(bf16* q_out, bf16* k_cache, bf16* v_cache, const bf16* qkv,
                                   const bf16* q_norm, const bf16* k_norm, const float* inv_freq,
                                   const int32_t* positions, const int32_t* slots, int tokens,
                                   int q_heads, int kv_heads, int head_dim, int capacity,
                                   float eps, cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  const int warps = 8;
  const dim3 grid(tokens, (q_heads + 2 * kv_heads + warps - 1) / warps);
  switch (head_dim) {
    case 64:
      qkv_rope_forward_kernel<64><<<grid, warps * 32, 0, stream>>>(
          q_out, k_cache, v_cache, qkv, q_norm, k_norm, inv_freq, positions, slots, q_heads,
          kv_heads, capacity, eps);
      break;
    case 128:
      qkv_rope_forward_kernel<128><<<grid, warps * 32, 0, stream>>>(
          q_out, k_cache, v_cache, qkv, q_norm, k_norm, inv_freq, positions, slots, q_heads,
          kv_heads, capacity, eps);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace spx::cuda
