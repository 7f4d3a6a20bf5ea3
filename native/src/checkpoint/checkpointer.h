// The engine's side of checkpoints, run on its scheduler thread:
//   restore     at admission, load a request's KV prefix from its file;
//   after_step  snapshot the requests whose cadence is due (or forced) and
//               hand the snapshots to the writer thread;
//   deliver     pass finished writes to the live requests' sinks.
// Keeping this out of engine_impl leaves the engine loop a few calls long.
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "backend/backend.h"
#include "checkpoint/checkpoint_writer.h"
#include "engine/request_state.h"
#include "retrieval/pruned_head.h"

namespace spx {

class Checkpointer {
 public:
  using Requests = std::map<uint64_t, std::unique_ptr<RequestState>>;

  // wake: called from any thread when deliver() has work (takes the engine's lock).
  Checkpointer(Backend* backend, uint64_t identity, CheckpointGeometry geometry,
               std::function<void()> wake);
  ~Checkpointer();

  // The sparse decoder's retrieval head: requests with a budget then carry
  // its state in their checkpoints and restore it (without it they refuse to
  // restore and recompute).
  void set_head(retrieval::PrunedHead* head) { head_ = head; }

  // Validates a restore request's spec (submit time).
  static Status validate(const GenerateRequest& r);
  // r's KV is allocated and empty. Returns the positions restored (0: prefill
  // everything); a missing or bad file is never an error, its reason goes to
  // r->stats.restore_error.
  int restore(RequestState* r);
  void after_step(Requests& requests);
  void deliver(Requests& requests);
  // r is ending: waits (bounded) for its write in flight, if any, and passes
  // the event to its sink, so the request's stats count it and nothing writes
  // the file after the request has ended (its owner may delete it then).
  void settle(RequestState* r);
  // Any thread.
  void force(uint64_t id);
  bool has_work();

 private:
  // nullptr when the head's state does not cover the n positions yet.
  std::unique_ptr<CheckpointJob> snapshot(RequestState* r, int n);
  // The file geometry of r: the target's, plus the head's when r has a budget.
  CheckpointGeometry geometry_for(const RequestState* r) const;
  const float* cache_rows(const Tensor& t, CheckpointJob* job);

  Backend* backend_;
  uint64_t identity_;
  CheckpointGeometry geometry_;
  retrieval::PrunedHead* head_ = nullptr;
  std::function<void()> wake_;
  std::mutex mu_;
  std::condition_variable written_;  // a result joined done_
  std::vector<CheckpointResult> done_;
  std::set<uint64_t> forced_;
  std::unique_ptr<CheckpointWriter> writer_;  // last: joined first
};

}  // namespace spx
