// Appends each token's k/v to the contiguous cache of its request slot.
// Cache layout [slots, kv_heads, capacity, head_dim] keeps one KV head's
// tokens contiguous, which is what decode attention streams through.
#pragma once

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

// One block per token; threads copy its kv_heads * head_dim elements of k and v.
__global__ void kv_append_forward_kernel(bf16* k_cache,             // [slots, kv_heads, capacity, head_dim]
                                         bf16* v_cache,             // [slots, kv_heads, capacity, head_dim]
                                         const bf16* k,             // [tokens, kv_heads, head_dim]
                                         const bf16* v,             // [tokens, kv_heads, head_dim]
                                         const int32_t* slots,      // [tokens]
                                         const int32_t* positions,  // [tokens]
                                         int kv_heads, int head_dim, int capacity) {
  const int t = blockIdx.x;
  const int pos = positions[t];
  if (pos < 0 || pos >= capacity) return;  // the backend checks capacity before this
  const size_t slot = static_cast<size_t>(slots[t]);
  const int n = kv_heads * head_dim;
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const int h = e / head_dim, d = e % head_dim;
    const size_t dst = ((slot * kv_heads + h) * capacity + pos) * head_dim + d;
    const size_t src = static_cast<size_t>(t) * n + e;
    k_cache[dst] = k[src];
    v_cache[dst] = v[src];
  }
}

inline cudaError_t kv_append_launch(bf16* k_cache, bf16* v_cache, const bf16* k, const bf16* v,
                                    const int32_t* slots, const int32_t* positions, int tokens,
                                    int kv_heads, int head_dim, int capacity,
                                    cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  kv_append_forward_kernel<<<tokens, 256, 0, stream>>>(k_cache, v_cache, k, v, slots, positions,
                                                       kv_heads, head_dim, capacity);
  return cudaGetLastError();
}

// One request's chunk into its own cache at positions start..start+tokens-1.
__global__ void kv_write_forward_kernel(bf16* k_cache,   // [kv_heads, capacity, head_dim]
                                        bf16* v_cache,   // [kv_heads, capacity, head_dim]
                                        const bf16* k,   // [tokens, kv_heads, head_dim]
                                        const bf16* v,   // [tokens, kv_heads, head_dim]
                                        int start, int kv_heads, int head_dim, int capacity) {
  const int t = blockIdx.x;
  const int n = kv_heads * head_dim;
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const int h = e / head_dim, d = e % head_dim;
    const size_t dst = (static_cast<size_t>(h) * capacity + start + t) * head_dim + d;
    const size_t src = static_cast<size_t>(t) * n + e;
    k_cache[dst] = k[src];
    v_cache[dst] = v[src];
  }
}

inline cudaError_t kv_write_launch(bf16* k_cache, bf16* v_cache, const bf16* k, const bf16* v,
                                   int start, int tokens, int kv_heads, int head_dim,
                                   int capacity, cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  if (start < 0 || start + tokens > capacity) return cudaErrorInvalidValue;
  kv_write_forward_kernel<<<tokens, 256, 0, stream>>>(k_cache, v_cache, k, v, start, kv_heads,
                                                      head_dim, capacity);
  return cudaGetLastError();
}

}  // namespace spx::cuda
