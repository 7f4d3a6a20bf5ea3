// Small per-call host arrays (selections, copy lists, descriptors) staged
// through pinned memory into a device mirror for one stream. A ring: it waits
// for the stream before wrapping (or growing), so a queued copy never reads
// bytes that were overwritten. Used by the SpeContext paths
// (cuda_sparse_attention.cu, cuda_tier.cu); nvcc-compiled files only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "cuda/check.h"

namespace spx::cuda {

class StageRing {
 public:
  StageRing() = default;
  StageRing(const StageRing&) = delete;
  StageRing& operator=(const StageRing&) = delete;
  ~StageRing() {
    cudaFreeHost(host_);
    cudaFree(dev_);
  }

  // Copies `bytes` from `src` to device memory on `stream`; *dev is where.
  Status stage(const void* src, size_t bytes, cudaStream_t stream, void** dev) {
    const size_t span = (bytes + 255) / 256 * 256;  // keeps every entry aligned
    if (pos_ + span > size_) {
      SPX_CUDA_TRY(cudaStreamSynchronize(stream));
      pos_ = 0;
      if (span > size_) {
        cudaFreeHost(host_);
        cudaFree(dev_);
        host_ = dev_ = nullptr;
        size_ = 0;
        const size_t want = std::max<size_t>(4 * span, 1u << 20);
        SPX_CUDA_TRY(cudaMallocHost(&host_, want));
        SPX_CUDA_TRY(cudaMalloc(&dev_, want));
        size_ = want;
      }
    }
    char* h = static_cast<char*>(host_) + pos_;
    char* d = static_cast<char*>(dev_) + pos_;
    pos_ += span;
    std::memcpy(h, src, bytes);
    SPX_CUDA_TRY(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream));
    *dev = d;
    return Status::Ok();
  }

 private:
  void* host_ = nullptr;
  void* dev_ = nullptr;
  size_t size_ = 0, pos_ = 0;
};

}  // namespace spx::cuda
