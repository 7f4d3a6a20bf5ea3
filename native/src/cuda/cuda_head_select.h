// The CUDA backend's HeadSelect (backend/backend.h): the retrieval head's
// scores over its device K cache (retrieval_scores_forward) and the top-B
// selection (topk_select_forward) on the backend's stream, batched over the
// step's decode tokens. The [kv_heads, B] selections and the [kv_heads]
// masses come back to the host (one synchronize) only while downloads are on
// (set_download): host slot maps and the fallback rule read them there; with
// the device slot maps and no fallback threshold the step's attention and
// slot maps read them in place (device_selection) and nothing waits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "cuda/ops.h"

namespace spx::cuda {

class DeviceHeadSelect final : public HeadSelect {
 public:
  DeviceHeadSelect() = default;
  ~DeviceHeadSelect() override;
  DeviceHeadSelect(const DeviceHeadSelect&) = delete;
  DeviceHeadSelect& operator=(const DeviceHeadSelect&) = delete;

  void set_stream(int device, cudaStream_t stream) {
    device_ = device;
    stream_ = stream;
  }
  bool supports(int q_heads, int kv_heads, int head_dim) const override;
  Status select(const std::vector<HeadSelectJob>& jobs, int q_heads, int kv_heads, int head_dim,
                float scale, bool reduce_max, int n_sink, int n_recent) override;
  uint64_t launches() const { return launches_; }
  // Whether select() fills the jobs' host selection and mass (blocking) or
  // leaves them untouched, the results only on the device (default: on).
  void set_download(bool on) { download_ = on; }
  bool download() const { return download_; }
  // The device copy of the last select()'s selection for the job whose host
  // `selection` pointer was `key`: [kv_heads, budget] in the output buffer,
  // valid on the stream until the next select() (the device slot maps read
  // it there). *row (may be null): the job's packed index; jobs of one
  // budget are consecutive, in job order. nullptr if no such job.
  const int32_t* device_selection(const int32_t* key, int* row) const;

 private:
  // A device buffer of at least `bytes` (grown after the stream drains).
  Status ensure(void** p, size_t* have, size_t bytes);
  Status ensure_host(void** p, size_t* have, size_t bytes);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  void *q_ = nullptr, *desc_ = nullptr, *scores_ = nullptr, *logits_ = nullptr, *out_ = nullptr;
  size_t q_bytes_ = 0, desc_bytes_ = 0, scores_bytes_ = 0, logits_bytes_ = 0, out_bytes_ = 0;
  void *h_desc_ = nullptr, *h_out_ = nullptr;  // pinned
  size_t h_desc_bytes_ = 0, h_out_bytes_ = 0;
  uint64_t launches_ = 0;
  bool download_ = true;
  // The descriptors' upload from h_desc_ done (without a download nothing
  // else tells the host that h_desc_ may be rewritten).
  cudaEvent_t desc_sent_ = nullptr;
  std::vector<int> order_;
  std::vector<const int32_t*> last_keys_;  // [jobs] host selection pointers, packed order
  std::vector<size_t> last_offsets_;       // [jobs] their element offsets in out_
};

}  // namespace spx::cuda
