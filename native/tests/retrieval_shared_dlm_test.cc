// A distilled head whose lower layers are the target's own (tools/train_head.py
// assembles one: the target's first k layers with a retrained scoring layer).
// On the 7-layer tiny-eagle3 target, with DLM directories written here from
// its own tensors (scoring layer 3's norm / q / k changed):
//   - make_head detects the shared lower layers, and the head then runs on the
//     target (source() == target: dense below, the target's KV adopted);
//   - one changed value in a lower layer, or in the embedding, makes it an
//     ordinary separate DLM again;
//   - its scores equal the same DLM loaded and run the long way (its own
//     7-layer prefill), both adopting a prefill in evaluation's form and
//     through SparseDecoder the way the engine drives it (chunked prompt,
//     hidden states captured, then decode steps); the selections agree too.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include "retrieval/fidelity.h"
#include "retrieval/head_choice.h"
#include "retrieval/pruned_head.h"
#include "retrieval/select.h"
#include "retrieval/sparse_decoder.h"
#include "test_util.h"

namespace {

using namespace spx;
using spx::retrieval::HeadChoice;
using spx::retrieval::HeadChunk;
using spx::retrieval::PrunedHead;
namespace fs = std::filesystem;

const std::string kTarget = "tiny-eagle3/target";
constexpr int kLayers = 4;  // the DLM's depth: scoring layer 3

// Copies the target checkpoint into dir, scaling the named f32 tensors by
// 1 + 0.3 sin(i) (a stand-in for training) and changing one value of each
// tensor in `nudge` by 1e-3.
void write_dlm(const std::string& dir, const std::vector<std::string>& scale, const std::vector<std::string>& nudge) {
  fs::create_directories(dir);
  const std::string src = spx::testing::fixture(kTarget);
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    fs::copy_file(src + "/" + f, dir + "/" + f, fs::copy_options::overwrite_existing);
  std::ifstream in(src + "/model.safetensors", std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string bytes = ss.str();
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  Json header;
  ASSERT_TRUE(Json::parse(bytes.substr(8, len), &header).ok);
  auto data = [&](const std::string& name, size_t* n) {
    const Json* t = header.find(name);
    EXPECT_NE(t, nullptr) << name;
    const std::vector<Json>& off = t->find("data_offsets")->items();
    *n = static_cast<size_t>(off[1].as_int() - off[0].as_int()) / 4;
    return reinterpret_cast<float*>(&bytes[8 + len + static_cast<size_t>(off[0].as_int())]);
  };
  for (const std::string& name : scale) {
    size_t n = 0;
    float* x = data(name, &n);
    for (size_t i = 0; i < n; ++i) x[i] *= 1.0f + 0.3f * std::sin(static_cast<float>(i));
  }
  for (const std::string& name : nudge) {
    size_t n = 0;
    data(name, &n)[n / 2] += 1e-3f;
  }
  std::ofstream(dir + "/model.safetensors", std::ios::binary) << bytes;
}

const std::vector<std::string> kScoring = {"model.layers.3.input_layernorm.weight",
                                           "model.layers.3.self_attn.q_proj.weight",
                                           "model.layers.3.self_attn.k_proj.weight"};

class SharedDlm : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = (fs::temp_directory_path() / ("spx-shared-dlm-" + std::to_string(::getpid()))).string();
    ASSERT_TRUE(Transformer::load(spx::testing::fixture(kTarget), backend_.get(), &target_).ok);
    tokens_.resize(120);
    for (size_t i = 0; i < tokens_.size(); ++i) tokens_[i] = static_cast<int32_t>((i * 53 + 7) % 256);
  }
  void TearDown() override { fs::remove_all(root_); }

  Status head(const std::string& dir, std::unique_ptr<PrunedHead>* out, std::string* kind) {
    HeadChoice choice;
    choice.dlm_dir = dir;
    choice.dlm_layers = kLayers;
    return spx::retrieval::make_head(target_.get(), backend_.get(), choice, &dlm_, out, kind);
  }

  std::unique_ptr<Backend> backend_ = make_cpu_backend(1);
  std::unique_ptr<Transformer> target_, dlm_;
  std::vector<int32_t> tokens_;
  std::string root_;
};

TEST_F(SharedDlm, DetectsTheTargetsOwnLowerLayers) {
  write_dlm(root_ + "/shared", kScoring, {});
  std::unique_ptr<PrunedHead> h;
  std::string kind;
  Status st = head(root_ + "/shared", &h, &kind);
  ASSERT_TRUE(st.ok) << st.message;
  EXPECT_NE(kind.find("shares the target's lower layers"), std::string::npos) << kind;
  EXPECT_EQ(h->source(), target_.get());
  EXPECT_TRUE(h->own_scoring());
  EXPECT_EQ(h->scoring_layer(), kLayers - 1);
  EXPECT_EQ(h->scoring_input_layer(), kLayers - 1);
  EXPECT_EQ(dlm_, nullptr);  // the DLM's other tensors are freed
  // Only the scoring layer's norm, q and k count as extra weights.
  const ModelConfig& c = target_->config();
  const uint64_t qk = static_cast<uint64_t>(c.hidden_size) * (1 + (c.num_heads + c.num_kv_heads) * c.head_dim);
  EXPECT_EQ(h->weight_bytes(target_.get()), qk * 4);
}

TEST_F(SharedDlm, AChangedLowerTensorMakesASeparateDlm) {
  for (const std::string& changed : {std::string("model.layers.1.mlp.up_proj.weight"),
                                     std::string("model.embed_tokens.weight")}) {
    SCOPED_TRACE(changed);
    const std::string dir = root_ + "/own-" + std::to_string(changed.size());
    std::vector<std::string> scale = kScoring;
    write_dlm(dir, scale, {changed});
    std::unique_ptr<PrunedHead> h;
    std::string kind;
    Status st = head(dir, &h, &kind);
    ASSERT_TRUE(st.ok) << st.message;
    EXPECT_NE(kind.find("own lower layers"), std::string::npos) << kind;
    EXPECT_EQ(h->source(), dlm_.get());
    EXPECT_FALSE(h->own_scoring());
  }
}

// The long way: the same checkpoint as its own model, prefilling itself.
std::unique_ptr<PrunedHead> long_way(Backend* be, const std::string& dir, std::unique_ptr<Transformer>* model) {
  EXPECT_TRUE(Transformer::load(dir, be, model).ok);
  std::unique_ptr<PrunedHead> h;
  EXPECT_TRUE(PrunedHead::make(model->get(), kLayers - 1, &h).ok);
  return h;
}

void expect_same_scores(const std::vector<float>& got, const std::vector<float>& ref, int q_heads, int kv_heads,
                        int T, int step) {
  ASSERT_EQ(got.size(), ref.size());
  EXPECT_LT(spx::testing::relative_error(got.data(), ref.data(), got.size()), 1e-5) << "step " << step;
  // The selection the engine would make from them.
  spx::retrieval::Selector sel;
  spx::retrieval::SelectOptions so;
  so.budget = 24;
  so.n_sink = 2;
  so.n_recent = 4;
  std::vector<int32_t> a(static_cast<size_t>(kv_heads) * so.budget), b(a.size());
  sel.select(got.data(), q_heads, kv_heads, T, T, so, a.data());
  sel.select(ref.data(), q_heads, kv_heads, T, T, so, b.data());
  EXPECT_EQ(a, b) << "step " << step;
}

TEST_F(SharedDlm, AdoptedScoresEqualTheHeadRunTheLongWay) {
  const std::string dir = root_ + "/shared";
  write_dlm(dir, kScoring, {});
  std::unique_ptr<PrunedHead> shared;
  std::string kind;
  ASSERT_TRUE(head(dir, &shared, &kind).ok);
  std::unique_ptr<Transformer> own;
  std::unique_ptr<PrunedHead> ref = long_way(backend_.get(), dir, &own);
  // The scoring tensors differ from the target's, so adopting its layer-3 K would be wrong.
  std::unique_ptr<PrunedHead> self;
  ASSERT_TRUE(PrunedHead::make(target_.get(), kLayers - 1, &self).ok);

  const ModelConfig& c = target_->config();
  const int T0 = 100, steps = 6, cap = T0 + steps;
  KvStore store(backend_.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* kv = nullptr;
  ASSERT_TRUE(store.allocate(1, cap, &kv).ok);
  std::vector<float> logits, hidden, rows;
  for (int b = 0; b < T0; b += 64) {  // the prefill, hidden states captured as evaluation does
    ForwardBatch pre;
    const int n = std::min(64, T0 - b);
    pre.tokens.assign(tokens_.begin() + b, tokens_.begin() + b + n);
    pre.chunks.push_back({kv, b, n, LogitsMode::None});
    pre.aux_layers = {shared->scoring_input_layer()};
    pre.aux_hidden = &rows;
    ASSERT_TRUE(target_->forward(pre, &logits).ok);
    hidden.insert(hidden.end(), rows.begin(), rows.end());
  }
  ASSERT_TRUE(shared->open(1, cap).ok);
  EXPECT_FALSE(shared->adopt(1, *kv).ok);  // without the hidden states
  Status st = shared->adopt(1, *kv, hidden.data());
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_TRUE(ref->open(1, cap).ok);
  ASSERT_TRUE(self->open(1, cap).ok);
  ASSERT_TRUE(self->adopt(1, *kv).ok);
  for (int b = 0; b < T0; b += 64) {
    std::vector<HeadChunk> hc = {{1, tokens_.data() + b, std::min(64, T0 - b), nullptr}};
    ASSERT_TRUE(ref->forward(hc).ok);
  }
  double differs = 0;
  for (int s = 0; s < steps; ++s) {
    std::vector<float> a, r, o;
    std::vector<HeadChunk> hc = {{1, tokens_.data() + T0 + s, 1, &a}};
    ASSERT_TRUE(shared->forward(hc).ok);
    hc = {{1, tokens_.data() + T0 + s, 1, &r}};
    ASSERT_TRUE(ref->forward(hc).ok);
    hc = {{1, tokens_.data() + T0 + s, 1, &o}};
    ASSERT_TRUE(self->forward(hc).ok);
    expect_same_scores(a, r, c.num_heads, c.num_kv_heads, T0 + s + 1, s);
    differs = std::max(differs, spx::testing::relative_error(o.data(), r.data(), r.size()));
  }
  EXPECT_GT(differs, 1e-2);  // the changed scoring layer matters: the comparison can fail
}

TEST_F(SharedDlm, SparseDecoderCapturesThePromptAndMatchesTheLongWay) {
  const std::string dir = root_ + "/shared";
  write_dlm(dir, kScoring, {});
  HeadChoice choice;
  choice.dlm_dir = dir;
  choice.dlm_layers = kLayers;
  std::unique_ptr<spx::retrieval::SparseDecoder> dec;
  Status st = spx::retrieval::SparseDecoder::make(target_.get(), backend_.get(), choice, {}, &dec);
  ASSERT_TRUE(st.ok) << st.message;
  EXPECT_NE(dec->head_kind().find("shares the target's lower layers"), std::string::npos);
  std::unique_ptr<Transformer> own;
  std::unique_ptr<PrunedHead> ref = long_way(backend_.get(), dir, &own);

  const ModelConfig& c = target_->config();
  const int T0 = 90, steps = 5, cap = T0 + steps, budget = 32;
  KvStore store(backend_.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* kv = nullptr;
  ASSERT_TRUE(store.allocate(9, cap, &kv).ok);
  ASSERT_TRUE(dec->admit(9, cap, budget, kv).ok);
  ASSERT_TRUE(ref->open(9, cap).ok);
  std::vector<float> logits;
  auto step = [&](int start, int n, LogitsMode mode) {
    ForwardBatch batch;
    batch.tokens.assign(tokens_.begin() + start, tokens_.begin() + start + n);
    batch.chunks.push_back({kv, start, n, mode});
    const std::vector<uint64_t> ids = {9};
    Status s = dec->before_forward(ids, &batch);
    if (s.ok) s = target_->forward(batch, &logits);
    if (s.ok) s = dec->after_forward(ids, batch);
    return std::make_pair(s, batch.chunks[0]);
  };
  // The prompt in three chunks, the engine's way: logits on the last one.
  for (auto [b, n] : {std::make_pair(0, 40), std::make_pair(40, 33), std::make_pair(73, T0 - 73)}) {
    auto [s, ch] = step(b, n, b + n == T0 ? LogitsMode::Last : LogitsMode::None);
    ASSERT_TRUE(s.ok) << s.message;
    std::vector<HeadChunk> hc = {{9, tokens_.data() + b, n, nullptr}};
    ASSERT_TRUE(ref->forward(hc).ok);
  }
  EXPECT_EQ(dec->head().tokens(9), T0);  // adopted
  for (int s = 0; s < steps; ++s) {
    auto [res, ch] = step(T0 + s, 1, LogitsMode::Last);
    ASSERT_TRUE(res.ok) << res.message;
    EXPECT_NE(ch.selection, nullptr);
    EXPECT_EQ(ch.sparse_from_layer, kLayers - 1);  // dense below, as for a self-derived head
    std::vector<float> r;
    std::vector<HeadChunk> hc = {{9, tokens_.data() + T0 + s, 1, &r}};
    ASSERT_TRUE(ref->forward(hc).ok);
    expect_same_scores(*dec->last_scores(9), r, c.num_heads, c.num_kv_heads, T0 + s + 1, s);
  }
  dec->release(9);
}

// With no head flag the recommended head is a distilled one assembled next to
// the model ("<model_dir>-head"), if it fits; otherwise self-derived.
TEST_F(SharedDlm, RecommendedHeadIsTheDistilledOneNextToTheModel) {
  const std::string model = root_ + "/target";
  write_dlm(model, {}, {});
  auto recommended = [&](std::string* kind) {
    HeadChoice choice;
    choice.model_dir = model + "/";
    std::unique_ptr<PrunedHead> h;
    EXPECT_TRUE(spx::retrieval::make_head(target_.get(), backend_.get(), choice, &dlm_, &h, kind).ok);
    return h;
  };
  std::string kind;
  EXPECT_EQ(recommended(&kind)->scoring_layer(), spx::retrieval::recommended_layers(target_->config()) - 1);
  EXPECT_NE(kind.find("self-derived"), std::string::npos) << kind;

  // Its scoring layer is its last one (here all 7 layers are copied).
  const std::vector<std::string> last = {"model.layers.6.input_layernorm.weight",
                                         "model.layers.6.self_attn.q_proj.weight",
                                         "model.layers.6.self_attn.k_proj.weight"};
  write_dlm(model + "-head", last, {});
  std::unique_ptr<PrunedHead> h = recommended(&kind);
  EXPECT_NE(kind.find("distilled"), std::string::npos) << kind;
  EXPECT_TRUE(h->own_scoring());
  EXPECT_EQ(h->source(), target_.get());
  EXPECT_EQ(h->scoring_layer(), target_->config().num_layers - 1);  // the whole copied depth

  write_dlm(model + "-head", last, {"model.layers.2.self_attn.o_proj.weight"});
  h = recommended(&kind);
  EXPECT_NE(kind.find("does not fit"), std::string::npos) << kind;
  EXPECT_FALSE(h->own_scoring());
}

// A distilled head's config.json may carry its recommended fallback
// threshold (tools/train_head.py assemble --fallback): it is the default of
// generate (SparseDecoder) and eval fidelity, and a threshold given (0
// included) overrides it.
TEST_F(SharedDlm, TheHeadsRecommendedFallbackIsTheDefault) {
  const std::string model = root_ + "/target";
  write_dlm(model, {}, {});
  const std::vector<std::string> last = {"model.layers.6.input_layernorm.weight",
                                         "model.layers.6.self_attn.q_proj.weight",
                                         "model.layers.6.self_attn.k_proj.weight"};
  write_dlm(model + "-head", last, {});
  std::string cfg;
  {
    std::ifstream in(model + "-head/config.json");
    std::stringstream ss;
    ss << in.rdbuf();
    cfg = ss.str();
  }
  ASSERT_EQ(cfg.find('{'), cfg.find_first_not_of(" \n"));
  cfg.insert(cfg.find('{') + 1, "\"specontext_fallback_mass\": 0.999, ");
  std::ofstream(model + "-head/config.json") << cfg;

  HeadChoice rec;
  rec.model_dir = model;
  std::unique_ptr<PrunedHead> h;
  std::string kind;
  double mass = -1;
  ASSERT_TRUE(spx::retrieval::make_head(target_.get(), backend_.get(), rec, &dlm_, &h, &kind, &mass).ok);
  EXPECT_NE(kind.find("distilled"), std::string::npos) << kind;
  EXPECT_NEAR(mass, 0.999, 1e-9);
  HeadChoice self;
  self.dlm_layers = 3;
  ASSERT_TRUE(spx::retrieval::make_head(target_.get(), backend_.get(), self, &dlm_, &h, &kind, &mass).ok);
  EXPECT_EQ(mass, 0.0);  // a self-derived head recommends none

  spx::retrieval::SelectOptions unset;
  unset.fallback_mass = -1;
  std::unique_ptr<spx::retrieval::SparseDecoder> dec;
  ASSERT_TRUE(spx::retrieval::SparseDecoder::make(target_.get(), backend_.get(), rec, unset, &dec).ok);
  EXPECT_NE(dec->head_kind().find("the head's recommendation"), std::string::npos) << dec->head_kind();
  ASSERT_TRUE(spx::retrieval::SparseDecoder::make(target_.get(), backend_.get(), rec, {}, &dec).ok);
  EXPECT_EQ(dec->head_kind().find("full attention when"), std::string::npos) << dec->head_kind();

  // eval fidelity: unset -> the head's 0.999 (nearly every step falls back
  // at B = 16 over 100 tokens); 0 -> never.
  spx::retrieval::FidelityRequest req;
  req.model_dir = model;
  req.threads = 1;
  req.tokens.assign(tokens_.begin(), tokens_.begin() + 110);
  req.options.context = 100;
  req.options.steps = 8;
  req.options.budgets = {16};
  req.options.select.fallback_mass = -1;
  spx::retrieval::FidelityReport with, without;
  Status st = spx::retrieval::eval_fidelity(req, &with);
  ASSERT_TRUE(st.ok) << st.message;
  EXPECT_NEAR(with.fallback_mass, 0.999, 1e-6);
  EXPECT_NE(with.head_kind.find("the head's recommendation"), std::string::npos) << with.head_kind;
  EXPECT_GT(with.budgets[0].fallback_rate, 0.5);
  req.options.select.fallback_mass = 0;
  ASSERT_TRUE((st = spx::retrieval::eval_fidelity(req, &without)).ok) << st.message;
  EXPECT_EQ(without.fallback_mass, 0.0f);
  EXPECT_EQ(without.budgets[0].fallback_rate, 0.0);
}

}  // namespace
