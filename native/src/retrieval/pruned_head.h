// The retrieval head: a Llama-family model cut down to what attention scores
// need (paper section 1). It keeps
//   - the embedding,
//   - the layers below the scoring layer (full layers, with their own K/V),
//   - the scoring layer's Q and K projections, with its norms and RoPE,
//   - its own K cache of the scoring layer over the whole context,
// and drops the scoring layer's V, O and MLP, every layer above it, the final
// norm and the LM head. Optionally it pools scores over the layers just
// below the scoring layer (their K caches are there anyway).
//
// Cut from the target itself it is the self-derived head (`--dlm-layers k`:
// scoring layer k-1) or, scoring at a deep layer, the oracle (the target's
// true full-attention scores at that layer: the head's layers below run full
// attention over their own caches, exactly as the full target does). Cut from
// a separate distilled model sharing the tokenizer it is the paper's DLM head.
//
// The layers below run through the model's own forward (ForwardBatch::n_layers)
// on the head's KV; the scoring projection runs on the backend, and the K cache
// and the q.K scores live in host memory (they feed the host-side selection).
// With device selection (use_device_select: a GPU backend's HeadSelect, pool
// 1 or EAGLE-3) the K cache stays on the backend instead, and a decode chunk's scores
// and top-B selection are computed there; only the selection comes back.
//
// An EAGLE-3 draft (eagle3_head.h) is the other kind of DLM: it reads the
// target's hidden states, so its head is fed after the target's step too
// (aux_layers, after_target). PrunedHead delegates to it, so the engine holds
// one head type.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "kv/kv_store.h"
#include "model/transformer.h"
#include "retrieval/scoring_cache.h"

namespace spx::retrieval {

struct HeadChunk {
  uint64_t id = 0;              // request
  const int32_t* tokens = nullptr;
  int n = 0;                    // tokens appended at the request's current length
  // When set: the last token's scores q.k/sqrt(d), [pool, q_heads, T] with T
  // the request's length after this chunk (row stride T), one block per
  // pooled layer, the scoring layer last.
  std::vector<float>* scores = nullptr;
  // EAGLE-3 heads only: the target's aux hidden states [n, aux_width] of the
  // positions before each token (else the ones kept by after_target).
  const float* features = nullptr;
  // Device selection only (PrunedHead::device_select()): the last token's
  // selection [kv_heads, budget] and the share of each KV head's attention it
  // carries [kv_heads], chosen where the K cache lives. The request's length
  // after this chunk must exceed the budget.
  int32_t* selection = nullptr;
  float* mass = nullptr;
  int budget = 0;
};

// The checks every head makes on a chunk of a request that holds n_tokens of
// `capacity` (device_hook: the head can select on its device).
Status check_head_chunk(const HeadChunk& hc, int n_tokens, int capacity, bool device_hook);

// RoPE on a head's scoring-layer q [N, heads, D] and k [N, kv_heads, D] at
// `positions` (tables staged through cos / sin [N, D / 2]); when host_k is
// given (the head scores on the host), k's rows are also copied there.
Status rope_scoring_qk(Backend& be, const std::vector<float>& inv_freq,
                       const std::vector<int32_t>& positions, Tensor* q3, Tensor* k3, Tensor* cos,
                       Tensor* sin, std::vector<float>* host_k);

class Eagle3Head;

// One request's head state, for KV checkpoints (checkpoint/checkpointer.cc):
// positions [0, tokens) of every cache are valid.
struct HeadState {
  int tokens = 0;
  int capacity = 0;
  std::vector<Tensor> k, v;  // [state_layers()] the head's own layers, [kv_heads, capacity, head_dim]
  std::shared_ptr<const std::vector<float>> scoring_k;  // host [kv_heads, capacity, head_dim]
  std::vector<float> aux;    // [aux_width()] the head's input at position tokens-1 (EAGLE-3)
};
// Fills a host [kv_heads, capacity, head_dim] buffer with one block of a
// saved state: 2l / 2l+1 are own layer l's K / V, 2*state_layers() the scoring K.
using HeadStateFill = std::function<void(int block, float* dst, int capacity)>;

// out[h, t] = q[h] . k[h / group, t] * scale for t < T; k is [kv_heads, cap, D].
void score_rows(const float* q, const float* k, int64_t heads, int64_t group, int64_t T, int64_t cap,
                int64_t D, float scale, float* out);
// Writes n token rows [n, kv_heads, D] at positions pos.. of a K cache
// [kv_heads, cap, D].
void write_k_rows(const float* rows, int64_t n, int64_t kv_heads, int64_t D, int64_t cap, int64_t pos, float* k);

// Parameters of a whole model (embedding, layers, final norm, untied LM head).
uint64_t model_param_count(const Transformer& model);

class PrunedHead {
 public:
  // `model` outlives the head; scoring_layer in [0, layers). pool > 1 also
  // scores at the pool-1 layers below the scoring layer, whose K the head
  // keeps anyway (their full KV caches), for selection pooled over layers.
  // `scoring`, when given, replaces the model's scoring-layer norm and Q/K
  // projections (the head keeps its own copy of those tensors): a distilled
  // head whose lower layers are the model's own (head_choice.cc).
  static Status make(Transformer* model, int scoring_layer, std::unique_ptr<PrunedHead>* out,
                     int pool = 1, const LayerWeights* scoring = nullptr);
  // The head of an EAGLE-3 draft (retrieval/eagle3_head.h).
  static Status make_eagle3(std::unique_ptr<Eagle3Head> eagle3, std::unique_ptr<PrunedHead>* out);
  ~PrunedHead();

  Status open(uint64_t id, int capacity);
  void close(uint64_t id);
  int tokens(uint64_t id) const;  // -1 when unknown

  Status forward(const std::vector<HeadChunk>& chunks);

  // Keeps the scoring K cache on the backend and selects there (HeadChunk::
  // selection, Backend::head_select) with the selector's rules: a head
  // scoring one layer (pool 1) or an EAGLE-3 head, on a backend with the hook
  // for its shape, and only before any request opens; returns whether the
  // head took it.
  bool use_device_select(int n_sink, int n_recent, bool reduce_max);
  bool device_select() const;

  // Target layers whose input hidden states the head reads (ForwardBatch::
  // aux_layers): empty except for EAGLE-3 heads, which then need
  // after_target() with the target's captured rows [n, aux_width()] after
  // every target forward of a request.
  const std::vector<int>& aux_layers() const;
  int aux_width() const;
  Status after_target(uint64_t id, const int32_t* tokens, int start, int n, const float* rows);
  // The same for a whole target batch (ids[i]: chunk i's request; rows: the
  // batch's ForwardBatch::aux_hidden): chunks of requests the head has not
  // opened are skipped.
  Status after_target(const std::vector<uint64_t>& ids, const ForwardBatch& batch, const std::vector<float>& rows);
  const Eagle3Head* eagle3() const { return eagle3_.get(); }

  // Takes request `id`'s first kv.n_tokens tokens from the source model's own
  // KV cache instead of recomputing them: valid when the head is cut from
  // that model and the cache was written with full attention (a prefill), as
  // then the layers below and the scoring layer's K are exactly the head's.
  // The request must be open, empty and as large as the cache. A head with
  // its own scoring weights (own_scoring()) cannot take the scoring layer's K
  // from the cache: it needs the source's hidden states at the scoring
  // layer's input, `scoring_input` [kv.n_tokens, hidden] (ForwardBatch::
  // aux_layers = {scoring_input_layer()}), and projects them itself.
  Status adopt(uint64_t id, const KvSequence& kv, const float* scoring_input = nullptr);
  const Transformer* source() const { return model_; }
  bool own_scoring() const { return own_scoring_; }
  // The source layer whose input adopt() needs captured; -1: none.
  int scoring_input_layer() const { return own_scoring_ ? layer_ : -1; }

  int scoring_layer() const { return layer_; }
  int pool() const { return pool_; }
  int q_heads() const { return q_heads_; }
  int kv_heads() const { return kv_heads_; }
  // Parameters the head computes with, and the whole model's, for the
  // reduction report.
  uint64_t head_params() const { return head_params_; }
  uint64_t model_params() const { return model_params_; }
  uint64_t k_cache_bytes() const;
  // Weight memory the head adds to the target's (the planner's M_D): none for
  // a head cut from the target, a separate DLM's weights, an EAGLE-3 head's
  // kept tensors (a borrowed embedding not counted).
  uint64_t weight_bytes(const Transformer* target) const;

  // Checkpoints: the head's per-request state is its own layers' K/V below
  // the scoring layer (state_layers(): none for EAGLE-3), the scoring K cache,
  // and for EAGLE-3 the target's aux row of the last position.
  int state_layers() const;
  int head_dim() const;
  Status state(uint64_t id, HeadState* out) const;
  // An open, empty request takes positions [0, n) from a saved state.
  Status restore(uint64_t id, int n, const HeadStateFill& fill, const float* aux);

 private:
  struct Request {
    KvSequence* kv = nullptr;    // layers below the scoring layer
    int capacity = 0;
    int n_tokens = 0;
    ScoringCache k;              // [kv_heads, capacity, head_dim] scoring-layer K
  };
  PrunedHead() = default;
  Status ensure_workspace(int n);
  // The scoring layer on hidden rows x [n, hidden] at `positions`: q_ / k_
  // rows [0, n) hold the roped Q / K (kh_ a host copy of K when scoring on the host).
  Status project(const Tensor& x, const std::vector<int32_t>& positions);

  Transformer* model_ = nullptr;   // null for an EAGLE-3 head
  std::unique_ptr<Eagle3Head> eagle3_;
  int q_heads_ = 0, kv_heads_ = 0;
  int layer_ = 0;
  int pool_ = 1;
  LayerWeights scoring_;         // the scoring layer's tensors (model_'s, or a DLM's own)
  bool own_scoring_ = false;     // scoring_ is not model_'s scoring layer
  std::vector<float> qcap_;      // [chunks, layer_, heads*hd] captured queries below
  std::unique_ptr<KvStore> store_;
  std::map<uint64_t, Request> reqs_;
  Tensor h_, q_, k_;             // [cap, hidden], [cap, heads*hd], [cap, kvh*hd]
  Tensor x_;                     // [cap, hidden] adopted hidden rows (own_scoring_)
  Tensor cos_, sin_;             // [cap, hd/2]
  int ws_cap_ = 0;
  std::vector<float> qh_, kh_;   // host copies of one chunk's q / k rows
  std::vector<float> kbuf_;      // host copy of a pooled layer's K cache
  DeviceSelect ds_;              // hook null: host scoring
  uint64_t head_params_ = 0, model_params_ = 0;
};

}  // namespace spx::retrieval
