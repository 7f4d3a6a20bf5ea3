// Where each request's K/V lives, per layer.
//
// Today every layer is Device-resident: each request owns, per layer, a K and
// a V cache of [kv_heads, capacity, head_dim] allocated from the backend when
// it is admitted and freed when it ends. The per-layer KvPlacement and the
// per-request token count are the hooks for SpeContext's host tier (issue 4):
// a Host layer keeps full K/V in host memory and a device buffer of B slots
// per request and KV head, filled by elastic loading (kv/slot_map.*).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "backend/backend.h"

namespace spx {

enum class KvPlacement { Device, Host };

struct KvSequence {
  uint64_t id = 0;
  int capacity = 0;   // token slots allocated per layer
  int n_tokens = 0;   // tokens whose K/V are written (all layers)
  std::vector<Tensor> k;  // per layer [kv_heads, capacity, head_dim]
  std::vector<Tensor> v;  // per layer [kv_heads, capacity, head_dim]
};

class KvStore {
 public:
  KvStore(Backend* backend, int layers, int kv_heads, int head_dim);

  uint64_t bytes_per_token() const;
  // Allocates K/V for `capacity` tokens in every layer.
  Status allocate(uint64_t id, int capacity, KvSequence** out);
  void free(uint64_t id);
  KvSequence* find(uint64_t id);
  int tokens(uint64_t id) const;  // -1 when unknown
  size_t sequences() const { return seqs_.size(); }
  uint64_t bytes_in_use() const { return bytes_in_use_; }

  KvPlacement placement(int layer) const { return placement_[static_cast<size_t>(layer)]; }
  void set_placement(int layer, KvPlacement p) { placement_[static_cast<size_t>(layer)] = p; }

 private:
  Backend* backend_;
  int layers_, kv_heads_, head_dim_;
  std::vector<KvPlacement> placement_;
  std::map<uint64_t, std::unique_ptr<KvSequence>> seqs_;
  uint64_t bytes_in_use_ = 0;
};

}  // namespace spx
