// The engine's f32 forward against Hugging Face transformers' logits on the
// tiny fixtures (test/fixtures/README.md): full-prompt logits at every
// position, then KV-cached decode of the reference's greedy continuation.
// The bf16 (sharded) and f16 fixtures exercise the dtype and shard paths.
#include <gtest/gtest.h>

#include "backend/backend.h"
#include "reference_model.h"

namespace spx {
namespace {

using testing::fixture;

class TinyModel : public ::testing::TestWithParam<const char*> {};

TEST_P(TinyModel, LogitsMatchTransformers) {
  auto backend = make_cpu_backend(0);
  testing::ReferenceRun r;
  ASSERT_NO_FATAL_FAILURE(testing::prefill_reference(fixture(GetParam()), backend.get(), &r));
  const size_t V = r.vocab;
  const Json& prompt_logits = *r.ref.find("prompt_logits");
  const Json& decode_logits = *r.ref.find("decode_logits");
  ASSERT_EQ(prompt_logits.items().size(), r.prompt.size());
  for (size_t t = 0; t < r.prompt.size(); ++t) {
    std::vector<float> want = testing::floats(prompt_logits.items()[t]);
    ASSERT_EQ(want.size(), V);
    EXPECT_LT(testing::relative_error(r.logits.data() + t * V, want.data(), V), 1e-4)
        << "prompt position " << t;
  }

  // Greedy decode through the KV cache, one token per forward.
  for (size_t i = 0; i < r.gen.size(); ++i) {
    std::vector<float> row;
    if (i == 0) {
      row.assign(r.logits.end() - static_cast<long>(V), r.logits.end());
    } else {
      ASSERT_NO_FATAL_FAILURE(testing::decode_step(&r, r.gen[i - 1], &row));
    }
    std::vector<float> want = testing::floats(decode_logits.items()[i]);
    EXPECT_LT(testing::relative_error(row.data(), want.data(), V), 1e-4) << "decode step " << i;
    int32_t best = 0;
    for (size_t j = 1; j < V; ++j)
      if (row[j] > row[static_cast<size_t>(best)]) best = static_cast<int32_t>(j);
    EXPECT_EQ(best, r.gen[i]) << "decode step " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TinyModel,
                         ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-qwen3",
                                           "tiny-llama-bf16-sharded", "tiny-qwen2-f16"));

}  // namespace
}  // namespace spx
