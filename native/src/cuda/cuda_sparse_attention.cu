#include "cuda/cuda_sparse_attention.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cuda/check.h"
#include "cuda/sparse_ops.h"

namespace spx::cuda {

int selection_count(const int32_t* selection, int kv_heads, int budget) {
  int count = -1;
  for (int h = 0; h < kv_heads; ++h) {
    const int32_t* s = selection + static_cast<size_t>(h) * budget;
    int n = 0;
    while (n < budget && s[n] >= 0) ++n;
    if (count >= 0 && n != count) return -1;
    count = n;
  }
  return count;
}

SparseAttention::SparseAttention() {
  const char* e = std::getenv("SPX_SPARSE_ATTENTION");
  gather_ = e != nullptr && std::string(e) == "gather";
}

SparseAttention::~SparseAttention() {
  cudaFree(ws_);
  cudaFree(compact_);
}

Status SparseAttention::ensure(void** p, size_t* have, size_t bytes, cudaStream_t stream) {
  if (bytes <= *have) return Status::Ok();
  // The stream may still read the old buffer.
  SPX_CUDA_TRY(cudaStreamSynchronize(stream));
  const size_t want = std::max(bytes, *have * 2);
  cudaFree(*p);
  *p = nullptr;
  *have = 0;
  const cudaError_t e = cudaMalloc(p, want);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return Status::Error("out of GPU memory for sparse attention buffers (" +
                         std::to_string(want) + " bytes): " + cudaGetErrorString(e));
  }
  *have = want;
  return Status::Ok();
}

Status SparseAttention::stage(const void* host, size_t bytes, void** dev, cudaStream_t stream) {
  if (graph_) {
    // Fixed for the recorded step's key: uploaded once with the graph.
    *dev = const_cast<void*>(graph_->stage(host, bytes));
    return *dev ? Status::Ok() : Status::Error("sparse attention: the step graph's arena is full");
  }
  return ring_.stage(host, bytes, stream, dev);
}

Status SparseAttention::workspace(int batch, int heads, int kv_heads, int head_dim, int max_len,
                                  int cover, cudaStream_t stream, int* split,
                                  DecodeAttentionWorkspace* w) {
  *split = decode_attention_split_tokens(batch, kv_heads, max_len, num_sms_);
  const int max_splits = (cover + *split - 1) / *split;
  const size_t bytes = decode_attention_workspace_bytes(batch, heads, head_dim, max_splits);
  if (graph_ && bytes > ws_bytes_)
    return Status::Error("the sparse attention workspace must grow (an eager step sizes it first)");
  const size_t had = ws_bytes_;
  SPX_STATUS_TRY(ensure(&ws_, &ws_bytes_, bytes, stream));
  ws_moves_ += ws_bytes_ != had;
  float* po = static_cast<float*>(ws_);
  *w = DecodeAttentionWorkspace{po, po + static_cast<size_t>(batch) * heads * max_splits * head_dim,
                                max_splits};
  return Status::Ok();
}

Status SparseAttention::run(const Tensor& q, const std::vector<AttentionSegment>& segs,
                            size_t begin, size_t end, float scale, Tensor* out,
                            cudaStream_t stream, DecodeGraph* graph) {
  bool on_device = false;
  for (size_t i = begin; i < end; ++i) {
    const AttentionSegment& s = segs[i];
    if (s.n_q != 1 || (s.selection == nullptr && s.device_selection == nullptr) || s.budget <= 0)
      return Status::Error("sparse attention: a segment without a decode selection");
    on_device |= s.device_selection != nullptr;
    if (s.device_selection) continue;  // all `budget` entries valid (backend.h)
    const int n = selection_count(s.selection, static_cast<int>(s.k_cache->dim(0)), s.budget);
    if (n <= 0)
      return Status::Error("sparse attention: a selection with no tokens, or heads of unequal "
                           "counts");
  }
  // The gather path packs rows on the host: device selections take the kernel.
  if (gather_ && !on_device && !graph) return run_gather(q, segs, begin, end, scale, out, stream);
  if (graph)
    for (size_t i = begin; i < end; ++i)
      if (!segs[i].device_selection)
        return Status::Error("sparse attention: only device selections can be recorded");
  return run_kernel(q, segs, begin, end, scale, out, stream, graph);
}

Status SparseAttention::run_kernel(const Tensor& q, const std::vector<AttentionSegment>& segs,
                                   size_t begin, size_t end, float scale, Tensor* out,
                                   cudaStream_t stream, DecodeGraph* graph) {
  // Recording stages into the graph's arena for this call only.
  struct Recording {
    DecodeGraph** at;
    ~Recording() { *at = nullptr; }
  } recording{&graph_};
  graph_ = graph;
  const int heads = static_cast<int>(q.dim(1)), hd = static_cast<int>(q.dim(2));
  const int kvh = static_cast<int>(segs[begin].k_cache->dim(0));
  const int batch = static_cast<int>(end - begin);
  // One [batch, kv_heads, B] selection (B the run's largest budget, -1
  // padded) over the caches where they are: the kernel gathers the rows.
  int budget = 1;
  for (size_t i = begin; i < end; ++i) budget = std::max(budget, segs[i].budget);
  counts_.assign(static_cast<size_t>(batch), 0);
  seqs_.resize(static_cast<size_t>(batch));
  int max_count = 1;
  // Device selections (host-tier slot lists): used in place when they are
  // one [batch, kv_heads, B] array already (the slot maps write them so),
  // else copied device to device into the staged array.
  bool all_device = true, in_place = true;
  for (int b = 0; b < batch; ++b) {
    const AttentionSegment& s = segs[begin + static_cast<size_t>(b)];
    all_device &= s.device_selection != nullptr;
    in_place &= s.device_selection != nullptr && s.budget == budget &&
                s.device_selection == segs[begin].device_selection +
                                          static_cast<size_t>(b) * kvh * budget;
  }
  in_place &= all_device;
  if (!in_place) sel_.assign(static_cast<size_t>(batch) * kvh * budget, -1);
  for (int b = 0; b < batch; ++b) {
    const AttentionSegment& s = segs[begin + static_cast<size_t>(b)];
    const int64_t cap = s.k_cache->dim(1);
    seqs_[b] = DecodeSeq{static_cast<const bf16*>(s.k_cache->data),
                         static_cast<const bf16*>(s.v_cache->data), cap};
    if (s.device_selection) {
      counts_[b] = s.budget;
      max_count = std::max(max_count, s.budget);
      continue;
    }
    const int n = selection_count(s.selection, kvh, s.budget);
    for (int h = 0; h < kvh; ++h)
      for (int j = 0; j < n; ++j) {
        const int32_t t = s.selection[static_cast<size_t>(h) * s.budget + j];
        if (t < 0 || t >= cap)
          return Status::Error("sparse attention: selected position " + std::to_string(t) +
                               " outside the cache of " + std::to_string(cap));
        sel_[(static_cast<size_t>(b) * kvh + h) * budget + j] = t;
      }
    counts_[b] = n;
    max_count = std::max(max_count, n);
  }
  int split = 0;
  DecodeAttentionWorkspace w{};
  SPX_STATUS_TRY(workspace(batch, heads, kvh, hd, max_count, budget, stream, &split, &w));
  void *d_sel = nullptr, *d_counts = nullptr, *d_seqs = nullptr;
  if (in_place) {
    d_sel = const_cast<int32_t*>(segs[begin].device_selection);
  } else {
    SPX_STATUS_TRY(stage(sel_.data(), sel_.size() * sizeof(int32_t), &d_sel, stream));
    for (int b = 0; b < batch; ++b) {
      const AttentionSegment& s = segs[begin + static_cast<size_t>(b)];
      if (!s.device_selection) continue;
      const size_t row = static_cast<size_t>(s.budget) * sizeof(int32_t);
      SPX_CUDA_TRY(cudaMemcpy2DAsync(static_cast<int32_t*>(d_sel) + static_cast<size_t>(b) * kvh * budget,
                                     static_cast<size_t>(budget) * sizeof(int32_t),
                                     s.device_selection, row, row, kvh, cudaMemcpyDeviceToDevice,
                                     stream));
    }
  }
  SPX_STATUS_TRY(stage(counts_.data(), counts_.size() * sizeof(int32_t), &d_counts, stream));
  SPX_STATUS_TRY(stage(seqs_.data(), seqs_.size() * sizeof(DecodeSeq), &d_seqs, stream));
  const size_t row = static_cast<size_t>(heads) * hd;
  const int first = segs[begin].q_begin;
  SPX_CUDA_TRY(sparse_decode_attention_forward(
      static_cast<bf16*>(out->data) + first * row, static_cast<const bf16*>(q.data) + first * row,
      static_cast<const DecodeSeq*>(d_seqs), static_cast<const int32_t*>(d_sel),
      static_cast<const int32_t*>(d_counts), batch, heads, kvh, hd, budget, scale, split, w,
      stream));
  ++kernel_launches_;
  return Status::Ok();
}

Status SparseAttention::run_gather(const Tensor& q, const std::vector<AttentionSegment>& segs,
                                   size_t begin, size_t end, float scale, Tensor* out,
                                   cudaStream_t stream) {
  const int heads = static_cast<int>(q.dim(1)), hd = static_cast<int>(q.dim(2));
  const int kvh = static_cast<int>(segs[begin].k_cache->dim(0));
  const int batch = static_cast<int>(end - begin);
  // Compact caches, request after request: [kv_heads, count_r, hd] of K, then
  // the same of V, each request's block starting at offset[r] rows.
  counts_.assign(static_cast<size_t>(batch), 0);
  int64_t total = 0;
  int max_len = 1;
  for (int b = 0; b < batch; ++b) {
    const AttentionSegment& s = segs[begin + static_cast<size_t>(b)];
    counts_[b] = selection_count(s.selection, kvh, s.budget);
    total += static_cast<int64_t>(kvh) * counts_[b];
    max_len = std::max(max_len, counts_[b]);
  }
  const size_t row_bytes = static_cast<size_t>(hd) * sizeof(bf16);
  SPX_STATUS_TRY(ensure(&compact_, &compact_bytes_, 2 * static_cast<size_t>(total) * row_bytes,
                        stream));
  bf16* ck = static_cast<bf16*>(compact_);
  bf16* cv = ck + static_cast<size_t>(total) * hd;
  seqs_.resize(static_cast<size_t>(batch));
  int64_t off = 0;
  for (int b = 0; b < batch; ++b) {
    const AttentionSegment& s = segs[begin + static_cast<size_t>(b)];
    const int n = counts_[b];
    const int64_t cap = s.k_cache->dim(1);
    rows_.resize(static_cast<size_t>(kvh) * n);
    for (int h = 0; h < kvh; ++h)
      for (int j = 0; j < n; ++j) {
        const int32_t t = s.selection[static_cast<size_t>(h) * s.budget + j];
        if (t < 0 || t >= cap)
          return Status::Error("sparse attention: selected position " + std::to_string(t) +
                               " outside the cache of " + std::to_string(cap));
        rows_[static_cast<size_t>(h) * n + j] = static_cast<int32_t>(h * cap + t);
      }
    void* d_rows = nullptr;
    SPX_STATUS_TRY(stage(rows_.data(), rows_.size() * sizeof(int32_t), &d_rows, stream));
    const int nr = kvh * n;
    SPX_CUDA_TRY(gather_rows_forward(ck + off * hd, static_cast<const bf16*>(s.k_cache->data),
                                     static_cast<const int32_t*>(d_rows), nr, hd, stream));
    SPX_CUDA_TRY(gather_rows_forward(cv + off * hd, static_cast<const bf16*>(s.v_cache->data),
                                     static_cast<const int32_t*>(d_rows), nr, hd, stream));
    seqs_[b] = DecodeSeq{ck + off * hd, cv + off * hd, n};
    off += nr;
  }
  int split = 0;
  DecodeAttentionWorkspace w{};
  SPX_STATUS_TRY(workspace(batch, heads, kvh, hd, max_len, max_len, stream, &split, &w));
  void *d_seqs = nullptr, *d_len = nullptr;
  SPX_STATUS_TRY(stage(seqs_.data(), seqs_.size() * sizeof(DecodeSeq), &d_seqs, stream));
  SPX_STATUS_TRY(stage(counts_.data(), counts_.size() * sizeof(int32_t), &d_len, stream));
  const size_t row = static_cast<size_t>(heads) * hd;
  const int first = segs[begin].q_begin;
  SPX_CUDA_TRY(decode_attention_forward(static_cast<bf16*>(out->data) + first * row,
                                        static_cast<const bf16*>(q.data) + first * row,
                                        static_cast<const DecodeSeq*>(d_seqs),
                                        static_cast<const int32_t*>(d_len), batch, heads, kvh, hd,
                                        scale, split, w, stream));
  ++gather_launches_;
  return Status::Ok();
}

}  // namespace spx::cuda
