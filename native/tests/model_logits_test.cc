// The engine's f32 forward against Hugging Face transformers' logits on the
// tiny fixtures (test/fixtures/README.md): full-prompt logits at every
// position, then KV-cached decode of the reference's greedy continuation.
// The bf16 (sharded) and f16 fixtures exercise the dtype and shard paths.
#include <gtest/gtest.h>

#include "backend/backend.h"
#include "kv/kv_store.h"
#include "model/transformer.h"
#include "test_util.h"

namespace spx {
namespace {

using testing::fixture;

class TinyModel : public ::testing::TestWithParam<const char*> {};

TEST_P(TinyModel, LogitsMatchTransformers) {
  const std::string dir = fixture(GetParam());
  Json ref = testing::load_json(dir + "/reference.json");
  ASSERT_TRUE(ref.is_object());
  auto backend = make_cpu_backend(0);
  std::unique_ptr<Transformer> model;
  Status st = Transformer::load(dir, backend.get(), &model);
  ASSERT_TRUE(st.ok) << st.message;
  const ModelConfig& c = model->config();
  const size_t V = static_cast<size_t>(c.vocab_size);

  const std::vector<int32_t> prompt = testing::ints(*ref.find("prompt_ids"));
  const std::vector<int32_t> gen = testing::ints(*ref.find("generated_ids"));
  const Json& prompt_logits = *ref.find("prompt_logits");
  const Json& decode_logits = *ref.find("decode_logits");
  ASSERT_EQ(prompt_logits.items().size(), prompt.size());

  KvStore kv(backend.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* seq = nullptr;
  ASSERT_TRUE(kv.allocate(1, static_cast<int>(prompt.size() + gen.size()), &seq).ok);

  ForwardBatch batch;
  batch.tokens = prompt;
  batch.chunks.push_back(ForwardChunk{seq, 0, static_cast<int>(prompt.size()), LogitsMode::All});
  std::vector<float> logits;
  st = model->forward(batch, &logits);
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_EQ(logits.size(), prompt.size() * V);
  for (size_t t = 0; t < prompt.size(); ++t) {
    std::vector<float> want = testing::floats(prompt_logits.items()[t]);
    ASSERT_EQ(want.size(), V);
    EXPECT_LT(testing::relative_error(logits.data() + t * V, want.data(), V), 1e-4)
        << "prompt position " << t;
  }

  // Greedy decode through the KV cache, one token per forward.
  int32_t next = prompt.back();
  for (size_t i = 0; i < gen.size(); ++i) {
    std::vector<float> row;
    if (i == 0) {
      row.assign(logits.end() - static_cast<long>(V), logits.end());
    } else {
      ForwardBatch step;
      step.tokens = {next};
      step.chunks.push_back(ForwardChunk{seq, seq->n_tokens, 1, LogitsMode::Last});
      st = model->forward(step, &row);
      ASSERT_TRUE(st.ok) << st.message;
    }
    std::vector<float> want = testing::floats(decode_logits.items()[i]);
    EXPECT_LT(testing::relative_error(row.data(), want.data(), V), 1e-4) << "decode step " << i;
    int32_t best = 0;
    for (size_t j = 1; j < V; ++j)
      if (row[j] > row[static_cast<size_t>(best)]) best = static_cast<int32_t>(j);
    EXPECT_EQ(best, gen[i]) << "decode step " << i;
    next = gen[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TinyModel,
                         ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-qwen3",
                                           "tiny-llama-bf16-sharded", "tiny-qwen2-f16"));

}  // namespace
}  // namespace spx
