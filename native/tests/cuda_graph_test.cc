// The dense decode step recorded as a CUDA graph and replayed (StepGraph,
// docs/cuda.md) against the same steps run eagerly:
// - the model alone: logits bit for bit over many greedy steps while the
//   batch changes (a request joins through a mixed prefill + decode step,
//   one ends and its cache is freed, another is admitted), with the
//   recapture and replay counts each schedule implies;
// - the engine on cuda:0 with SPX_CUDA_GRAPHS on and off: the same greedy
//   tokens for requests that join and finish mid-run, replays counted.
// Models: the tiny fixtures, plus the random llama-mid / qwen3-mid
// checkpoints that tools/gpu_test.sh lists in SPX_CUDA_MODEL_DIRS.
#include <gtest/gtest.h>

#ifndef SPX_HAVE_CUDA
TEST(CudaGraph, Skipped) { GTEST_SKIP() << "built without CUDA (nvcc not found)"; }
#else
#include <algorithm>
#include <cstdlib>
#include <map>

#include "backend/registry.h"
#include "collect_sink.h"
#include "cuda_test_util.h"
#include "decode_schedule.h"
#include "test_util.h"

namespace spx {
namespace {

using testing::fixture;
using testing::Trace;

// The tiny fixtures (256 positions) with short prompts; the random
// checkpoints with prompts long enough for several attention splits.
std::vector<std::pair<std::string, int>> models() {
  std::vector<std::pair<std::string, int>> out = {
      {fixture("tiny-llama"), 120}, {fixture("tiny-qwen2"), 120}, {fixture("tiny-qwen3"), 120}};
  const char* dirs = std::getenv("SPX_CUDA_MODEL_DIRS");
  std::string all = dirs ? dirs : "";
  size_t begin = 0;
  while (begin < all.size()) {
    const size_t end = std::min(all.find(',', begin), all.size());
    if (end > begin) out.emplace_back(all.substr(begin, end - begin), 300);
    begin = end + 1;
  }
  return out;
}

TEST(CudaGraph, DecodeStepReplayEqualsEagerBitForBit) {
  SPX_REQUIRE_GPU();
  for (const auto& [dir, base] : models()) {
    SCOPED_TRACE(dir);
    Trace eager, graph;
    for (bool graphs : {false, true}) {
      Status st;
      auto be = make_backend("cuda:0", 0, &st);
      ASSERT_TRUE(st.ok) << st.message;
      testing::Schedule s(be.get(), dir, graphs, base);
      ASSERT_NO_FATAL_FAILURE(s.run(graphs ? &graph : &eager));
    }
    ASSERT_NO_FATAL_FAILURE(testing::expect_same_logits(eager, graph));
    testing::expect_schedule_counts(eager, graph);
    std::printf("%s: %zu forwards equal bit for bit, %llu captures, %llu replays\n", dir.c_str(),
                eager.logits.size(), static_cast<unsigned long long>(graph.stats.captures),
                static_cast<unsigned long long>(graph.stats.replays));
  }
}

struct EngineRun {
  std::vector<std::vector<int32_t>> tokens;
  EngineStats stats;
};

// Three requests of different lengths; when the first has 6 tokens (on the
// engine thread, so the join lands on the same step every run) two more
// join; all finish at different steps, so the batch grows and shrinks.
EngineRun generate(const std::string& dir, int base, bool graphs) {
  EngineRun out;
  setenv("SPX_CUDA_GRAPHS", graphs ? "1" : "0", 1);
  EngineOptions o;
  o.model_dir = dir;
  o.device = "cuda:0";
  o.max_batch = 8;
  Status st;
  auto engine = Engine::open(o, &st);
  unsetenv("SPX_CUDA_GRAPHS");
  EXPECT_TRUE(st.ok) << st.message;
  if (!engine) return out;
  std::mt19937 rng(11);
  const int vocab = engine->info().vocab_size;
  auto request = [&](int len, int n_new) {
    GenerateRequest r;
    for (int i = 0; i < len; ++i) r.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    r.max_new_tokens = n_new;
    return r;
  };
  const std::vector<GenerateRequest> reqs = {request(base, 20), request(base / 2, 34),
                                             request(base + 9, 27), request(base / 3, 25),
                                             request(base - 5, 12)};
  std::vector<std::shared_ptr<testing::CollectSink>> sinks;
  for (size_t i = 0; i < reqs.size(); ++i) sinks.push_back(std::make_shared<testing::CollectSink>());
  Engine* e = engine.get();
  sinks[0]->on_each = [&, e](int32_t, size_t n) {
    if (n != 6) return;
    for (size_t i = 3; i < reqs.size(); ++i) {
      Status s;
      e->submit(reqs[i], sinks[i], &s);
      EXPECT_TRUE(s.ok) << s.message;
    }
  };
  for (size_t i = 0; i < 3; ++i) {
    e->submit(reqs[i], sinks[i], &st);
    EXPECT_TRUE(st.ok) << st.message;
  }
  for (auto& s : sinks) {
    EXPECT_TRUE(s->wait(120));
    EXPECT_EQ(s->error(), "");
    out.tokens.push_back(s->tokens());
  }
  out.stats = engine->stats();
  engine->close();
  return out;
}

TEST(CudaGraph, EngineGreedyTokensEqualWithGraphsOnAndOff) {
  SPX_REQUIRE_GPU();
  for (const auto& [dir, base] : models()) {
    SCOPED_TRACE(dir);
    const EngineRun off = generate(dir, base, false);
    const EngineRun on = generate(dir, base, true);
    ASSERT_EQ(off.tokens.size(), 5u);
    ASSERT_EQ(on.tokens.size(), 5u);
    for (size_t i = 0; i < on.tokens.size(); ++i) EXPECT_EQ(on.tokens[i], off.tokens[i]) << "request " << i;
    EXPECT_EQ(off.stats.graph_replays, 0u);
    EXPECT_EQ(on.stats.graph_failures, 0u);
    EXPECT_GT(on.stats.graph_captures, 0u);
    EXPECT_GT(on.stats.graph_replays, 0u);
    std::printf("%s: engine tokens equal with graphs on/off; %llu captures, %llu replays of %llu decode tokens\n",
                dir.c_str(), static_cast<unsigned long long>(on.stats.graph_captures),
                static_cast<unsigned long long>(on.stats.graph_replays),
                static_cast<unsigned long long>(on.stats.decode_tokens));
  }
}

}  // namespace
}  // namespace spx
#endif  // SPX_HAVE_CUDA
