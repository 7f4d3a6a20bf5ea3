// The backend interface: tensor storage plus the handful of kernels a
// Llama-family forward needs. The model code (model/transformer.cc) only talks
// to this interface; the CPU backend (cpu_backend.cc, f32, OpenMP) is the
// reference and a CUDA backend implements the same calls.
//
// Interface (all tensors row-major, shapes as commented):
//   storage   alloc, upload (host f32 -> tensor), download (tensor -> host f32)
//   embedding out[n, hidden] = table[ids[i]]
//   matmul    y[n, m] = x[n, k] * w[m, k]^T (+ bias[m])
//   rmsnorm   y[r, d] = x[r, d] / rms(x) * w[d]      (also per head for q/k norm)
//   add       x += y (residual)
//   rope      x[n, heads, hd] rotated in place with cos/sin[n, hd/2] (rotate-half)
//   swiglu    out[n, f] = silu(gate[n, f]) * up[n, f]
//   kv_write  caches[kv_heads, capacity, hd] rows start..start+n-1 = k/v[n, kv_heads, hd]
//             (kv_write_rows: one token per request, each into its own cache)
//   attention out[n, heads, hd] for a list of sequence segments, causal, GQA
//   gather_rows out[r, d] = x[rows[i], d]
// Host pointers (ids, positions tables, segment lists) are small and per step;
// a device backend copies them itself, or, for a recorded decode step
// (StepGraph below), reads them from fixed device buffers.
//
// Sparse hook (SpeContext, issue 4): AttentionSegment::selection, when set,
// holds the token indices [kv_heads, budget] a decode token attends to, computed
// once per step by the retrieval head and shared by all layers.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend/tensor.h"
#include "engine/engine.h"

namespace spx {

struct AttentionSegment {
  int q_begin = 0;           // first row of this segment in q / out
  int n_q = 0;               // query tokens (1 for decode)
  int start_pos = 0;         // position of the first query; keys 0..start_pos+n_q-1
  const Tensor* k_cache = nullptr;  // [kv_heads, capacity, hd]
  const Tensor* v_cache = nullptr;  // [kv_heads, capacity, hd]
  const int32_t* selection = nullptr;  // host [kv_heads, budget] or nullptr: full
  int budget = 0;
  // A device backend's own copy of the selection (device [kv_heads, budget],
  // all `budget` entries valid), read instead of `selection`, which may then
  // be null: a host-tier layer's selection -> slot list made on the GPU
  // (device slot maps, retrieval/sparse_decoder.h), or a device-resident
  // layer's selection left on the GPU by the retrieval head
  // (ForwardChunk::selection_device). Never set on the CPU.
  const int32_t* device_selection = nullptr;
};

// Optional SpeContext hook (issue 6): the retrieval head's q.K scoring and
// top-B selection run where its K cache lives, so a GPU backend need not
// send the cache or the scores to the host each step. One job per decode
// token: softmax per query head, the mean (or max) over each GQA group, then
// the newest token, n_sink sinks, n_recent recent tokens and the top of the
// rest by score (retrieval::Selector's rules; the CPU backend is their
// reference and has no hook).
struct HeadSelectJob {
  const Tensor* q = nullptr;        // [1, q_heads * head_dim] the token's query, post-RoPE
  const Tensor* k_cache = nullptr;  // [kv_heads, capacity, head_dim], positions < length valid
  int length = 0;                   // T > budget
  int budget = 0;
  int32_t* selection = nullptr;     // host out [kv_heads, budget], ascending
  float* mass = nullptr;            // host out [kv_heads]: the share of the group's probability selected
};
class HeadSelect {
 public:
  virtual ~HeadSelect() = default;
  virtual bool supports(int q_heads, int kv_heads, int head_dim) const = 0;
  virtual Status select(const std::vector<HeadSelectJob>& jobs, int q_heads, int kv_heads,
                        int head_dim, float scale, bool reduce_max, int n_sink, int n_recent) = 0;
};

// CUDA graphs for the dense decode step (issue 5): every row one request
// decoding one token with full attention over device-resident caches. The
// values that change from step to step are these host arrays; a StepGraph
// copies them into fixed device buffers that the recorded kernels read.
struct DecodeStepInputs {
  const int32_t* ids = nullptr;        // [n] token of each row
  const int32_t* positions = nullptr;  // [n] each row's position (its cache length before the step)
  const float* cos = nullptr;          // [n, half] RoPE tables at those positions
  const float* sin = nullptr;          // [n, half]
  int n = 0;
  int half = 0;  // head_dim / 2
};

// A recorded decode step, replayed while its key (shapes and every address
// the kernels bake in: caches, capacities, workspaces) stays the same.
// Per step (model/transformer.cc): set_inputs(); then replay() when has(key),
// else begin_capture(), the step's backend calls, end_capture(key), replay().
// While recording, the backend runs nothing and reads its per-step values
// from the input buffers: embedding()'s ids, kv_write_rows()'s positions,
// the decode lengths of attention() (positions + 1); rope_tables() writes
// the step's RoPE tables. Host arrays passed to other calls while recording
// (decode descriptors) must be the same at every replay: the key says so.
class StepGraph {
 public:
  virtual ~StepGraph() = default;
  // Queues the copy of the step's inputs (the host arrays may be reused on return).
  virtual Status set_inputs(const DecodeStepInputs& in) = 0;
  virtual bool has(const std::vector<uint64_t>& key) const = 0;
  virtual Status begin_capture() = 0;
  // Ends recording. On failure nothing recorded ran, the backend is usable,
  // and the caller runs the step eagerly; the status says why.
  virtual Status end_capture(const std::vector<uint64_t>& key) = 0;
  virtual Status replay() = 0;
  // cos / sin [n, half] from the input buffers (inside the recorded step).
  virtual void rope_tables(Tensor* cos, Tensor* sin) = 0;
};

// One row of a batched KV write: row i of k / v goes to these caches at position.
struct KvRowWrite {
  Tensor* k_cache = nullptr;  // [kv_heads, capacity, hd]
  Tensor* v_cache = nullptr;
  int position = 0;
};

// How a checkpoint stores a weight tensor (safetensors dtypes we accept).
enum class WeightDtype { F32, F16, BF16 };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  virtual Status alloc(const std::vector<int64_t>& shape, DType dtype, Tensor* out) = 0;
  virtual Status upload(const float* host, Tensor* dst) = 0;
  virtual Status download(const Tensor& src, float* host) = 0;
  // Weights straight from the checkpoint's (mmapped, maybe unaligned) bytes in
  // their stored dtype, without an f32 copy on the host. A backend that
  // returns false from uploads_raw_weights() is given f32 through upload().
  virtual bool uploads_raw_weights() const { return false; }
  virtual Status upload_weights(const void* bytes, WeightDtype dtype, Tensor* dst) {
    return Status::Error("backend " + name() + " loads weights through upload()");
  }

  virtual void embedding(const Tensor& table, const int32_t* ids, int n, Tensor* out) = 0;
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor* y) = 0;
  virtual void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* y) = 0;
  virtual void add(Tensor* x, const Tensor& y) = 0;
  virtual void rope(Tensor* x, const Tensor& cos, const Tensor& sin) = 0;
  virtual void swiglu(const Tensor& gate, const Tensor& up, Tensor* out) = 0;
  virtual void kv_write(const Tensor& k, const Tensor& v, int start_pos, Tensor* k_cache,
                        Tensor* v_cache) = 0;
  // Row i of k / v ([n, kv_heads, hd]) into rows[i]'s caches: a decode step's
  // writes in one call (one launch on the GPU).
  virtual void kv_write_rows(const Tensor& k, const Tensor& v, const std::vector<KvRowWrite>& rows) {
    for (size_t i = 0; i < rows.size(); ++i)
      kv_write(k.rows(static_cast<int64_t>(i), 1), v.rows(static_cast<int64_t>(i), 1),
               rows[i].position, rows[i].k_cache, rows[i].v_cache);
  }
  virtual void attention(const Tensor& q, const std::vector<AttentionSegment>& segments,
                         float scale, Tensor* out) = 0;
  virtual void gather_rows(const Tensor& x, const std::vector<int32_t>& rows, Tensor* out) = 0;
  // The device-side retrieval selection, or nullptr: the host computes it.
  virtual HeadSelect* head_select() { return nullptr; }
  // Recorded decode steps (CUDA graphs), or nullptr: every step runs eagerly.
  virtual StepGraph* step_graph() { return nullptr; }

  // Greedy tokens where the logits are (issue 6): a GPU sends back R ids
  // instead of R x vocab floats. argmax_rows() queues ids[r] = the argmax of
  // row r of logits [rows, vocab] into the backend's own buffer, by
  // sampling::argmax's rules (the first of the largest; NaN never wins; a
  // row whose element 0 is NaN gives 0); a recorded decode step may hold it.
  // read_argmax() waits for the latest argmax_rows() and copies its first
  // `rows` ids out. A backend without them returns false from has_argmax().
  virtual bool has_argmax() const { return false; }
  virtual void argmax_rows(const Tensor& logits) {}
  virtual Status read_argmax(int rows, int32_t* ids) {
    return Status::Error("backend " + name() + " has no argmax_rows");
  }

  // Raw bytes of a tensor in its own dtype, for KV checkpoints (nothing is
  // widened to f32): `bytes` bytes at byte `offset` of the tensor.
  // read_bytes may run on another thread than the kernels (the checkpoint
  // writer): see fence_reads(). write_bytes
  // may queue the copy: `host` can be reused on return, the bytes are in
  // place for every later kernel, and finish_writes() waits for them.
  // The defaults go through f32 upload()/download() of the whole tensor
  // (correct, slow; only for f32 tensors); real backends override them.
  virtual Status read_bytes(const Tensor& src, size_t offset, size_t bytes, void* host) {
    if (src.dtype != DType::F32 || offset + bytes > src.nbytes())
      return Status::Error("backend " + name() + ": read_bytes out of range or not f32");
    std::vector<float> all(static_cast<size_t>(src.numel()));
    Status st = download(src, all.data());
    if (st.ok) std::memcpy(host, reinterpret_cast<const char*>(all.data()) + offset, bytes);
    return st;
  }
  virtual Status write_bytes(const void* host, size_t offset, size_t bytes, Tensor* dst) {
    if (dst->dtype != DType::F32 || offset + bytes > dst->nbytes())
      return Status::Error("backend " + name() + ": write_bytes out of range or not f32");
    std::vector<float> all(static_cast<size_t>(dst->numel()));
    Status st = download(*dst, all.data());
    if (!st.ok) return st;
    std::memcpy(reinterpret_cast<char*>(all.data()) + offset, host, bytes);
    return upload(all.data(), dst);
  }
  virtual Status finish_writes() { return Status::Ok(); }
  // Marks the work queued so far: read_bytes on another thread waits for
  // what was queued before the latest mark (not for later steps).
  virtual void fence_reads() {}
};

// threads: OpenMP threads for kernels (0: all cores).
std::unique_ptr<Backend> make_cpu_backend(int threads);

}  // namespace spx
