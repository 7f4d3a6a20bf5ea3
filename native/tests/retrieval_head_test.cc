// The pruned retrieval head against the full target on the tiny fixtures
// (transformers-checked checkpoints): scoring at layer l, the head's scores
// must equal the target's own full-attention logits q.k/sqrt(d) at layer l,
// recomputed from the target's captured queries and its K cache.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "retrieval/pruned_head.h"
#include "test_util.h"

namespace {

using namespace spx;
using spx::retrieval::HeadChunk;
using spx::retrieval::PrunedHead;

void check_head_matches_target(const std::string& name) {
  auto backend = make_cpu_backend(1);
  std::unique_ptr<Transformer> model;
  Status st = Transformer::load(spx::testing::fixture(name), backend.get(), &model);
  ASSERT_TRUE(st.ok) << st.message;
  const ModelConfig& c = model->config();
  const int T0 = 40, steps = 3, cap = T0 + steps;
  std::vector<int32_t> tokens(cap);
  for (int i = 0; i < cap; ++i) tokens[i] = (i * 37 + 11) % 256;

  KvStore store(backend.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* kv = nullptr;
  ASSERT_TRUE(store.allocate(1, cap, &kv).ok);
  std::vector<float> logits;
  ForwardBatch pre;
  pre.tokens.assign(tokens.begin(), tokens.begin() + T0);
  pre.chunks.push_back({kv, 0, T0, LogitsMode::Last});
  ASSERT_TRUE(model->forward(pre, &logits).ok);

  for (int layer = 0; layer < c.num_layers; ++layer) {
    SCOPED_TRACE(name + " layer " + std::to_string(layer));
    std::unique_ptr<PrunedHead> head;
    ASSERT_TRUE(PrunedHead::make(model.get(), layer, &head).ok);
    EXPECT_LT(head->head_params(), head->model_params());
    ASSERT_TRUE(head->open(7, cap).ok);
    // Prefill in two uneven chunks, then decode one token at a time.
    std::vector<HeadChunk> hc = {{7, tokens.data(), 13, nullptr}};
    ASSERT_TRUE(head->forward(hc).ok);
    hc = {{7, tokens.data() + 13, T0 - 13, nullptr}};
    ASSERT_TRUE(head->forward(hc).ok);
    EXPECT_EQ(head->tokens(7), T0);
    head->close(7);
  }
  // Decode steps: target captures q; head (layer 1 or 0) scores.
  const int layer = c.num_layers - 1;
  std::unique_ptr<PrunedHead> head;
  // Pooled over every layer: block p holds layer p's scores.
  ASSERT_TRUE(PrunedHead::make(model.get(), layer, &head, c.num_layers).ok);
  ASSERT_TRUE(head->open(7, cap).ok);
  std::vector<HeadChunk> hc = {{7, tokens.data(), T0, nullptr}};
  ASSERT_TRUE(head->forward(hc).ok);
  const int D = c.head_dim, H = c.num_heads, G = H / c.num_kv_heads;
  for (int s = 0; s < steps; ++s) {
    const int pos = T0 + s;
    std::vector<float> scores, q;
    hc = {{7, tokens.data() + pos, 1, &scores}};
    ASSERT_TRUE(head->forward(hc).ok);
    ForwardBatch dec;
    dec.tokens = {tokens[pos]};
    dec.chunks.push_back({kv, pos, 1, LogitsMode::Last});
    dec.q_capture = &q;
    ASSERT_TRUE(model->forward(dec, &logits).ok);
    const int T = pos + 1;
    const int L = c.num_layers;
    ASSERT_EQ(scores.size(), static_cast<size_t>(L * H * T));
    double max_err = 0, max_ref = 0;
    for (int l = 0; l < L; ++l) {
      const float* kc = kv->k[l].f32();  // [kvh, cap, D]
      for (int h = 0; h < H; ++h) {
        for (int t = 0; t < T; ++t) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += q[(l * H + h) * D + d] * kc[((h / G) * cap + t) * D + d];
          dot /= std::sqrt(static_cast<double>(D));
          max_err = std::max(max_err, std::fabs(dot - scores[(l * H + h) * T + t]));
          max_ref = std::max(max_ref, std::fabs(dot));
        }
      }
    }
    EXPECT_LT(max_err, 1e-4 * std::max(1.0, max_ref)) << "step " << s;
  }
}

TEST(RetrievalHead, LlamaGqaScoresEqualTargetAttentionLogits) { check_head_matches_target("tiny-llama"); }
TEST(RetrievalHead, Qwen3QkNormScoresEqualTargetAttentionLogits) { check_head_matches_target("tiny-qwen3"); }
TEST(RetrievalHead, Qwen2BiasScoresEqualTargetAttentionLogits) { check_head_matches_target("tiny-qwen2"); }

TEST(RetrievalHead, RejectsBadLayerAndUnknownRequest) {
  auto backend = make_cpu_backend(1);
  std::unique_ptr<Transformer> model;
  ASSERT_TRUE(Transformer::load(spx::testing::fixture("tiny-llama"), backend.get(), &model).ok);
  std::unique_ptr<PrunedHead> head;
  Status st = PrunedHead::make(model.get(), 5, &head);
  EXPECT_FALSE(st.ok);
  EXPECT_NE(st.message.find("scoring layer"), std::string::npos);
  ASSERT_TRUE(PrunedHead::make(model.get(), 0, &head).ok);
  int32_t tok = 3;
  std::vector<HeadChunk> hc = {{99, &tok, 1, nullptr}};
  EXPECT_FALSE(head->forward(hc).ok);
  ASSERT_TRUE(head->open(1, 2).ok);
  int32_t toks[3] = {1, 2, 3};
  hc = {{1, toks, 3, nullptr}};
  EXPECT_FALSE(head->forward(hc).ok);  // over capacity
}

}  // namespace

namespace {

TEST(RetrievalHead, AdoptingTheTargetsPrefillEqualsRecomputing) {
  using namespace spx;
  auto backend = make_cpu_backend(1);
  std::unique_ptr<Transformer> model;
  ASSERT_TRUE(Transformer::load(spx::testing::fixture("tiny-qwen3"), backend.get(), &model).ok);
  const ModelConfig& c = model->config();
  const int T0 = 30, cap = 32;
  std::vector<int32_t> tokens(cap);
  for (int i = 0; i < cap; ++i) tokens[i] = (i * 53 + 5) % 256;
  KvStore store(backend.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* kv = nullptr;
  ASSERT_TRUE(store.allocate(1, cap, &kv).ok);
  ForwardBatch pre;
  pre.tokens.assign(tokens.begin(), tokens.begin() + T0);
  pre.chunks.push_back({kv, 0, T0, LogitsMode::None});
  std::vector<float> logits;
  ASSERT_TRUE(model->forward(pre, &logits).ok);
  std::unique_ptr<retrieval::PrunedHead> a, b;
  ASSERT_TRUE(retrieval::PrunedHead::make(model.get(), 1, &a).ok);
  ASSERT_TRUE(retrieval::PrunedHead::make(model.get(), 1, &b).ok);
  ASSERT_TRUE(a->open(1, cap).ok);
  ASSERT_TRUE(b->open(1, cap).ok);
  ASSERT_TRUE(a->adopt(1, *kv).ok);
  std::vector<retrieval::HeadChunk> hc = {{1, tokens.data(), T0, nullptr}};
  ASSERT_TRUE(b->forward(hc).ok);
  for (int s = 0; s < 2; ++s) {
    std::vector<float> sa, sb;
    hc = {{1, tokens.data() + T0 + s, 1, &sa}};
    ASSERT_TRUE(a->forward(hc).ok);
    hc = {{1, tokens.data() + T0 + s, 1, &sb}};
    ASSERT_TRUE(b->forward(hc).ok);
    ASSERT_EQ(sa.size(), sb.size());
    for (size_t i = 0; i < sa.size(); ++i) EXPECT_NEAR(sa[i], sb[i], 1e-4) << i;
  }
  ASSERT_TRUE(b->open(2, cap + 1).ok);
  EXPECT_FALSE(b->adopt(2, *kv).ok);  // capacity differs
}

}  // namespace
