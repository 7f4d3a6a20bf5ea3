// A small fork-join thread pool for the CPU kernels.
//
// Why not OpenMP: inside a Node process on a shared machine, OpenMP's spinning
// workers burn cores between kernels and slow everything when the machine is
// oversubscribed (a tiny-model test went from 5 ms to 1.6 s), and its thread
// count is a per-thread global. This pool spins briefly, then sleeps, and is
// owned by one engine.
//
// Kernels call spx::parallel_for(); it uses the pool bound to the calling
// thread (ThreadPool::Bind), or runs serially when none is bound, so the
// kernels stay plain functions that any test can call.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace spx {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // threads - 1 workers; the caller is one more
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(begin, end) over [0, n) split into contiguous blocks of at least
  // `grain` items; returns when all are done.
  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  // Binds a pool to the current thread for parallel_for() while in scope.
  class Bind {
   public:
    explicit Bind(ThreadPool* pool);
    ~Bind();

   private:
    ThreadPool* prev_;
  };

 private:
  void worker_loop();
  void work_on_current();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  uint64_t generation_ = 0;
  std::atomic<uint64_t> published_{0};
  // The current job.
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, block_ = 1;
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};  // workers still inside the current job
};

// Runs fn over [0, n) on the current thread's pool (or serially).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);
// Threads of the current thread's pool (1 when none is bound).
int current_threads();
// Cores this process may run on (its CPU affinity mask), at least 1.
int available_cores();

}  // namespace spx
