// Selection vs a brute-force reference: full softmax, group max, a full sort
// of every position with sinks and recents forced, and the mass summed from
// scratch in double precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "retrieval/select.h"

namespace {

using spx::retrieval::SelectOptions;
using spx::retrieval::SelectResult;
using spx::retrieval::Selector;

struct Ref {
  std::vector<std::vector<int32_t>> sel;  // [kv_heads][B], ascending
  std::vector<double> mass;               // [kv_heads]
};

Ref reference(const std::vector<float>& logits, int qh, int kvh, int T, const SelectOptions& o,
              int pool = 1) {
  const int rows = pool * qh;
  std::vector<std::vector<double>> p(rows, std::vector<double>(T));
  for (int q = 0; q < rows; ++q) {
    double mx = -1e30, s = 0;
    for (int t = 0; t < T; ++t) mx = std::max(mx, static_cast<double>(logits[q * T + t]));
    for (int t = 0; t < T; ++t) s += p[q][t] = std::exp(logits[q * T + t] - mx);
    for (int t = 0; t < T; ++t) p[q][t] /= s;
  }
  const int g = qh / kvh;
  Ref r;
  for (int h = 0; h < kvh; ++h) {
    // Rank: -1 the newest, 0 sinks, 1 recents, 2 the rest by score; ties to the older token.
    std::vector<std::tuple<int, double, int>> keys;
    for (int t = 0; t < T; ++t) {
      double m = 0;
      for (int b = 0; b < pool; ++b)
        for (int j = 0; j < g; ++j) {
          const double x = p[b * qh + h * g + j][t];
          m = o.reduce == spx::retrieval::GroupReduce::Max ? std::max(m, x) : m + x / (pool * g);
        }
      const int cls = (o.n_recent > 0 && t == T - 1) ? -1 : t < o.n_sink ? 0 : (t >= T - o.n_recent ? 1 : 2);
      // Forced classes: sinks older first, recent tokens newer first.
      keys.emplace_back(cls, cls == 2 ? -m : cls == 1 ? -static_cast<double>(t) : 0.0, t);
    }
    std::sort(keys.begin(), keys.end());
    std::vector<int32_t> s;
    for (int i = 0; i < o.budget; ++i) s.push_back(std::get<2>(keys[i]));
    std::sort(s.begin(), s.end());
    double mass = 0;
    for (int b = 0; b < pool; ++b)
      for (int j = 0; j < g; ++j)
        for (int32_t t : s) mass += p[b * qh + h * g + j][t];
    r.sel.push_back(s);
    r.mass.push_back(mass / (pool * g));
  }
  return r;
}

TEST(RetrievalSelect, MatchesBruteForceOnRandomScores) {
  Selector sel;
  for (uint32_t seed = 1; seed <= 60; ++seed) {
    std::mt19937 rng(seed);
    const int kvh = 1 + rng() % 4;
    const int g = 1 + rng() % 4;  // 1: MHA; kvh == 1: MQA
    const int qh = kvh * g;
    const int T = 17 + rng() % 700;
    SelectOptions o;
    o.budget = 1 + rng() % (T - 1);  // < T: sparse
    o.n_sink = rng() % 5;
    o.n_recent = rng() % 9;
    // Forced tokens may exceed B (then the priority order decides).
    std::normal_distribution<float> nd(0, 2.5f);
    std::vector<float> logits(qh * T);
    for (auto& x : logits) x = nd(rng);
    // Some exact ties to exercise the tie rule.
    for (int i = 0; i < T / 10; ++i) logits[rng() % logits.size()] = 1.0f;
    std::vector<int32_t> out(kvh * o.budget);
    SelectResult res = sel.select(logits.data(), qh, kvh, T, T, o, out.data());
    Ref ref = reference(logits, qh, kvh, T, o);
    SCOPED_TRACE(testing::Message() << "seed " << seed << " T " << T << " B " << o.budget);
    ASSERT_FALSE(res.full);
    ASSERT_EQ(res.count, o.budget);
    double min_mass = 1, mean = 0;
    for (int h = 0; h < kvh; ++h) {
      std::vector<int32_t> got(out.begin() + h * o.budget, out.begin() + (h + 1) * o.budget);
      ASSERT_EQ(got, ref.sel[h]) << "head " << h;
      min_mass = std::min(min_mass, ref.mass[h]);
      mean += ref.mass[h] / kvh;
    }
    EXPECT_NEAR(res.min_mass, min_mass, 1e-4);
    EXPECT_NEAR(res.mean_mass, mean, 1e-4);
  }
}

TEST(RetrievalSelect, PooledLayersAndMeanReduceMatchBruteForce) {
  Selector sel;
  for (uint32_t seed = 100; seed < 130; ++seed) {
    std::mt19937 rng(seed);
    const int kvh = 1 + rng() % 3, g = 1 + rng() % 3, qh = kvh * g, pool = 1 + rng() % 4;
    const int T = 20 + rng() % 300;
    SelectOptions o;
    o.budget = 1 + rng() % (T - 1);
    o.n_sink = 0;
    o.n_recent = 0;
    o.reduce = seed % 2 ? spx::retrieval::GroupReduce::Mean : spx::retrieval::GroupReduce::Max;
    std::normal_distribution<float> nd(0, 2.0f);
    std::vector<float> logits(pool * qh * T);
    for (auto& x : logits) x = nd(rng);
    std::vector<int32_t> out(kvh * o.budget);
    SelectResult res = sel.select(logits.data(), pool, qh, kvh, T, T, o, out.data());
    Ref ref = reference(logits, qh, kvh, T, o, pool);
    SCOPED_TRACE(testing::Message() << "seed " << seed << " pool " << pool);
    double min_mass = 1;
    for (int h = 0; h < kvh; ++h) {
      std::vector<int32_t> got(out.begin() + h * o.budget, out.begin() + (h + 1) * o.budget);
      ASSERT_EQ(got, ref.sel[h]) << "head " << h;
      min_mass = std::min(min_mass, ref.mass[h]);
    }
    EXPECT_NEAR(res.min_mass, min_mass, 1e-4);
  }
}

TEST(RetrievalSelect, SinkAndRecentAlwaysIncludedEvenWithZeroScore) {
  const int T = 100, B = 10;
  std::vector<float> logits(T, 0.0f);
  for (int t = 0; t < T; ++t) logits[t] = (t < 3 || t >= T - 2) ? -50.0f : static_cast<float>(t % 7);
  SelectOptions o;
  o.budget = B;
  o.n_sink = 3;
  o.n_recent = 2;
  std::vector<int32_t> out(B);
  Selector().select(logits.data(), 1, 1, T, T, o, out.data());
  std::set<int32_t> s(out.begin(), out.end());
  for (int t : {0, 1, 2, 98, 99}) EXPECT_TRUE(s.count(t)) << t;
}

TEST(RetrievalSelect, ShortContextIsFullAttention) {
  const int T = 8, B = 16, kvh = 2;
  std::vector<float> logits(2 * kvh * T, 0.5f);
  SelectOptions o;
  o.budget = B;
  std::vector<int32_t> out(kvh * B);
  SelectResult r = Selector().select(logits.data(), 2 * kvh, kvh, T, T, o, out.data());
  EXPECT_TRUE(r.full);
  EXPECT_FALSE(r.fallback);
  EXPECT_EQ(r.count, T);
  for (int h = 0; h < kvh; ++h)
    for (int i = 0; i < B; ++i) EXPECT_EQ(out[h * B + i], i < T ? i : -1);
}

TEST(RetrievalSelect, FallsBackWhenMassIsUnderThreshold) {
  // Flat attention: any 8 of 64 tokens carry 1/8 of the mass.
  const int T = 64, B = 8;
  std::vector<float> flat(T, 0.0f);
  SelectOptions o;
  o.budget = B;
  o.n_sink = 1;
  o.n_recent = 1;
  o.fallback_mass = 0.8f;
  std::vector<int32_t> out(B);
  Selector s;
  SelectResult r = s.select(flat.data(), 1, 1, T, T, o, out.data());
  EXPECT_TRUE(r.full);
  EXPECT_TRUE(r.fallback);
  EXPECT_NEAR(r.min_mass, 0.125, 1e-5);
  // Peaked attention on 6 tokens: the selection carries nearly all mass.
  std::vector<float> peaked(T, -20.0f);
  for (int t : {5, 9, 20, 33, 40, 50}) peaked[t] = 5.0f;
  r = s.select(peaked.data(), 1, 1, T, T, o, out.data());
  EXPECT_FALSE(r.full);
  EXPECT_GT(r.min_mass, 0.99f);
}

TEST(RetrievalSelect, BatchHonoursPerRequestBudgetsAndLengths) {
  const int R = 3, qh = 4, kvh = 2, stride = 50, B = 12;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0, 2);
  std::vector<float> logits(R * qh * stride);
  for (auto& x : logits) x = nd(rng);
  const int lengths[R] = {50, 30, 10};
  const int budgets[R] = {12, 5, 12};
  SelectOptions o;
  o.budget = B;
  o.n_sink = 1;
  o.n_recent = 1;
  std::vector<int32_t> out(R * kvh * B);
  std::vector<SelectResult> res;
  Selector s;
  s.select_batch(logits.data(), R, qh, kvh, lengths, stride, o, budgets, out.data(), &res);
  ASSERT_EQ(res.size(), 3u);
  EXPECT_FALSE(res[0].full);
  EXPECT_FALSE(res[1].full);
  EXPECT_TRUE(res[2].full);  // T=10 <= B
  // Request 1 alone, with its own budget, must give the same rows.
  SelectOptions o1 = o;
  o1.budget = 5;
  std::vector<int32_t> one(kvh * 5);
  s.select(logits.data() + 1 * qh * stride, qh, kvh, 30, stride, o1, one.data());
  for (int h = 0; h < kvh; ++h)
    for (int i = 0; i < B; ++i)
      EXPECT_EQ(out[(1 * kvh + h) * B + i], i < 5 ? one[h * 5 + i] : -1);
}

}  // namespace
