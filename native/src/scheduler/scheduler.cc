#include "scheduler/scheduler.h"

#include <algorithm>

namespace spx {

Scheduler::Scheduler(int max_batch, int prefill_chunk)
    : max_batch_(std::max(1, max_batch)), prefill_chunk_(std::max(1, prefill_chunk)) {}

void Scheduler::enqueue(uint64_t id, int prompt_tokens) {
  queue_.push_back(Entry{id, prompt_tokens, 0});
}

void Scheduler::skip_prefill(uint64_t id, int tokens) {
  for (auto& e : queue_)
    if (e.id == id) e.prefilled = std::min(tokens, e.prompt - 1);
}

bool Scheduler::remove(uint64_t id) {
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->id == id) {
      queue_.erase(it);
      return true;
    }
  }
  for (auto it = running_.begin(); it != running_.end(); ++it) {
    if (it->id == id) {
      running_.erase(it);
      return true;
    }
  }
  return false;
}

Scheduler::Entry* Scheduler::find_running(uint64_t id) {
  for (auto& e : running_)
    if (e.id == id) return &e;
  return nullptr;
}

StepPlan Scheduler::plan(const std::function<bool(uint64_t)>& admit) {
  StepPlan plan;
  while (!queue_.empty() && static_cast<int>(running_.size()) < max_batch_) {
    if (!admit(queue_.front().id)) break;
    plan.admitted.push_back(queue_.front().id);
    running_.push_back(queue_.front());
    queue_.pop_front();
  }
  for (const auto& e : running_) {
    if (e.prefilled >= e.prompt) plan.work.push_back(ScheduledWork{e.id, false, 0, 1, false});
  }
  int budget = prefill_chunk_;
  for (const auto& e : running_) {
    if (budget == 0) break;
    if (e.prefilled >= e.prompt) continue;
    const int count = std::min(budget, e.prompt - e.prefilled);
    plan.work.push_back(
        ScheduledWork{e.id, true, e.prefilled, count, e.prefilled + count == e.prompt});
    budget -= count;
  }
  return plan;
}

void Scheduler::complete(const StepPlan& plan) {
  for (const auto& w : plan.work) {
    if (!w.prefill) continue;
    if (Entry* e = find_running(w.id)) e->prefilled = w.begin + w.count;
  }
}

}  // namespace spx
