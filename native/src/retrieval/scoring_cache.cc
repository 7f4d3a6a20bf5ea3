#include "retrieval/scoring_cache.h"

#include <algorithm>

#include "retrieval/pruned_head.h"

namespace spx::retrieval {

bool DeviceSelect::attach(Backend* be, int q_heads, int kv_heads, int head_dim, int sink, int recent,
                          bool max) {
  HeadSelect* hs = be->head_select();
  if (!hs || !hs->supports(q_heads, kv_heads, head_dim)) return false;
  hook = hs;
  n_sink = sink;
  n_recent = recent;
  reduce_max = max;
  return true;
}

Status ScoringCache::open(Backend* be, bool on_device, int kv_heads, int capacity, int head_dim) {
  be_ = be;
  kvh_ = kv_heads;
  cap_ = capacity;
  d_ = head_dim;
  // A device cache is not cleared: positions < the request's length are the
  // only ones ever read (scores, checkpoints).
  if (on_device) return be->alloc({kvh_, cap_, d_}, DType::F32, &dev_);
  host_ = std::make_shared<std::vector<float>>(static_cast<size_t>(kvh_ * cap_ * d_), 0.0f);
  return Status::Ok();
}

void ScoringCache::write(const Tensor& rows, const float* host_rows, int n, int pos) {
  if (host_) {
    write_k_rows(host_rows, n, kvh_, d_, cap_, pos, host_->data());
  } else {
    const Tensor r = rows.reshaped({n, kvh_, d_});
    be_->kv_write(r, r, pos, &dev_, &dev_);  // K written as its own V: one cache
  }
}

Status ScoringCache::host(std::vector<float>* buf, const float** out) const {
  if (host_) {
    *out = host_->data();
    return Status::Ok();
  }
  buf->resize(static_cast<size_t>(dev_.numel()));
  *out = buf->data();
  return be_->download(dev_, buf->data());
}

Status ScoringCache::set(const float* all) {
  if (!host_) {
    Tensor t = dev_;
    return be_->upload(all, &t);
  }
  std::copy(all, all + host_->size(), host_->begin());
  return Status::Ok();
}

Status ScoringCache::snapshot(std::shared_ptr<const std::vector<float>>* out) const {
  if (host_) {
    *out = host_;
    return Status::Ok();
  }
  auto k = std::make_shared<std::vector<float>>(static_cast<size_t>(dev_.numel()));
  Status st = be_->download(dev_, k->data());
  if (st.ok) *out = std::move(k);
  return st;
}

Status ScoringCache::load(const std::function<void(float*)>& fill) {
  if (host_) {
    fill(host_->data());
    return Status::Ok();
  }
  std::vector<float> buf(static_cast<size_t>(dev_.numel()), 0.0f);
  fill(buf.data());
  return set(buf.data());
}

uint64_t ScoringCache::bytes() const { return host_ ? host_->size() * sizeof(float) : dev_.nbytes(); }

}  // namespace spx::retrieval
