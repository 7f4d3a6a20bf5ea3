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

// The same copy with the list's length read on the device (*n_device, e.g.
// written by slot_map_update_forward; no host round trip) on a small
// persistent grid of `blocks` blocks looping over the list. A few blocks keep
// PCIe busy (each has many 16-byte reads in flight), and leaving the other
// multiprocessors alone is the point: a grid sized to the list takes SMs from
// the compute stream at each of its kernel boundaries. Graph-capturable.
cudaError_t elastic_gather_list_forward(const SlotCopy* copies,    // [<= max_n], device
                                        const int32_t* n_device,   // [1], device
                                        const HostKv* host,        // [requests], device
                                        const SlotKv* slots,       // [requests], device
                                        int kv_heads, int head_dim, int budget, int blocks,
                                        cudaStream_t stream);

// ---- The slot-map diff on the device ----------------------------------------
// kv/slot_map.h's SlotMap per (request, KV head) row, kept in device arrays so
// the selection never leaves the GPU. Same decisions as SlotMap::update (slot
// assignments, loads and resident tokens are equal; kernels/slot_map.cuh).
// All arrays start at -1 (slot_map_reset); stamps at 0.
struct SlotMapState {
  int32_t* slot_token;     // [requests, kv_heads, budget]: token in the slot, -1 empty
  int32_t* slot_used;      // [requests, kv_heads, budget]: step the slot's token was last selected
  int32_t* token_slot;     // [requests, kv_heads, token_capacity]: slot of a token, -1 none
  int32_t* stamp;          // [requests, kv_heads]: steps so far
  int64_t token_capacity;  // positions a row can hold
};
struct SlotMapCounters {   // running totals, device; zero them to start
  unsigned long long loads;     // tokens copied (fresh ones included)
  unsigned long long rows;      // (request, head) updates
  unsigned long long slots;     // sum of budget over updates
  unsigned long long bad_rows;  // rows refused (count > budget, token out of range, not ascending)
};
// Device bytes for `requests` rows of state.
size_t slot_map_state_bytes(int requests, int kv_heads, int budget, int64_t token_capacity);
// Restarts the rows of requests [first, first + n): every slot empty, stamp 0.
cudaError_t slot_map_reset(const SlotMapState& st, int first, int n, int kv_heads, int budget,
                           cudaStream_t stream);
// One step for `batch` requests: batch row b uses state request
// request_of[b] (null: b), selection row [b, g] of counts[b] ascending tokens.
// Outputs:
//   - copies[*n_copies ..) gets this step's loads (SlotCopy.req = state
//     request); *n_copies is added to (zero it first); at most
//     batch * kv_heads * budget entries;
//   - fresh (optional, [batch * kv_heads]): the load of the newest token
//     lengths[b] - 1 when it is selected and missing, else token -1; it is then
//     left out of `copies` (its K/V is written later in the step);
//   - slot_sel[b, g, i] = the slot of selection[b, g, i], -1 past counts[b]:
//     the selection the host layers' sparse attention reads over the slots.
// A row whose input is bad changes nothing, counts in counters->bad_rows and
// gets slot_sel 0 (memory-safe, not meaningful). budget <= 2048.
cudaError_t slot_map_update_forward(SlotCopy* copies, int32_t* n_copies, SlotCopy* fresh,
                                    int32_t* slot_sel, SlotMapCounters* counters,
                                    const SlotMapState& st,
                                    const int32_t* selection,   // [batch, kv_heads, budget]
                                    const int32_t* counts,      // [batch], device
                                    const int32_t* lengths,     // [batch], device; null: no fresh
                                    const int32_t* request_of,  // [batch], device, or null
                                    int batch, int kv_heads, int budget, cudaStream_t stream);

}  // namespace spx::cuda
