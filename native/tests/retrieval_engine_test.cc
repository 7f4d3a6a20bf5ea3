// Sparse decoding through the Engine API on the tiny fixtures: a budget at or
// above the context gives exactly the full-attention tokens (also with sparse
// and full requests batched together); a small budget runs, deterministically;
// the planner moves layers to the host tier mid-generation without changing
// the tokens, and the counters add up.
#include <gtest/gtest.h>

#include "collect_sink.h"
#include "test_util.h"

namespace spx {
namespace {

using testing::CollectSink;
using testing::fixture;

std::vector<std::vector<int32_t>> generate_all(const std::string& name, const std::vector<int>& budgets,
                                               int dlm_layers = 0) {
  EngineOptions o;
  o.model_dir = fixture(name);
  o.threads = 1;
  o.max_batch = 4;
  o.prefill_chunk = 16;  // several prefill chunks before the head adopts the prompt
  o.dlm_layers = dlm_layers;
  Status st;
  auto e = Engine::open(o, &st);
  EXPECT_TRUE(st.ok) << st.message;
  if (!e) return {};
  std::vector<std::shared_ptr<CollectSink>> sinks;
  for (size_t i = 0; i < budgets.size(); ++i) {
    GenerateRequest r;
    for (int t = 0; t < 60; ++t) r.prompt.push_back((t * 31 + 7 * static_cast<int>(i)) % 250);
    r.max_new_tokens = 24;
    r.budget = budgets[i];
    auto sink = std::make_shared<CollectSink>();
    e->submit(r, sink, &st);
    EXPECT_TRUE(st.ok) << st.message;
    sinks.push_back(sink);
  }
  std::vector<std::vector<int32_t>> out;
  for (auto& s : sinks) {
    EXPECT_TRUE(s->wait());
    EXPECT_EQ(s->error(), "");
    out.push_back(s->tokens());
  }
  e->close();
  return out;
}

class SparseEngine : public ::testing::TestWithParam<const char*> {};

TEST_P(SparseEngine, BudgetCoveringTheContextEqualsFullAttention) {
  // Requests 0,1: full; 2,3: the same prompts as 0,1? No: prompts differ by i,
  // so compare each sparse request with a full run of the same prompt.
  const auto full = generate_all(GetParam(), {0, 0, 0});
  const auto big = generate_all(GetParam(), {84, 0, 500});  // context 60 + 24 <= B
  ASSERT_EQ(full.size(), 3u);
  ASSERT_EQ(big.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(full[i].size(), 24u);
    EXPECT_EQ(big[i], full[i]) << "request " << i;
  }
}

TEST_P(SparseEngine, SmallBudgetRunsDeterministically) {
  const auto a = generate_all(GetParam(), {24, 0, 40}, 2);
  const auto b = generate_all(GetParam(), {24, 0, 40}, 2);
  const auto full = generate_all(GetParam(), {0, 0, 0});
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a[0].size(), 24u);
  EXPECT_EQ(a[1], full[1]);  // the full request batched with sparse ones is untouched
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SparseEngine, ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-qwen3"));

TEST(SparseEngine, BadHeadOptionFailsOpenClearly) {
  EngineOptions o;
  o.model_dir = fixture("tiny-llama");
  o.dlm_layers = 9;  // the fixture has 2 layers
  Status st;
  auto e = Engine::open(o, &st);
  EXPECT_FALSE(e);
  EXPECT_NE(st.message.find("layers"), std::string::npos) << st.message;
}

// ---- Adaptive placement and the SpeContext counters on the CPU backend.

struct PlacementRun {
  std::vector<int32_t> tokens;
  EngineStats stats;
};

// One sparse request of a 60-token prompt and 60 new tokens, budget 16, on
// an engine whose planner may use `device_memory` bytes (0: placement off;
// -1: the planner's fixed part plus room for `s0` tokens of full KV in every
// layer and the head's K, so layers move once the sequence passes s0).
PlacementRun run_placement(const std::string& name, int64_t device_memory, int s0 = 0) {
  EngineOptions o;
  o.model_dir = fixture(name);
  o.threads = 1;
  o.max_batch = 2;
  o.prefill_chunk = 32;
  o.dlm_layers = 1;
  o.device_memory_bytes = device_memory;
  Status st;
  if (device_memory < 0) {
    // Probe the planner's fixed part with a large pool, then size the pool.
    o.device_memory_bytes = int64_t{1} << 40;
    auto probe = Engine::open(o, &st);
    EXPECT_TRUE(st.ok) << st.message;
    if (!probe) return {};
    const EngineStats ps = probe->stats();
    const ModelInfo mi = probe->info();
    probe->close();
    EXPECT_GT(ps.planner_fixed_bytes, 0);
    const int64_t tok = 2LL * 4 * mi.num_kv_heads * mi.head_dim;  // f32 K+V, one token-layer
    o.device_memory_bytes = ps.planner_fixed_bytes + tok * (mi.num_layers + 1) * s0;
  }
  auto e = Engine::open(o, &st);
  EXPECT_TRUE(st.ok) << st.message;
  if (!e) return {};
  GenerateRequest r;
  for (int t = 0; t < 60; ++t) r.prompt.push_back((t * 37 + 11) % 250);
  r.max_new_tokens = 60;
  r.budget = 16;
  auto sink = std::make_shared<CollectSink>();
  e->submit(r, sink, &st);
  EXPECT_TRUE(st.ok) << st.message;
  EXPECT_TRUE(sink->wait());
  EXPECT_EQ(sink->error(), "");
  PlacementRun out{sink->tokens(), e->stats()};
  e->close();
  return out;
}

class Placement : public ::testing::TestWithParam<const char*> {};

// The planner moves the last layer, then the one before, to the host tier
// while the request decodes (thresholds at 70 and 97 tokens for these
// 2-layer fixtures: S_i = ((L+1) * s0 - i * B) / (L - i + 1)); the greedy
// tokens equal those of a run that kept every layer on the device, because
// slot-buffer attention reads exactly the selected K/V.
TEST_P(Placement, LayersMoveMidGenerationWithoutChangingTokens) {
  const PlacementRun fixed = run_placement(GetParam(), int64_t{1} << 40);
  const PlacementRun moving = run_placement(GetParam(), -1, 70);
  ASSERT_EQ(fixed.tokens.size(), 60u);
  EXPECT_EQ(moving.tokens, fixed.tokens);
  EXPECT_EQ(fixed.stats.host_layers, 0);
  EXPECT_EQ(fixed.stats.layer_moves, 0u);
  EXPECT_EQ(fixed.stats.elastic_loads, 0u);
  EXPECT_EQ(moving.stats.host_layers, 2);   // both layers by the end
  EXPECT_EQ(moving.stats.layer_moves, 2u);  // one at a time
  EXPECT_GT(moving.stats.elastic_loads, 0u);
  EXPECT_GT(moving.stats.elastic_bytes, moving.stats.elastic_loads);
  EXPECT_GT(moving.stats.reload_fraction, 0.0);
  EXPECT_LE(moving.stats.reload_fraction, 1.0);
  // Decode steps past the budget are sparse in both runs; counters agree.
  EXPECT_EQ(moving.stats.sparse_steps, fixed.stats.sparse_steps);
  EXPECT_EQ(fixed.stats.sparse_steps + fixed.stats.full_steps + fixed.stats.fallback_steps, 59u);
  EXPECT_GT(fixed.stats.sparse_steps, 0u);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Placement, ::testing::Values("tiny-llama", "tiny-qwen3"));

// Requests joining while layers are on the host tier (two at a time: the
// first pair makes the planner move layers, the second joins with them
// moved; one of them with a budget covering its context, so full steps).
std::vector<std::vector<int32_t>> run_waves(int64_t device_memory, EngineStats* stats) {
  EngineOptions o;
  o.model_dir = fixture("tiny-llama");
  o.threads = 1;
  o.max_batch = 2;
  o.prefill_chunk = 32;
  o.device_memory_bytes = device_memory;
  Status st;
  auto e = Engine::open(o, &st);
  EXPECT_TRUE(st.ok) << st.message;
  if (!e) return {};
  std::vector<std::shared_ptr<CollectSink>> sinks;
  const int budgets[] = {16, 16, 16, 500};
  for (int i = 0; i < 4; ++i) {
    GenerateRequest r;
    for (int t = 0; t < 60; ++t) r.prompt.push_back((t * 37 + 11 * i) % 250);
    r.max_new_tokens = 60;
    r.budget = budgets[i];
    auto sink = std::make_shared<CollectSink>();
    e->submit(r, sink, &st);
    EXPECT_TRUE(st.ok) << st.message;
    sinks.push_back(sink);
  }
  std::vector<std::vector<int32_t>> out;
  for (auto& s : sinks) {
    EXPECT_TRUE(s->wait());
    EXPECT_EQ(s->error(), "");
    out.push_back(s->tokens());
  }
  *stats = e->stats();
  e->close();
  return out;
}

TEST(Placement, JoiningRequestsUseTheHostTier) {
  EngineStats kept_stats, moved_stats;
  const auto kept = run_waves(int64_t{1} << 40, &kept_stats);
  ASSERT_EQ(kept.size(), 4u);
  const int64_t tok = 2LL * 4 * 2 * 16;  // f32 K+V, 2 KV heads, head_dim 16 (tiny-llama)
  const auto moved = run_waves(kept_stats.planner_fixed_bytes + 2 * tok * 3 * 70, &moved_stats);
  ASSERT_EQ(moved.size(), 4u);
  EXPECT_EQ(moved, kept);
  EXPECT_EQ(kept_stats.host_layers, 0);
  EXPECT_GT(moved_stats.host_layers, 0);
  EXPECT_EQ(moved_stats.full_steps, 59u);  // the request whose budget covers its context
  EXPECT_EQ(moved_stats.sparse_steps, 3u * 59u);
}

TEST(Placement, OffByDefaultOnTheCpuBackend) {
  const PlacementRun r = run_placement("tiny-llama", 0);
  EXPECT_EQ(r.stats.planner_memory_bytes, 0);
  EXPECT_EQ(r.stats.host_layers, 0);
  EXPECT_EQ(r.stats.elastic_loads, 0u);
}

TEST(SparseCounters, BudgetCoveringTheContextCountsFullSteps) {
  EngineOptions o;
  o.model_dir = fixture("tiny-llama");
  o.threads = 1;
  Status st;
  auto e = Engine::open(o, &st);
  ASSERT_TRUE(st.ok) << st.message;
  GenerateRequest r;
  for (int t = 0; t < 20; ++t) r.prompt.push_back(t + 3);
  r.max_new_tokens = 10;
  r.budget = 64;  // 20 + 10 <= 64: full attention on every step
  auto sink = std::make_shared<CollectSink>();
  e->submit(r, sink, &st);
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_TRUE(sink->wait());
  const EngineStats s = e->stats();
  EXPECT_EQ(s.sparse_steps, 0u);
  EXPECT_EQ(s.full_steps, 9u);  // the first token comes from the prefill
  EXPECT_EQ(s.fallback_steps, 0u);
  e->close();
}

// An EAGLE-3 draft as the head, through the engine: the target's forward
// feeds it its hidden states (SparseDecoder's glue); a budget covering the
// context equals dense, a small one decodes sparsely.
std::vector<std::vector<int32_t>> generate_eagle3(const std::vector<int>& budgets, EngineStats* stats) {
  EngineOptions o;
  o.model_dir = fixture("tiny-eagle3/target");
  o.dlm_dir = fixture("tiny-eagle3/draft");
  o.threads = 1;
  o.max_batch = 4;
  o.prefill_chunk = 16;
  Status st;
  auto e = Engine::open(o, &st);
  EXPECT_TRUE(st.ok) << st.message;
  if (!e) return {};
  const int vocab = e->info().vocab_size;
  std::vector<std::shared_ptr<CollectSink>> sinks;
  for (size_t i = 0; i < budgets.size(); ++i) {
    GenerateRequest r;
    for (int t = 0; t < 50; ++t) r.prompt.push_back((t * 13 + 5 * static_cast<int>(i)) % vocab);
    r.max_new_tokens = 20;
    r.budget = budgets[i];
    auto sink = std::make_shared<CollectSink>();
    e->submit(r, sink, &st);
    EXPECT_TRUE(st.ok) << st.message;
    sinks.push_back(sink);
  }
  std::vector<std::vector<int32_t>> out;
  for (auto& s : sinks) {
    EXPECT_TRUE(s->wait());
    EXPECT_EQ(s->error(), "");
    out.push_back(s->tokens());
  }
  *stats = e->stats();
  e->close();
  return out;
}

TEST(SparseEngine, Eagle3HeadThroughTheEngine) {
  EngineStats dense_stats, big_stats, small_stats;
  const auto dense = generate_eagle3({0, 0}, &dense_stats);
  const auto big = generate_eagle3({70, 0}, &big_stats);  // 50 + 20 <= 70
  const auto small = generate_eagle3({12, 0}, &small_stats);
  ASSERT_EQ(dense.size(), 2u);
  ASSERT_EQ(big.size(), 2u);
  ASSERT_EQ(small.size(), 2u);
  EXPECT_EQ(big, dense);
  EXPECT_EQ(big_stats.full_steps, 19u);
  EXPECT_EQ(small[1], dense[1]);  // the dense request batched with a sparse one
  EXPECT_EQ(small[0].size(), 20u);
  EXPECT_EQ(small_stats.sparse_steps, 19u);
}

TEST(Placement, NegativeDeviceMemoryIsAClearError) {
  EngineOptions o;
  o.model_dir = fixture("tiny-llama");
  o.device_memory_bytes = -5;
  Status st;
  auto e = Engine::open(o, &st);
  EXPECT_FALSE(e);
  EXPECT_NE(st.message.find("device_memory_bytes"), std::string::npos) << st.message;
}

}  // namespace
}  // namespace spx
