// Sampling: greedy is argmax; a seed fixes the tokens; top-k / top-p keep only
// the allowed candidates. Engine-level: same seed, same generation.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "collect_sink.h"
#include "sampling/sampler.h"
#include "test_util.h"

namespace spx {
namespace {

std::vector<float> logits_row() {
  std::vector<float> l(100);
  for (int i = 0; i < 100; ++i) l[i] = std::sin(i * 0.37f) * 3;
  return l;
}

TEST(Sampler, GreedyIsArgmax) {
  auto l = logits_row();
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.sample(l.data(), 100), argmax(l.data(), 100));
}

TEST(Sampler, SameSeedSameTokens) {
  auto l = logits_row();
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 42;
  Sampler a(p), b(p);
  std::vector<int32_t> ta, tb;
  for (int i = 0; i < 200; ++i) {
    ta.push_back(a.sample(l.data(), 100));
    tb.push_back(b.sample(l.data(), 100));
  }
  EXPECT_EQ(ta, tb);
  p.seed = 43;
  Sampler c(p);
  std::vector<int32_t> tc;
  for (int i = 0; i < 200; ++i) tc.push_back(c.sample(l.data(), 100));
  EXPECT_NE(ta, tc);
  EXPECT_GT(std::set<int32_t>(ta.begin(), ta.end()).size(), 5u);  // it does sample
}

TEST(Sampler, TopKKeepsOnlyTheKBest) {
  auto l = logits_row();
  SamplingParams p;
  p.temperature = 2.0f;
  p.top_k = 3;
  Sampler s(p);
  std::vector<int32_t> order(100);
  for (int i = 0; i < 100; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  std::set<int32_t> allowed(order.begin(), order.begin() + 3), seen;
  for (int i = 0; i < 300; ++i) seen.insert(s.sample(l.data(), 100));
  for (int32_t t : seen) EXPECT_TRUE(allowed.count(t)) << t;
  EXPECT_EQ(seen.size(), 3u);
}

TEST(Sampler, TopPKeepsTheNucleus) {
  // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two.
  std::vector<float> l = {std::log(0.05f), std::log(0.5f), std::log(0.15f), std::log(0.3f)};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.7f;
  Sampler s(p);
  std::set<int32_t> seen;
  for (int i = 0; i < 300; ++i) seen.insert(s.sample(l.data(), 4));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 3}));
}

TEST(Sampler, FollowsTheDistribution) {
  std::vector<float> l = {std::log(0.2f), std::log(0.8f)};
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 9;
  Sampler s(p);
  int ones = 0;
  for (int i = 0; i < 4000; ++i) ones += s.sample(l.data(), 2);
  EXPECT_NEAR(ones / 4000.0, 0.8, 0.03);
}

TEST(EngineSampling, SameSeedSameGeneration) {
  EngineOptions o;
  o.model_dir = testing::fixture("tiny-qwen2");
  Status st;
  auto e = Engine::open(o, &st);
  ASSERT_TRUE(st.ok) << st.message;
  GenerateRequest r;
  r.prompt = {72, 101, 108, 108, 111};
  r.max_new_tokens = 24;
  r.sampling.temperature = 1.5f;
  r.sampling.top_p = 0.95f;
  r.sampling.top_k = 50;
  auto gen = [&](uint64_t seed) {
    GenerateRequest q = r;
    q.sampling.seed = seed;
    auto sink = std::make_shared<testing::CollectSink>();
    e->submit(q, sink, &st);
    EXPECT_TRUE(sink->wait());
    return sink->tokens();
  };
  auto a = gen(1), b = gen(1), c = gen(2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // Together in one batch, each still follows its own seed.
  auto s1 = std::make_shared<testing::CollectSink>(), s2 = std::make_shared<testing::CollectSink>();
  GenerateRequest q1 = r, q2 = r;
  q1.sampling.seed = 1;
  q2.sampling.seed = 2;
  e->submit(q1, s1, &st);
  e->submit(q2, s2, &st);
  ASSERT_TRUE(s1->wait());
  ASSERT_TRUE(s2->wait());
  EXPECT_EQ(s1->tokens(), a);
  EXPECT_EQ(s2->tokens(), c);
}

}  // namespace
}  // namespace spx
