// The engine's device-selection path (Backend::head_select, issue 6) on the
// CPU: the head's scoring K cache kept as a backend tensor, written by
// kv_write, scored and selected by the backend's hook, only the selection
// and masses back. The CUDA backend's hook needs a GPU (cuda_sparse_model_test
// checks it there); here a test-only hook on the CPU backend stands in for it,
// computing each job with the host reference (score_rows + Selector), so the
// plumbing around it (PrunedHead's device cache, adopt, checkpoint state,
// SparseDecoder's fallback rule) must give exactly the host path's selections
// and logits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "retrieval/sparse_decoder.h"
#include "sparse_prefill.h"
#include "test_util.h"

namespace {

using namespace spx;
using namespace spx::retrieval;

// Test-only hook: the host reference behind the HeadSelect interface.
class ReferenceSelect final : public HeadSelect {
 public:
  bool supports(int q_heads, int kv_heads, int head_dim) const override { return kv_heads > 0; }
  Status select(const std::vector<HeadSelectJob>& jobs, int q_heads, int kv_heads, int head_dim,
                float scale, bool reduce_max, int n_sink, int n_recent) override {
    ++calls;
    for (const HeadSelectJob& j : jobs) {
      const int T = j.length, group = q_heads / kv_heads;
      std::vector<float> logits(static_cast<size_t>(q_heads) * T), p(static_cast<size_t>(T));
      score_rows(j.q->f32(), j.k_cache->f32(), q_heads, group, T, j.k_cache->dim(1), head_dim, scale,
                 logits.data());
      SelectOptions so;
      so.budget = j.budget;
      so.reduce = reduce_max ? GroupReduce::Max : GroupReduce::Mean;
      so.n_sink = n_sink;
      so.n_recent = n_recent;
      selector_.select(logits.data(), q_heads, kv_heads, T, T, so, j.selection);
      for (int g = 0; g < kv_heads; ++g) {  // the group's mean probability selected
        double m = 0;
        for (int h = g * group; h < (g + 1) * group; ++h) {
          softmax_row(&logits[static_cast<size_t>(h) * T], T, p.data());
          for (int i = 0; i < j.budget; ++i) m += p[static_cast<size_t>(j.selection[g * j.budget + i])];
        }
        j.mass[g] = static_cast<float>(m / group);
      }
    }
    return Status::Ok();
  }
  int calls = 0;

 private:
  Selector selector_;
};

// The CPU backend with the test-only hook.
class HookedCpu final : public Backend {
 public:
  HookedCpu() : cpu_(make_cpu_backend(1)) {}
  std::string name() const override { return "cpu+hook"; }
  Status alloc(const std::vector<int64_t>& s, DType d, Tensor* o) override { return cpu_->alloc(s, d, o); }
  Status upload(const float* h, Tensor* d) override { return cpu_->upload(h, d); }
  Status download(const Tensor& s, float* h) override { return cpu_->download(s, h); }
  void embedding(const Tensor& t, const int32_t* ids, int n, Tensor* o) override { cpu_->embedding(t, ids, n, o); }
  void matmul(const Tensor& x, const Tensor& w, const Tensor* b, Tensor* y) override { cpu_->matmul(x, w, b, y); }
  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* y) override { cpu_->rmsnorm(x, w, eps, y); }
  void add(Tensor* x, const Tensor& y) override { cpu_->add(x, y); }
  void rope(Tensor* x, const Tensor& c, const Tensor& s) override { cpu_->rope(x, c, s); }
  void swiglu(const Tensor& g, const Tensor& u, Tensor* o) override { cpu_->swiglu(g, u, o); }
  void kv_write(const Tensor& k, const Tensor& v, int p, Tensor* kc, Tensor* vc) override {
    cpu_->kv_write(k, v, p, kc, vc);
  }
  void attention(const Tensor& q, const std::vector<AttentionSegment>& s, float sc, Tensor* o) override {
    cpu_->attention(q, s, sc, o);
  }
  void gather_rows(const Tensor& x, const std::vector<int32_t>& r, Tensor* o) override { cpu_->gather_rows(x, r, o); }
  HeadSelect* head_select() override { return &hook; }
  ReferenceSelect hook;

 private:
  std::unique_ptr<Backend> cpu_;
};

struct DecodeRun {
  std::vector<std::vector<int32_t>> selections;
  std::vector<std::vector<float>> logits;
  SparseStats stats;
  std::string path;
  HeadState state;  // the head's state after the last step
  int kv_heads = 0;
};

DecodeRun decode(Backend* be, const std::string& name, const HeadChoice& head, int budget, float fallback = 0) {
  DecodeRun run;
  std::unique_ptr<Transformer> model;
  EXPECT_TRUE(Transformer::load(spx::testing::fixture(name), be, &model).ok);
  if (!model) return run;
  const ModelConfig& c = model->config();
  run.kv_heads = c.num_kv_heads;
  std::unique_ptr<SparseDecoder> dec;
  SelectOptions so;
  so.n_sink = 2;
  so.n_recent = 3;
  so.fallback_mass = fallback;
  Status st = SparseDecoder::make(model.get(), be, head, so, &dec);
  EXPECT_TRUE(st.ok) << st.message;
  if (!st.ok) return run;
  run.path = dec->head_scoring();
  const int prompt = 60, steps = 10, cap = prompt + steps;
  KvStore store(be, c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* kv = nullptr;
  EXPECT_TRUE(store.allocate(3, cap, &kv).ok);
  EXPECT_TRUE(dec->admit(3, cap, budget).ok);
  std::vector<int32_t> tokens(cap);
  for (int i = 0; i < cap; ++i) tokens[i] = (i * 37 + 11) % 250;
  const std::vector<uint64_t> ids = {3};
  std::vector<float> logits;
  st = spx::testing::sparse_prefill(dec.get(), model.get(), kv, 3, tokens, prompt);
  EXPECT_TRUE(st.ok) << st.message;
  for (int s = 0; s < steps; ++s) {
    ForwardBatch b;
    b.tokens = {tokens[prompt + s]};
    b.chunks.push_back({kv, prompt + s, 1, LogitsMode::Last});
    st = dec->before_forward(ids, &b);
    EXPECT_TRUE(st.ok) << st.message;
    const int32_t* sel = b.chunks[0].selection;
    run.selections.emplace_back();
    if (sel) run.selections.back().assign(sel, sel + static_cast<size_t>(c.num_kv_heads) * budget);
    EXPECT_TRUE(model->forward(b, &logits).ok);
    EXPECT_TRUE(dec->after_forward(ids, b).ok);  // an EAGLE-3 head reads the step's hidden states
    run.logits.push_back(logits);
  }
  run.stats = dec->stats();
  EXPECT_TRUE(dec->mutable_head()->state(3, &run.state).ok);
  if (run.state.scoring_k) {
    // Copy: a device snapshot is already one; a host cache is shared.
    run.state.scoring_k = std::make_shared<const std::vector<float>>(*run.state.scoring_k);
  }
  dec->release(3);
  return run;
}

void expect_same(const DecodeRun& host, const DecodeRun& dev, const std::string& what) {
  ASSERT_EQ(host.selections.size(), dev.selections.size()) << what;
  for (size_t s = 0; s < host.selections.size(); ++s) {
    EXPECT_EQ(host.selections[s], dev.selections[s]) << what << " step " << s;
    EXPECT_EQ(host.logits[s], dev.logits[s]) << what << " step " << s;
  }
  EXPECT_EQ(host.stats.sparse_steps, dev.stats.sparse_steps) << what;
  EXPECT_EQ(host.stats.full_steps, dev.stats.full_steps) << what;
  EXPECT_EQ(host.stats.fallback_steps, dev.stats.fallback_steps) << what;
  ASSERT_TRUE(host.state.scoring_k && dev.state.scoring_k) << what;
  ASSERT_EQ(host.state.tokens, dev.state.tokens) << what;
  ASSERT_EQ(host.state.scoring_k->size(), dev.state.scoring_k->size()) << what;
  // Positions [0, tokens) of the scoring K cache [kv_heads, capacity, head_dim].
  const size_t cap = static_cast<size_t>(host.state.capacity), kvh = static_cast<size_t>(host.kv_heads);
  const size_t D = host.state.scoring_k->size() / (kvh * cap);
  size_t differ = 0;
  for (size_t g = 0; g < kvh; ++g)
    for (size_t t = 0; t < static_cast<size_t>(host.state.tokens); ++t)
      for (size_t d = 0; d < D; ++d) {
        const size_t i = (g * cap + t) * D + d;
        differ += (*host.state.scoring_k)[i] != (*dev.state.scoring_k)[i];
      }
  EXPECT_EQ(differ, 0u) << what << ": scoring K in the checkpoint state";
}

TEST(DeviceSelect, HookedBackendSelectsExactlyAsTheHost) {
  for (const char* name : {"tiny-llama", "tiny-qwen3"}) {
    for (int dlm_layers : {1, 2}) {
      HeadChoice head;
      head.dlm_layers = dlm_layers;
      auto cpu = make_cpu_backend(1);
      HookedCpu hooked;
      const DecodeRun host = decode(cpu.get(), name, head, 16);
      const DecodeRun dev = decode(&hooked, name, head, 16);
      const std::string what = std::string(name) + " dlm_layers " + std::to_string(dlm_layers);
      EXPECT_EQ(host.path, "host") << what;
      EXPECT_EQ(dev.path, "device") << what;
      EXPECT_EQ(host.stats.device_selections, 0u) << what;
      EXPECT_EQ(dev.stats.device_selections, dev.stats.sparse_steps) << what;
      EXPECT_EQ(hooked.hook.calls, static_cast<int>(dev.stats.sparse_steps)) << what;
      EXPECT_GT(dev.stats.sparse_steps, 0u) << what;
      expect_same(host, dev, what);
    }
  }
}
TEST(DeviceSelect, SeparateDlmHeadAndFallbackMatchTheHost) {
  HeadChoice dlm;
  dlm.dlm_dir = spx::testing::fixture("tiny-llama");  // computes its own prompt K (no adopt)
  dlm.dlm_layers = 2;
  for (float fallback : {0.0f, 0.9f}) {
    auto cpu = make_cpu_backend(1);
    HookedCpu hooked;
    const DecodeRun host = decode(cpu.get(), "tiny-llama", dlm, 16, fallback);
    const DecodeRun dev = decode(&hooked, "tiny-llama", dlm, 16, fallback);
    const std::string what = "DLM head, fallback " + std::to_string(fallback);
    EXPECT_EQ(dev.path, "device") << what;
    EXPECT_EQ(dev.stats.device_selections, dev.stats.sparse_steps + dev.stats.fallback_steps) << what;
    if (fallback > 0) EXPECT_GT(dev.stats.fallback_steps, 0u) << what << ": the threshold must bite";
    expect_same(host, dev, what);
  }
}

TEST(DeviceSelect, Eagle3HeadMatchesTheHost) {
  HeadChoice e3;
  e3.dlm_dir = spx::testing::fixture("tiny-eagle3/draft");
  auto cpu = make_cpu_backend(1);
  HookedCpu hooked;
  const DecodeRun host = decode(cpu.get(), "tiny-eagle3/target", e3, 16);
  const DecodeRun dev = decode(&hooked, "tiny-eagle3/target", e3, 16);
  EXPECT_EQ(host.path, "host");
  EXPECT_EQ(dev.path, "device");
  EXPECT_GT(dev.stats.sparse_steps, 0u);
  EXPECT_EQ(dev.stats.device_selections, dev.stats.sparse_steps);
  expect_same(host, dev, "EAGLE-3 head");
}

TEST(DeviceSelect, PooledHeadsAndTheHostSwitchStayOnTheHost) {
  HookedCpu hooked;
  HeadChoice pooled;
  pooled.dlm_layers = 2;
  pooled.pool = 2;
  EXPECT_EQ(decode(&hooked, "tiny-llama", pooled, 16).path, "host");
  HeadChoice one;
  one.dlm_layers = 2;
  ::setenv("SPX_HEAD_SCORING", "host", 1);
  EXPECT_EQ(decode(&hooked, "tiny-llama", one, 16).path, "host");
  ::setenv("SPX_HEAD_SCORING", "gpu", 1);
  std::unique_ptr<Transformer> model;
  ASSERT_TRUE(Transformer::load(spx::testing::fixture("tiny-llama"), &hooked, &model).ok);
  std::unique_ptr<SparseDecoder> dec;
  const Status st = SparseDecoder::make(model.get(), &hooked, one, SelectOptions{}, &dec);
  EXPECT_FALSE(st.ok);
  EXPECT_NE(st.message.find("SPX_HEAD_SCORING"), std::string::npos) << st.message;
  ::unsetenv("SPX_HEAD_SCORING");
  EXPECT_EQ(hooked.hook.calls, 0);
}

// A checkpoint's head state restored into a fresh request: the device cache
// comes back (uploaded) and the next selection is the original's.
TEST(DeviceSelect, RestoredStateSelectsAsTheOriginal) {
  HookedCpu hooked;
  std::unique_ptr<Transformer> model;
  ASSERT_TRUE(Transformer::load(spx::testing::fixture("tiny-llama"), &hooked, &model).ok);
  std::unique_ptr<PrunedHead> head;
  ASSERT_TRUE(PrunedHead::make(model.get(), 1, &head).ok);
  ASSERT_TRUE(head->use_device_select(2, 3, false));
  const int cap = 64, n = 50, B = 12, kvh = model->config().num_kv_heads;
  std::vector<int32_t> tokens(cap);
  for (int i = 0; i < cap; ++i) tokens[i] = (i * 53 + 7) % 250;
  ASSERT_TRUE(head->open(1, cap).ok);
  ASSERT_TRUE(head->forward({{1, tokens.data(), n, nullptr}}).ok);
  HeadState saved;
  ASSERT_TRUE(head->state(1, &saved).ok);
  ASSERT_TRUE(head->open(2, cap).ok);
  Backend* be = model->backend();
  const HeadStateFill fill = [&](int block, float* dst, int) {
    if (block == 2 * head->state_layers()) {
      std::copy(saved.scoring_k->begin(), saved.scoring_k->end(), dst);
    } else {
      const Tensor& t = block % 2 ? saved.v[static_cast<size_t>(block / 2)] : saved.k[static_cast<size_t>(block / 2)];
      ASSERT_TRUE(be->download(t, dst).ok);
    }
  };
  ASSERT_TRUE(head->restore(2, n, fill, nullptr).ok);
  std::vector<int32_t> sel1(static_cast<size_t>(kvh) * B), sel2(sel1.size());
  std::vector<float> m1(static_cast<size_t>(kvh)), m2(m1.size());
  HeadChunk a{1, &tokens[n], 1, nullptr}, b{2, &tokens[n], 1, nullptr};
  a.selection = sel1.data(), a.mass = m1.data(), a.budget = B;
  b.selection = sel2.data(), b.mass = m2.data(), b.budget = B;
  ASSERT_TRUE(head->forward({a, b}).ok);
  EXPECT_EQ(sel1, sel2);
  EXPECT_EQ(m1, m2);
  EXPECT_EQ(hooked.hook.calls, 1);  // both requests in one call
  // A selection for a context within the budget is refused before any work.
  HeadChunk c{1, &tokens[n + 1], 1, nullptr};
  c.selection = sel1.data(), c.mass = m1.data(), c.budget = cap;
  EXPECT_FALSE(head->forward({c}).ok);
  EXPECT_EQ(head->tokens(1), n + 1);
}

}  // namespace
