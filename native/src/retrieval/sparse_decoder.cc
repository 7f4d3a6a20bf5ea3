#include "retrieval/sparse_decoder.h"

namespace spx::retrieval {

Status SparseDecoder::make(Transformer* target, Backend* backend, const HeadChoice& choice,
                           const SelectOptions& select, std::unique_ptr<SparseDecoder>* out) {
  auto d = std::unique_ptr<SparseDecoder>(new SparseDecoder());
  d->target_ = target;
  d->select_ = select;
  Status st = make_head(target, backend, choice, &d->dlm_, &d->head_, &d->kind_);
  if (!st.ok) return st;
  const ModelConfig& c = target->config();
  d->slots_.configure(c.num_kv_heads, 2LL * c.head_dim * static_cast<int64_t>(sizeof(float)));
  *out = std::move(d);
  return Status::Ok();
}

Status SparseDecoder::admit(uint64_t id, int capacity, int budget) {
  if (budget <= 0) return Status::Ok();
  Status st = head_->open(id, capacity);
  if (!st.ok) return st;
  Request r;
  r.budget = budget;
  reqs_[id] = std::move(r);
  int row = 0;
  while (true) {
    bool used = false;
    for (const auto& [rid, rr] : slot_row_) used |= rr == row;
    if (!used) break;
    ++row;
  }
  slot_row_[id] = row;
  slots_.open_request(row, budget);
  return Status::Ok();
}

void SparseDecoder::release(uint64_t id) {
  if (!reqs_.count(id)) return;
  head_->close(id);
  reqs_.erase(id);
  auto it = slot_row_.find(id);
  if (it != slot_row_.end()) {
    slots_.close_request(it->second);
    slot_row_.erase(it);
  }
}

Status SparseDecoder::before_forward(const std::vector<uint64_t>& ids, ForwardBatch* batch) {
  const bool adopts = head_->source() == target_;
  std::vector<HeadChunk> hc;
  std::vector<size_t> decode_chunks;
  size_t offset = 0;
  for (size_t i = 0; i < batch->chunks.size(); ++i) {
    ForwardChunk& ch = batch->chunks[i];
    auto it = reqs_.find(ids[i]);
    if (it != reqs_.end()) {
      const bool decode = ch.n_tokens == 1 && head_->tokens(ids[i]) == ch.start_pos;
      if (decode) {
        hc.push_back({ids[i], batch->tokens.data() + offset, 1, &it->second.scores});
        decode_chunks.push_back(i);
      } else if (!adopts) {
        // A separate DLM computes its own prompt KV.
        hc.push_back({ids[i], batch->tokens.data() + offset, ch.n_tokens, nullptr});
      }
    }
    offset += static_cast<size_t>(ch.n_tokens);
  }
  if (hc.empty()) return Status::Ok();
  Status st = head_->forward(hc);
  if (!st.ok) return st;
  const ModelConfig& c = target_->config();
  for (size_t i : decode_chunks) {
    ForwardChunk& ch = batch->chunks[i];
    Request& r = reqs_[ids[i]];
    const int T = ch.start_pos + 1;
    SelectOptions so = select_;
    so.budget = r.budget;
    r.selection.resize(static_cast<size_t>(c.num_kv_heads) * r.budget);
    SelectResult res = selector_.select(r.scores.data(), head_->pool(), c.num_heads, c.num_kv_heads,
                                        T, T, so, r.selection.data());
    if (res.fallback) ++stats_.fallback_steps;
    if (res.full) {
      if (!res.fallback) ++stats_.full_steps;
      continue;  // full attention this step
    }
    ++stats_.sparse_steps;
    slots_.update(slot_row_[ids[i]], r.selection.data(), r.budget, nullptr, nullptr);
    const ElasticStats& last = slots_.last_step();
    stats_.elastic.steps += last.steps;
    stats_.elastic.loads += last.loads;
    stats_.elastic.slots += last.slots;
    stats_.elastic.bytes += last.bytes;
    ch.selection = r.selection.data();
    ch.budget = r.budget;
  }
  return Status::Ok();
}

Status SparseDecoder::after_forward(const std::vector<uint64_t>& ids, const ForwardBatch& batch) {
  if (head_->source() != target_) return Status::Ok();
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    const ForwardChunk& ch = batch.chunks[i];
    if (!reqs_.count(ids[i]) || head_->tokens(ids[i]) != 0) continue;
    // The prompt is prefilled once its logits are asked for: take its KV.
    if (ch.logits == LogitsMode::None) continue;
    Status st = head_->adopt(ids[i], *ch.kv);
    if (!st.ok) return st;
  }
  return Status::Ok();
}

}  // namespace spx::retrieval
