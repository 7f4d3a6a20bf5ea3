// Sparse (SpeContext) decode attention for the CUDA backend: decode segments
// that carry a selection (AttentionSegment::selection, host [kv_heads, B],
// ascending, -1 past the count; or device_selection, a host-tier layer's
// slot list made by the device slot maps, all B entries valid) attend only
// to those cache positions. Device selections take the kernel path, read
// in place when a run's are one [rows, kv_heads, B] array.
//
// A run of such segments in consecutive query rows becomes one launch. The
// selections are staged through a pinned buffer; the kernel is either the
// sparse flash-decoding kernel (sparse_decode_attention_forward, which
// gathers inside the kernel) or, with SPX_SPARSE_ATTENTION=gather, a gather of
// the selected rows into a compact cache followed by the dense decode kernel
// (the simple path; kept as a cross-check). Both read the cache where it is:
// a host-tier layer's segment points at its slot buffer with slot indices.
//
// Owned by the CudaBackend and run on its stream; errors come back as Status.
//
// Recorded decode steps (SPX_SPARSE_GRAPHS=1, model/transformer.h): a run of
// device selections can be captured into the backend's DecodeGraph. The
// selections are read where they are at every replay (the head rewrites
// them in place before each); the counts and cache descriptors, fixed for
// the graph's key, go into the graph's arena; a workspace that would have
// to grow fails the capture (the step then runs eagerly).
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include "backend/backend.h"
#include "cuda/cuda_graph.h"
#include "cuda/ops.h"
#include "cuda/stage_ring.h"

namespace spx::cuda {

class SparseAttention {
 public:
  SparseAttention();  // reads SPX_SPARSE_ATTENTION (gather | kernel, the default)
  ~SparseAttention();
  SparseAttention(const SparseAttention&) = delete;
  SparseAttention& operator=(const SparseAttention&) = delete;

  void set_device(int num_sms) { num_sms_ = num_sms; }
  // segs[begin, end): decode segments (n_q == 1) with a selection, in
  // consecutive rows of q / out ([rows, q_heads, head_dim]).
  // graph: the backend's DecodeGraph while it records (device selections
  // only), else nullptr.
  Status run(const Tensor& q, const std::vector<AttentionSegment>& segs, size_t begin, size_t end,
             float scale, Tensor* out, cudaStream_t stream, DecodeGraph* graph = nullptr);

  // Launches served so far by each path (tests check which one ran).
  uint64_t kernel_launches() const { return kernel_launches_; }
  uint64_t gather_launches() const { return gather_launches_; }
  // Bumped whenever the decode partials move (a recorded step that used the
  // old ones must not be replayed).
  uint64_t workspace_moves() const { return ws_moves_; }

 private:
  Status stage(const void* host, size_t bytes, void** dev, cudaStream_t stream);
  Status ensure(void** p, size_t* have, size_t bytes, cudaStream_t stream);
  // Splits and partials for `batch` requests of up to max_len keys; the
  // splits cover `cover` (>= max_len) keys.
  Status workspace(int batch, int heads, int kv_heads, int head_dim, int max_len, int cover,
                   cudaStream_t stream, int* split, DecodeAttentionWorkspace* w);
  Status run_kernel(const Tensor& q, const std::vector<AttentionSegment>& segs, size_t begin,
                    size_t end, float scale, Tensor* out, cudaStream_t stream, DecodeGraph* graph);
  Status run_gather(const Tensor& q, const std::vector<AttentionSegment>& segs, size_t begin,
                    size_t end, float scale, Tensor* out, cudaStream_t stream);

  int num_sms_ = 1;
  bool gather_ = false;
  StageRing ring_;  // selections and descriptors, on the backend's stream
  void* ws_ = nullptr;  // decode partials
  size_t ws_bytes_ = 0;
  uint64_t ws_moves_ = 0;
  void* compact_ = nullptr;  // gather path: [rows, head_dim] K then V
  size_t compact_bytes_ = 0;
  uint64_t kernel_launches_ = 0, gather_launches_ = 0;
  DecodeGraph* graph_ = nullptr;  // recording: stage() writes into its arena
  // Host-side packing, reused.
  std::vector<int32_t> sel_, counts_, rows_;
  std::vector<DecodeSeq> seqs_;
};

// The number of valid (non-negative) entries of a [kv_heads, budget]
// selection; -1 if heads disagree (the selector gives every head
// min(T, B) entries).
int selection_count(const int32_t* selection, int kv_heads, int budget);

}  // namespace spx::cuda
