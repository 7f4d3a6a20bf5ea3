// One engine, a request per budget, all submitted together and waited for:
// the driver shared by the engine-level SpeContext tests (CPU and GPU).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "collect_sink.h"
#include "engine/engine.h"

namespace spx::testing {

struct EngineRun {
  std::vector<std::vector<int32_t>> tokens;  // per request
  EngineStats stats;                          // after the last request
  ModelInfo info;
};

// Opens an engine with `o`, submits request_of(i, the model's vocabulary
// size) for i in [0, n), waits up to wait_s seconds for each and closes it.
inline EngineRun run_built(const EngineOptions& o, int n,
                           const std::function<GenerateRequest(int, int)>& request_of, int wait_s = 60) {
  Status st;
  auto e = Engine::open(o, &st);
  EXPECT_TRUE(st.ok) << st.message;
  if (!e) return {};
  const int vocab = e->info().vocab_size;
  std::vector<std::shared_ptr<CollectSink>> sinks;
  for (int i = 0; i < n; ++i) {
    auto sink = std::make_shared<CollectSink>();
    e->submit(request_of(i, vocab), sink, &st);
    EXPECT_TRUE(st.ok) << st.message;
    sinks.push_back(sink);
  }
  EngineRun out;
  for (auto& s : sinks) {
    EXPECT_TRUE(s->wait(wait_s));
    EXPECT_EQ(s->error(), "");
    out.tokens.push_back(s->tokens());
  }
  out.stats = e->stats();
  out.info = e->info();
  e->close();
  return out;
}

// run_built with request i: budgets[i], n_new tokens, prompt_of(i, vocab).
inline EngineRun run_requests(const EngineOptions& o, const std::vector<int>& budgets, int n_new,
                              const std::function<std::vector<int32_t>(int, int)>& prompt_of) {
  return run_built(o, static_cast<int>(budgets.size()), [&](int i, int vocab) {
    GenerateRequest r;
    r.prompt = prompt_of(i, vocab);
    r.max_new_tokens = n_new;
    r.budget = budgets[static_cast<size_t>(i)];
    return r;
  });
}

// run_requests on one device with prompt i = (t * 31 + 7 * i) % min(vocab, 250)
// of `prompt` tokens and prefill chunks of 128 (the GPU engine-level tests).
inline EngineRun run_engine_on(const std::string& device, const std::string& dir,
                               const std::vector<int>& budgets, int prompt, int n_new,
                               int64_t device_memory, int max_batch) {
  EngineOptions o;
  o.model_dir = dir;
  o.device = device;
  o.max_batch = max_batch;
  o.prefill_chunk = 128;
  o.device_memory_bytes = device_memory;
  return run_requests(o, budgets, n_new, [&](int i, int vocab_size) {
    const int vocab = std::min(vocab_size, 250);
    std::vector<int32_t> p;
    for (int t = 0; t < prompt; ++t) p.push_back((t * 31 + 7 * i) % vocab);
    return p;
  });
}

// Appends the comma-separated directories of `list` (may be null) to dirs.
inline void append_dirs(const char* list, std::vector<std::string>* dirs) {
  if (!list) return;
  const std::string all = list;
  size_t begin = 0;
  while (begin <= all.size()) {
    const size_t end = std::min(all.find(',', begin), all.size());
    if (end > begin) dirs->push_back(all.substr(begin, end - begin));
    begin = end + 1;
  }
}

}  // namespace spx::testing
