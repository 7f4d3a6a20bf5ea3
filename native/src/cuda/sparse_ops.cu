// Instantiates the SpeContext kernels (kernels/{retrieval_scores,
// topk_select,sparse_decode_attention,elastic_gather,slot_map}.cuh) behind the plain
// C++ entry points of sparse_ops.h. Arguments are checked here, so a bad
// shape is a cudaErrorInvalidValue rather than a launch out of bounds.
#include "cuda/sparse_ops.h"

#include <algorithm>

#include "cuda/kernels/elastic_gather.cuh"
#include "cuda/kernels/retrieval_scores.cuh"
#include "cuda/kernels/slot_map.cuh"
#include "cuda/kernels/sparse_decode_attention.cuh"
#include "cuda/kernels/topk_select.cuh"

namespace spx::cuda {

// Calls f(std::integral_constant<int, D>{}) for the head sizes the kernels
// are built for: the real models' 64 and 128, the tiny fixtures' 16 and 32.
template <typename F>
static cudaError_t dispatch_head_dim(int head_dim, F&& f) {
  switch (head_dim) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t retrieval_scores_forward(float* scores, float* logits, const bf16* q,
                                     const DecodeSeq* seqs, const int32_t* lengths, int batch,
                                     int q_heads, int kv_heads, int head_dim, float scale,
                                     bool reduce_max, int64_t stride, cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  if (kv_heads <= 0 || q_heads % kv_heads || stride <= 0 || batch > 65535 || kv_heads > 65535)
    return cudaErrorInvalidValue;
  return dispatch_head_dim(head_dim, [&](auto d) {
    return retrieval_scores_launch_d<decltype(d)::value>(q_heads / kv_heads, scores, logits, q,
                                                         seqs, lengths, batch, kv_heads, scale,
                                                         reduce_max, stride, stream);
  });
}

cudaError_t topk_select_forward(int32_t* selection, int32_t* counts, float* mass,
                                const float* scores, const int32_t* lengths, int batch,
                                int kv_heads, int64_t stride, int budget, int n_sink,
                                int n_recent, cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  if (kv_heads <= 0 || budget <= 0 || stride <= 0 || batch > 65535 || kv_heads > 65535)
    return cudaErrorInvalidValue;
  return topk_select_launch(selection, counts, mass, scores, lengths, batch, kv_heads, stride,
                            budget, n_sink, n_recent, stream);
}

cudaError_t sparse_decode_attention_forward(bf16* out, const bf16* q, const DecodeSeq* seqs,
                                            const int32_t* selection, const int32_t* counts,
                                            int batch, int q_heads, int kv_heads, int head_dim,
                                            int budget, float scale, int split_tokens,
                                            DecodeAttentionWorkspace ws, cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  if (kv_heads <= 0 || q_heads % kv_heads || budget <= 0 || split_tokens <= 0 ||
      ws.max_splits <= 0 || static_cast<int64_t>(ws.max_splits) * split_tokens < budget)
    return cudaErrorInvalidValue;
  return dispatch_head_dim(head_dim, [&](auto d) {
    return sparse_decode_attention_launch_d<decltype(d)::value>(
        q_heads / kv_heads, out, q, seqs, selection, counts, batch, kv_heads, budget, scale,
        split_tokens, ws.partial_o, ws.partial_ml, ws.max_splits, stream);
  });
}

cudaError_t elastic_gather_forward(const SlotCopy* copies, int n, const HostKv* host,
                                   const SlotKv* slots, int kv_heads, int head_dim, int budget,
                                   cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (kv_heads <= 0 || budget <= 0) return cudaErrorInvalidValue;
  return dispatch_head_dim(head_dim, [&](auto d) {
    return elastic_gather_launch<decltype(d)::value>(copies, n, host, slots, kv_heads, budget,
                                                     stream);
  });
}

cudaError_t elastic_gather_list_forward(const SlotCopy* copies, const int32_t* n_device,
                                        const HostKv* host, const SlotKv* slots, int kv_heads,
                                        int head_dim, int budget, int blocks,
                                        cudaStream_t stream) {
  if (kv_heads <= 0 || budget <= 0 || blocks <= 0 || blocks > 65535 || !n_device)
    return cudaErrorInvalidValue;
  return dispatch_head_dim(head_dim, [&](auto d) {
    return elastic_gather_list_launch<decltype(d)::value>(copies, n_device, host, slots, kv_heads,
                                                          budget, blocks, stream);
  });
}

size_t slot_map_state_bytes(int requests, int kv_heads, int budget, int64_t token_capacity) {
  const size_t rows = size_t(std::max(requests, 0)) * std::max(kv_heads, 0);
  return rows * (2 * size_t(std::max(budget, 0)) + size_t(std::max<int64_t>(token_capacity, 0)) +
                 1) * sizeof(int32_t);
}

cudaError_t slot_map_reset(const SlotMapState& st, int first, int n, int kv_heads, int budget,
                           cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (first < 0 || kv_heads <= 0 || budget <= 0 || st.token_capacity <= 0)
    return cudaErrorInvalidValue;
  const size_t row0 = size_t(first) * kv_heads, rows = size_t(n) * kv_heads;
  // -1 everywhere is all bytes 0xff.
  cudaError_t e = cudaMemsetAsync(st.slot_token + row0 * budget, 0xff, rows * budget * 4, stream);
  if (e == cudaSuccess)
    e = cudaMemsetAsync(st.slot_used + row0 * budget, 0xff, rows * budget * 4, stream);
  if (e == cudaSuccess)
    e = cudaMemsetAsync(st.token_slot + row0 * st.token_capacity, 0xff,
                        rows * size_t(st.token_capacity) * 4, stream);
  if (e == cudaSuccess) e = cudaMemsetAsync(st.stamp + row0, 0, rows * 4, stream);
  return e;
}

cudaError_t slot_map_update_forward(SlotCopy* copies, int32_t* n_copies, SlotCopy* fresh,
                                    int32_t* slot_sel, SlotMapCounters* counters,
                                    const SlotMapState& st, const int32_t* selection,
                                    const int32_t* counts, const int32_t* lengths,
                                    const int32_t* request_of, int batch, int kv_heads,
                                    int budget, cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  if (kv_heads <= 0 || budget <= 0 || int64_t(batch) * kv_heads > 0x7fffffff ||
      st.token_capacity <= 0 || !copies || !n_copies || !slot_sel)
    return cudaErrorInvalidValue;
  if (fresh && !lengths) return cudaErrorInvalidValue;
  auto go = [&](auto items) {
    return slot_map_update_launch<decltype(items)::value>(copies, n_copies, fresh, slot_sel,
                                                          counters, st, selection, counts,
                                                          lengths, request_of, batch, kv_heads,
                                                          budget, stream);
  };
  if (budget <= kSlotMapThreads) return go(std::integral_constant<int, 1>{});
  if (budget <= 2 * kSlotMapThreads) return go(std::integral_constant<int, 2>{});
  if (budget <= 4 * kSlotMapThreads) return go(std::integral_constant<int, 4>{});
  if (budget <= 8 * kSlotMapThreads) return go(std::integral_constant<int, 8>{});
  return cudaErrorInvalidValue;
}

}  // namespace spx::cuda
