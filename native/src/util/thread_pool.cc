#include "util/thread_pool.h"

#include <sched.h>

#include <algorithm>

namespace spx {

namespace {
thread_local ThreadPool* t_pool = nullptr;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < std::max(1, threads); ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::work_on_current() {
  while (true) {
    const int64_t b = next_.fetch_add(1, std::memory_order_relaxed);
    const int64_t begin = b * block_;
    if (begin >= n_) break;
    (*fn_)(begin, std::min(n_, begin + block_));
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  while (true) {
    // Spin a little: kernels come back to back within a step.
    for (int i = 0; i < 4000 && published_.load(std::memory_order_acquire) == seen; ++i) cpu_relax();
    if (published_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
    }
    seen = published_.load(std::memory_order_acquire);
    work_on_current();
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t parts = std::min<int64_t>(threads(), (n + std::max<int64_t>(grain, 1) - 1) /
                                                         std::max<int64_t>(grain, 1));
  if (parts <= 1 || workers_.empty()) {
    fn(0, n);
    return;
  }
  fn_ = &fn;
  n_ = n;
  // A few blocks per thread balance uneven work without much overhead.
  block_ = std::max<int64_t>(std::max<int64_t>(grain, 1), (n + 4 * threads() - 1) / (4 * threads()));
  next_.store(0, std::memory_order_relaxed);
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++generation_;
    published_.store(generation_, std::memory_order_release);
  }
  cv_.notify_all();
  work_on_current();
  // Workers that were descheduled (a busy machine) get the core back instead
  // of the caller spinning on it.
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < 2000) cpu_relax();
    else std::this_thread::yield();
  }
}

ThreadPool::Bind::Bind(ThreadPool* pool) : prev_(t_pool) { t_pool = pool; }
ThreadPool::Bind::~Bind() { t_pool = prev_; }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (t_pool != nullptr) {
    t_pool->run(n, grain, fn);
  } else if (n > 0) {
    fn(0, n);
  }
}

int current_threads() { return t_pool ? t_pool->threads() : 1; }

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace spx
