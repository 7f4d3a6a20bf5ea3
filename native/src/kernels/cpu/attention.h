// CPU reference causal attention over one sequence's KV cache, GQA-aware
// (query head h reads KV head h / (heads / kv_heads)). Used both for prefill
// chunks (n_q > 1; query t sits at position start_pos + t) and for decode
// (n_q == 1).
//
// Sparse hook: with `selection` ([kv_heads, budget] token positions) a query
// attends only to those positions (those <= its own position), which is how
// SpeContext's per-step selection feeds the target's attention.
#pragma once

#include <cstdint>

namespace spx {

// One sequence's slice of a batched attention call.
struct AttentionSeq {
  const float* k_cache = nullptr;  // [kv_heads, capacity, hd]
  const float* v_cache = nullptr;  // [kv_heads, capacity, hd]
  int64_t capacity = 0;
  int64_t q_begin = 0;             // first row of q / out
  int64_t n_q = 0;
  int64_t start_pos = 0;
  const int32_t* selection = nullptr;  // [kv_heads, budget] or nullptr
  int64_t budget = 0;
};

// All sequences of a step in one parallel pass over (sequence, query, head),
// so a decode batch keeps every core busy even with few heads.
// out, q: [rows, heads, hd].
void attention_batch_forward(float* out, const float* q, const AttentionSeq* seqs, int64_t n_seqs,
                             int64_t heads, int64_t kv_heads, int64_t hd, float scale);

// out, q: [n_q, heads, hd]; k_cache, v_cache: [kv_heads, capacity, hd].
void attention_forward(float* out, const float* q, const float* k_cache, const float* v_cache,
                       int64_t n_q, int64_t start_pos, int64_t heads, int64_t kv_heads, int64_t hd,
                       int64_t capacity, float scale, const int32_t* selection, int64_t budget);

// One decode token per call: q, out [heads, hd]; keys 0..pos.
void attention_decode_forward(float* out, const float* q, const float* k_cache,
                              const float* v_cache, int64_t pos, int64_t heads, int64_t kv_heads,
                              int64_t hd, int64_t capacity, float scale, const int32_t* selection,
                              int64_t budget);

}  // namespace spx
