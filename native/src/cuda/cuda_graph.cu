// The recorded decode step's buffers and graph; see cuda_graph.h.
#include "cuda/cuda_graph.h"

#include <algorithm>
#include <cstring>

#include "cuda/check.h"
#include "cuda/kernels/kv_write_rows.cuh"

namespace spx::cuda {

cudaError_t kv_write_rows_forward(const KvRowDst* dst, const bf16* k, const bf16* v,
                                  const int32_t* positions, int rows, int kv_heads, int head_dim,
                                  cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (kv_heads <= 0 || head_dim <= 0) return cudaErrorInvalidValue;
  kv_write_rows_forward_kernel<<<rows, 256, 0, stream>>>(dst, k, v, positions, kv_heads, head_dim);
  return cudaGetLastError();
}

namespace {
size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }
}  // namespace

DecodeGraph::~DecodeGraph() {
  drop();
  if (copied_) cudaEventDestroy(copied_);
  cudaFree(dev_);
  cudaFreeHost(host_);
  cudaFree(arena_dev_);
  cudaFreeHost(arena_host_);
}

void DecodeGraph::drop() {
  if (exec_) cudaGraphExecDestroy(exec_);
  exec_ = nullptr;
  key_.clear();
}

Status DecodeGraph::set_inputs(const DecodeStepInputs& in, cudaStream_t stream) {
  if (in.n <= 0 || in.half <= 0 || !in.ids || !in.positions || !in.cos || !in.sin)
    return Status::Error("decode step inputs are empty");
  if (in.n > cap_ || in.half != cap_half_) {
    // New addresses: the recorded step would read the old buffers.
    SPX_CUDA_TRY(cudaStreamSynchronize(stream));
    drop();
    cudaFree(dev_);
    cudaFreeHost(host_);
    dev_ = host_ = nullptr;
    const int cap = std::max({in.n, 2 * cap_, 8});
    cap_ = 0;  // until both buffers exist
    const size_t ints = aligned(static_cast<size_t>(cap) * sizeof(int32_t));
    const size_t table = aligned(static_cast<size_t>(cap) * in.half * sizeof(float));
    off_ids_ = 0;
    off_pos_ = ints;
    off_len_ = 2 * ints;
    off_cos_ = 3 * ints;
    off_sin_ = off_cos_ + table;
    bytes_ = off_sin_ + table;
    SPX_CUDA_TRY(cudaMalloc(&dev_, bytes_));
    SPX_CUDA_TRY(cudaMallocHost(&host_, bytes_));
    if (!copied_) SPX_CUDA_TRY(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
    cap_ = cap;
    cap_half_ = in.half;
  }
  SPX_CUDA_TRY(cudaEventSynchronize(copied_));  // the last copy has read host_
  n_ = in.n;
  half_ = in.half;
  const size_t n = static_cast<size_t>(in.n), t = n * static_cast<size_t>(in.half);
  std::memcpy(host_ + off_ids_, in.ids, n * sizeof(int32_t));
  std::memcpy(host_ + off_pos_, in.positions, n * sizeof(int32_t));
  auto* len = reinterpret_cast<int32_t*>(host_ + off_len_);
  for (size_t i = 0; i < n; ++i) len[i] = in.positions[i] + 1;
  std::memcpy(host_ + off_cos_, in.cos, t * sizeof(float));
  std::memcpy(host_ + off_sin_, in.sin, t * sizeof(float));
  // One copy, up to the last sin row used.
  SPX_CUDA_TRY(cudaMemcpyAsync(dev_, host_, off_sin_ + t * sizeof(float), cudaMemcpyHostToDevice,
                               stream));
  SPX_CUDA_TRY(cudaEventRecord(copied_, stream));
  return Status::Ok();
}

Status DecodeGraph::begin(cudaStream_t stream) {
  if (!arena_dev_ || !arena_host_) {  // first use, or an allocation failed before
    cudaFree(arena_dev_);
    cudaFreeHost(arena_host_);
    arena_dev_ = arena_host_ = nullptr;
    SPX_CUDA_TRY(cudaMalloc(&arena_dev_, kArenaBytes));
    SPX_CUDA_TRY(cudaMallocHost(&arena_host_, kArenaBytes));
  }
  // The arena is rewritten: the previous graph's replays must be done. The
  // instantiated graph stays for end() to update in place.
  SPX_CUDA_TRY(cudaStreamSynchronize(stream));
  key_.clear();
  arena_used_ = 0;
  why_.clear();
  // Thread-local: the checkpoint writer's thread keeps working meanwhile.
  SPX_CUDA_TRY(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  recording_ = true;
  return Status::Ok();
}

Status DecodeGraph::end(cudaStream_t stream, const std::vector<uint64_t>& key) {
  recording_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t e = cudaStreamEndCapture(stream, &graph);
  Status st;
  if (!why_.empty()) {
    st = Status::Error(why_);
  } else if (e != cudaSuccess) {
    st = CudaStatus(e, "cudaStreamEndCapture", __FILE__, __LINE__);
  } else {
    // A batch of the same size over other caches (a request ended, another
    // joined) has the same topology: updating the parameters of the
    // instantiated graph is cheaper than instantiating it again.
    // Another number of nodes (a sparse step's run of mixed budgets adds
    // copies) cannot be updated: instantiate without asking, since a refused
    // update is an API error that compute-sanitizer reports.
    size_t nodes = 0;
    if (cudaGraphGetNodes(graph, nullptr, &nodes) != cudaSuccess) nodes = 0;
    cudaGraphExecUpdateResultInfo info;
    if (exec_ == nullptr || nodes == 0 || nodes != exec_nodes_ ||
        cudaGraphExecUpdate(exec_, graph, &info) != cudaSuccess) {
      cudaGetLastError();  // a refused update is not an error
      if (exec_) cudaGraphExecDestroy(exec_);
      exec_ = nullptr;
      const cudaError_t ie = cudaGraphInstantiate(&exec_, graph, 0);
      if (ie != cudaSuccess) {
        exec_ = nullptr;
        st = CudaStatus(ie, "cudaGraphInstantiate", __FILE__, __LINE__);
      }
    }
    exec_nodes_ = nodes;
  }
  if (graph) cudaGraphDestroy(graph);
  if (!st.ok) {
    cudaGetLastError();  // a failed capture leaves nothing sticky behind
    drop();
    return st;
  }
  // Ordered before every replay on this stream.
  if (arena_used_ > 0)
    SPX_CUDA_TRY(cudaMemcpyAsync(arena_dev_, arena_host_, arena_used_, cudaMemcpyHostToDevice,
                                 stream));
  key_ = key;
  return Status::Ok();
}

Status DecodeGraph::replay(cudaStream_t stream) {
  if (!exec_) return Status::Error("no recorded decode step to replay");
  SPX_CUDA_TRY(cudaGraphLaunch(exec_, stream));
  return Status::Ok();
}

const void* DecodeGraph::stage(const void* host, size_t bytes) {
  const size_t span = aligned(bytes);
  if (arena_used_ + span > kArenaBytes) {
    fail("the decode step's fixed arrays exceed the graph arena (" +
         std::to_string(kArenaBytes) + " bytes)");
    return nullptr;
  }
  std::memcpy(arena_host_ + arena_used_, host, bytes);
  const void* d = arena_dev_ + arena_used_;
  arena_used_ += span;
  return d;
}

}  // namespace spx::cuda
