// Continuous batching: requests of different lengths decoded together give
// each the same greedy tokens as alone; cancellation frees the request.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "collect_sink.h"
#include "test_util.h"

namespace spx {
namespace {

using testing::CollectSink;

std::vector<GenerateRequest> five_requests() {
  std::mt19937 rng(7);
  const int lengths[] = {3, 17, 40, 9, 64};
  const int new_tokens[] = {20, 6, 15, 30, 11};
  std::vector<GenerateRequest> out;
  for (int i = 0; i < 5; ++i) {
    GenerateRequest r;
    for (int t = 0; t < lengths[i]; ++t) r.prompt.push_back(static_cast<int32_t>(rng() % 256));
    r.max_new_tokens = new_tokens[i];
    out.push_back(r);
  }
  return out;
}

std::unique_ptr<Engine> open(const char* name, int max_batch, int chunk) {
  EngineOptions o;
  o.model_dir = testing::fixture(name);
  o.max_batch = max_batch;
  o.prefill_chunk = chunk;
  Status st;
  auto e = Engine::open(o, &st);
  EXPECT_TRUE(st.ok) << st.message;
  return e;
}

std::vector<int32_t> run_alone(Engine* e, const GenerateRequest& r) {
  auto sink = std::make_shared<CollectSink>();
  Status st;
  e->submit(r, sink, &st);
  EXPECT_TRUE(st.ok) << st.message;
  EXPECT_TRUE(sink->wait());
  return sink->tokens();
}

class Batching : public ::testing::TestWithParam<const char*> {};

TEST_P(Batching, BatchedEqualsAlone) {
  const auto reqs = five_requests();
  std::vector<std::vector<int32_t>> alone;
  {
    auto e = open(GetParam(), 1, 512);
    for (const auto& r : reqs) alone.push_back(run_alone(e.get(), r));
  }
  // A small chunk makes prefills of later requests overlap earlier decodes.
  auto e = open(GetParam(), 8, 16);
  std::vector<std::shared_ptr<CollectSink>> sinks;
  int max_active = 0;
  for (const auto& r : reqs) {
    auto sink = std::make_shared<CollectSink>();
    Engine* engine = e.get();
    sink->on_each = [engine, &max_active](int32_t, size_t) {
      max_active = std::max(max_active, engine->stats().active_requests);
    };
    Status st;
    e->submit(r, sink, &st);
    ASSERT_TRUE(st.ok);
    sinks.push_back(sink);
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(sinks[i]->wait());
    EXPECT_EQ(sinks[i]->tokens(), alone[i]) << "request " << i;
    EXPECT_EQ(sinks[i]->tokens().size(), static_cast<size_t>(reqs[i].max_new_tokens));
  }
  e->close();
  EXPECT_GE(max_active, 3) << "the requests were not batched together";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Batching,
                         ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-qwen3"));

TEST(Batching, ManyCallerThreads) {
  auto e = open("tiny-llama", 4, 32);
  const auto reqs = five_requests();
  std::vector<std::vector<int32_t>> got(reqs.size());
  std::vector<std::thread> callers;
  for (size_t i = 0; i < reqs.size(); ++i)
    callers.emplace_back([&, i] { got[i] = run_alone(e.get(), reqs[i]); });
  for (auto& t : callers) t.join();
  auto solo = open("tiny-llama", 1, 512);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(got[i], run_alone(solo.get(), reqs[i]));
}

TEST(Cancel, MidStreamFreesTheRequest) {
  auto e = open("tiny-llama", 8, 512);
  GenerateRequest r;
  r.prompt = {10, 20, 30, 40};
  r.max_new_tokens = 200;
  auto sink = std::make_shared<CollectSink>();
  Engine* engine = e.get();
  uint64_t id = 0;
  std::atomic<bool> saw_kv{false};
  sink->on_each = [&](int32_t, size_t n) {
    if (n == 3) {
      saw_kv = engine->stats().kv_bytes_in_use > 0;
      engine->cancel(id);
    }
  };
  Status st;
  id = e->submit(r, sink, &st);
  ASSERT_TRUE(st.ok);
  ASSERT_TRUE(sink->wait());
  EXPECT_TRUE(saw_kv.load());
  EXPECT_EQ(sink->stats().finish_reason, "cancelled");
  EXPECT_GE(sink->tokens().size(), 3u);
  EXPECT_LT(sink->tokens().size(), 200u);
  EngineStats s = e->stats();
  EXPECT_EQ(s.cancelled_requests, 1u);
  EXPECT_EQ(s.active_requests, 0);
  EXPECT_EQ(s.kv_bytes_in_use, 0u);
  EXPECT_EQ(sink->ends(), 1);
  e->cancel(id);  // already gone: ignored
  e->cancel(12345);
}

TEST(Cancel, QueuedRequestIsCancelled) {
  auto e = open("tiny-llama", 1, 512);
  GenerateRequest r;
  r.prompt = {1, 2, 3};
  r.max_new_tokens = 100;
  auto first = std::make_shared<CollectSink>(), second = std::make_shared<CollectSink>();
  Status st;
  e->submit(r, first, &st);
  uint64_t id2 = e->submit(r, second, &st);
  e->cancel(id2);
  ASSERT_TRUE(second->wait());
  EXPECT_EQ(second->stats().finish_reason, "cancelled");
  ASSERT_TRUE(first->wait());
  EXPECT_EQ(first->stats().finish_reason, "length");
  EXPECT_EQ(e->stats().cancelled_requests, 1u);
  EXPECT_EQ(e->stats().completed_requests, 1u);
}

}  // namespace
}  // namespace spx
