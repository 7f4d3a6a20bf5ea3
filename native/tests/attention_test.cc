// The CPU attention kernel (the reference the CUDA kernels are checked
// against) versus a naive double-precision attention, on odd sizes that cross
// several key splits, for prefill blocks, decode, GQA/MQA and selections.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/cpu/attention.h"
#include "util/thread_pool.h"

namespace spx {
namespace {

struct Case {
  int64_t n_q, start, heads, kvh, hd, budget;  // budget 0: full attention
};

// out[t, h] = softmax over visible keys of q.k * scale, times V.
std::vector<double> naive(const std::vector<float>& q, const std::vector<float>& k,
                          const std::vector<float>& v, const Case& c, int64_t cap,
                          const std::vector<int32_t>& sel, float scale) {
  std::vector<double> out(static_cast<size_t>(c.n_q * c.heads * c.hd), 0.0);
  const int64_t group = c.heads / c.kvh;
  for (int64_t t = 0; t < c.n_q; ++t) {
    for (int64_t h = 0; h < c.heads; ++h) {
      const int64_t g = h / group, pos = c.start + t;
      std::vector<int64_t> keys;
      if (c.budget) {
        for (int64_t j = 0; j < c.budget; ++j)
          if (sel[g * c.budget + j] <= pos) keys.push_back(sel[g * c.budget + j]);
      } else {
        for (int64_t j = 0; j <= pos; ++j) keys.push_back(j);
      }
      std::vector<double> s;
      double mx = -1e300;
      for (int64_t j : keys) {
        double d = 0;
        for (int64_t x = 0; x < c.hd; ++x)
          d += static_cast<double>(q[(t * c.heads + h) * c.hd + x]) * k[(g * cap + j) * c.hd + x];
        s.push_back(d * scale);
        mx = std::max(mx, s.back());
      }
      double sum = 0;
      for (double& e : s) sum += (e = std::exp(e - mx));
      for (size_t i = 0; i < keys.size(); ++i)
        for (int64_t x = 0; x < c.hd; ++x)
          out[(t * c.heads + h) * c.hd + x] += s[i] / sum * v[(g * cap + keys[i]) * c.hd + x];
    }
  }
  return out;
}

void check(const Case& c, int threads) {
  std::mt19937 rng(static_cast<unsigned>(c.n_q * 131 + c.start * 7 + c.heads + c.budget));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t cap = c.start + c.n_q + 3;
  std::vector<float> q(static_cast<size_t>(c.n_q * c.heads * c.hd)), k(static_cast<size_t>(c.kvh * cap * c.hd)),
      v(k.size());
  for (auto& x : q) x = nd(rng) * 2;
  for (auto& x : k) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  std::vector<int32_t> sel;
  if (c.budget) {
    std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(c.start + c.n_q - 1));
    for (int64_t i = 0; i < c.kvh * c.budget; ++i) sel.push_back(pick(rng));
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
  std::vector<float> out(q.size(), -7.0f);
  ThreadPool pool(threads);
  ThreadPool::Bind bind(&pool);
  attention_forward(out.data(), q.data(), k.data(), v.data(), c.n_q, c.start, c.heads, c.kvh, c.hd,
                    cap, scale, c.budget ? sel.data() : nullptr, c.budget);
  std::vector<double> ref = naive(q, k, v, c, cap, sel, scale);
  int bad = 0;
  for (size_t i = 0; i < ref.size() && bad < 10; ++i) {
    if (std::fabs(out[i] - ref[i]) > 1e-5 + 1e-4 * std::fabs(ref[i])) {
      ADD_FAILURE() << "n_q " << c.n_q << " start " << c.start << " heads " << c.heads << "/" << c.kvh
                    << " budget " << c.budget << " at " << i << ": " << out[i] << " vs " << ref[i];
      ++bad;
    }
  }
}

TEST(CpuAttention, PrefillAndDecodeMatchNaive) {
  for (int threads : {1, 3}) {
    check({17, 0, 6, 2, 16, 0}, threads);     // prefill from scratch, GQA
    check({5, 600, 4, 4, 32, 0}, threads);    // a chunk after 600 cached tokens (3 splits), MHA
    check({1, 4098, 6, 1, 8, 0}, threads);    // decode at 4099 keys (17 splits), MQA
    check({97, 300, 9, 3, 64, 0}, threads);   // SmolLM2 head shape
  }
}

TEST(CpuAttention, SelectionMatchesNaive) {
  check({1, 999, 6, 2, 16, 97}, 2);   // decode over a selection of 97 positions per KV head
  check({1, 999, 6, 2, 16, 300}, 2);  // selection longer than one split
  check({3, 40, 4, 2, 16, 17}, 1);    // selections naming future positions are masked
}

TEST(CpuAttention, BatchedEqualsAloneBitwise) {
  // Two sequences in one call give exactly what each gives alone.
  const int64_t heads = 6, kvh = 2, hd = 16, cap = 700;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> k(kvh * cap * hd), v(k.size()), q((1 + 9) * heads * hd);
  for (auto& x : k) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  for (auto& x : q) x = nd(rng);
  AttentionSeq a, b;
  a.k_cache = b.k_cache = k.data();
  a.v_cache = b.v_cache = v.data();
  a.capacity = b.capacity = cap;
  a.n_q = 1;
  a.start_pos = 650;
  b.q_begin = 1;
  b.n_q = 9;
  b.start_pos = 280;
  AttentionSeq both[] = {a, b};
  std::vector<float> together(q.size()), alone(q.size());
  ThreadPool pool(2);
  ThreadPool::Bind bind(&pool);
  attention_batch_forward(together.data(), q.data(), both, 2, heads, kvh, hd, 0.25f);
  attention_forward(alone.data(), q.data(), k.data(), v.data(), 1, 650, heads, kvh, hd, cap, 0.25f,
                    nullptr, 0);
  attention_forward(alone.data() + heads * hd, q.data() + heads * hd, k.data(), v.data(), 9, 280,
                    heads, kvh, hd, cap, 0.25f, nullptr, 0);
  EXPECT_EQ(together, alone);
}

}  // namespace
}  // namespace spx
