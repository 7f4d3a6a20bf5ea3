// The engine's side of adaptive placement (paper section 3, issue 4/6): how
// many of the target's last layers keep their KV in the host tier for the
// sparse requests running now. Built once when the engine opens, from the
// device memory it may use (cudaMemGetInfo, or a configured pool on the CPU
// backend), the weights it loaded and its own step buffers; asked before
// every step with the batch's sparse requests, budget and longest sequence.
//
// Layers only move towards the host while sparse requests run (a layer
// already moved never comes back mid-generation, which would need its full
// KV on the device again); with none running, the count starts over.
#pragma once

#include <cstdint>
#include <string>

#include "planner/memory_plan.h"

namespace spx::planner {

class PlacementPolicy {
 public:
  // base: model shape, gpu_bytes and measured overhead; requests and budget
  // are filled per step. gpu_bytes <= 0 disables placement (all device).
  // Returns false with *error on an invalid base.
  bool configure(const PlanInput& base, std::string* error);
  bool enabled() const { return enabled_; }

  // Host layers for `requests` sparse requests of budget up to `budget`
  // whose longest sequence is `max_len` tokens, given `current` host layers.
  int host_layers(int requests, int budget, int64_t max_len, int current) const;

  const PlanInput& base() const { return base_; }
  int64_t fixed_bytes() const { return fixed_bytes_; }  // weights + overhead

 private:
  PlanInput base_;
  bool enabled_ = false;
  int64_t fixed_bytes_ = 0;
};

}  // namespace spx::planner
