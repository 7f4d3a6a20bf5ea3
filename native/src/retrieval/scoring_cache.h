// The retrieval head's K cache of its scoring layer, per request, and where
// its scores and selection are computed (shared by PrunedHead and
// Eagle3Head).
//
// Host scoring keeps the cache in host memory, where score_rows and the
// host Selector read it. Device selection (Backend::head_select, issue 6)
// keeps it as a backend tensor in the DecodeSeq layout, written by kv_write,
// and the backend's hook scores and selects a step's decode tokens there;
// only the selections come back.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"

namespace spx::retrieval {

// A head's device-selection settings: the backend's hook (null: host
// scoring) and the selector's rules it applies.
struct DeviceSelect {
  HeadSelect* hook = nullptr;
  int n_sink = 0, n_recent = 0;
  bool reduce_max = false;

  // Takes `be`'s hook if it has one for this shape; returns whether it did.
  bool attach(Backend* be, int q_heads, int kv_heads, int head_dim, int sink, int recent, bool max);
  Status run(const std::vector<HeadSelectJob>& jobs, int q_heads, int kv_heads, int head_dim,
             float scale) const {
    return hook->select(jobs, q_heads, kv_heads, head_dim, scale, reduce_max, n_sink, n_recent);
  }
};

class ScoringCache {
 public:
  // [kv_heads, capacity, head_dim] on the host (zeroed) or on `be`.
  Status open(Backend* be, bool on_device, int kv_heads, int capacity, int head_dim);
  bool on_device() const { return host_ == nullptr; }
  const Tensor& tensor() const { return dev_; }  // device only

  // n token rows at positions pos..: `rows` [n, kv_heads, head_dim] on the
  // backend (device cache), `host_rows` the same rows on the host (host cache).
  void write(const Tensor& rows, const float* host_rows, int n, int pos);
  // The cache on the host: itself, or a download into *buf (device cache;
  // evaluation tools asking for host scores, not the engine's step).
  Status host(std::vector<float>* buf, const float** out) const;
  // The whole cache from a host copy (a prefilled cache adopted).
  Status set(const float* all);
  // Checkpoints: a host copy (shared with a host cache, so a checkpoint write
  // can read it after the request has ended), and a restore, `fill` writing a
  // zeroed host [kv_heads, capacity, head_dim] buffer.
  Status snapshot(std::shared_ptr<const std::vector<float>>* out) const;
  Status load(const std::function<void(float*)>& fill);
  uint64_t bytes() const;

 private:
  Backend* be_ = nullptr;
  int64_t kvh_ = 0, cap_ = 0, d_ = 0;
  std::shared_ptr<std::vector<float>> host_;
  Tensor dev_;
};

}  // namespace spx::retrieval
