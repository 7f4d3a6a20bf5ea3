// The CUDA backend behind the engine's Backend interface (backend/backend.h).
//
// Tensors live in device memory as bf16 whatever dtype the model asks for
// (the interface speaks f32 only at upload/download, where we convert on the
// device); GEMMs go through cuBLASLt, everything else through the kernels in
// kernels/*.cuh. All work is queued on one stream.
//
// The interface's kernel calls return void, so a failing CUDA call is kept
// as a sticky Status (the first one, with file, line and CUDA's message) and
// returned by the next alloc / upload / download, which every forward ends
// with. Nothing here aborts the process.
//
// Small per-step host arrays (token ids, decode descriptors, row lists) go
// through a pinned ring so the copies stay asynchronous.
//
// The dense decode step can be recorded as a CUDA graph and replayed
// (StepGraph, cuda_graph.h): while recording, per-step values come from
// fixed input buffers and the fixed arrays from the graph's arena instead of
// the ring, and nothing may synchronise or allocate (such a call fails the
// capture, and the caller runs the step eagerly).
#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/registry.h"
#include "cuda/argmax_rows.h"
#include "cuda/check.h"
#include "cuda/cuda_graph.h"
#include "cuda/cuda_head_select.h"
#include "cuda/cuda_sparse_attention.h"
#include "cuda/gemm.h"
#include "cuda/ops.h"

namespace spx {
namespace {

using cuda::bf16;

// memcpy of a staging chunk on a few threads: one core copies pageable
// memory at several GB/s, below what the DMA engine takes, so a multi-GB
// checkpoint transfer would be bound by the host copy.
void copy_chunk(void* dst, const void* src, size_t n) {
  constexpr size_t kPiece = 4u << 20;
  const size_t pieces = std::min<size_t>(4, n / kPiece);
  if (pieces <= 1) {
    std::memcpy(dst, src, n);
    return;
  }
  const size_t step = (n + pieces - 1) / pieces;
  std::vector<std::thread> helpers;
  for (size_t i = 1; i < pieces; ++i)
    helpers.emplace_back([=] {
      const size_t a = i * step, m = std::min(n, a + step) - a;
      std::memcpy(static_cast<char*>(dst) + a, static_cast<const char*>(src) + a, m);
    });
  std::memcpy(dst, src, step);
  for (std::thread& t : helpers) t.join();
}

class CudaBackend final : public Backend, public StepGraph {
 public:
  ~CudaBackend() override {
    if (stream_) cudaStreamSynchronize(stream_);
    cudaFree(scratch_);
    cudaFree(small_dev_);
    cudaFree(ws_);
    cudaFree(ids_dev_);
    cudaFreeHost(ids_host_);
    cudaFreeHost(ring_);
    for (int i = 0; i < 2; ++i) {
      cudaFreeHost(stage_[i]);
      if (stage_done_[i]) cudaEventDestroy(stage_done_[i]);
      cudaFreeHost(read_stage_[i]);
      if (read_done_[i]) cudaEventDestroy(read_done_[i]);
    }
    if (read_fence_) cudaEventDestroy(read_fence_);
    if (read_stream_) cudaStreamDestroy(read_stream_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  Status init(int device) {
    device_ = device;
    SPX_CUDA_TRY(cudaSetDevice(device));
    SPX_CUDA_TRY(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device));
    sparse_.set_device(num_sms_);
    SPX_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    SPX_CUDA_TRY(cudaEventCreateWithFlags(&read_fence_, cudaEventDisableTiming));
    head_select_.set_stream(device, stream_);
    SPX_CUDA_TRY(cudaMallocHost(&ring_, kRingBytes));
    SPX_CUDA_TRY(cudaMalloc(&small_dev_, kRingBytes));
    return gemm_.init();
  }

  std::string name() const override { return "cuda"; }
  // For the SpeContext host tier (cuda_tier.cu), which orders its copies
  // against this stream.
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }

  Status alloc(const std::vector<int64_t>& shape, DType, Tensor* out) override {
    if (!err_.ok) return err_;
    if (graph_.recording()) return not_while_recording("alloc");
    int64_t n = 1;
    for (int64_t d : shape) {
      if (d < 0) return Status::Error("negative tensor dimension");
      if (__builtin_mul_overflow(n, d, &n)) return Status::Error("tensor too large");
    }
    SPX_CUDA_TRY(cudaSetDevice(device_));
    void* p = nullptr;
    const size_t bytes = std::max<size_t>(16, static_cast<size_t>(n) * sizeof(bf16));
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear it: out of memory is reported, not sticky
      return Status::Error("out of GPU memory allocating " + std::to_string(bytes) +
                           " bytes on cuda:" + std::to_string(device_) + " (" +
                           cudaGetErrorString(e) + ")");
    }
    out->data = p;
    out->dtype = DType::BF16;
    out->shape = shape;
    out->owner = std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
    return Status::Ok();
  }

  Status upload(const float* host, Tensor* dst) override {
    if (!err_.ok) return err_;
    if (graph_.recording()) return not_while_recording("upload");
    SPX_CUDA_TRY(cudaSetDevice(device_));
    const size_t n = static_cast<size_t>(dst->numel());
    SPX_STATUS_TRY(ensure_scratch(n * sizeof(float)));
    SPX_CUDA_TRY(cudaMemcpyAsync(scratch_, host, n * sizeof(float), cudaMemcpyHostToDevice,
                                 stream_));
    SPX_CUDA_TRY(cuda::f32_to_bf16_forward(bf(*dst), static_cast<float*>(scratch_), n, stream_));
    // The caller may free `host` on return.
    SPX_CUDA_TRY(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }

  bool uploads_raw_weights() const override { return true; }

  // Weights from the checkpoint's mmapped bytes, never widened to f32 on the
  // host: chunks pass through two pinned staging buffers, so the host copy of
  // one overlaps the DMA of the other. bf16 lands in place; f16 / f32 land in
  // scratch and are rounded to bf16 on the device exactly as upload() rounds.
  Status upload_weights(const void* bytes, WeightDtype dtype, Tensor* dst) override {
    if (!err_.ok) return err_;
    SPX_CUDA_TRY(cudaSetDevice(device_));
    SPX_STATUS_TRY(ensure_stage());
    const size_t n = static_cast<size_t>(dst->numel());
    const size_t esize = dtype == WeightDtype::F32 ? 4 : 2;
    const size_t chunk = kStageBytes / esize;
    if (dtype != WeightDtype::BF16) SPX_STATUS_TRY(ensure_scratch(2 * kStageBytes));
    const char* src = static_cast<const char*>(bytes);
    int b = 0;
    for (size_t off = 0; off < n; off += chunk, b ^= 1) {
      const size_t m = std::min(chunk, n - off);
      SPX_CUDA_TRY(cudaEventSynchronize(stage_done_[b]));  // its last DMA has finished
      std::memcpy(stage_[b], src + off * esize, m * esize);
      if (dtype == WeightDtype::BF16) {
        SPX_CUDA_TRY(cudaMemcpyAsync(bf(*dst) + off, stage_[b], m * esize, cudaMemcpyHostToDevice,
                                     stream_));
      } else {
        char* tmp = static_cast<char*>(scratch_) + b * kStageBytes;
        SPX_CUDA_TRY(cudaMemcpyAsync(tmp, stage_[b], m * esize, cudaMemcpyHostToDevice, stream_));
        SPX_CUDA_TRY(dtype == WeightDtype::F32
                         ? cuda::f32_to_bf16_forward(bf(*dst) + off, reinterpret_cast<float*>(tmp),
                                                     m, stream_)
                         : cuda::f16_to_bf16_forward(bf(*dst) + off,
                                                     reinterpret_cast<__half*>(tmp), m, stream_));
      }
      SPX_CUDA_TRY(cudaEventRecord(stage_done_[b], stream_));
    }
    // The checkpoint may be unmapped once loading returns.
    SPX_CUDA_TRY(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }

  // Checkpoint restore: host bytes straight into the tensor's bf16 memory
  // through the pinned staging pair. No sync: the stream orders the copies
  // before every later kernel, and the staging events let the next chunk's
  // host copy overlap this one's DMA, across calls too.
  Status write_bytes(const void* host, size_t offset, size_t bytes, Tensor* dst) override {
    if (!err_.ok) return err_;
    if (offset + bytes > dst->nbytes()) return Status::Error("write_bytes past the end of the tensor");
    SPX_CUDA_TRY(cudaSetDevice(device_));
    SPX_STATUS_TRY(ensure_stage());
    const char* src = static_cast<const char*>(host);
    char* d = static_cast<char*>(dst->data) + offset;
    for (size_t off = 0; off < bytes; off += kStageBytes) {
      const size_t m = std::min(kStageBytes, bytes - off);
      const int b = stage_next_;
      stage_next_ ^= 1;
      SPX_CUDA_TRY(cudaEventSynchronize(stage_done_[b]));
      copy_chunk(stage_[b], src + off, m);
      // Default: the cache may be mapped host memory (unified addressing tells).
      SPX_CUDA_TRY(cudaMemcpyAsync(d + off, stage_[b], m, cudaMemcpyDefault, stream_));
      SPX_CUDA_TRY(cudaEventRecord(stage_done_[b], stream_));
    }
    return Status::Ok();
  }

  Status finish_writes() override {
    if (!err_.ok) return err_;
    SPX_CUDA_TRY(cudaStreamSynchronize(stream_));
    return err_;
  }

  // The engine's thread, between steps: no lock (CUDA orders a record
  // against the writer's wait on the same event).
  void fence_reads() override {
    if (cudaEventRecord(read_fence_, stream_) != cudaSuccess) cudaGetLastError();
  }

  // Checkpoint snapshots, on the writer thread: bf16 bytes off the device on
  // a side stream (after the latest fence_reads(), so decode steps queued
  // since are not waited for) through two pinned buffers of its own; the
  // compute stream and the engine's thread never wait for it. Touches no
  // state the kernels use (err_ included), hence its own mutex.
  Status read_bytes(const Tensor& src, size_t offset, size_t bytes, void* host) override {
    if (offset + bytes > src.nbytes()) return Status::Error("read_bytes past the end of the tensor");
    std::lock_guard<std::mutex> lk(read_mu_);
    SPX_CUDA_TRY(cudaSetDevice(device_));
    if (!read_stream_) SPX_CUDA_TRY(cudaStreamCreateWithFlags(&read_stream_, cudaStreamNonBlocking));
    for (int i = 0; i < 2; ++i) {
      if (!read_stage_[i]) SPX_CUDA_TRY(cudaHostAlloc(&read_stage_[i], kStageBytes, cudaHostAllocDefault));
      if (!read_done_[i]) SPX_CUDA_TRY(cudaEventCreateWithFlags(&read_done_[i], cudaEventDisableTiming));
    }
    SPX_CUDA_TRY(cudaStreamWaitEvent(read_stream_, read_fence_, 0));
    const char* s = static_cast<const char*>(src.data) + offset;
    char* out = static_cast<char*>(host);
    const size_t chunks = (bytes + kStageBytes - 1) / kStageBytes;
    auto issue = [&](size_t i) {
      const size_t off = i * kStageBytes, m = std::min(kStageBytes, bytes - off);
      cudaError_t e = cudaMemcpyAsync(read_stage_[i & 1], s + off, m, cudaMemcpyDefault, read_stream_);
      if (e == cudaSuccess) e = cudaEventRecord(read_done_[i & 1], read_stream_);
      return e;
    };
    if (chunks > 0) SPX_CUDA_TRY(issue(0));
    for (size_t i = 0; i < chunks; ++i) {
      // The next chunk's DMA runs while this one is copied out.
      if (i + 1 < chunks) SPX_CUDA_TRY(issue(i + 1));
      SPX_CUDA_TRY(cudaEventSynchronize(read_done_[i & 1]));
      const size_t off = i * kStageBytes;
      copy_chunk(out + off, read_stage_[i & 1], std::min(kStageBytes, bytes - off));
    }
    return Status::Ok();
  }

  Status download(const Tensor& src, float* host) override {
    if (!err_.ok) return err_;
    if (graph_.recording()) return not_while_recording("download");
    SPX_CUDA_TRY(cudaSetDevice(device_));
    const size_t n = static_cast<size_t>(src.numel());
    SPX_STATUS_TRY(ensure_scratch(n * sizeof(float)));
    SPX_CUDA_TRY(cuda::bf16_to_f32_forward(static_cast<float*>(scratch_), cbf(src), n, stream_));
    SPX_CUDA_TRY(cudaMemcpyAsync(host, scratch_, n * sizeof(float), cudaMemcpyDeviceToHost,
                                 stream_));
    SPX_CUDA_TRY(cudaStreamSynchronize(stream_));
    return err_;
  }

  void embedding(const Tensor& table, const int32_t* ids, int n, Tensor* out) override {
    // Every forward starts here, possibly on a thread that never chose a device.
    sticky(cudaSetDevice(device_), "cudaSetDevice", __FILE__, __LINE__);
    const int32_t* d_ids = nullptr;
    if (graph_.recording()) {
      // Each replay's ids come from the step's input buffer.
      if (n != graph_.rows()) return graph_.fail("embedding rows differ from the step's inputs");
      d_ids = graph_.ids();
    } else {
      d_ids = stage(ids, static_cast<size_t>(n) * sizeof(int32_t));
    }
    if (!d_ids) return;
    sticky(cuda::embedding_forward(bf(*out), cbf(table), d_ids, n,
                                   static_cast<int>(table.dim(1)), static_cast<int>(table.dim(0)),
                                   stream_),
           "embedding_forward", __FILE__, __LINE__);
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor* y) override {
    if (!err_.ok) return;
    const int K = static_cast<int>(x.shape.back());
    const int M = static_cast<int>(x.numel() / K);
    const int N = static_cast<int>(w.dim(0));
    const Status st = gemm_.run(y->data, cbf(x), cbf(w), M, N, K, false, false, stream_);
    if (!st.ok) {
      err_ = st;
      return;
    }
    if (bias)
      sticky(cuda::bias_add_forward(bf(*y), cbf(*bias), M, N, stream_), "bias_add_forward",
             __FILE__, __LINE__);
  }

  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* y) override {
    const int d = static_cast<int>(w.dim(0));
    sticky(cuda::rmsnorm_forward(bf(*y), cbf(x), cbf(w), static_cast<int>(x.numel() / d), d, eps,
                                 stream_),
           "rmsnorm_forward", __FILE__, __LINE__);
  }

  void add(Tensor* x, const Tensor& y) override {
    sticky(cuda::add_forward(bf(*x), cbf(y), static_cast<size_t>(x->numel()), stream_),
           "add_forward", __FILE__, __LINE__);
  }

  void rope(Tensor* x, const Tensor& cos, const Tensor& sin) override {
    sticky(cuda::rope_table_forward(bf(*x), cbf(cos), cbf(sin), static_cast<int>(x->dim(0)),
                                    static_cast<int>(x->dim(1)), static_cast<int>(x->dim(2)),
                                    stream_),
           "rope_table_forward", __FILE__, __LINE__);
  }

  void swiglu(const Tensor& gate, const Tensor& up, Tensor* out) override {
    const int rows = static_cast<int>(gate.dim(0));
    sticky(cuda::swiglu_split_forward(bf(*out), cbf(gate), cbf(up), rows,
                                      static_cast<int>(gate.numel() / rows), stream_),
           "swiglu_split_forward", __FILE__, __LINE__);
  }

  void kv_write(const Tensor& k, const Tensor& v, int start_pos, Tensor* k_cache,
                Tensor* v_cache) override {
    sticky(cuda::kv_write_forward(bf(*k_cache), bf(*v_cache), cbf(k), cbf(v), start_pos,
                                  static_cast<int>(k.dim(0)), static_cast<int>(k.dim(1)),
                                  static_cast<int>(k.dim(2)), static_cast<int>(k_cache->dim(1)),
                                  stream_),
           "kv_write_forward", __FILE__, __LINE__);
  }

  void kv_write_rows(const Tensor& k, const Tensor& v, const std::vector<KvRowWrite>& rows) override {
    if (!err_.ok || rows.empty()) return;
    std::vector<cuda::KvRowDst> dst(rows.size());
    std::vector<int32_t> pos(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      dst[i] = cuda::KvRowDst{bf(*rows[i].k_cache), bf(*rows[i].v_cache), rows[i].k_cache->dim(1)};
      pos[i] = rows[i].position;
    }
    const int n = static_cast<int>(rows.size());
    if (graph_.recording() && n != graph_.rows())
      return graph_.fail("KV write rows differ from the step's inputs");
    const cuda::KvRowDst* d_dst = stage(dst.data(), dst.size() * sizeof(cuda::KvRowDst));
    const int32_t* d_pos =
        graph_.recording() ? graph_.positions() : stage(pos.data(), pos.size() * sizeof(int32_t));
    if (!d_dst || !d_pos) return;
    sticky(cuda::kv_write_rows_forward(d_dst, cbf(k), cbf(v), d_pos, n, static_cast<int>(k.dim(1)),
                                       static_cast<int>(k.dim(2)), stream_),
           "kv_write_rows_forward", __FILE__, __LINE__);
  }

  void attention(const Tensor& q, const std::vector<AttentionSegment>& segments, float scale,
                 Tensor* out) override {
    if (!err_.ok) return;
    // A selection on the host, or (host-tier slots from the device slot maps) on the device.
    auto selects = [](const AttentionSegment& s) {
      return s.selection != nullptr || s.device_selection != nullptr;
    };
    // Recorded: decode attention, dense or over device selections (read in
    // place at every replay; cuda_sparse_attention.h).
    if (graph_.recording())
      for (const AttentionSegment& s : segments)
        if (s.n_q != 1 || s.selection != nullptr)
          return graph_.fail("only decode attention, dense or over device selections, can be recorded");
    const int heads = static_cast<int>(q.dim(1)), hd = static_cast<int>(q.dim(2));
    const size_t row = static_cast<size_t>(heads) * hd;
    size_t i = 0;
    while (i < segments.size()) {
      const AttentionSegment& s = segments[i];
      if (selects(s)) {
        // SpeContext: a run of decode tokens attending to their selections
        // (cuda_sparse_attention.h), in one launch.
        size_t j = i + 1;
        while (j < segments.size() && segments[j].n_q == 1 && selects(segments[j]) &&
               segments[j].k_cache->dim(0) == s.k_cache->dim(0) &&
               segments[j].q_begin == segments[j - 1].q_begin + 1)
          ++j;
        const uint64_t moves = sparse_.workspace_moves();
        const Status st =
            sparse_.run(q, segments, i, j, scale, out, stream_, graph_.recording() ? &graph_ : nullptr);
        if (!st.ok && graph_.recording()) return graph_.fail(st.message);
        if (!st.ok && err_.ok) err_ = st;
        if (sparse_.workspace_moves() != moves) graph_.drop();  // the recorded step read the old partials
        if (!err_.ok) return;
        i = j;
        continue;
      }
      if (s.n_q > 1) {
        sticky(cuda::prefill_attention_forward(
                   bf(*out) + s.q_begin * row, cbf(q) + s.q_begin * row, cbf(*s.k_cache),
                   cbf(*s.v_cache), s.start_pos, s.n_q, heads, static_cast<int>(s.k_cache->dim(0)),
                   hd, static_cast<int>(s.k_cache->dim(1)), scale, stream_),
               "prefill_attention_forward", __FILE__, __LINE__);
        ++i;
        continue;
      }
      // A run of decode tokens in consecutive rows becomes one batched launch.
      size_t j = i + 1;
      while (j < segments.size() && segments[j].n_q == 1 && !selects(segments[j]) &&
             segments[j].q_begin == segments[j - 1].q_begin + 1)
        ++j;
      decode_run(q, segments, i, j, scale, out);
      i = j;
    }
  }

  // The retrieval head's scoring and top-B on this stream (cuda_head_select.h).
  HeadSelect* head_select() override { return err_.ok ? &head_select_ : nullptr; }

  // ---- StepGraph: the recorded dense decode step (cuda_graph.h)
  StepGraph* step_graph() override { return err_.ok ? this : nullptr; }
  // A failure here (out of memory for the buffers) leaves no CUDA error
  // behind for the eager step that follows.
  Status set_inputs(const DecodeStepInputs& in) override {
    if (!err_.ok) return err_;
    SPX_CUDA_TRY(cudaSetDevice(device_));
    const Status st = graph_.set_inputs(in, stream_);
    if (!st.ok) cudaGetLastError();
    return st;
  }
  bool has(const std::vector<uint64_t>& key) const override { return graph_.has(key); }
  Status begin_capture() override {
    if (!err_.ok) return err_;
    SPX_CUDA_TRY(cudaSetDevice(device_));
    const Status st = graph_.begin(stream_);
    if (!st.ok) cudaGetLastError();
    return st;
  }
  Status end_capture(const std::vector<uint64_t>& key) override {
    Status st = graph_.end(stream_, key);
    if (!err_.ok) {
      // An error inside the capture ran nothing: the eager step meets it again
      // if it is real.
      if (st.ok) st = err_;
      err_ = Status::Ok();
      cudaGetLastError();
      graph_.drop();
    }
    return st;
  }
  Status replay() override {
    if (!err_.ok) return err_;
    SPX_CUDA_TRY(cudaSetDevice(device_));
    return graph_.replay(stream_);
  }
  void rope_tables(Tensor* cos, Tensor* sin) override {
    const size_t n = static_cast<size_t>(graph_.rows()) * graph_.half();
    if (static_cast<size_t>(cos->numel()) != n || static_cast<size_t>(sin->numel()) != n)
      return graph_.recording() ? graph_.fail("RoPE tables differ from the step's inputs")
                                : void(err_ = Status::Error("rope_tables: shape differs from the step's inputs"));
    sticky(cuda::f32_to_bf16_forward(bf(*cos), graph_.cos(), n, stream_), "f32_to_bf16_forward",
           __FILE__, __LINE__);
    sticky(cuda::f32_to_bf16_forward(bf(*sin), graph_.sin(), n, stream_), "f32_to_bf16_forward",
           __FILE__, __LINE__);
  }

  // ---- Greedy tokens on the device (argmax_rows.h): R ids come back
  // instead of R x vocab floats. The ids buffer keeps its address while it
  // is large enough, so a recorded decode step can hold the argmax.
  bool has_argmax() const override { return true; }
  void argmax_rows(const Tensor& logits) override {
    if (!err_.ok) return;
    const int rows = static_cast<int>(logits.dim(0)), vocab = static_cast<int>(logits.row_elems());
    if (rows > ids_cap_) {
      if (graph_.recording()) return graph_.fail("the argmax buffer must grow (an eager step sizes it first)");
      const int cap = std::max({rows, 64, 2 * ids_cap_});
      sticky(cudaStreamSynchronize(stream_), "cudaStreamSynchronize", __FILE__, __LINE__);
      cudaFree(ids_dev_);
      cudaFreeHost(ids_host_);
      ids_dev_ = ids_host_ = nullptr;
      ids_cap_ = 0;
      sticky(cudaMalloc(&ids_dev_, cap * sizeof(int32_t)), "cudaMalloc(argmax ids)", __FILE__, __LINE__);
      sticky(cudaMallocHost(&ids_host_, cap * sizeof(int32_t)), "cudaMallocHost(argmax ids)", __FILE__,
             __LINE__);
      if (!err_.ok) return;
      ids_cap_ = cap;
      graph_.drop();  // a recorded step wrote the old buffer
    }
    sticky(cuda::argmax_rows_forward(ids_dev_, cbf(logits), rows, vocab, stream_), "argmax_rows_forward",
           __FILE__, __LINE__);
  }
  Status read_argmax(int rows, int32_t* ids) override {
    if (!err_.ok) return err_;
    if (graph_.recording()) return not_while_recording("read_argmax");
    // The rows of the latest argmax_rows(), eager or replayed: the caller's to know.
    if (rows < 0 || rows > ids_cap_)
      return Status::Error("read_argmax: " + std::to_string(rows) + " rows asked, room for " +
                           std::to_string(ids_cap_));
    if (rows == 0) return Status::Ok();
    SPX_CUDA_TRY(cudaSetDevice(device_));
    SPX_CUDA_TRY(cudaMemcpyAsync(ids_host_, ids_dev_, rows * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                 stream_));
    SPX_CUDA_TRY(cudaStreamSynchronize(stream_));
    std::memcpy(ids, ids_host_, rows * sizeof(int32_t));
    return err_;
  }

  void gather_rows(const Tensor& x, const std::vector<int32_t>& rows, Tensor* out) override {
    const int32_t* d_rows = stage(rows.data(), rows.size() * sizeof(int32_t));
    if (!d_rows) return;
    sticky(cuda::gather_rows_forward(bf(*out), cbf(x), d_rows, static_cast<int>(rows.size()),
                                     static_cast<int>(x.row_elems()), stream_),
           "gather_rows_forward", __FILE__, __LINE__);
  }

 private:
  static constexpr size_t kRingBytes = 4u << 20;
  static constexpr size_t kStageBytes = 16u << 20;  // per weight staging buffer

  static bf16* bf(const Tensor& t) { return static_cast<bf16*>(t.data); }
  static const bf16* cbf(const Tensor& t) { return static_cast<const bf16*>(t.data); }

  void sticky(cudaError_t e, const char* what, const char* file, int line) {
    if (e != cudaSuccess && err_.ok) err_ = cuda::CudaStatus(e, what, file, line);
  }

  // A call that synchronises or allocates cannot be part of a recorded step.
  Status not_while_recording(const char* what) {
    graph_.fail(std::string(what) + " while recording a decode step");
    return Status::Error(std::string("CUDA backend: ") + what + " while recording a decode step");
  }

  // The pinned staging pair of weight loading and checkpoint restore.
  Status ensure_stage() {
    if (stage_[0]) return Status::Ok();
    for (int i = 0; i < 2; ++i) {
      SPX_CUDA_TRY(cudaHostAlloc(&stage_[i], kStageBytes, cudaHostAllocDefault));
      SPX_CUDA_TRY(cudaEventCreateWithFlags(&stage_done_[i], cudaEventDisableTiming));
    }
    return Status::Ok();
  }

  Status ensure_scratch(size_t bytes) {
    if (bytes <= scratch_bytes_) return Status::Ok();
    SPX_CUDA_TRY(cudaStreamSynchronize(stream_));
    cudaFree(scratch_);
    scratch_ = nullptr;
    scratch_bytes_ = 0;
    SPX_CUDA_TRY(cudaMalloc(&scratch_, bytes));
    scratch_bytes_ = bytes;
    return Status::Ok();
  }

  // Copies a small host array to device memory through the pinned ring;
  // returns the device address, or nullptr (with err_ set) on failure.
  template <typename T>
  const T* stage(const T* host, size_t bytes) {
    if (!err_.ok) return nullptr;
    // Recording: the array is fixed for the graph's life (its key), so it is
    // uploaded once with the graph; the ring would be rewritten meanwhile.
    if (graph_.recording()) return static_cast<const T*>(graph_.stage(host, bytes));
    const size_t span = (bytes + 255) / 256 * 256;  // keeps every entry aligned
    if (span > kRingBytes) {
      err_ = Status::Error("CUDA backend: per-step host array of " + std::to_string(bytes) +
                           " bytes exceeds the staging ring");
      return nullptr;
    }
    if (ring_pos_ + span > kRingBytes) {
      // Wrapping: earlier copies out of the ring must have finished.
      sticky(cudaStreamSynchronize(stream_), "cudaStreamSynchronize", __FILE__, __LINE__);
      ring_pos_ = 0;
    }
    char* h = static_cast<char*>(ring_) + ring_pos_;
    char* d = static_cast<char*>(small_dev_) + ring_pos_;
    ring_pos_ += span;
    std::memcpy(h, host, bytes);
    sticky(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync",
           __FILE__, __LINE__);
    return err_.ok ? reinterpret_cast<const T*>(d) : nullptr;
  }

  void decode_run(const Tensor& q, const std::vector<AttentionSegment>& segs, size_t begin,
                  size_t end, float scale, Tensor* out) {
    const int heads = static_cast<int>(q.dim(1)), hd = static_cast<int>(q.dim(2));
    const int kvh = static_cast<int>(segs[begin].k_cache->dim(0));
    const int batch = static_cast<int>(end - begin);
    std::vector<cuda::DecodeSeq> seqs(static_cast<size_t>(batch));
    std::vector<int32_t> lengths(static_cast<size_t>(batch));
    // The split is planned for the caches' capacity, not today's lengths
    // (blocks past a request's length exit): the same launch serves every
    // step of a recorded graph, and eager steps split the same way, so both
    // give the same bits.
    int max_cap = 1;
    for (int b = 0; b < batch; ++b) {
      const AttentionSegment& s = segs[begin + static_cast<size_t>(b)];
      seqs[b] = cuda::DecodeSeq{cbf(*s.k_cache), cbf(*s.v_cache), s.k_cache->dim(1)};
      lengths[b] = s.start_pos + 1;
      max_cap = std::max(max_cap, static_cast<int>(s.k_cache->dim(1)));
    }
    const int split = cuda::decode_attention_split_tokens(batch, kvh, max_cap, num_sms_);
    const int max_splits = (max_cap + split - 1) / split;
    const size_t ws_bytes = cuda::decode_attention_workspace_bytes(batch, heads, hd, max_splits);
    if (ws_bytes > ws_bytes_ && graph_.recording())
      return graph_.fail("the decode workspace must grow (an eager step sizes it first)");
    if (ws_bytes > ws_bytes_) {
      sticky(cudaStreamSynchronize(stream_), "cudaStreamSynchronize", __FILE__, __LINE__);
      cudaFree(ws_);
      ws_ = nullptr;
      ws_bytes_ = 0;
      sticky(cudaMalloc(&ws_, ws_bytes), "cudaMalloc(decode workspace)", __FILE__, __LINE__);
      if (!err_.ok) return;
      ws_bytes_ = ws_bytes;
      graph_.drop();  // a recorded step read the old partials
    }
    const cuda::DecodeSeq* d_seqs = stage(seqs.data(), seqs.size() * sizeof(cuda::DecodeSeq));
    const int32_t* d_len = graph_.recording()
                               ? graph_.lengths() + segs[begin].q_begin
                               : stage(lengths.data(), lengths.size() * sizeof(int32_t));
    if (!d_seqs || !d_len) return;
    float* po = static_cast<float*>(ws_);
    cuda::DecodeAttentionWorkspace w{po, po + static_cast<size_t>(batch) * heads * max_splits * hd,
                                     max_splits};
    const size_t row = static_cast<size_t>(heads) * hd;
    const int first = segs[begin].q_begin;
    sticky(cuda::decode_attention_forward(bf(*out) + first * row, cbf(q) + first * row, d_seqs,
                                          d_len, batch, heads, kvh, hd, scale, split, w, stream_),
           "decode_attention_forward", __FILE__, __LINE__);
  }

  int device_ = 0;
  int num_sms_ = 1;
  cudaStream_t stream_ = nullptr;
  cuda::Gemm gemm_;
  Status err_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  void* ring_ = nullptr;       // pinned host
  void* small_dev_ = nullptr;  // its device mirror
  size_t ring_pos_ = 0;
  void* stage_[2] = {nullptr, nullptr};  // pinned weight staging
  cudaEvent_t stage_done_[2] = {nullptr, nullptr};
  int stage_next_ = 0;  // write_bytes' next staging buffer
  // Checkpoint snapshot reads (writer thread): own stream, buffers, events.
  std::mutex read_mu_;
  cudaStream_t read_stream_ = nullptr;
  cudaEvent_t read_fence_ = nullptr;
  void* read_stage_[2] = {nullptr, nullptr};
  cudaEvent_t read_done_[2] = {nullptr, nullptr};
  void* ws_ = nullptr;  // decode attention partials
  size_t ws_bytes_ = 0;
  int32_t* ids_dev_ = nullptr;   // argmax_rows() output [ids_cap_]
  int32_t* ids_host_ = nullptr;  // pinned, read_argmax()'s landing place
  int ids_cap_ = 0;
  cuda::SparseAttention sparse_;  // SpeContext decode over a selection
  cuda::DeviceHeadSelect head_select_;  // SpeContext retrieval scoring and top-B
  cuda::DecodeGraph graph_;             // the recorded dense decode step
};

}  // namespace

namespace cuda {
cudaStream_t backend_stream(Backend* backend) {
  auto* b = dynamic_cast<CudaBackend*>(backend);
  return b ? b->stream() : nullptr;
}
int backend_device(Backend* backend) {
  auto* b = dynamic_cast<CudaBackend*>(backend);
  return b ? b->device() : -1;
}
}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(int device_index, int /*threads*/, Status* status) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    *status = Status::Error(std::string("device 'cuda:") + std::to_string(device_index) +
                            "' requested but no CUDA GPU is usable here (" +
                            (e == cudaSuccess ? "0 devices" : cudaGetErrorString(e)) + ")");
    cudaGetLastError();
    return nullptr;
  }
  if (device_index < 0 || device_index >= count) {
    *status = Status::Error("device 'cuda:" + std::to_string(device_index) + "' requested but only " +
                            std::to_string(count) + " CUDA device(s) exist");
    return nullptr;
  }
  auto be = std::make_unique<CudaBackend>();
  *status = be->init(device_index);
  if (!status->ok) return nullptr;
  return be;
}

}  // namespace spx
