// The thread that writes checkpoint segments, so the engine's scheduler
// thread only takes a snapshot (tensor handles and a few ints) between steps.
//
// A snapshot holds shared ownership of the request's K/V tensors: rows below
// the snapshot's `to` never change once written, so the writer reads them
// while the engine keeps appending rows above, and a request that ends
// meanwhile keeps its memory until its last segment is written.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/kv_checkpoint.h"

namespace spx {

struct CheckpointJob {
  uint64_t request_id = 0;
  std::string path;
  bool fresh = false;  // first segment: truncate and write the header
  CheckpointHeader header;
  std::vector<int32_t> tokens;  // positions [segment.from, segment.to)
  SegmentSource segment;        // cache pointers into `keep` / `host`
  std::vector<std::shared_ptr<void>> keep;   // owners of the engine's tensors
  std::vector<std::vector<float>> host;      // copies, for device backends
  std::vector<std::vector<uint8_t>> raw;     // device rows fetched by `fetch`
  // Run on the writer thread before writing (device backends: copy the
  // new rows off the device, so the engine's thread does not wait on it).
  std::function<Status(CheckpointJob*)> fetch;
  double stall_ms = 0;
  double fetch_ms = 0;
};

struct CheckpointResult {
  uint64_t request_id = 0;
  CheckpointEvent event;
};

class CheckpointWriter {
 public:
  // done: called on the writer thread after each job.
  explicit CheckpointWriter(std::function<void(CheckpointResult)> done);
  // Writes what is queued, then joins.
  ~CheckpointWriter();
  void push(std::unique_ptr<CheckpointJob> job);

 private:
  void run();
  std::function<void(CheckpointResult)> done_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<CheckpointJob>> jobs_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace spx
