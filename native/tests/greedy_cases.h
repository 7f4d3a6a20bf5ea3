// Cases for greedy sampling where the logits are (issue 6), shared by
// greedy_test (CPU) and cuda_argmax_test (GPU). Header only.
// - hard_rows(): logits rows that exercise sampling::argmax's rules: ties at
//   the maximum (near and far apart), -inf, NaN (at element 0 too), all
//   equal, -0 beside +0, the maximum at either end;
// - run_greedy_switch(): the engine with SPX_DEVICE_ARGMAX on
//   (ForwardBatch::greedy_ids) and off (the host samplers, the reference).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine_run.h"

namespace spx::testing {

// `rows` rows of `vocab` logits: random normal ones, then (for rows past the
// first few) one special case per row, cycling through the list above.
inline std::vector<float> hard_rows(int rows, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 3.f);
  std::uniform_int_distribution<int> pos(0, vocab - 1);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> v(static_cast<size_t>(rows) * vocab);
  for (float& x : v) x = normal(rng);
  for (int r = 3; r < rows; ++r) {
    float* x = v.data() + static_cast<size_t>(r) * vocab;
    const int a = pos(rng), b = pos(rng);
    switch (r % 12) {
      case 0: x[a] = x[b] = 40.f; break;                                 // a tie anywhere
      case 1: x[a] = 40.f; if (a + 1 < vocab) x[a + 1] = 40.f; break;    // neighbours
      case 2: x[vocab - 1] = 40.f; break;                                 // the last id
      case 3: x[0] = 40.f; x[vocab - 1] = 40.f; break;                    // both ends
      case 4: for (int i = 0; i < vocab; ++i) x[i] = -inf; break;         // all -inf
      case 5: for (int i = 0; i < vocab; i += 3) x[i] = nan; x[b] = 50.f; x[a] = nan; break;
      case 6: x[0] = nan; x[a] = 60.f; break;                             // NaN first: 0
      case 7: for (int i = 0; i < vocab; ++i) x[i] = nan; break;          // all NaN: 0
      case 8: for (int i = 0; i < vocab; ++i) x[i] = 1.5f; break;         // all equal: 0
      case 9:  // -0 before +0 at the top: the first of them
        if (vocab < 2) break;
        for (int i = 0; i < vocab; ++i) x[i] = -1.f - std::fabs(x[i]);
        x[std::max(a, 1)] = 0.f;
        x[std::max(a, 1) - 1] = -0.f;
        break;
      case 10:  // NaN everywhere but two: the larger of those
        for (int i = 1; i < vocab; ++i) x[i] = nan;
        x[0] = -5.f;
        x[b] = -4.f;
        break;
      default: for (int i = 0; i < vocab; i += 2) x[i] = -inf; break;
    }
  }
  return v;
}

using SwitchRun = EngineRun;

// Five requests on one engine (at most 4 at once, prefill chunks of 64, so
// prefills share steps with decodes and a request waits for a free row):
// budgets[i % budgets.size()] each, prompts of different lengths, different
// lengths out; request 2 samples at temperature 0.8 (its steps keep the
// logits path, the others' greedy rows included) and ends early, so later
// steps are all greedy.
inline SwitchRun run_greedy_switch(const std::string& device, const std::string& dir, bool device_argmax,
                                   const std::vector<int>& budgets, int prompt) {
  setenv("SPX_DEVICE_ARGMAX", device_argmax ? "1" : "0", 1);  // read when the model loads
  EngineOptions o;
  o.model_dir = dir;
  o.device = device;
  o.max_batch = 4;
  o.prefill_chunk = 64;
  SwitchRun out = run_built(
      o, 5,
      [&](int i, int vocab) {
        GenerateRequest r;
        const int len = prompt + 13 * i - 20;
        for (int t = 0; t < len; ++t) r.prompt.push_back((t * 37 + 11 * i + 5) % vocab);
        r.max_new_tokens = i == 2 ? 9 : 18 + 5 * i;
        r.budget = budgets[static_cast<size_t>(i) % budgets.size()];
        if (i == 2) {
          r.sampling.temperature = 0.8f;
          r.sampling.seed = 1234;
        }
        return r;
      },
      120);
  unsetenv("SPX_DEVICE_ARGMAX");
  return out;
}

// On and off give the same tokens, request by request.
inline void expect_same_tokens(const SwitchRun& on, const SwitchRun& off, const std::string& what) {
  ASSERT_EQ(on.tokens.size(), 5u) << what;
  ASSERT_EQ(off.tokens.size(), 5u) << what;
  for (size_t i = 0; i < on.tokens.size(); ++i) {
    EXPECT_FALSE(on.tokens[i].empty()) << what << " request " << i;
    EXPECT_EQ(on.tokens[i], off.tokens[i]) << what << " request " << i;
  }
  EXPECT_EQ(on.stats.decode_tokens, off.stats.decode_tokens) << what;
  EXPECT_EQ(on.stats.sparse_steps, off.stats.sparse_steps) << what;
}

}  // namespace spx::testing
