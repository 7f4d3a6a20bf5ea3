// The Llama-family decoder forward (Llama, Qwen2, Qwen3) over a batch of
// sequence chunks, written against the Backend interface only.
//
// One forward takes any mix of prefill chunks and decode tokens: all tokens are
// stacked into [n, hidden] rows so every matmul reads its weights once for the
// whole batch; attention then runs per chunk over that request's KV cache.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_store.h"
#include "model/config.h"
#include "model/weights.h"

namespace spx {

enum class LogitsMode { None, Last, All };

struct ForwardChunk {
  KvSequence* kv = nullptr;  // must already hold exactly start_pos tokens
  int start_pos = 0;
  int n_tokens = 0;
  LogitsMode logits = LogitsMode::Last;
  // SpeContext hook: [kv_heads, budget] positions this (decode) chunk attends
  // to, from the retrieval head; nullptr means full attention.
  const int32_t* selection = nullptr;
  // The same selection on the device (the CUDA backend's HeadSelect output,
  // all budget entries valid), read in place instead of selection, which is
  // then null: the selection never visits the host. Never set on the CPU.
  const int32_t* selection_device = nullptr;
  int budget = 0;
  int sparse_from_layer = 0;  // layers below attend fully (those a self-derived head computes)
  // SpeContext host tier: where (*tier_k)[l] is non-empty, layer l attends to
  // that device slot buffer ([kv_heads, budget, hd], likewise tier_v) through
  // tier_slots ([kv_heads, budget] slot of each selected token) instead of
  // the full cache, which then lives in host memory.
  const std::vector<Tensor>* tier_k = nullptr;
  const std::vector<Tensor>* tier_v = nullptr;
  const int32_t* tier_slots = nullptr;
  // The same slot list on the device (device slot maps on the CUDA backend):
  // host-tier layers read it instead of tier_slots, which is then null.
  const int32_t* tier_slots_device = nullptr;
};

struct ForwardBatch {
  std::vector<int32_t> tokens;      // all chunks' tokens, chunk after chunk
  std::vector<ForwardChunk> chunks;
  // SpeContext retrieval head / evaluation hooks (native/src/retrieval):
  // n_layers >= 0 runs only the first n_layers layers (the chunks' KV need
  // only those), computes no logits and points *hidden_out at the hidden
  // rows [n, hidden] after them (a workspace view, valid until the next call).
  int n_layers = -1;
  Tensor* hidden_out = nullptr;
  // When set: [chunks, layers run, heads * head_dim], the post-RoPE query of
  // each chunk's last token at every layer (retrieval-head pooling, recall).
  std::vector<float>* q_capture = nullptr;
  // Called at every layer after the chunks' K/V are written and before their
  // attention: host-tier slot loads of the step's own token.
  std::function<Status(int layer)> tier_load;
  // EAGLE-3 retrieval head (retrieval/eagle3_head.h): when aux_hidden is set it
  // receives [n, aux_layers.size() * hidden], every row's hidden state at the
  // input of each listed layer (0: the embedding; num_layers: after the last
  // layer, before the final norm), concatenated in list order.
  std::vector<int> aux_layers;
  std::vector<float>* aux_hidden = nullptr;
  // Greedy sampling where the logits are (issue 6): when set, it receives the
  // argmax (sampling::argmax) of every logits row, in row order, and the
  // logits are not downloaded (`logits` comes back empty). The backend's
  // argmax_rows() runs after the LM head (inside a recorded decode step) and
  // only the ids cross to the host; a backend without it gets the argmax of
  // the downloaded rows here.
  std::vector<int32_t>* greedy_ids = nullptr;
};

// CUDA graphs of the dense decode step (backend.h, StepGraph), since load.
struct StepGraphStats {
  uint64_t captures = 0;  // steps recorded (once per batch shape: sizes, caches)
  uint64_t replays = 0;   // steps run as one graph replay
  uint64_t failures = 0;  // captures that failed: that step ran eagerly, graphs went off
  double capture_ms = 0;  // host time spent recording and instantiating them
};

class Transformer {
 public:
  // Reads config.json and the safetensors weights of `dir` onto `backend`.
  static Status load(const std::string& dir, Backend* backend, std::unique_ptr<Transformer>* out);

  const ModelConfig& config() const { return cfg_; }
  Backend* backend() const { return backend_; }
  uint64_t weight_bytes() const { return weight_bytes_; }
  const ModelWeights& weights() const { return w_; }
  const std::vector<float>& rope_inv_freq() const { return inv_freq_; }

  // Runs the batch, appending each chunk's K/V to its cache. `logits` receives
  // rows of vocab_size floats: per chunk, none, its last token or all tokens.
  Status forward(const ForwardBatch& batch, std::vector<float>* logits);

  // Dense decode steps (every chunk one token with its logits, full
  // attention, no hooks) run as a replayed CUDA graph when the backend can
  // record them: on unless SPX_CUDA_GRAPHS=0 at load; tests switch it.
  void set_step_graphs(bool on) { graphs_ = on; }
  bool step_graphs() const { return graphs_; }
  // Also record decode steps whose chunks attend to device selections
  // (ForwardChunk::selection_device; no host-tier layer, no hooks): the
  // graph reads the selections in place, so the retrieval head (eager,
  // before the forward) rewrites them between replays. On by default (every
  // CUDA suite passed with it on the H200, session 4); SPX_SPARSE_GRAPHS=0 at
  // load turns it off.
  void set_sparse_step_graphs(bool on) { sparse_graphs_ = on; }
  // Whether the engine asks for greedy ids instead of logits when every row
  // of a step is greedy (ForwardBatch::greedy_ids): on unless
  // SPX_DEVICE_ARGMAX=0 at load (then the logits go to the host samplers,
  // the reference path).
  bool device_argmax() const { return device_argmax_; }
  const StepGraphStats& graph_stats() const { return graph_stats_; }

 private:
  struct Workspace {
    int capacity = 0;
    Tensor x, h, q, k, v, attn, tmp, gate, up, cos, sin;
  };
  // forward() but for the host argmax of a backend without argmax_rows.
  Status forward_rows(const ForwardBatch& batch, std::vector<float>* logits);
  Status ensure_workspace(int n);
  // Final-norm and logits rows of dense decode steps, kept across steps so
  // a recorded step writes where the next replay writes.
  Status ensure_decode_logits(int n);
  // A decode step the step graph can record (every chunk one token with
  // logits, no hooks; device selections only with sparse graphs on).
  static bool dense_decode(const ForwardBatch& batch, int n_layers_run, int n_layers, bool sparse);
  // What a recorded step bakes in: rows, workspaces, every cache address and capacity.
  std::vector<uint64_t> step_key(const ForwardBatch& batch) const;
  // Queues the step's backend calls from the embedding to the logits (dense
  // decode) or to the last layer's output; `recording` takes the RoPE tables
  // from the step graph's inputs.
  Status queue_step(const ForwardBatch& batch, int n_layers, bool dense, bool recording);
  // The batch asks for greedy ids and the backend computes them.
  bool backend_greedy(const ForwardBatch& batch) const {
    return batch.greedy_ids != nullptr && backend_->has_argmax();
  }

  ModelConfig cfg_;
  Backend* backend_ = nullptr;
  ModelWeights w_;
  std::vector<float> inv_freq_;
  Workspace ws_;
  Tensor dec_normed_, dec_logits_;  // [rows, hidden], [rows, vocab]
  int dec_rows_ = 0;
  uint64_t ws_generation_ = 0;  // bumped whenever a step buffer moves
  bool graphs_ = true;
  bool sparse_graphs_ = false;
  bool device_argmax_ = true;
  std::vector<uint64_t> warm_key_;  // the shape of the last eager dense decode step
  StepGraphStats graph_stats_;
  uint64_t weight_bytes_ = 0;
};

}  // namespace spx
