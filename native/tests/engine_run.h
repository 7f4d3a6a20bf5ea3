// One engine, a request per budget, all submitted together and waited for:
// the driver shared by the engine-level SpeContext tests (CPU and GPU).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <vector>

#include "collect_sink.h"
#include "engine/engine.h"

namespace spx::testing {

struct EngineRun {
  std::vector<std::vector<int32_t>> tokens;  // per request
  EngineStats stats;                          // after the last request
  ModelInfo info;
};

// Opens an engine with `o`, submits request i with budgets[i], n_new tokens and
// prompt_of(i, the model's vocabulary size), waits for all and closes it.
inline EngineRun run_requests(const EngineOptions& o, const std::vector<int>& budgets, int n_new,
                              const std::function<std::vector<int32_t>(int, int)>& prompt_of) {
  Status st;
  auto e = Engine::open(o, &st);
  EXPECT_TRUE(st.ok) << st.message;
  if (!e) return {};
  const int vocab = e->info().vocab_size;
  std::vector<std::shared_ptr<CollectSink>> sinks;
  for (size_t i = 0; i < budgets.size(); ++i) {
    GenerateRequest r;
    r.prompt = prompt_of(static_cast<int>(i), vocab);
    r.max_new_tokens = n_new;
    r.budget = budgets[i];
    auto sink = std::make_shared<CollectSink>();
    e->submit(r, sink, &st);
    EXPECT_TRUE(st.ok) << st.message;
    sinks.push_back(sink);
  }
  EngineRun out;
  for (auto& s : sinks) {
    EXPECT_TRUE(s->wait());
    EXPECT_EQ(s->error(), "");
    out.tokens.push_back(s->tokens());
  }
  out.stats = e->stats();
  out.info = e->info();
  e->close();
  return out;
}

}  // namespace spx::testing
