// Head-level token selection from retrieval-head attention (paper section 1).
//
// From one request's attention logits of the retrieval head, [q_heads, T]
// (or [pool, q_heads, T] when several layers are pooled)
// (q.k / sqrt(d), one row per query head), pick B tokens per KV head:
//   - softmax per query head, then the element-wise max (or mean) over the
//     query heads of a GQA group (one group per KV head; MHA: groups of 1,
//     MQA: one group) and over pooled blocks;
//   - the first n_sink tokens (attention sink) and the newest n_recent tokens
//     always included (our addition; the paper keeps none unconditionally);
//     if they exceed B, the newest token first, then sinks, then recent ones;
//   - the top of the rest by group score, by partial selection (nth_element),
//     ties to the older token;
//   - T <= B: full attention.
// Fallback (the paper's future work): if, for some KV head, the selection
// carries less than `fallback_mass` of its query heads' attention mass (mean
// over the group), the request attends fully this step.
//
// Output per request: [kv_heads, B] token positions, ascending within a head,
// -1 past `count`.
#pragma once

#include <cstdint>
#include <vector>

namespace spx::retrieval {

// How the probabilities of a group's query heads (and pooled layers) combine
// into one score per token: the paper's element-wise max, or the mean, which
// maximises the mean attention mass the selection carries.
enum class GroupReduce { Max, Mean };

struct SelectOptions {
  int budget = 0;             // B
  GroupReduce reduce = GroupReduce::Mean;  // measured better than the paper's max
  int n_sink = 4;
  int n_recent = 16;
  float fallback_mass = 0.0f;  // 0: never fall back
};

struct SelectResult {
  int count = 0;          // valid entries per head: min(T, B)
  bool full = false;      // attend to everything (T <= B, or fallback)
  bool fallback = false;  // full because the mass was under the threshold
  float min_mass = 1.0f;  // lowest KV-head mass carried by the selection
  float mean_mass = 1.0f; // mean over KV heads
};

class Selector {
 public:
  // logits: [q_heads, T] (row stride `stride` >= T); out: [kv_heads, B].
  // q_heads must be a multiple of kv_heads (checked by the caller's config).
  SelectResult select(const float* logits, int q_heads, int kv_heads, int T, int64_t stride,
                      const SelectOptions& opt, int32_t* out) {
    return select(logits, 1, q_heads, kv_heads, T, stride, opt, out);
  }
  // Pooled form: logits [pool, q_heads, stride], e.g. several layers' scores;
  // a KV head's group is its query heads in every pooled block.
  SelectResult select(const float* logits, int pool, int q_heads, int kv_heads, int T,
                      int64_t stride, const SelectOptions& opt, int32_t* out);

  // Batch form: logits [R, q_heads, stride], lengths [R], out [R, kv_heads, B].
  // Per-request budgets: budgets[r] (<= opt.budget, which sets the out stride).
  void select_batch(const float* logits, int R, int q_heads, int kv_heads, const int* lengths,
                    int64_t stride, const SelectOptions& opt, const int* budgets, int32_t* out,
                    std::vector<SelectResult>* results);

 private:
  std::vector<float> probs_;   // [q_heads, T]
  std::vector<float> group_;   // [T]
  std::vector<int32_t> order_; // [T]
};

// Softmax of one row into out (n entries); returns nothing, handles -inf.
void softmax_row(const float* x, int n, float* out);

}  // namespace spx::retrieval
