#include "checkpoint/checkpoint_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

namespace spx {

namespace {
CheckpointEvent write_job(CheckpointJob& job) {
  const auto t0 = std::chrono::steady_clock::now();
  CheckpointEvent ev;
  if (job.fetch) {
    const Status fs = job.fetch(&job);
    job.fetch_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!fs.ok) {
      ev.path = job.path;
      ev.ok = false;
      ev.message = "checkpoint copy off the device failed: " + fs.message;
      return ev;
    }
  }
  ev.path = job.path;
  ev.tokens = job.segment.to;
  ev.generated = job.segment.generated;
  ev.stall_ms = job.stall_ms;
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (job.fresh ? O_TRUNC : O_APPEND);
  const int fd = ::open(job.path.c_str(), flags, 0600);
  if (fd < 0) {
    ev.ok = false;
    ev.message = "cannot open checkpoint " + job.path + ": " + std::strerror(errno);
    return ev;
  }
  Status st = Status::Ok();
  if (job.fresh) st = write_checkpoint_header(fd, job.header);
  uint64_t bytes = job.fresh ? (job.header.version == 1 ? kCheckpointHeaderBytesV1 : kCheckpointHeaderBytes) : 0;
  uint64_t seg = 0;
  if (st.ok) st = append_checkpoint_segment(fd, job.header.geometry, job.segment, &seg, job.header.kv_dtype);
  bytes += seg;
  struct stat sb {};
  if (::fstat(fd, &sb) == 0) ev.file_bytes = static_cast<uint64_t>(sb.st_size);
  ::close(fd);
  ev.ok = st.ok;
  ev.message = st.message;
  ev.bytes = bytes;
  ev.write_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return ev;
}
}  // namespace

CheckpointWriter::CheckpointWriter(std::function<void(CheckpointResult)> done)
    : done_(std::move(done)), thread_([this] { run(); }) {}

CheckpointWriter::~CheckpointWriter() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void CheckpointWriter::push(std::unique_ptr<CheckpointJob> job) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_all();
}

void CheckpointWriter::run() {
  while (true) {
    std::unique_ptr<CheckpointJob> job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, and everything queued is written
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    CheckpointResult r;
    r.request_id = job->request_id;
    try {
      r.event = write_job(*job);
    } catch (const std::exception& e) {
      r.event.ok = false;
      r.event.message = std::string("checkpoint write failed: ") + e.what();
    }
    job.reset();  // releases the tensors before the engine hears about it
    done_(std::move(r));
  }
}

}  // namespace spx
