// The real model: SmolLM2-135M-Instruct (converted by tools/convert_smollm2.py
// into models/smollm2-135m-instruct) against Hugging Face transformers'
// logits in test/fixtures/smollm2-reference.json (tools/hf_check.py).
// Skipped when the converted model is absent (it is git-ignored).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>

#include "collect_sink.h"
#include "model/transformer.h"
#include "test_util.h"

namespace spx {
namespace {

std::string model_dir() { return testing::smollm2_dir(); }

bool have_model() {
  struct stat st;
  return stat((model_dir() + "/model.safetensors").c_str(), &st) == 0;
}

class SmolLM2 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_model()) GTEST_SKIP() << "no converted model at " << model_dir();
    ref_ = testing::load_json(testing::fixture("smollm2-reference.json"));
  }
  Json ref_;
};

TEST_F(SmolLM2, LogitsMatchTransformers) {
  auto backend = make_cpu_backend(0);
  std::unique_ptr<Transformer> model;
  Status st = Transformer::load(model_dir(), backend.get(), &model);
  ASSERT_TRUE(st.ok) << st.message;
  const ModelConfig& c = model->config();
  const size_t V = static_cast<size_t>(c.vocab_size);
  for (const Json& p : ref_.find("prompts")->items()) {
    const std::string name = p.find("name")->as_string();
    const std::vector<int32_t> ids = testing::ints(*p.find("ids"));
    const int prompt_len = static_cast<int>(p.find("prompt_len")->as_int());
    const std::vector<int32_t> argmax = testing::ints(*p.find("argmax"));
    const std::vector<int32_t> positions = testing::ints(*p.find("top_positions"));
    KvStore kv(backend.get(), c.num_layers, c.num_kv_heads, c.head_dim);
    KvSequence* seq = nullptr;
    ASSERT_TRUE(kv.allocate(1, static_cast<int>(ids.size()), &seq).ok);
    // Prefill chunk by chunk, each ending at the next checked position, so
    // only those rows go through the LM head.
    size_t checked = 0;
    int pos = 0;
    for (size_t i = 0; i < positions.size(); ++i) {
      const int end = positions[i] + 1;
      ForwardBatch b;
      b.tokens.assign(ids.begin() + pos, ids.begin() + end);
      b.chunks.push_back(ForwardChunk{seq, pos, end - pos, LogitsMode::Last});
      std::vector<float> row;
      st = model->forward(b, &row);
      ASSERT_TRUE(st.ok) << st.message;
      pos = end;
      const std::vector<int32_t> top_ids = testing::ints(p.find("top_ids")->items()[i]);
      const std::vector<float> top = testing::floats(p.find("top_logits")->items()[i]);
      int32_t best = 0;
      for (size_t j = 1; j < V; ++j)
        if (row[j] > row[static_cast<size_t>(best)]) best = static_cast<int32_t>(j);
      EXPECT_EQ(best, argmax[static_cast<size_t>(positions[i])]) << name << " position " << positions[i];
      for (size_t j = 0; j < top_ids.size(); ++j) {
        // top_logits are rounded to 5 decimals.
        EXPECT_NEAR(row[static_cast<size_t>(top_ids[j])], top[j], 1e-4 * std::fabs(top[j]) + 1e-5)
            << name << " position " << positions[i] << " id " << top_ids[j];
      }
      if (positions[i] == prompt_len - 1) {
        std::vector<float> full = testing::base64_floats(p.find("last_prompt_logits_f32_b64")->as_string());
        ASSERT_EQ(full.size(), V);
        const double rel = testing::relative_error(row.data(), full.data(), V);
        EXPECT_LT(rel, 1e-4) << name;
        std::printf("[ smollm2  ] %s: relative error of the last prompt logits %.2e\n", name.c_str(), rel);
      }
      ++checked;
    }
    EXPECT_EQ(checked, positions.size());
  }
}

TEST_F(SmolLM2, ParisGreedyGenerationMatches) {
  const Json* paris = nullptr;
  for (const Json& p : ref_.find("prompts")->items())
    if (p.find("name")->as_string() == "paris-chat") paris = &p;
  ASSERT_NE(paris, nullptr);
  const std::vector<int32_t> ids = testing::ints(*paris->find("ids"));
  const int prompt_len = static_cast<int>(paris->find("prompt_len")->as_int());
  const std::vector<int32_t> gen = testing::ints(*paris->find("generated_ids"));
  EngineOptions o;
  o.model_dir = model_dir();
  Status st;
  auto engine = Engine::open(o, &st);
  ASSERT_TRUE(st.ok) << st.message;
  GenerateRequest r;
  r.prompt.assign(ids.begin(), ids.begin() + prompt_len);
  r.max_new_tokens = static_cast<int>(gen.size());
  auto sink = std::make_shared<testing::CollectSink>();
  engine->submit(r, sink, &st);
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_TRUE(sink->wait(600));
  EXPECT_EQ(sink->tokens(), gen);
  RequestStats s = sink->stats();
  std::printf("[ smollm2  ] prefill %.1f tok/s, decode %.2f tok/s (%d threads)\n",
              s.prefill_tokens_per_s, s.decode_tokens_per_s, engine->stats().threads);
}

}  // namespace
}  // namespace spx
