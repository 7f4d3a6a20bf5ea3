// Everything the engine keeps about one request while it is queued or running.
#pragma once

#include <chrono>
#include <memory>
#include <vector>

#include "checkpoint/checkpoint_state.h"
#include "engine/engine.h"
#include "kv/kv_store.h"
#include "sampling/sampler.h"

namespace spx {

using Clock = std::chrono::steady_clock;

struct RequestState {
  RequestState(uint64_t id_, GenerateRequest req_, std::shared_ptr<RequestSink> sink_)
      : id(id_), req(std::move(req_)), sink(std::move(sink_)), sampler(req.sampling) {}

  uint64_t id;
  GenerateRequest req;
  std::shared_ptr<RequestSink> sink;
  Sampler sampler;
  KvSequence* kv = nullptr;   // owned by the KvStore
  int kv_capacity = 0;
  std::vector<int32_t> generated;
  RequestStats stats;
  Clock::time_point prefill_start{}, first_token{};
  bool prefill_started = false;
  CheckpointState ckpt;
};

}  // namespace spx
