// A decode step's K/V writes in one launch: row r of k / v goes into its own
// request's cache at positions[r]. Positions are read on the device, so a
// recorded step (CUDA graph) writes each replay's new token where it belongs.
#pragma once

#include "cuda/cuda_graph.h"

namespace spx::cuda {

__global__ void kv_write_rows_forward_kernel(const KvRowDst* dst,       // [rows]
                                             const bf16* k,             // [rows, kv_heads, head_dim]
                                             const bf16* v,             // [rows, kv_heads, head_dim]
                                             const int32_t* positions,  // [rows]
                                             int kv_heads, int head_dim) {
  const int r = blockIdx.x;
  const KvRowDst d = dst[r];
  const int pos = positions[r];
  // Out of range cannot happen for validated steps; never write past the cache.
  if (pos < 0 || pos >= d.capacity) return;
  const int n = kv_heads * head_dim;
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const int h = e / head_dim, i = e % head_dim;
    const size_t to = (static_cast<size_t>(h) * d.capacity + pos) * head_dim + i;
    const size_t from = static_cast<size_t>(r) * n + e;
    d.k[to] = k[from];
    d.v[to] = v[from];
  }
}

}  // namespace spx::cuda
