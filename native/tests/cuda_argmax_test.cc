// Greedy sampling on the GPU (issue 6; cuda/argmax_rows.h):
// - the kernel, through the CUDA backend's argmax_rows / read_argmax, against
//   sampling::argmax over the same bf16 values downloaded as f32: random rows
//   (bf16 rounding makes natural ties) and the hard cases (ties, -inf, NaN,
//   -0 / +0), vocabularies 128,256 and 49,152 (16-byte loads) and odd ones
//   (the scalar path), one row up to 40;
// - the engine on cuda:0 with SPX_DEVICE_ARGMAX on and off, CUDA graphs on:
//   the same tokens dense and sparse (recorded sparse steps included), with a
//   sampled request in the batch for part of the run; steps replayed with
//   the argmax inside the graph.
// Models: the tiny fixtures, plus SPX_CUDA_MODEL_DIRS (tools/gpu_test.sh).
#include <gtest/gtest.h>

#ifndef SPX_HAVE_CUDA
TEST(CudaArgmax, Skipped) { GTEST_SKIP() << "built without CUDA (nvcc not found)"; }
#else
#include <cstdio>

#include "backend/registry.h"
#include "cuda_test_util.h"
#include "engine_run.h"
#include "greedy_cases.h"
#include "sampling/sampler.h"
#include "test_util.h"

namespace spx {
namespace {

TEST(CudaArgmax, RowsEqualTheHostArgmax) {
  SPX_REQUIRE_GPU();
  Status st;
  auto be = make_backend("cuda:0", 0, &st);
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_TRUE(be->has_argmax());
  for (int vocab : {128256, 49152, 4099, 17, 1}) {
    for (int rows : {1, 40}) {
      const std::vector<float> x = testing::hard_rows(rows, vocab, static_cast<uint32_t>(vocab + rows));
      Tensor t;
      ASSERT_TRUE(be->alloc({rows, vocab}, DType::F32, &t).ok);
      ASSERT_TRUE(be->upload(x.data(), &t).ok);
      be->argmax_rows(t);
      std::vector<int32_t> got(rows, -1);
      st = be->read_argmax(rows, got.data());
      ASSERT_TRUE(st.ok) << st.message;
      // The reference reads the values the kernel read: bf16, widened.
      std::vector<float> dev(x.size());
      ASSERT_TRUE(be->download(t, dev.data()).ok);
      int bad = 0;
      for (int r = 0; r < rows && bad < 10; ++r) {
        const float* row = dev.data() + static_cast<size_t>(r) * vocab;
        const int32_t want = argmax(row, vocab);
        if (got[r] != want) ++bad;
        EXPECT_EQ(got[r], want) << "vocab " << vocab << " row " << r << " (case " << r % 12 << ")";
      }
      // The hard cases reached the device as such.
      if (rows == 40 && vocab > 1) {
        EXPECT_TRUE(std::isnan(dev[static_cast<size_t>(7) * vocab])) << "row 7 starts with NaN";
        EXPECT_TRUE(std::isinf(dev[static_cast<size_t>(4) * vocab])) << "row 4 is -inf";
      }
    }
  }
  std::vector<int32_t> ids(1000);
  EXPECT_FALSE(be->read_argmax(1000, ids.data()).ok) << "more rows than the buffer holds";
}

std::vector<std::string> model_dirs() {
  std::vector<std::string> dirs = {testing::fixture("tiny-llama"), testing::fixture("tiny-qwen2"),
                                   testing::fixture("tiny-qwen3")};
  testing::append_dirs(std::getenv("SPX_CUDA_MODEL_DIRS"), &dirs);
  return dirs;
}

TEST(CudaArgmax, EngineGreedyTokensEqualWithDeviceArgmaxOnAndOff) {
  SPX_REQUIRE_GPU();
  for (const std::string& dir : model_dirs()) {
    const bool small = dir.find("tiny-") != std::string::npos;
    const int prompt = small ? 60 : 400, budget = small ? 16 : 64;
    for (const std::vector<int>& budgets : {std::vector<int>{0}, std::vector<int>{budget, budget + 8}}) {
      const std::string what = dir + (budgets[0] ? " sparse" : " dense");
      const testing::SwitchRun off = testing::run_greedy_switch("cuda:0", dir, false, budgets, prompt);
      const testing::SwitchRun on = testing::run_greedy_switch("cuda:0", dir, true, budgets, prompt);
      testing::expect_same_tokens(on, off, what);
      EXPECT_EQ(on.stats.graph_failures, 0u) << what;
      EXPECT_GT(on.stats.graph_replays, 0u) << what;
      if (budgets[0]) {
        EXPECT_GT(on.stats.sparse_steps, 0u) << what;
      }
      std::printf("%s: tokens equal with the device argmax on and off; %llu / %llu captures, %llu / %llu "
                  "replays (on / off), %llu decode tokens, %llu sparse steps\n",
                  what.c_str(), static_cast<unsigned long long>(on.stats.graph_captures),
                  static_cast<unsigned long long>(off.stats.graph_captures),
                  static_cast<unsigned long long>(on.stats.graph_replays),
                  static_cast<unsigned long long>(off.stats.graph_replays),
                  static_cast<unsigned long long>(on.stats.decode_tokens),
                  static_cast<unsigned long long>(on.stats.sparse_steps));
    }
  }
}

}  // namespace
}  // namespace spx
#endif  // SPX_HAVE_CUDA
