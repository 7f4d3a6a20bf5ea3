// The CPU backend: f32 tensors in host memory, kernels from kernels/cpu/.
// Each call binds the backend's own thread pool (util/thread_pool.h) so the
// kernels run on `threads` threads.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>

#include "backend/backend.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope.h"
#include "sampling/greedy.h"
#include "util/thread_pool.h"

namespace spx {

namespace {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads)
      : pool_(threads > 0 ? threads : available_cores()) {}

  std::string name() const override { return "cpu"; }

  Status alloc(const std::vector<int64_t>& shape, DType dtype, Tensor* out) override {
    if (dtype != DType::F32) return Status::Error("the CPU backend stores f32 tensors only");
    int64_t n = 1;
    for (int64_t d : shape) {
      if (d < 0) return Status::Error("negative tensor dimension");
      if (__builtin_mul_overflow(n, d, &n)) return Status::Error("tensor too large");
    }
    if (n > (int64_t(1) << 40)) return Status::Error("tensor too large");
    const size_t bytes = std::max<size_t>(64, (static_cast<size_t>(n) * 4 + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, bytes);
    if (p == nullptr)
      return Status::Error("out of host memory allocating " + std::to_string(bytes) + " bytes");
    out->data = p;
    out->dtype = dtype;
    out->shape = shape;
    out->owner = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
    return Status::Ok();
  }

  Status upload(const float* host, Tensor* dst) override {
    std::memcpy(dst->data, host, dst->nbytes());
    return Status::Ok();
  }

  Status download(const Tensor& src, float* host) override {
    std::memcpy(host, src.data, src.nbytes());
    return Status::Ok();
  }

  Status read_bytes(const Tensor& src, size_t offset, size_t bytes, void* host) override {
    if (offset + bytes > src.nbytes()) return Status::Error("read_bytes past the end of the tensor");
    std::memcpy(host, static_cast<const char*>(src.data) + offset, bytes);
    return Status::Ok();
  }

  Status write_bytes(const void* host, size_t offset, size_t bytes, Tensor* dst) override {
    if (offset + bytes > dst->nbytes()) return Status::Error("write_bytes past the end of the tensor");
    std::memcpy(static_cast<char*>(dst->data) + offset, host, bytes);
    return Status::Ok();
  }

  void embedding(const Tensor& table, const int32_t* ids, int n, Tensor* out) override {
    const int64_t d = table.dim(1);
    for (int i = 0; i < n; ++i)
      std::memcpy(out->f32() + i * d, table.f32() + static_cast<int64_t>(ids[i]) * d, d * 4);
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor* y) override {
    ThreadPool::Bind bind(&pool_);
    matmul_forward(y->f32(), x.f32(), w.f32(), bias ? bias->f32() : nullptr, x.dim(0), x.dim(1),
                   w.dim(0));
  }

  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* y) override {
    ThreadPool::Bind bind(&pool_);
    const int64_t d = w.dim(0);
    rmsnorm_forward(y->f32(), x.f32(), w.f32(), x.numel() / d, d, eps);
  }

  void add(Tensor* x, const Tensor& y) override {
    float* a = x->f32();
    const float* b = y.f32();
    const int64_t n = x->numel();
    for (int64_t i = 0; i < n; ++i) a[i] += b[i];
  }

  void rope(Tensor* x, const Tensor& cos, const Tensor& sin) override {
    ThreadPool::Bind bind(&pool_);
    rope_forward(x->f32(), cos.f32(), sin.f32(), x->dim(0), x->dim(1), x->dim(2));
  }

  void swiglu(const Tensor& gate, const Tensor& up, Tensor* out) override {
    ThreadPool::Bind bind(&pool_);
    swiglu_forward(out->f32(), gate.f32(), up.f32(), gate.numel());
  }

  void kv_write(const Tensor& k, const Tensor& v, int start_pos, Tensor* k_cache,
                Tensor* v_cache) override {
    const int64_t n = k.dim(0), kvh = k.dim(1), hd = k.dim(2), cap = k_cache->dim(1);
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t g = 0; g < kvh; ++g) {
        const int64_t dst = (g * cap + start_pos + t) * hd;
        std::memcpy(k_cache->f32() + dst, k.f32() + (t * kvh + g) * hd, hd * 4);
        std::memcpy(v_cache->f32() + dst, v.f32() + (t * kvh + g) * hd, hd * 4);
      }
    }
  }

  void attention(const Tensor& q, const std::vector<AttentionSegment>& segments, float scale,
                 Tensor* out) override {
    ThreadPool::Bind bind(&pool_);
    const int64_t heads = q.dim(1), hd = q.dim(2);
    if (segments.empty()) return;
    std::vector<AttentionSeq> seqs(segments.size());
    for (size_t i = 0; i < segments.size(); ++i) {
      const AttentionSegment& s = segments[i];
      seqs[i].k_cache = s.k_cache->f32();
      seqs[i].v_cache = s.v_cache->f32();
      seqs[i].capacity = s.k_cache->dim(1);
      seqs[i].q_begin = s.q_begin;
      seqs[i].n_q = s.n_q;
      seqs[i].start_pos = s.start_pos;
      seqs[i].selection = s.selection;
      seqs[i].budget = s.budget;
    }
    attention_batch_forward(out->f32(), q.f32(), seqs.data(), static_cast<int64_t>(seqs.size()),
                            heads, segments[0].k_cache->dim(0), hd, scale);
  }

  void gather_rows(const Tensor& x, const std::vector<int32_t>& rows, Tensor* out) override {
    const int64_t d = x.row_elems();
    for (size_t i = 0; i < rows.size(); ++i)
      std::memcpy(out->f32() + i * d, x.f32() + rows[i] * d, d * 4);
  }

  bool has_argmax() const override { return true; }
  void argmax_rows(const Tensor& logits) override {
    ThreadPool::Bind bind(&pool_);
    ids_.resize(static_cast<size_t>(logits.dim(0)));
    spx::argmax_rows(logits.f32(), logits.dim(0), static_cast<int>(logits.row_elems()), ids_.data());
  }
  Status read_argmax(int rows, int32_t* ids) override {
    if (rows < 0 || static_cast<size_t>(rows) > ids_.size())
      return Status::Error("read_argmax: " + std::to_string(rows) + " rows asked, " +
                           std::to_string(ids_.size()) + " computed");
    std::copy_n(ids_.data(), rows, ids);
    return Status::Ok();
  }

 private:
  ThreadPool pool_;
  std::vector<int32_t> ids_;  // the latest argmax_rows()
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  return std::make_unique<CpuBackend>(threads);
}

}  // namespace spx
