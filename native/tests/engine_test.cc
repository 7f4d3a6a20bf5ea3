// The Engine API end to end on the tiny fixtures: greedy generation equals the
// transformers reference, request validation, close() semantics, stop tokens.
#include <gtest/gtest.h>

#include "collect_sink.h"
#include "test_util.h"

namespace spx {
namespace {

using testing::CollectSink;
using testing::fixture;

std::unique_ptr<Engine> open_tiny(const std::string& name, EngineOptions o = {}) {
  o.model_dir = fixture(name);
  Status st;
  auto e = Engine::open(o, &st);
  EXPECT_TRUE(st.ok) << st.message;
  return e;
}

GenerateRequest reference_request(const std::string& name, std::vector<int32_t>* expected) {
  Json ref = testing::load_json(fixture(name) + "/reference.json");
  GenerateRequest r;
  r.prompt = testing::ints(*ref.find("prompt_ids"));
  *expected = testing::ints(*ref.find("generated_ids"));
  r.max_new_tokens = static_cast<int>(expected->size());
  return r;
}

class TinyEngine : public ::testing::TestWithParam<const char*> {};

TEST_P(TinyEngine, GreedyGenerationMatchesReference) {
  auto engine = open_tiny(GetParam());
  ASSERT_TRUE(engine);
  std::vector<int32_t> expected;
  GenerateRequest req = reference_request(GetParam(), &expected);
  auto sink = std::make_shared<CollectSink>();
  Status st;
  uint64_t id = engine->submit(req, sink, &st);
  ASSERT_TRUE(st.ok) << st.message;
  EXPECT_GT(id, 0u);
  ASSERT_TRUE(sink->wait());
  EXPECT_EQ(sink->error(), "");
  EXPECT_EQ(sink->tokens(), expected);
  RequestStats s = sink->stats();
  EXPECT_EQ(s.finish_reason, "length");
  EXPECT_EQ(s.generated_tokens, static_cast<int>(expected.size()));
  EXPECT_EQ(s.prompt_tokens, static_cast<int>(req.prompt.size()));
  EngineStats es = engine->stats();
  EXPECT_EQ(es.completed_requests, 1u);
  EXPECT_EQ(es.kv_bytes_in_use, 0u);
  EXPECT_EQ(es.prefill_tokens, req.prompt.size());
  engine->close();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TinyEngine,
                         ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-qwen3",
                                           "tiny-llama-bf16-sharded", "tiny-qwen2-f16"));

TEST(Engine, ChunkedPrefillGivesTheSameTokens) {
  EngineOptions o;
  o.prefill_chunk = 5;  // the 12-token prompt takes three steps
  auto engine = open_tiny("tiny-llama", o);
  ASSERT_TRUE(engine);
  std::vector<int32_t> expected;
  GenerateRequest req = reference_request("tiny-llama", &expected);
  auto sink = std::make_shared<CollectSink>();
  Status st;
  engine->submit(req, sink, &st);
  ASSERT_TRUE(st.ok);
  ASSERT_TRUE(sink->wait());
  EXPECT_EQ(sink->tokens(), expected);
}

TEST(Engine, StopTokenEndsGeneration) {
  auto engine = open_tiny("tiny-llama");
  std::vector<int32_t> expected;
  GenerateRequest req = reference_request("tiny-llama", &expected);
  req.stop_token_ids = {expected[2]};
  auto sink = std::make_shared<CollectSink>();
  Status st;
  engine->submit(req, sink, &st);
  ASSERT_TRUE(sink->wait());
  // Generation ends after emitting the first occurrence of the stop token.
  size_t first = 0;
  while (expected[first] != expected[2]) ++first;
  EXPECT_EQ(sink->tokens(), std::vector<int32_t>(expected.begin(), expected.begin() + first + 1));
  EXPECT_EQ(sink->stats().finish_reason, "stop");
}

TEST(Engine, InfoDescribesTheModel) {
  auto engine = open_tiny("tiny-qwen3");
  ModelInfo info = engine->info();
  EXPECT_EQ(info.architecture, "Qwen3ForCausalLM");
  EXPECT_EQ(info.vocab_size, 258);
  EXPECT_EQ(info.hidden_size, 64);
  EXPECT_EQ(info.num_layers, 2);
  EXPECT_EQ(info.num_heads, 6);
  EXPECT_EQ(info.num_kv_heads, 1);
  EXPECT_EQ(info.head_dim, 16);
  EXPECT_EQ(info.max_context, 256);
  EXPECT_GT(engine->stats().threads, 0);
  EXPECT_EQ(engine->stats().device, "cpu");
}

TEST(Engine, RejectsBadRequests) {
  auto engine = open_tiny("tiny-llama");
  auto sink = std::make_shared<CollectSink>();
  auto expect_error = [&](GenerateRequest r, const std::string& part) {
    Status st;
    uint64_t id = engine->submit(r, sink, &st);
    EXPECT_FALSE(st.ok) << part;
    EXPECT_EQ(id, 0u);
    EXPECT_NE(st.message.find(part), std::string::npos) << st.message;
  };
  GenerateRequest ok;
  ok.prompt = {1, 2, 3};
  ok.max_new_tokens = 4;
  GenerateRequest r = ok;
  r.prompt.clear();
  expect_error(r, "empty");
  r = ok;
  r.prompt.assign(257, 5);
  expect_error(r, "longer than the context");
  r = ok;
  r.prompt = {1, 258};
  expect_error(r, "out of range");
  r.prompt = {-1};
  expect_error(r, "out of range");
  r = ok;
  r.max_new_tokens = 0;
  expect_error(r, "max_new_tokens");
  r.max_new_tokens = -3;
  expect_error(r, "max_new_tokens");
  r = ok;
  r.sampling.top_p = 0;
  expect_error(r, "top_p");
  r = ok;
  r.sampling.temperature = -1;
  expect_error(r, "temperature");
  Status st;
  engine->submit(ok, nullptr, &st);
  EXPECT_FALSE(st.ok);
  EXPECT_EQ(sink->ends(), 0);  // nothing was enqueued
}

TEST(Engine, PromptFillingTheContextStopsAtLength) {
  auto engine = open_tiny("tiny-llama");
  GenerateRequest r;
  r.prompt.assign(256, 65);
  r.max_new_tokens = 10;
  auto sink = std::make_shared<CollectSink>();
  Status st;
  engine->submit(r, sink, &st);
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_TRUE(sink->wait());
  EXPECT_EQ(sink->tokens().size(), 1u);
  EXPECT_EQ(sink->stats().finish_reason, "length");
}

TEST(Engine, CloseIsIdempotentAndLaterCallsFail) {
  auto engine = open_tiny("tiny-llama");
  engine->close();
  engine->close();
  GenerateRequest r;
  r.prompt = {1, 2};
  Status st;
  EXPECT_EQ(engine->submit(r, std::make_shared<CollectSink>(), &st), 0u);
  EXPECT_FALSE(st.ok);
  EXPECT_NE(st.message.find("closed"), std::string::npos);
  engine->cancel(1);  // ignored, no crash
  EXPECT_EQ(engine->stats().active_requests, 0);
}

TEST(Engine, CloseCancelsRunningRequests) {
  auto engine = open_tiny("tiny-llama");
  GenerateRequest r;
  r.prompt = {1, 2, 3};
  r.max_new_tokens = 250;
  std::vector<std::shared_ptr<CollectSink>> sinks;
  for (int i = 0; i < 3; ++i) {
    sinks.push_back(std::make_shared<CollectSink>());
    Status st;
    engine->submit(r, sinks.back(), &st);
    ASSERT_TRUE(st.ok);
  }
  engine->close();
  for (auto& s : sinks) {
    EXPECT_EQ(s->ends(), 1);
    EXPECT_TRUE(s->stats().finish_reason == "cancelled" || s->stats().finish_reason == "length");
  }
}

TEST(Engine, OpenErrorsAreClear) {
  auto open_err = [](EngineOptions o) {
    Status st;
    auto e = Engine::open(o, &st);
    EXPECT_EQ(e, nullptr);
    EXPECT_FALSE(st.ok);
    return st.message;
  };
  EngineOptions o;
  o.model_dir = "/nonexistent/model";
  EXPECT_NE(open_err(o).find("does not exist"), std::string::npos);
  o.model_dir = fixture("tiny-llama");
  o.device = "cuda:99";  // fails with or without a CUDA build (no such GPU)
  EXPECT_NE(open_err(o).find("cuda"), std::string::npos);
  o.device = "tpu";
  EXPECT_NE(open_err(o).find("unknown device"), std::string::npos);
  o.device = "cpu";
  o.max_context = 100000;
  EXPECT_NE(open_err(o).find("max_context"), std::string::npos);
  o.max_context = 0;
  o.max_batch = 0;
  EXPECT_NE(open_err(o).find("max_batch"), std::string::npos);
}

}  // namespace
}  // namespace spx
