// An EAGLE-3 draft checkpoint as the retrieval head (the paper's DLMs are
// EAGLE-3 drafts). The draft is one Llama decoder layer whose attention reads
// [input_norm(embed(token)), hidden_norm(fc(target features))] (2*hidden wide);
// fc maps three of the target's hidden states, concatenated low|mid|high, to
// the draft's hidden size. For scoring we keep only
//   - the embedding (the draft's own `embed_tokens`, else the target's),
//   - fc, input_layernorm and hidden_norm,
//   - q_proj and k_proj with RoPE,
//   - a K cache over the whole context,
// and drop v/o_proj, the MLP, post_attention_layernorm, the final norm,
// lm_head and the d2t/t2d vocabulary maps (eagle3_draft.h counts them).
//
// What fc is fed. EAGLE pairs each token with the target's hidden states of
// the position before it (the states that predicted that token). The head
// runs before the target's step, so at decode position p it uses the states
// the target produced at p-1 in its previous step, which is exactly EAGLE's
// pairing: no approximation. Position 0 has no predecessor and gets a zero
// feature (fc(0) = 0 and hidden_norm(0) = 0); it is an attention sink that
// selection always keeps. RoPE uses the target's positions (EAGLE's own
// positions are one lower; q.k depends only on the distance, so the scores are
// the same).
//
// Engine flow (SparseDecoder):
//   before the target's step   forward({id, &token, 1, &scores})   decode only
//   target forward             with ForwardBatch::aux_layers = aux_layers()
//                              and aux_hidden set: [n, aux_width()] rows
//   after the target's step    after_target(id, tokens, start, n, rows)
// after_target computes the K of a prefilled chunk the head has not seen (its
// features are the chunk's own rows shifted by one) and keeps the last row for
// the next decode step.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "retrieval/eagle3_draft.h"
#include "retrieval/pruned_head.h"

namespace spx::retrieval {

class Eagle3Head {
 public:
  // Loads the draft in `dir` (see is_eagle3_dir) onto `backend` and pairs it
  // with `target`: the vocabulary, attention heads and aux layers must fit.
  static Status load(const std::string& dir, Transformer* target, Backend* backend,
                     std::unique_ptr<Eagle3Head>* out);

  const Eagle3Config& config() const { return cfg_; }
  const std::vector<int>& aux_layers() const { return cfg_.aux_layers; }
  int aux_width() const { return 3 * cfg_.target_hidden; }

  Status open(uint64_t id, int capacity);
  void close(uint64_t id);
  int tokens(uint64_t id) const;  // -1 when unknown

  // Chunks continue each request's K cache. A chunk's `features` are
  // [n, aux_width()]: the target's aux rows of positions start-1 .. start+n-2;
  // without them a chunk must be one token following the last after_target.
  Status forward(const std::vector<HeadChunk>& chunks);
  // The target's aux rows [n, aux_width()] of positions start .. start+n-1.
  Status after_target(uint64_t id, const int32_t* tokens, int start, int n, const float* rows);
  // Device selection (PrunedHead::use_device_select): the K cache on the
  // backend, decode chunks' HeadChunk::selection chosen there.
  bool use_device_select(int n_sink, int n_recent, bool reduce_max);
  bool device_select() const { return ds_.hook != nullptr; }

  uint64_t head_params() const { return head_params_; }
  uint64_t model_params() const { return model_params_; }
  uint64_t weight_bytes() const { return weight_bytes_; }  // kept tensors, a borrowed embedding not counted
  uint64_t k_cache_bytes() const;
  // Checkpoints (PrunedHead::state / restore): the K cache and the last aux row.
  Status state(uint64_t id, HeadState* out) const;
  Status restore(uint64_t id, int n, const HeadStateFill& fill, const float* aux);

 private:
  struct Request {
    int capacity = 0;
    int n_tokens = 0;
    ScoringCache k;              // [kv_heads, capacity, head_dim]
    std::vector<float> last;     // [aux_width] the target's rows at position last_pos
    int last_pos = -1;
  };
  struct Item {
    Request* r;
    const int32_t* tokens;
    int n;
    std::vector<float>* scores;  // last token's [q_heads, T] or nullptr
    const HeadChunk* chunk = nullptr;  // its selection, with device selection
  };
  Eagle3Head() = default;
  Status ensure_workspace(int n);
  // K (and the last token's scores) of items whose feature rows are stacked in feats_.
  Status project(const std::vector<Item>& items);

  Eagle3Config cfg_;
  Eagle3Weights w_;
  Backend* be_ = nullptr;
  std::vector<float> inv_freq_;
  std::map<uint64_t, Request> reqs_;
  std::vector<float> feats_;      // [n, aux_width] host staging
  Tensor f_, a_, b_, q_, qt_, k_, kt_, cos_, sin_;
  int ws_cap_ = 0;
  std::vector<float> qh_, kh_, kbuf_;
  DeviceSelect ds_;  // hook null: host scoring
  uint64_t head_params_ = 0, model_params_ = 0, weight_bytes_ = 0;
};

}  // namespace spx::retrieval
