#include "retrieval/select.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace spx::retrieval {

void softmax_row(const float* x, int n, float* out) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    out[i] = std::exp(x[i] - mx);
    sum += out[i];
  }
  const float inv = sum > 0 ? static_cast<float>(1.0 / sum) : 0.0f;
  for (int i = 0; i < n; ++i) out[i] *= inv;
}

SelectResult Selector::select(const float* logits, int pool, int q_heads, int kv_heads, int T,
                              int64_t stride, const SelectOptions& opt, int32_t* out) {
  const int B = opt.budget;
  SelectResult res;
  if (T <= B || B <= 0) {
    // Full attention: every position, in order.
    res.count = T;
    res.full = true;
    if (B > 0) {
      for (int h = 0; h < kv_heads; ++h) {
        int32_t* o = out + static_cast<int64_t>(h) * B;
        for (int i = 0; i < B; ++i) o[i] = i < T ? i : -1;
      }
    }
    return res;
  }
  res.count = B;
  const int group = q_heads / kv_heads;
  const int rows = pool * q_heads;
  probs_.resize(static_cast<size_t>(rows) * T);
  group_.resize(T);
  order_.resize(T);
  for (int q = 0; q < rows; ++q) softmax_row(logits + q * stride, T, &probs_[static_cast<size_t>(q) * T]);
  // Rows of KV head h: block p, query heads h*group .. h*group+group-1.
  auto row = [&](int h, int p, int g) { return &probs_[(static_cast<size_t>(p) * q_heads + h * group + g) * T]; };
  const int members = pool * group;

  // Forced tokens outrank any probability (<= 1): the newest token, the
  // sinks, then the other recent tokens.
  const int n_sink = std::min(std::max(opt.n_sink, 0), T);
  const int recent_from = std::max(T - std::max(opt.n_recent, 0), 0);
  double mass_sum = 0;
  res.min_mass = 1.0f;
  for (int h = 0; h < kv_heads; ++h) {
    std::fill(group_.begin(), group_.end(), 0.0f);
    if (opt.reduce == GroupReduce::Max) {
      for (int p = 0; p < pool; ++p)
        for (int g = 0; g < group; ++g) {
          const float* pr = row(h, p, g);
          for (int t = 0; t < T; ++t) group_[t] = std::max(group_[t], pr[t]);
        }
    } else {
      for (int p = 0; p < pool; ++p)
        for (int g = 0; g < group; ++g) {
          const float* pr = row(h, p, g);
          for (int t = 0; t < T; ++t) group_[t] += pr[t];
        }
      for (int t = 0; t < T; ++t) group_[t] /= members;
    }
    // Recent tokens in [2, 3), newer first should they exceed the budget.
    for (int t = recent_from; t < T; ++t)
      group_[t] = 2.0f + static_cast<float>(t - recent_from) / static_cast<float>(T - recent_from + 1);
    for (int t = 0; t < n_sink; ++t) group_[t] = 3.0f;
    if (recent_from < T) group_[T - 1] = 4.0f;  // the newest token before all others
    for (int t = 0; t < T; ++t) order_[t] = t;
    auto better = [&](int32_t a, int32_t b) {
      return group_[a] != group_[b] ? group_[a] > group_[b] : a < b;
    };
    std::nth_element(order_.begin(), order_.begin() + (B - 1), order_.end(), better);
    int32_t* o = out + static_cast<int64_t>(h) * B;
    std::copy(order_.begin(), order_.begin() + B, o);
    std::sort(o, o + B);
    double mass = 0;
    for (int p = 0; p < pool; ++p)
      for (int g = 0; g < group; ++g) {
        const float* pr = row(h, p, g);
        for (int i = 0; i < B; ++i) mass += pr[o[i]];
      }
    const float m = static_cast<float>(mass / members);
    res.min_mass = std::min(res.min_mass, m);
    mass_sum += m;
  }
  res.mean_mass = static_cast<float>(mass_sum / kv_heads);
  if (opt.fallback_mass > 0 && res.min_mass < opt.fallback_mass) {
    res.full = true;
    res.fallback = true;
  }
  return res;
}

void Selector::select_batch(const float* logits, int R, int q_heads, int kv_heads,
                            const int* lengths, int64_t stride, const SelectOptions& opt,
                            const int* budgets, int32_t* out, std::vector<SelectResult>* results) {
  results->resize(R);
  const int B = opt.budget;
  for (int r = 0; r < R; ++r) {
    SelectOptions o = opt;
    o.budget = budgets ? std::min(budgets[r], B) : B;
    int32_t* dst = out + static_cast<int64_t>(r) * kv_heads * B;
    std::vector<int32_t> tmp;
    int32_t* sel = dst;
    if (o.budget != B) {
      tmp.resize(static_cast<size_t>(kv_heads) * std::max(o.budget, 0));
      sel = tmp.data();
    }
    (*results)[r] = select(logits + static_cast<int64_t>(r) * q_heads * stride, q_heads, kv_heads,
                           lengths[r], stride, o, sel);
    if (o.budget != B) {
      // Re-lay a smaller budget into the batch's B-wide rows, -1 padded.
      for (int h = 0; h < kv_heads; ++h)
        for (int i = 0; i < B; ++i)
          dst[static_cast<int64_t>(h) * B + i] = i < o.budget ? tmp[static_cast<size_t>(h) * o.budget + i] : -1;
    }
  }
}

}  // namespace spx::retrieval
