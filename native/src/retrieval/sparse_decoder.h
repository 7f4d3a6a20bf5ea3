// SpeContext in the engine's step loop: the retrieval head runs before the
// target on every decode step and its selection [kv_heads, B] feeds the
// target's attention in all layers (ForwardChunk::selection).
//
// The engine calls, on its scheduler thread:
//   admit(id, capacity, budget)   a request with budget > 0 joins
//   before_forward(ids, &batch)   head step + selection for decode chunks
//   after_forward(ids, batch)     the head takes the prompt's KV once prefilled
//                                 (an EAGLE-3 head: the target's captured
//                                 hidden states of every chunk)
//   release(id)                   the request ends
// Requests with budget 0 are untouched (full attention). A context no longer
// than B attends fully; so does a step whose selection carries less than
// `fallback_mass` of the head's attention (counted).
//
// The selection itself stays on the device too when the device slot maps
// serve every request of the step and no fallback threshold is set: the
// target's device-resident layers read it in place (ForwardChunk::
// selection_device) and the step no longer synchronises after the head. A
// threshold (its rule reads the masses on the host), a request on host maps,
// or SPX_SELECTION_DOWNLOAD=1 (the reference path for tests) download it.
//
// Slot maps (elastic loading's bookkeeping, kv/slot_map.h): on the CUDA
// backend with the head selecting on the device they live on the GPU
// (CudaTier's device slot maps: the diff, the load list and the selection ->
// slot list never visit the host; counters come back lazily). Otherwise, and
// with SPX_SLOT_MAPS=host or a budget over 2048, the host SlotTable (the
// CPU backend's, the reference); a log line says why when CUDA falls back.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "cuda/cuda_tier.h"
#include "kv/slot_map.h"
#include "model/transformer.h"
#include "retrieval/head_choice.h"
#include "retrieval/pruned_head.h"
#include "retrieval/select.h"

namespace spx::retrieval {

struct SparseStats {
  uint64_t sparse_steps = 0;    // decode steps that attended to a selection
  uint64_t full_steps = 0;      // decode steps with budget whose context was <= B
  uint64_t fallback_steps = 0;  // selection mass under the threshold
  ElasticStats elastic;         // slot-map churn of every sparse step (what host layers would load)
  ElasticStats tier;            // the loads that moved, on steps with host-tier layers
  // CUDA host tier: prefetch time of older tokens' rows, and the part of it
  // the compute stream waited for (not hidden behind device-resident layers).
  double transfer_ms = 0;
  double exposed_transfer_ms = 0;
  uint64_t device_selections = 0;  // sparse or fallback steps selected on the device
};

class SparseDecoder {
 public:
  static Status make(Transformer* target, Backend* backend, const HeadChoice& choice,
                     const SelectOptions& select, std::unique_ptr<SparseDecoder>* out);

  // kv: the request's target cache (its host-tier layers move to pinned
  // host memory on the CUDA backend); may be null when no layer is host-tier.
  Status admit(uint64_t id, int capacity, int budget, KvSequence* kv = nullptr);
  void release(uint64_t id);
  bool tracks(uint64_t id) const { return reqs_.count(id) != 0; }

  // ids[i] is the request of batch.chunks[i].
  Status before_forward(const std::vector<uint64_t>& ids, ForwardBatch* batch);
  Status after_forward(const std::vector<uint64_t>& ids, const ForwardBatch& batch);

  // The last n target layers keep their full KV in host memory and attend
  // through a device buffer of B slots per request and KV head, filled by
  // elastic loading (kv/slot_map.h). Applies at once, running requests
  // included (call between steps): a layer that moves to the host tier
  // starts with empty slots, so those requests refill them on their next step.
  Status set_host_layers(int n);
  int host_layers() const { return host_layers_; }

  // Folds in the device slot maps' counters that have landed (never blocks:
  // a step's counters land with its forward's end).
  const SparseStats& stats();
  // Whether new requests keep their slot maps on the device.
  bool device_slot_maps() const { return device_maps_; }
  // Whether steps may leave the selection on the device (see the top).
  bool device_selection() const { return selection_on_device_; }
  // For tests: request id's selection of its last sparse step, [kv_heads, B]
  // (left on the device: downloaded, blocking; valid until the next step's
  // head runs); empty if that step attended fully.
  Status last_selection(uint64_t id, std::vector<int32_t>* out);
  // For tests: the [kv_heads] masses of id's last device selection, filled
  // only when the selection was downloaded (a fallback threshold).
  const std::vector<float>* last_mass(uint64_t id) const {
    auto it = reqs_.find(id);
    return it == reqs_.end() ? nullptr : &it->second.mass;
  }
  // For tests: request id's selection -> slot list of its last sparse step,
  // [kv_heads, B] (device maps: downloaded, blocking), and its slot buffers
  // ([layers], non-empty for host layers: [kv_heads, B, hd]).
  Status slot_list(uint64_t id, std::vector<int32_t>* out);
  const std::vector<Tensor>* tier_keys(uint64_t id) const {
    auto it = reqs_.find(id);
    return it == reqs_.end() ? nullptr : &it->second.tier_k;
  }
  const std::vector<Tensor>* tier_values(uint64_t id) const {
    auto it = reqs_.find(id);
    return it == reqs_.end() ? nullptr : &it->second.tier_v;
  }
  // The head's scores behind request id's last selection, [pool, q_heads, T]
  // (T its length then); nullptr if unknown. For tests and evaluation.
  const std::vector<float>* last_scores(uint64_t id) const {
    auto it = reqs_.find(id);
    return it == reqs_.end() ? nullptr : &it->second.scores;
  }
  const std::string& head_kind() const { return kind_; }
  // Where the head scores and selects: "device" (the backend's HeadSelect,
  // its K cache on the device; last_scores() stays empty) or "host".
  const char* head_scoring() const { return head_->device_select() ? "device" : "host"; }
  const PrunedHead& head() const { return *head_; }
  PrunedHead* mutable_head() { return head_.get(); }  // checkpoints save and restore its state

 private:
  struct Request {
    int budget = 0;
    std::vector<int32_t> selection;  // [kv_heads, B], valid during one step (the device copy's key when left there)
    const int32_t* selection_device = nullptr;  // this step's, when left on the device
    bool sparse = false;             // the last decode step attended to a selection
    std::vector<float> scores;       // [pool, q_heads, T] (host scoring)
    std::vector<float> mass;         // [kv_heads] (device selection)
    std::vector<Tensor> tier_k, tier_v;  // [layers]: [kv_heads, B, hd] for host layers, else empty
    std::vector<int32_t> tier_slots;     // [kv_heads, B]
    std::vector<std::vector<SlotLoad>> loads;  // [kv_heads] this step's
    KvSequence* kv = nullptr;        // the target's cache (the host tier's full KV)
    int new_pos = -1;                // this step's own token, loaded inside the forward
    bool device_map = false;         // slot maps on the device (CudaTier), else in slots_
    // A head with its own scoring weights on the target's lower layers: the
    // prompt's hidden states at the scoring layer's input, until it adopts.
    std::vector<float> prompt_hidden;  // [prefilled tokens, hidden]
  };
  Status load_rows(Request& r, int layer, bool new_token_only);
  // The SelectResult of a device selection (its masses, the fallback rule).
  SelectResult device_result(const Request& r, int T) const;
  // Slot buffers for the last host_layers layers (others empty); on the
  // CUDA backend their full caches move to pinned host memory.
  Status alloc_tier(Request& r, int host_layers);
  // CUDA: queue the step's loads of older tokens for every host layer on the
  // tier stream (the prefetch), or copy the step's own token at one layer.
  Status prefetch_rows(const std::vector<uint64_t>& ids);
  Status own_token_rows(const std::vector<uint64_t>& ids, int layer);
  // Adds the device slot maps' counters since the last fold (wait: the
  // latest step's, blocking; else only what has landed).
  void fold_map_counters(bool wait);
  SparseDecoder() = default;

  Transformer* target_ = nullptr;
  std::unique_ptr<Transformer> dlm_;
  std::unique_ptr<PrunedHead> head_;
  std::string kind_;
  SelectOptions select_;
  Selector selector_;
  SlotTable slots_;
  std::map<uint64_t, int> slot_row_;  // request -> SlotTable row
  std::map<uint64_t, Request> reqs_;
  SparseStats stats_;
  int host_layers_ = 0;
  int elem_bytes_ = 4;               // K/V element size of the backend (f32 / bf16)
  std::unique_ptr<cuda::CudaTier> tier_;  // CUDA host tier; null on the CPU backend
  bool device_maps_ = false;         // admit() opens device slot maps (CUDA, device selection)
  bool selection_on_device_ = false;  // device maps, no fallback threshold, no SPX_SELECTION_DOWNLOAD=1
  bool warned_budget_ = false;       // a budget over kDeviceSlotMapMaxBudget was logged
  cuda::MapCounters seen_;           // device counters folded into stats_ so far
  std::vector<float> row_;           // one K or V row in transit
  std::vector<float> aux_rows_;      // the target's captured hidden states this step (EAGLE-3, prompt_hidden)
};

}  // namespace spx::retrieval
