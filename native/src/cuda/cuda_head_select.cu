#include "cuda/cuda_head_select.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "cuda/check.h"
#include "cuda/sparse_ops.h"

namespace spx::cuda {

namespace {
size_t align256(size_t n) { return (n + 255) / 256 * 256; }
}  // namespace

// The owning backend drains (and destroys) its stream first; cudaFree waits
// for the device anyway.
DeviceHeadSelect::~DeviceHeadSelect() {
  for (void* p : {q_, desc_, scores_, logits_, out_}) cudaFree(p);
  cudaFreeHost(h_desc_);
  cudaFreeHost(h_out_);
  if (desc_sent_) cudaEventDestroy(desc_sent_);
}

const int32_t* DeviceHeadSelect::device_selection(const int32_t* key, int* row) const {
  for (size_t i = 0; i < last_keys_.size(); ++i) {
    if (last_keys_[i] != key) continue;
    if (row) *row = static_cast<int>(i);
    return static_cast<const int32_t*>(out_) + last_offsets_[i];
  }
  return nullptr;
}

bool DeviceHeadSelect::supports(int q_heads, int kv_heads, int head_dim) const {
  // The kernels' instantiations (sparse_ops.cu): groups of 1..8, these head sizes.
  if (kv_heads <= 0 || q_heads % kv_heads) return false;
  const int group = q_heads / kv_heads;
  return group >= 1 && group <= 8 &&
         (head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128);
}

Status DeviceHeadSelect::ensure(void** p, size_t* have, size_t bytes) {
  if (bytes <= *have) return Status::Ok();
  SPX_CUDA_TRY(cudaStreamSynchronize(stream_));
  cudaFree(*p);
  *p = nullptr;
  *have = 0;
  const cudaError_t e = cudaMalloc(p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // out of memory is reported, not sticky
    *p = nullptr;
    return Status::Error("retrieval selection: out of GPU memory allocating " +
                         std::to_string(bytes) + " bytes (" + cudaGetErrorString(e) + ")");
  }
  *have = bytes;
  return Status::Ok();
}

Status DeviceHeadSelect::ensure_host(void** p, size_t* have, size_t bytes) {
  if (bytes <= *have) return Status::Ok();
  SPX_CUDA_TRY(cudaStreamSynchronize(stream_));
  cudaFreeHost(*p);
  *p = nullptr;
  *have = 0;
  SPX_CUDA_TRY(cudaMallocHost(p, bytes));
  *have = bytes;
  return Status::Ok();
}

Status DeviceHeadSelect::select(const std::vector<HeadSelectJob>& jobs, int q_heads, int kv_heads,
                                int head_dim, float scale, bool reduce_max, int n_sink,
                                int n_recent) {
  last_keys_.clear();  // a failed or empty call leaves nothing to find
  if (jobs.empty()) return Status::Ok();
  if (!supports(q_heads, kv_heads, head_dim))
    return Status::Error("retrieval selection: no GPU kernel for " + std::to_string(q_heads) +
                         " query heads, " + std::to_string(kv_heads) + " KV heads, head_dim " +
                         std::to_string(head_dim));
  SPX_CUDA_TRY(cudaSetDevice(device_));
  const int n = static_cast<int>(jobs.size());
  // Requests sharing a budget are one selection launch: order by budget.
  order_.resize(jobs.size());
  std::iota(order_.begin(), order_.end(), 0);
  std::stable_sort(order_.begin(), order_.end(),
                   [&](int a, int b) { return jobs[a].budget < jobs[b].budget; });
  int64_t stride = 1;
  size_t sel_elems = 0;
  for (const HeadSelectJob& j : jobs) {
    if (j.length < 1 || j.budget < 1 || j.length > j.k_cache->dim(1))
      return Status::Error("retrieval selection: length " + std::to_string(j.length) +
                           " or budget " + std::to_string(j.budget) + " out of range");
    stride = std::max<int64_t>(stride, j.length);
    sel_elems += static_cast<size_t>(kv_heads) * j.budget;
  }
  stride = (stride + 31) / 32 * 32;
  const size_t qrow = static_cast<size_t>(q_heads) * head_dim * sizeof(bf16);
  const size_t seq_bytes = align256(n * sizeof(DecodeSeq));
  const size_t desc_bytes = seq_bytes + align256(n * sizeof(int32_t));
  const size_t sel_bytes = align256(sel_elems * sizeof(int32_t));
  const size_t mass_bytes = static_cast<size_t>(n) * kv_heads * sizeof(float);
  const size_t out_bytes = sel_bytes + align256(n * sizeof(int32_t)) + mass_bytes;
  SPX_STATUS_TRY(ensure(&q_, &q_bytes_, n * qrow));
  SPX_STATUS_TRY(ensure(&desc_, &desc_bytes_, desc_bytes));
  SPX_STATUS_TRY(ensure(&scores_, &scores_bytes_,
                        static_cast<size_t>(n) * kv_heads * stride * sizeof(float)));
  SPX_STATUS_TRY(ensure(&logits_, &logits_bytes_,
                        static_cast<size_t>(n) * q_heads * stride * sizeof(float)));
  SPX_STATUS_TRY(ensure(&out_, &out_bytes_, out_bytes));
  SPX_STATUS_TRY(ensure_host(&h_desc_, &h_desc_bytes_, desc_bytes));
  if (download_) SPX_STATUS_TRY(ensure_host(&h_out_, &h_out_bytes_, out_bytes));
  if (!desc_sent_) SPX_CUDA_TRY(cudaEventCreateWithFlags(&desc_sent_, cudaEventDisableTiming));
  // The previous step's descriptor upload may still read h_desc_ (long done
  // in practice: that step's forward ended with its logits download).
  SPX_CUDA_TRY(cudaEventSynchronize(desc_sent_));

  // Pack the queries (device to device) and the descriptors, in budget order.
  auto* hseq = static_cast<DecodeSeq*>(h_desc_);
  auto* hlen = reinterpret_cast<int32_t*>(static_cast<char*>(h_desc_) + seq_bytes);
  for (int i = 0; i < n; ++i) {
    const HeadSelectJob& j = jobs[order_[i]];
    SPX_CUDA_TRY(cudaMemcpyAsync(static_cast<char*>(q_) + i * qrow, j.q->data, qrow,
                                 cudaMemcpyDeviceToDevice, stream_));
    hseq[i] = DecodeSeq{static_cast<const bf16*>(j.k_cache->data), nullptr, j.k_cache->dim(1)};
    hlen[i] = j.length;
  }
  SPX_CUDA_TRY(cudaMemcpyAsync(desc_, h_desc_, desc_bytes, cudaMemcpyHostToDevice, stream_));
  SPX_CUDA_TRY(cudaEventRecord(desc_sent_, stream_));
  const auto* dseq = static_cast<const DecodeSeq*>(desc_);
  const auto* dlen = reinterpret_cast<const int32_t*>(static_cast<char*>(desc_) + seq_bytes);
  auto* scores = static_cast<float*>(scores_);
  SPX_CUDA_TRY(retrieval_scores_forward(scores, static_cast<float*>(logits_),
                                        static_cast<const bf16*>(q_), dseq, dlen, n, q_heads,
                                        kv_heads, head_dim, scale, reduce_max, stride, stream_));
  auto* dsel = static_cast<int32_t*>(out_);
  auto* dcounts = reinterpret_cast<int32_t*>(static_cast<char*>(out_) + sel_bytes);
  auto* dmass = reinterpret_cast<float*>(static_cast<char*>(out_) + sel_bytes +
                                         align256(n * sizeof(int32_t)));
  size_t off = 0;
  for (int a = 0; a < n;) {
    const int budget = jobs[order_[a]].budget;
    int b = a + 1;
    while (b < n && jobs[order_[b]].budget == budget) ++b;
    SPX_CUDA_TRY(topk_select_forward(dsel + off, dcounts + a, dmass + static_cast<size_t>(a) * kv_heads,
                                     scores + static_cast<size_t>(a) * kv_heads * stride, dlen + a,
                                     b - a, kv_heads, stride, budget, n_sink, n_recent, stream_));
    off += static_cast<size_t>(b - a) * kv_heads * budget;
    a = b;
  }
  launches_ += 1;
  off = 0;
  last_keys_.resize(jobs.size());
  last_offsets_.resize(jobs.size());
  for (int i = 0; i < n; ++i) {
    last_keys_[i] = jobs[order_[i]].selection;
    last_offsets_[i] = off;
    off += static_cast<size_t>(kv_heads) * jobs[order_[i]].budget;
  }
  if (!download_) return Status::Ok();  // read in place on the stream
  // The selections and masses travel back.
  SPX_CUDA_TRY(cudaMemcpyAsync(h_out_, out_, out_bytes, cudaMemcpyDeviceToHost, stream_));
  SPX_CUDA_TRY(cudaStreamSynchronize(stream_));
  const auto* hsel = static_cast<const int32_t*>(h_out_);
  const auto* hmass = reinterpret_cast<const float*>(static_cast<const char*>(h_out_) + sel_bytes +
                                                     align256(n * sizeof(int32_t)));
  for (int i = 0; i < n; ++i) {
    const HeadSelectJob& j = jobs[order_[i]];
    const size_t m = static_cast<size_t>(kv_heads) * j.budget;
    std::memcpy(j.selection, hsel + last_offsets_[i], m * sizeof(int32_t));
    if (j.mass) std::memcpy(j.mass, hmass + static_cast<size_t>(i) * kv_heads, kv_heads * sizeof(float));
  }
  return Status::Ok();
}

}  // namespace spx::cuda
