// Sparse flash-decoding: the tensor-core decode kernel of
// decode_attention_mma.cuh, reading the cache rows a selection lists instead
// of positions 0..len-1. The gather happens in the kernel's own cp.async
// tile loads (one 256-byte row per token and head at d = 128), so a
// device-resident layer attends to its selection without any copy, and the
// splits, workspace and merge are the dense path's.
#pragma once

#include "cuda/kernels/decode_attention_mma.cuh"

namespace spx::cuda {

// Rows of request b, KV head hk: selection[b, hk, 0..counts[b]).
struct SelectedRows {
  static constexpr bool kGather = true;
  const int32_t* lengths;    // [batch] counts: rows per request (<= budget)
  const int32_t* selection;  // [batch, kv_heads, budget] cache positions
  int kv_heads;
  int budget;
  __device__ __forceinline__ int count(int b) const { return min(lengths[b], budget); }
  __device__ __forceinline__ int position(int b, int hk, int i) const {
    // A -1 inside the count is a caller bug; reading row 0 keeps it in bounds.
    const int32_t p = selection[(static_cast<int64_t>(b) * kv_heads + hk) * budget + i];
    return p > 0 ? p : 0;
  }
};

template <int D>
inline cudaError_t sparse_decode_attention_launch_d(int group, bf16* out, const bf16* q,
                                                    const DecodeSeq* seqs,
                                                    const int32_t* selection,
                                                    const int32_t* counts, int batch,
                                                    int kv_heads, int budget, float scale,
                                                    int split_tokens, float* partial_o,
                                                    float* partial_ml, int max_splits,
                                                    cudaStream_t stream) {
  const SelectedRows rows{counts, selection, kv_heads, budget};
  const float scale_log2 = scale * 1.4426950408889634f;
  return dispatch_group(group, [&](auto g) {
    constexpr int G = decltype(g)::value;
    const cudaError_t e =
        decode_attention_mma_launch<D, G>(q, seqs, rows, batch, kv_heads, scale_log2,
                                          split_tokens, partial_o, partial_ml, max_splits, stream);
    if (e != cudaSuccess) return e;
    decode_attention_merge_kernel<<<dim3(kv_heads * G, batch), D, 0, stream>>>(
        out, partial_o, partial_ml, counts, D, split_tokens, max_splits);
    return cudaGetLastError();
  });
}

}  // namespace spx::cuda
