#include "kv/slot_map.h"

#include <algorithm>

namespace spx {

void SlotMap::reset(int budget) {
  slot_token_.assign(budget > 0 ? budget : 0, -1);
  slot_used_.assign(slot_token_.size(), -1);
  token_slot_.clear();
  token_mark_.clear();
  step_ = 0;
}

int SlotMap::update(const int32_t* selected, int n, std::vector<SlotLoad>* loads,
                    int32_t* slot_of_selected) {
  const int B = budget();
  if (n < 0 || n > B) return -1;
  const int64_t stamp = ++step_;
  int32_t max_tok = -1;
  for (int i = 0; i < n; ++i) {
    if (selected[i] < 0) return -1;
    max_tok = std::max(max_tok, selected[i]);
  }
  if (max_tok >= static_cast<int32_t>(token_slot_.size())) {
    token_slot_.resize(static_cast<size_t>(max_tok) + 1, -1);
    token_mark_.resize(static_cast<size_t>(max_tok) + 1, 0);
  }
  // Validate (repeats) before mutating anything, so a bad call changes nothing.
  for (int i = 0; i < n; ++i) {
    if (token_mark_[selected[i]] == stamp) {
      for (int j = 0; j < i; ++j) token_mark_[selected[j]] = 0;
      --step_;
      return -1;
    }
    token_mark_[selected[i]] = stamp;
  }
  pending_.clear();
  for (int i = 0; i < n; ++i) {
    const int32_t s = token_slot_[selected[i]];
    if (s >= 0) {
      slot_used_[s] = stamp;
    } else {
      pending_.push_back(selected[i]);
    }
  }
  if (!pending_.empty()) {
    // Victims: slots not selected this step, empty ones first, then the least
    // recently selected. nth_element keeps this O(B + k log k).
    free_.clear();
    for (int s = 0; s < B; ++s) {
      if (slot_used_[s] != stamp) free_.push_back(s);
    }
    const size_t k = pending_.size();  // <= free_.size() since n <= B
    auto older = [&](int32_t a, int32_t b) {
      return slot_used_[a] != slot_used_[b] ? slot_used_[a] < slot_used_[b] : a < b;
    };
    if (k < free_.size()) std::nth_element(free_.begin(), free_.begin() + k, free_.end(), older);
    // Deterministic pairing (the i-th pending token takes the i-th oldest slot).
    std::sort(free_.begin(), free_.begin() + k, older);
    for (size_t i = 0; i < k; ++i) {
      const int32_t slot = free_[i];
      const int32_t old = slot_token_[slot];
      if (old >= 0) token_slot_[old] = -1;
      slot_token_[slot] = pending_[i];
      slot_used_[slot] = stamp;
      token_slot_[pending_[i]] = slot;
      if (loads) loads->push_back({pending_[i], slot});
    }
  }
  if (slot_of_selected) {
    for (int i = 0; i < n; ++i) slot_of_selected[i] = token_slot_[selected[i]];
  }
  return static_cast<int>(pending_.size());
}

void SlotTable::configure(int kv_heads, int64_t bytes_per_token) {
  kv_heads_ = kv_heads;
  bytes_per_token_ = bytes_per_token;
}

void SlotTable::open_request(int r, int budget) {
  if (r < 0) return;
  if (r >= static_cast<int>(maps_.size())) maps_.resize(r + 1);
  maps_[r].assign(kv_heads_, SlotMap(budget));
}

void SlotTable::close_request(int r) {
  if (r >= 0 && r < static_cast<int>(maps_.size())) maps_[r].clear();
}

bool SlotTable::update(int r, const int32_t* selected, int n,
                       std::vector<std::vector<SlotLoad>>* loads, int32_t* slots) {
  if (!has_request(r)) return false;
  if (loads) loads->resize(kv_heads_);
  ElasticStats step;
  for (int h = 0; h < kv_heads_; ++h) {
    SlotMap& m = maps_[r][h];
    const int got = m.update(selected + static_cast<size_t>(h) * n, n,
                             loads ? &(*loads)[h] : nullptr,
                             slots ? slots + static_cast<size_t>(h) * n : nullptr);
    if (got < 0) return false;
    step.steps += 1;
    step.loads += got;
    step.slots += m.budget();
    step.bytes += static_cast<uint64_t>(got) * bytes_per_token_;
  }
  last_ = step;
  stats_.steps += step.steps;
  stats_.loads += step.loads;
  stats_.slots += step.slots;
  stats_.bytes += step.bytes;
  return true;
}

}  // namespace spx
