// Host-tier layers: attending through B device slots filled by elastic
// loading must give bit-identical logits to attending to the same selection
// in the full cache, step after step, while moving only the newly selected
// tokens. Driven through SparseDecoder exactly as the engine drives it.
#include <gtest/gtest.h>

#include "retrieval/sparse_decoder.h"
#include "sparse_prefill.h"
#include "test_util.h"

namespace {

using namespace spx;
using namespace spx::retrieval;

// host_from_step > 0: the layers move to the host tier before that decode
// step, with the request running (as the engine's planner does).
std::vector<std::vector<float>> decode(const std::string& name, int host_layers, int budget,
                                       SparseStats* stats, int host_from_step = 0) {
  auto backend = make_cpu_backend(1);
  std::unique_ptr<Transformer> model;
  EXPECT_TRUE(Transformer::load(spx::testing::fixture(name), backend.get(), &model).ok);
  const ModelConfig& c = model->config();
  std::unique_ptr<SparseDecoder> dec;
  HeadChoice head;
  head.dlm_layers = 1;
  SelectOptions so;
  so.n_sink = 1;
  so.n_recent = 2;
  EXPECT_TRUE(SparseDecoder::make(model.get(), backend.get(), head, so, &dec).ok);
  EXPECT_TRUE(dec->set_host_layers(host_from_step > 0 ? 0 : host_layers).ok);
  const int prompt = 70, steps = 12, cap = prompt + steps;
  KvStore store(backend.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* kv = nullptr;
  EXPECT_TRUE(store.allocate(5, cap, &kv).ok);
  EXPECT_TRUE(dec->admit(5, cap, budget).ok);
  std::vector<int32_t> tokens(cap);
  for (int i = 0; i < cap; ++i) tokens[i] = (i * 29 + 3) % 250;
  std::vector<uint64_t> ids = {5};
  std::vector<float> logits;
  Status pst = spx::testing::sparse_prefill(dec.get(), model.get(), kv, 5, tokens, prompt);
  EXPECT_TRUE(pst.ok) << pst.message;
  std::vector<std::vector<float>> out;
  for (int s = 0; s < steps; ++s) {
    if (s == host_from_step && s > 0) EXPECT_TRUE(dec->set_host_layers(host_layers).ok);
    ForwardBatch b;
    b.tokens = {tokens[prompt + s]};
    b.chunks.push_back({kv, prompt + s, 1, LogitsMode::Last});
    Status st = dec->before_forward(ids, &b);
    EXPECT_TRUE(st.ok) << st.message;
    EXPECT_NE(b.chunks[0].selection, nullptr);  // T > B: sparse
    EXPECT_EQ(b.chunks[0].tier_k != nullptr, host_layers > 0 && s >= host_from_step);
    st = model->forward(b, &logits);
    EXPECT_TRUE(st.ok) << st.message;
    out.push_back(logits);
  }
  *stats = dec->stats();
  dec->release(5);
  return out;
}

class Tier : public ::testing::TestWithParam<const char*> {};

TEST_P(Tier, SlotBufferAttentionEqualsFullCacheSelection) {
  SparseStats plain, tiered, all;
  const auto ref = decode(GetParam(), 0, 16, &plain);
  const auto got = decode(GetParam(), 1, 16, &tiered);
  const auto got_all = decode(GetParam(), 2, 16, &all);
  ASSERT_EQ(ref.size(), got.size());
  for (size_t s = 0; s < ref.size(); ++s) {
    EXPECT_EQ(got[s], ref[s]) << "step " << s;      // bit-identical
    EXPECT_EQ(got_all[s], ref[s]) << "step " << s;
  }
  EXPECT_EQ(tiered.sparse_steps, 12u);
  // First fill is B tokens per head; later steps load only the new ones.
  const auto kvh = static_cast<uint64_t>(tiered.elastic.steps / tiered.sparse_steps);
  EXPECT_GE(tiered.elastic.loads, 16u * kvh);
  EXPECT_LT(tiered.elastic.loads, 16u * kvh * 12u);
  EXPECT_EQ(all.elastic.bytes, 2 * tiered.elastic.bytes);  // two host layers move twice the bytes
}

// Moving layers while the request runs: their slots start empty and fill on
// the next step; logits stay bit-identical, and the move reloads all B.
TEST_P(Tier, MovingLayersMidDecodeKeepsTheLogits) {
  SparseStats plain, moved;
  const auto ref = decode(GetParam(), 0, 16, &plain);
  const auto got = decode(GetParam(), 2, 16, &moved, 5);
  ASSERT_EQ(ref.size(), got.size());
  for (size_t s = 0; s < ref.size(); ++s) EXPECT_EQ(got[s], ref[s]) << "step " << s;
  const auto kvh = static_cast<uint64_t>(moved.tier.steps / 7);  // 7 steps on the host tier
  EXPECT_EQ(moved.tier.steps, 7u * kvh);
  EXPECT_GE(moved.tier.loads, 16u * kvh);  // the refill after the move
  EXPECT_EQ(plain.tier.loads, 0u);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Tier, ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-qwen3"));

TEST(Tier, RejectsTooManyHostLayers) {
  auto backend = make_cpu_backend(1);
  std::unique_ptr<Transformer> model;
  ASSERT_TRUE(Transformer::load(spx::testing::fixture("tiny-llama"), backend.get(), &model).ok);
  std::unique_ptr<SparseDecoder> dec;
  ASSERT_TRUE(SparseDecoder::make(model.get(), backend.get(), HeadChoice{}, SelectOptions{}, &dec).ok);
  EXPECT_FALSE(dec->set_host_layers(3).ok);
}

}  // namespace
