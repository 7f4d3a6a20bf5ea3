// Sparse decoding through the Engine API on the tiny fixtures: a budget at or
// above the context gives exactly the full-attention tokens (also with sparse
// and full requests batched together); a small budget runs, deterministically.
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

}  // namespace
}  // namespace spx
