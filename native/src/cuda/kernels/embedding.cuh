// Token embedding gather: one block per token, one row copy each.
#pragma once

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

__global__ void embedding_forward_kernel(bf16* out,           // [tokens, dim]
                                         const bf16* table,   // [vocab, dim]
                                         const int32_t* ids,  // [tokens]
                                         int dim, int vocab) {
  const int t = blockIdx.x;
  const int id = ids[t];
  bf16* o = out + static_cast<size_t>(t) * dim;
  // Out-of-range ids are rejected before they get here; a zero row keeps a
  // bad id from reading outside the table if one slips through.
  const bool ok = id >= 0 && id < vocab;
  const bf16* r = table + static_cast<size_t>(ok ? id : 0) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = ok ? r[i] : __float2bfloat16(0.f);
}

inline cudaError_t embedding_launch(bf16* out, const bf16* table, const int32_t* ids, int tokens,
                                    int dim, int vocab, cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  embedding_forward_kernel<<<tokens, 256, 0, stream>>>(out, table, ids, dim, vocab);
  return cudaGetLastError();
}

}  // namespace spx::cuda
