// The CUDA backend's recorded decode step (backend.h, StepGraph): fixed
// device buffers for the step's inputs, refreshed from a pinned slot before
// every replay; an arena for what the recorded kernels read that is fixed
// for the graph's life (decode descriptors), uploaded once after capture;
// and the graph itself, kept under its key. cuda_backend.cu drives it;
// nvcc-compiled files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "cuda/ops.h"

namespace spx::cuda {

// Where one row of a batched KV write goes.
struct KvRowDst {
  bf16* k;  // [kv_heads, capacity, head_dim]
  bf16* v;  // [kv_heads, capacity, head_dim]
  int64_t capacity;
};
cudaError_t kv_write_rows_forward(const KvRowDst* dst,       // [rows], device memory
                                  const bf16* k,             // [rows, kv_heads, head_dim]
                                  const bf16* v,             // [rows, kv_heads, head_dim]
                                  const int32_t* positions,  // [rows], device memory
                                  int rows, int kv_heads, int head_dim, cudaStream_t stream);

class DecodeGraph {
 public:
  DecodeGraph() = default;
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;
  ~DecodeGraph();

  // Copies the inputs into the device buffers on `stream` (grown when the
  // batch is larger than any before; growing drops the graph).
  Status set_inputs(const DecodeStepInputs& in, cudaStream_t stream);
  bool has(const std::vector<uint64_t>& key) const { return exec_ != nullptr && key == key_; }
  Status begin(cudaStream_t stream);
  // Ends the capture; instantiates and keeps the graph under `key` unless
  // the capture failed (fail() or a CUDA error).
  Status end(cudaStream_t stream, const std::vector<uint64_t>& key);
  Status replay(cudaStream_t stream);
  void drop();  // forgets the graph
  bool recording() const { return recording_; }
  // Marks the capture failed (something the recorded step cannot hold).
  void fail(const std::string& why) {
    if (why_.empty()) why_ = why;
  }
  // While recording: `bytes` of `host` into the arena; returns the device
  // address, or nullptr (capture failed) when the arena is full.
  const void* stage(const void* host, size_t bytes);

  // The input buffers (device).
  const int32_t* ids() const { return reinterpret_cast<const int32_t*>(dev_ + off_ids_); }
  const int32_t* positions() const { return reinterpret_cast<const int32_t*>(dev_ + off_pos_); }
  const int32_t* lengths() const { return reinterpret_cast<const int32_t*>(dev_ + off_len_); }
  const float* cos() const { return reinterpret_cast<const float*>(dev_ + off_cos_); }
  const float* sin() const { return reinterpret_cast<const float*>(dev_ + off_sin_); }
  int rows() const { return n_; }
  int half() const { return half_; }

 private:
  static constexpr size_t kArenaBytes = 4u << 20;

  // Inputs: [ids | positions | lengths | cos | sin] for up to cap_ rows.
  char* dev_ = nullptr;
  char* host_ = nullptr;  // pinned
  size_t bytes_ = 0, off_ids_ = 0, off_pos_ = 0, off_len_ = 0, off_cos_ = 0, off_sin_ = 0;
  int cap_ = 0, cap_half_ = 0, n_ = 0, half_ = 0;
  cudaEvent_t copied_ = nullptr;  // the last input copy has read host_
  // Arena of the recorded step's fixed arrays.
  char* arena_dev_ = nullptr;
  char* arena_host_ = nullptr;  // pinned
  size_t arena_used_ = 0;
  bool recording_ = false;
  std::string why_;
  cudaGraphExec_t exec_ = nullptr;
  size_t exec_nodes_ = 0;  // nodes of the graph behind exec_
  std::vector<uint64_t> key_;
};

}  // namespace spx::cuda
