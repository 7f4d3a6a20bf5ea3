// Fidelity evaluation on the tiny fixtures: a budget covering the whole
// context must reproduce full attention exactly; a small one must not; and a
// head scoring at layer l (the oracle for l) must carry at least as much of
// layer l's attention as a head scoring elsewhere (MHA, no forced tokens).
#include <gtest/gtest.h>

#include "retrieval/fidelity.h"
#include "retrieval/select.h"
#include "test_util.h"

namespace {

using namespace spx;
using namespace spx::retrieval;

struct Loaded {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Transformer> model;
};

Loaded load(const std::string& name) {
  Loaded l;
  l.backend = make_cpu_backend(1);
  Status st = Transformer::load(spx::testing::fixture(name), l.backend.get(), &l.model);
  EXPECT_TRUE(st.ok) << st.message;
  return l;
}

std::vector<int32_t> text_tokens(int n) {
  const std::string text =
      "Call me Ishmael. Some years ago - never mind how long precisely - having little or no "
      "money in my purse, and nothing particular to interest me on shore, I thought I would sail "
      "about a little and see the watery part of the world.";
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(static_cast<unsigned char>(text[i % text.size()]));
  return ids;
}

TEST(RetrievalFidelity, FullBudgetReproducesFullAttentionSmallOneDoesNot) {
  Loaded m = load("tiny-llama");
  std::unique_ptr<PrunedHead> head;
  ASSERT_TRUE(PrunedHead::make(m.model.get(), 0, &head).ok);
  FidelityOptions opt;
  opt.context = 120;
  opt.steps = 10;
  opt.budgets = {8, 200};
  opt.select.n_sink = 1;
  opt.select.n_recent = 1;
  opt.prefill_chunk = 50;
  FidelityReport r;
  Status st = run_fidelity(m.model.get(), head.get(), text_tokens(200), opt, &r);
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_EQ(r.budgets.size(), 2u);
  const BudgetFidelity& small = r.budgets[0];
  const BudgetFidelity& all = r.budgets[1];
  EXPECT_TRUE(all.full_attention);
  EXPECT_DOUBLE_EQ(all.recall_mean, 1.0);
  EXPECT_DOUBLE_EQ(all.top1_agreement, 1.0);
  EXPECT_NEAR(all.ppl_ratio, 1.0, 1e-9);
  EXPECT_FALSE(small.full_attention);
  EXPECT_LT(small.recall_mean, 0.999);
  EXPECT_GT(small.recall_mean, 0.0);
  EXPECT_NE(small.ppl_ratio, 1.0);
  EXPECT_GT(small.reload_fraction, 0.0);
  EXPECT_LE(small.reload_fraction, 1.0);
  EXPECT_LT(r.head_params, r.target_params);
}

TEST(RetrievalFidelity, OracleLayerCarriesItsOwnAttentionBest) {
  Loaded m = load("tiny-qwen2");  // MHA: group max is the head's own attention
  FidelityOptions opt;
  opt.context = 100;
  opt.steps = 6;
  opt.budgets = {12};
  opt.select.n_sink = 0;
  opt.select.n_recent = 0;
  opt.dense_head_layers = false;  // compare the selections themselves at every layer
  std::vector<FidelityReport> reports(2);
  for (int layer = 0; layer < 2; ++layer) {
    std::unique_ptr<PrunedHead> head;
    ASSERT_TRUE(PrunedHead::make(m.model.get(), layer, &head).ok);
    ASSERT_TRUE(run_fidelity(m.model.get(), head.get(), text_tokens(120), opt, &reports[layer]).ok);
  }
  // Recall is measured on the full run, whose queries and keys at layer 1 are
  // exactly what the layer-1 head scores with: its selection is the top-B mass.
  const auto& oracle1 = reports[1].budgets[0].recall_per_layer;
  const auto& head0 = reports[0].budgets[0].recall_per_layer;
  EXPECT_GE(oracle1[1] + 1e-9, head0[1]);
  EXPECT_GE(reports[0].budgets[0].recall_per_layer[0] + 1e-9, oracle1[0]);
  EXPECT_LT(oracle1[0], 1.0);

  // By default the layers below a self-derived head's scoring layer attend
  // fully (the head computes them anyway): full recall there.
  opt.dense_head_layers = true;
  std::unique_ptr<PrunedHead> head;
  ASSERT_TRUE(PrunedHead::make(m.model.get(), 1, &head).ok);
  FidelityReport dense;
  ASSERT_TRUE(run_fidelity(m.model.get(), head.get(), text_tokens(120), opt, &dense).ok);
  EXPECT_DOUBLE_EQ(dense.budgets[0].recall_per_layer[0], 1.0);
  EXPECT_NEAR(dense.budgets[0].recall_per_layer[1], oracle1[1], 1e-12);

  // sparse_from overrides the rule for any head: the layer-0 head with layer 0
  // dense matches the layer-1 head's dense run at layer 0, and sparse_from =
  // layers means full attention everywhere.
  std::unique_ptr<PrunedHead> h0;
  ASSERT_TRUE(PrunedHead::make(m.model.get(), 0, &h0).ok);
  opt.sparse_from = 1;
  FidelityReport from1;
  ASSERT_TRUE(run_fidelity(m.model.get(), h0.get(), text_tokens(120), opt, &from1).ok);
  EXPECT_DOUBLE_EQ(from1.budgets[0].recall_per_layer[0], 1.0);
  EXPECT_NEAR(from1.budgets[0].recall_per_layer[1], head0[1], 1e-12);
  opt.sparse_from = m.model->config().num_layers;
  FidelityReport none;
  ASSERT_TRUE(run_fidelity(m.model.get(), h0.get(), text_tokens(120), opt, &none).ok);
  EXPECT_DOUBLE_EQ(none.budgets[0].recall_mean, 1.0);
  EXPECT_DOUBLE_EQ(none.budgets[0].top1_agreement, 1.0);
  EXPECT_NEAR(none.budgets[0].ppl_ratio, 1.0, 1e-9);
  opt.sparse_from = m.model->config().num_layers + 1;
  EXPECT_FALSE(run_fidelity(m.model.get(), h0.get(), text_tokens(120), opt, &none).ok);
}

TEST(RetrievalFidelity, SeparateDlmDirectoryScoresLikeTheSameModelSelfDerived) {
  // A DLM that is a copy of the target must select exactly like the
  // self-derived head of the same depth (its own prefill instead of adopting).
  FidelityRequest dlm, self;
  dlm.model_dir = self.model_dir = spx::testing::fixture("tiny-llama");
  dlm.threads = self.threads = 1;
  dlm.head.dlm_dir = spx::testing::fixture("tiny-llama");
  dlm.head.dlm_layers = self.head.dlm_layers = 2;
  dlm.tokens = self.tokens = text_tokens(120);
  FidelityOptions opt;
  opt.context = 90;
  opt.steps = 6;
  opt.budgets = {10};
  opt.dense_head_layers = false;
  dlm.options = self.options = opt;
  FidelityReport a, b;
  Status st = eval_fidelity(dlm, &a);
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_TRUE(eval_fidelity(self, &b).ok);
  EXPECT_NE(a.head_kind.find("dlm"), std::string::npos);
  EXPECT_NEAR(a.budgets[0].recall_mean, b.budgets[0].recall_mean, 1e-6);
  EXPECT_EQ(a.budgets[0].top1_agreement, b.budgets[0].top1_agreement);
  // A DLM with another attention-head layout is refused with a clear message.
  dlm.head.dlm_dir = spx::testing::fixture("tiny-qwen3");
  st = eval_fidelity(dlm, &a);
  EXPECT_FALSE(st.ok);
  EXPECT_FALSE(st.message.empty());
}

// An EAGLE-3 head is fed the target's aux hidden states of the position
// before each token (the prefill's, then the teacher-forced tokens'), so its
// scores equal tools/make_eagle3_fixture.py's torch reference: the share of
// its own attention mass the selection carries, recomputed here from the
// reference scores with the same Selector, must match.
TEST(RetrievalFidelity, Eagle3HeadFedTheTargetsHiddenStates) {
  const Json ref = spx::testing::load_json(spx::testing::fixture("tiny-eagle3/reference.json"));
  for (const std::string name : {"draft", "draft-speculators"}) {
    SCOPED_TRACE(name);
    FidelityRequest req;
    req.model_dir = spx::testing::fixture("tiny-eagle3/target");
    req.threads = 1;
    req.head.dlm_dir = spx::testing::fixture("tiny-eagle3/" + name);
    req.tokens = spx::testing::ints(*ref.find("prompt_ids"));
    FidelityOptions& opt = req.options;
    opt.context = 36;
    opt.steps = static_cast<int>(req.tokens.size()) - opt.context - 1;
    opt.budgets = {12, 64};
    opt.select.n_sink = 1;
    opt.select.n_recent = 1;
    opt.prefill_chunk = 16;  // features cross chunk boundaries
    FidelityReport r;
    Status st = eval_fidelity(req, &r);
    ASSERT_TRUE(st.ok) << st.message;
    EXPECT_NE(r.head_kind.find("eagle3"), std::string::npos) << r.head_kind;
    const BudgetFidelity& all = r.budgets[1];
    EXPECT_TRUE(all.full_attention);
    EXPECT_DOUBLE_EQ(all.recall_mean, 1.0);
    EXPECT_DOUBLE_EQ(all.top1_agreement, 1.0);

    const Json& scores = *ref.find("drafts")->find(name)->find("scores");
    const int H = 4, KVH = 2, B = opt.budgets[0];
    Selector selector;
    SelectOptions so = opt.select;
    so.budget = B;
    double mass = 0;
    for (int s = 0; s < opt.steps; ++s) {
      const int p = opt.context + s, T = p + 1;
      std::vector<float> logits;
      for (int h = 0; h < H; ++h) {
        const std::vector<float> row = spx::testing::floats(scores.items()[p].items()[h]);
        logits.insert(logits.end(), row.begin(), row.end());
      }
      std::vector<int32_t> idx(static_cast<size_t>(KVH) * B);
      mass += selector.select(logits.data(), H, KVH, T, T, so, idx.data()).mean_mass;
    }
    EXPECT_NEAR(r.budgets[0].head_mass_mean, mass / opt.steps, 1e-4);
    EXPECT_LT(r.budgets[0].recall_mean, 1.0);
  }
}

TEST(RetrievalFidelity, RejectsTooShortText) {
  Loaded m = load("tiny-llama");
  std::unique_ptr<PrunedHead> head;
  ASSERT_TRUE(PrunedHead::make(m.model.get(), 0, &head).ok);
  FidelityOptions opt;
  opt.context = 100;
  opt.steps = 10;
  opt.budgets = {8};
  FidelityReport r;
  Status st = run_fidelity(m.model.get(), head.get(), text_tokens(50), opt, &r);
  EXPECT_FALSE(st.ok);
  EXPECT_NE(st.message.find("tokens"), std::string::npos);
}

}  // namespace
