// Host entry points of the SpeContext kernels on the GPU (issue 6): the
// retrieval head's scoring, top-B selection, sparse flash-decoding over a
// selection, and elastic loading from pinned host memory. Same conventions as
// ops.h: `<op>_forward(..., stream)`, cudaError_t, raw device pointers with
// their shapes beside them. Each kernel has a CPU reference it is tested
// against (native/src/retrieval/select.cc, kernels/cpu/attention.cc,
// kv/slot_map.cc).
//
// Layouts shared with the dense path: a request's cache for one layer is
// [kv_heads, capacity, head_dim] (DecodeSeq); a selection is, per request and
// KV head, `budget` token positions, ascending, -1 past its count.
#pragma once

#include "cuda/ops.h"

namespace spx::cuda {

// ---- Retrieval head: group scores ---------------------------------------
// One decode query per request against the head's own K cache (scoring layer).
// For request r of length L = lengths[r], query head h and its KV head
// g = h / (q_heads / kv_heads):
//   p[h, t]          = softmax over t < L of (q[r, h] . k_r[g, t]) * scale
//   scores[r, g, t]  = mean (reduce_max false) or max over the group's h of p[h, t]
// as retrieval::Selector does on the host (softmax per query head, then the
// group reduce). Entries t >= L are not written. `logits` is workspace.
// Groups of 1..8 query heads per KV head; head_dim 16, 32, 64 or 128.
cudaError_t retrieval_scores_forward(float* scores,           // [batch, kv_heads, stride]
                                     float* logits,           // [batch, q_heads, stride] workspace
                                     const bf16* q,           // [batch, q_heads, head_dim]
                                     const DecodeSeq* seqs,   // [batch], device; only .k is read
                                     const int32_t* lengths,  // [batch], device, >= 1
                                     int batch, int q_heads, int kv_heads, int head_dim,
                                     float scale, bool reduce_max, int64_t stride,
                                     cudaStream_t stream);

// ---- Top-B selection ----------------------------------------------------
// Per (request, KV head) row of scores over L = lengths[r] tokens, choose
// count = min(L, budget) positions:
//   - the newest token (L-1) first, then the first n_sink tokens, then the
//     newest n_recent tokens (if these exceed the budget: in that order);
//   - the rest by score, highest first, ties to the older token;
// found by radix select over the float bits (no full sort), and written
// ascending to selection[r, g, 0..count), -1 after. counts[r] = count.
// mass[r, g] (optional, may be null) = the sum of the selected scores over the
// sum of all L scores: the share of the group's attention the selection
// carries (retrieval::SelectResult, for the fallback decision). That equals
// Selector's per-head mass for mean scores; for max scores Selector instead
// averages the query heads' own probability mass.
cudaError_t topk_select_forward(int32_t* selection,       // [batch, kv_heads, budget]
                                int32_t* counts,          // [batch]
                                float* mass,              // [batch, kv_heads] or nullptr
                                const float* scores,      // [batch, kv_heads, stride]
                                const int32_t* lengths,   // [batch], device
                                int batch, int kv_heads, int64_t stride, int budget, int n_sink,
                                int n_recent, cudaStream_t stream);

// ---- Sparse flash-decoding ------------------------------------------------
// decode_attention_forward where request r's KV head g attends only to the
// counts[r] cache positions selection[r, g, 0..counts[r]) (gathered inside the
// kernel; device-resident layers need no copy). Split along the selection as
// the dense kernel splits along the sequence; same workspace, with
// max_splits * split_tokens >= budget. counts[r] <= budget.
cudaError_t sparse_decode_attention_forward(bf16* out,                 // [batch, q_heads, head_dim]
                                            const bf16* q,             // [batch, q_heads, head_dim]
                                            const DecodeSeq* seqs,     // [batch], device
                                            const int32_t* selection,  // [batch, kv_heads, budget]
                                            const int32_t* counts,     // [batch], device, >= 1
                                            int batch, int q_heads, int kv_heads, int head_dim,
                                            int budget, float scale, int split_tokens,
                                            DecodeAttentionWorkspace ws, cudaStream_t stream);

// ---- Elastic loading from pinned host memory ------------------------------
// A host-tier layer keeps each request's full K/V in pinned host memory
// (cudaHostAlloc, mapped) and a device buffer of `budget` slots per KV head.
// Copies the listed (token -> slot) rows, K and V, reading the host through
// its mapped device pointer (one warp per row: coalesced PCIe reads, no CPU
// gather). The slot buffers are then an ordinary cache of capacity `budget`
// for decode_attention_forward.
struct SlotCopy {
  int32_t req;    // row of `host` / `slots`
  int32_t head;   // KV head
  int32_t token;  // position in the host cache
  int32_t slot;   // destination slot < budget
};
struct HostKv {
  const bf16* k;  // mapped pinned [kv_heads, capacity, head_dim] (device-visible pointer)
  const bf16* v;
  int64_t capacity;
};
struct SlotKv {
  bf16* k;  // device [kv_heads, budget, head_dim]
  bf16* v;
};
cudaError_t elastic_gather_forward(const SlotCopy* copies,  // [n], device
                                   int n, const HostKv* host,  // [requests], device
                                   const SlotKv* slots,        // [requests], device
                                   int kv_heads, int head_dim, int budget,
                                   cudaStream_t stream);

}  // namespace spx::cuda
