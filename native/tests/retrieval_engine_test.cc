// Sparse decoding through the Engine API on the tiny fixtures: a budget at or
// above the context gives exactly the full-attention tokens (also with sparse
// and full requests batched together); a small budget runs, deterministically;
// the planner moves layers to the host tier mid-generation without changing
// the tokens, and the counters add up.
#include <gtest/gtest.h>

#include <functional>

#include "collect_sink.h"
#include "engine_run.h"
#include "test_util.h"

namespace spx {
namespace {

using testing::CollectSink;
using testing::fixture;

using testing::EngineRun;

// Opens an engine, submits one request per budget (prompt_of(i): request i's
// prompt), waits for all and closes it.
EngineRun run(const EngineOptions& o, const std::vector<int>& budgets, int n_new,
              const std::function<std::vector<int32_t>(int)>& prompt_of) {
  return testing::run_requests(o, budgets, n_new, [&](int i, int) { return prompt_of(i); });
}

// n tokens of a fixed pattern, varied by request i.
std::vector<int32_t> pattern(int n, int mul, int i, int vocab = 250) {
  std::vector<int32_t> p;
  for (int t = 0; t < n; ++t) p.push_back((t * mul + i) % vocab);
  return p;
}

std::vector<std::vector<int32_t>> generate_all(const std::string& name, const std::vector<int>& budgets,
                                               int dlm_layers = 0) {
  EngineOptions o;
  o.model_dir = fixture(name);
  o.threads = 1;
  o.max_batch = 4;
  o.prefill_chunk = 16;  // several prefill chunks before the head adopts the prompt
  o.dlm_layers = dlm_layers;
  return run(o, budgets, 24, [](int i) { return pattern(60, 31, 7 * i); }).tokens;
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

// One sparse request of a 60-token prompt and 60 new tokens, budget 16, on
// an engine whose planner may use `device_memory` bytes (0: placement off;
// -1: the planner's fixed part plus room for `s0` tokens of full KV in every
// layer and the head's K, so layers move once the sequence passes s0).
EngineRun run_placement(const std::string& name, int64_t device_memory, int s0 = 0) {
  EngineOptions o;
  o.model_dir = fixture(name);
  o.threads = 1;
  o.max_batch = 2;
  o.prefill_chunk = 32;
  o.dlm_layers = 1;
  o.device_memory_bytes = device_memory;
  auto prompt = [](int) { return pattern(60, 37, 11); };
  if (device_memory < 0) {
    // Probe the planner's fixed part with a large pool, then size the pool.
    o.device_memory_bytes = int64_t{1} << 40;
    const EngineRun probe = run(o, {}, 1, prompt);
    EXPECT_GT(probe.stats.planner_fixed_bytes, 0);
    const int64_t tok = 2LL * 4 * probe.info.num_kv_heads * probe.info.head_dim;  // f32 K+V
    o.device_memory_bytes = probe.stats.planner_fixed_bytes + tok * (probe.info.num_layers + 1) * s0;
  }
  return run(o, {16}, 60, prompt);
}

class Placement : public ::testing::TestWithParam<const char*> {};

// The planner moves the last layer, then the one before, to the host tier
// while the request decodes (thresholds at 70 and 97 tokens for these
// 2-layer fixtures: S_i = ((L+1) * s0 - i * B) / (L - i + 1)); the greedy
// tokens equal those of a run that kept every layer on the device, because
// slot-buffer attention reads exactly the selected K/V.
TEST_P(Placement, LayersMoveMidGenerationWithoutChangingTokens) {
  const EngineRun fixed = run_placement(GetParam(), int64_t{1} << 40);
  const EngineRun moving = run_placement(GetParam(), -1, 70);
  ASSERT_EQ(fixed.tokens.size(), 1u);
  ASSERT_EQ(fixed.tokens[0].size(), 60u);
  EXPECT_EQ(moving.tokens, fixed.tokens);
  EXPECT_EQ(fixed.stats.host_layers, 0);
  EXPECT_EQ(fixed.stats.layer_moves, 0u);
  EXPECT_EQ(fixed.stats.elastic_loads, 0u);
  EXPECT_EQ(moving.stats.host_layers, 2);   // both layers by the end
  EXPECT_EQ(moving.stats.layer_moves, 2u);  // one at a time
  EXPECT_GT(moving.stats.elastic_loads, 0u);
  EXPECT_EQ(moving.stats.transfer_ms, 0.0);  // the CPU backend copies in line, no prefetch stream
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
EngineRun run_waves(int64_t device_memory) {
  EngineOptions o;
  o.model_dir = fixture("tiny-llama");
  o.threads = 1;
  o.max_batch = 2;
  o.prefill_chunk = 32;
  o.device_memory_bytes = device_memory;
  return run(o, {16, 16, 16, 500}, 60, [](int i) { return pattern(60, 37, 11 * i); });
}

TEST(Placement, JoiningRequestsUseTheHostTier) {
  const EngineRun kept = run_waves(int64_t{1} << 40);
  ASSERT_EQ(kept.tokens.size(), 4u);
  const int64_t tok = 2LL * 4 * kept.info.num_kv_heads * kept.info.head_dim;  // f32 K+V
  const EngineRun moved = run_waves(kept.stats.planner_fixed_bytes +
                              2 * tok * (kept.info.num_layers + 1) * 70);
  ASSERT_EQ(moved.tokens.size(), 4u);
  EXPECT_EQ(moved.tokens, kept.tokens);
  EXPECT_EQ(kept.stats.host_layers, 0);
  EXPECT_GT(moved.stats.host_layers, 0);
  EXPECT_EQ(moved.stats.full_steps, 59u);  // the request whose budget covers its context
  EXPECT_EQ(moved.stats.sparse_steps, 3u * 59u);
}

TEST(Placement, OffByDefaultOnTheCpuBackend) {
  const EngineRun r = run_placement("tiny-llama", 0);
  EXPECT_EQ(r.stats.planner_memory_bytes, 0);
  EXPECT_EQ(r.stats.host_layers, 0);
  EXPECT_EQ(r.stats.elastic_loads, 0u);
}

TEST(SparseCounters, BudgetCoveringTheContextCountsFullSteps) {
  EngineOptions o;
  o.model_dir = fixture("tiny-llama");
  o.threads = 1;
  // 20 + 10 <= 64: full attention on every step.
  const EngineRun r = run(o, {64}, 10, [](int) { return pattern(20, 1, 3); });
  ASSERT_EQ(r.tokens.size(), 1u);
  EXPECT_EQ(r.stats.sparse_steps, 0u);
  EXPECT_EQ(r.stats.full_steps, 9u);  // the first token comes from the prefill
  EXPECT_EQ(r.stats.fallback_steps, 0u);
}

// An EAGLE-3 draft as the head, through the engine: the target's forward
// feeds it its hidden states (SparseDecoder's glue); a budget covering the
// context equals dense, a small one decodes sparsely.
EngineRun generate_eagle3(const std::vector<int>& budgets) {
  EngineOptions o;
  o.model_dir = fixture("tiny-eagle3/target");
  o.dlm_dir = fixture("tiny-eagle3/draft");
  o.threads = 1;
  o.max_batch = 4;
  o.prefill_chunk = 16;
  return run(o, budgets, 20, [](int i) { return pattern(50, 13, 5 * i); });
}

TEST(SparseEngine, Eagle3HeadThroughTheEngine) {
  const EngineRun dense = generate_eagle3({0, 0});
  const EngineRun big = generate_eagle3({70, 0});  // 50 + 20 <= 70
  const EngineRun small = generate_eagle3({12, 0});
  ASSERT_EQ(dense.tokens.size(), 2u);
  ASSERT_EQ(big.tokens.size(), 2u);
  ASSERT_EQ(small.tokens.size(), 2u);
  EXPECT_EQ(big.tokens, dense.tokens);
  EXPECT_EQ(big.stats.full_steps, 19u);
  EXPECT_EQ(small.tokens[1], dense.tokens[1]);  // the dense request batched with a sparse one
  EXPECT_EQ(small.tokens[0].size(), 20u);
  EXPECT_EQ(small.stats.sparse_steps, 19u);
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
