#include "kv/kv_store.h"

namespace spx {

KvStore::KvStore(Backend* backend, int layers, int kv_heads, int head_dim)
    : backend_(backend),
      layers_(layers),
      kv_heads_(kv_heads),
      head_dim_(head_dim),
      placement_(static_cast<size_t>(layers), KvPlacement::Device) {}

uint64_t KvStore::bytes_per_token() const {
  return 2ull * layers_ * kv_heads_ * head_dim_ * sizeof(float);
}

Status KvStore::allocate(uint64_t id, int capacity, KvSequence** out) {
  if (capacity <= 0) return Status::Error("KV capacity must be positive");
  if (seqs_.count(id)) return Status::Error("KV for request " + std::to_string(id) + " exists");
  auto seq = std::make_unique<KvSequence>();
  seq->id = id;
  seq->capacity = capacity;
  const std::vector<int64_t> shape = {kv_heads_, capacity, head_dim_};
  for (int l = 0; l < layers_; ++l) {
    Tensor k, v;
    Status st = backend_->alloc(shape, DType::F32, &k);
    if (st.ok) st = backend_->alloc(shape, DType::F32, &v);
    if (!st.ok) return Status::Error("cannot allocate KV cache: " + st.message);
    seq->k.push_back(std::move(k));
    seq->v.push_back(std::move(v));
  }
  bytes_in_use_ += bytes_per_token() * static_cast<uint64_t>(capacity);
  *out = seq.get();
  seqs_[id] = std::move(seq);
  return Status::Ok();
}

void KvStore::free(uint64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  bytes_in_use_ -= bytes_per_token() * static_cast<uint64_t>(it->second->capacity);
  seqs_.erase(it);
}

KvSequence* KvStore::find(uint64_t id) {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

int KvStore::tokens(uint64_t id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? -1 : it->second->n_tokens;
}

}  // namespace spx
