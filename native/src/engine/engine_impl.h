// The engine: one model, one backend, one scheduler thread.
//
// Callers' threads only validate and enqueue (submit) or flag (cancel); the
// scheduler thread owns the model, the KV store and the Scheduler, runs the
// steps, and calls the sinks. Shared state (incoming requests, cancels, the
// stats snapshot) sits behind one mutex.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "checkpoint/checkpointer.h"
#include "engine/engine.h"
#include "engine/request_state.h"
#include "kv/kv_store.h"
#include "model/transformer.h"
#include "planner/placement_policy.h"
#include "retrieval/sparse_decoder.h"
#include "scheduler/scheduler.h"

namespace spx {

class EngineImpl final : public Engine {
 public:
  static std::unique_ptr<Engine> create(const EngineOptions& options, Status* status);
  ~EngineImpl() override;

  uint64_t submit(GenerateRequest request, std::shared_ptr<RequestSink> sink,
                  Status* status) override;
  void cancel(uint64_t id) override;
  void checkpoint_now(uint64_t id) override { ckpt_->force(id); }
  uint64_t identity() const override { return identity_; }
  EngineStats stats() const override;
  ModelInfo info() const override;
  void close() override;

 private:
  EngineImpl() = default;
  Status validate(const GenerateRequest& r, const RequestSink* sink) const;
  void run();
  void step();
  bool admit(uint64_t id);
  // Ends a request: frees its KV, drops it from the scheduler, updates the
  // stats, then tells its sink (error empty: on_done).
  void finish(RequestState* r, const std::string& reason, const std::string& error = "");
  void publish_stats();
  // Adaptive placement: the planner's inputs once at open, then the host
  // layers for the sparse requests about to run, before each step.
  Status configure_placement();
  void update_placement();
  // After an unexpected exception (e.g. out of memory) every request ends
  // with on_error; the engine keeps serving new ones.
  void fail_all(const std::string& message);

  EngineOptions options_;
  ModelInfo info_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<KvStore> kv_;
  std::unique_ptr<Scheduler> sched_;
  std::unique_ptr<Checkpointer> ckpt_;  // checkpoints (native/src/checkpoint)
  uint64_t identity_ = 0;
  std::unique_ptr<retrieval::SparseDecoder> sparse_;  // SpeContext (requests with a budget)
  planner::PlacementPolicy placement_;                 // host-tier layers as sequences grow
  std::map<uint64_t, std::unique_ptr<RequestState>> requests_;  // scheduler thread only

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<RequestState>> incoming_;
  std::vector<uint64_t> cancels_;
  bool stopping_ = false;
  bool closed_ = false;
  uint64_t next_id_ = 1;
  EngineStats stats_;
  std::thread thread_;
  std::mutex close_mu_;
};

}  // namespace spx
