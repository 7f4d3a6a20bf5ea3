// Continuous batching, as bookkeeping only (no compute, no KV memory): which
// requests are in the batch, and which tokens each one feeds this step.
//
// Policy per step:
//   1. admit queued requests (FIFO) while the batch has room and the engine's
//      admit callback accepts them (it allocates their KV);
//   2. every request past its prompt feeds one decode token;
//   3. requests still in their prompt share prefill_chunk prompt tokens, oldest
//      first (chunked prefill: a long prompt never stalls the decoders for more
//      than one chunk).
// Requests leave with remove() between steps.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

namespace spx {

struct ScheduledWork {
  uint64_t id = 0;
  bool prefill = false;   // prompt tokens [begin, begin + count), else one decode token
  int begin = 0;
  int count = 0;
  bool completes_prompt = false;  // the step ends with the prompt's last token: sample
};

struct StepPlan {
  std::vector<uint64_t> admitted;
  std::vector<ScheduledWork> work;
};

class Scheduler {
 public:
  Scheduler(int max_batch, int prefill_chunk);

  void enqueue(uint64_t id, int prompt_tokens);
  // A queued request whose first `tokens` prompt tokens already have KV (a
  // restored checkpoint): only the rest is prefilled.
  void skip_prefill(uint64_t id, int tokens);
  // Drops a queued or running request; false when unknown.
  bool remove(uint64_t id);
  // admit(id) returns false to stop admitting for this step (e.g. no memory).
  StepPlan plan(const std::function<bool(uint64_t)>& admit);
  // Records that the plan's work ran.
  void complete(const StepPlan& plan);

  int running() const { return static_cast<int>(running_.size()); }
  int queued() const { return static_cast<int>(queue_.size()); }
  bool idle() const { return running_.empty() && queue_.empty(); }

 private:
  struct Entry {
    uint64_t id;
    int prompt;
    int prefilled;
  };
  Entry* find_running(uint64_t id);

  int max_batch_;
  int prefill_chunk_;
  std::deque<Entry> queue_;
  std::vector<Entry> running_;  // admission order
};

}  // namespace spx
