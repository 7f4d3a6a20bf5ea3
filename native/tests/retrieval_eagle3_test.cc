// EAGLE-3 drafts as the retrieval head, on test/fixtures/tiny-eagle3 (seeded
// random drafts in the published layout, a 7-layer target, and reference
// scores computed independently in torch by tools/make_eagle3_fixture.py):
//   - the target's captured aux hidden states equal transformers' hidden states;
//   - the pruned head's q.k/sqrt(d) scores equal the reference at every decode
//     position, run the way the engine runs it (head before the target's step,
//     after_target with the captured rows after it), for a draft that borrows
//     the target's embedding and one with its own embedding and explicit aux ids;
//   - malformed EAGLE-3 directories give errors that name the problem.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "retrieval/eagle3_head.h"
#include "retrieval/head_choice.h"
#include "retrieval/pruned_head.h"
#include "test_util.h"

namespace {

using namespace spx;
using spx::retrieval::HeadChoice;
using spx::retrieval::HeadChunk;
using spx::retrieval::PrunedHead;
namespace fs = std::filesystem;

const std::string kDir = "tiny-eagle3";

struct Fixture {
  std::unique_ptr<Backend> backend = make_cpu_backend(1);
  std::unique_ptr<Transformer> target;
  Json ref = spx::testing::load_json(spx::testing::fixture(kDir + "/reference.json"));
  std::vector<int32_t> prompt;
  Fixture() {
    Status st = Transformer::load(spx::testing::fixture(kDir + "/target"), backend.get(), &target);
    EXPECT_TRUE(st.ok) << st.message;
    prompt = spx::testing::ints(*ref.find("prompt_ids"));
  }
  const Json& draft(const std::string& name) const { return *ref.find("drafts")->find(name); }
};

Status make(Fixture& f, const std::string& dir, std::unique_ptr<PrunedHead>* head, std::string* kind,
            int pool = 0) {
  HeadChoice choice;
  choice.dlm_dir = dir;
  choice.pool = pool;
  std::unique_ptr<Transformer> unused;
  return spx::retrieval::make_head(f.target.get(), f.backend.get(), choice, &unused, head, kind);
}

// One target forward of tokens [start, start+n) with the head's aux rows captured.
void target_step(Fixture& f, KvSequence* kv, const PrunedHead& head, int start, int n, std::vector<float>* rows) {
  ForwardBatch b;
  b.tokens.assign(f.prompt.begin() + start, f.prompt.begin() + start + n);
  b.chunks.push_back({kv, start, n, LogitsMode::Last});
  b.aux_layers = head.aux_layers();
  b.aux_hidden = rows;
  std::vector<float> logits;
  Status st = f.target->forward(b, &logits);
  ASSERT_TRUE(st.ok) << st.message;
}

void expect_rows_near(const std::vector<float>& got, const Json& ref_rows, size_t first_row, size_t width,
                      const std::string& what) {
  for (size_t r = 0; r < got.size() / width; ++r) {
    const std::vector<float> want = spx::testing::floats(ref_rows.items()[first_row + r]);
    ASSERT_EQ(want.size(), width);
    EXPECT_LT(spx::testing::relative_error(&got[r * width], want.data(), width), 1e-4)
        << what << " row " << first_row + r;
  }
}

TEST(Eagle3Layout, DetectedAndCounted) {
  Fixture f;
  EXPECT_TRUE(spx::retrieval::is_eagle3_dir(spx::testing::fixture(kDir + "/draft")));
  EXPECT_FALSE(spx::retrieval::is_eagle3_dir(spx::testing::fixture(kDir + "/target")));
  for (const std::string name : {"draft", "draft-own-embed", "draft-speculators"}) {
    std::unique_ptr<PrunedHead> head;
    std::string kind;
    Status st = make(f, spx::testing::fixture(kDir + "/" + name), &head, &kind);
    ASSERT_TRUE(st.ok) << st.message;
    EXPECT_NE(kind.find("eagle3"), std::string::npos) << kind;
    const Json& d = f.draft(name);
    EXPECT_EQ(head->aux_layers(), spx::testing::ints(*d.find("aux_layers")));
    EXPECT_EQ(head->eagle3()->config().own_embedding, d.find("own_embedding")->as_bool());
    EXPECT_EQ(head->head_params(), static_cast<uint64_t>(d.find("head_params")->as_int()));
    EXPECT_EQ(head->model_params(), static_cast<uint64_t>(d.find("model_params")->as_int()));
    EXPECT_EQ(head->q_heads(), f.target->config().num_heads);
    EXPECT_EQ(head->source(), nullptr);  // never adopts the target's KV
  }
}

TEST(Eagle3Capture, AuxHiddenStatesMatchTransformers) {
  Fixture f;
  std::unique_ptr<PrunedHead> head;
  std::string kind;
  ASSERT_TRUE(make(f, spx::testing::fixture(kDir + "/draft-own-embed"), &head, &kind).ok);
  const int T = static_cast<int>(f.prompt.size());
  KvStore store(f.backend.get(), f.target->config().num_layers, f.target->config().num_kv_heads,
                f.target->config().head_dim);
  KvSequence* kv = nullptr;
  ASSERT_TRUE(store.allocate(1, T + 1, &kv).ok);
  std::vector<float> rows;
  // Two chunks: capture works per row whatever the chunking.
  target_step(f, kv, *head, 0, 30, &rows);
  expect_rows_near(rows, *f.draft("draft-own-embed").find("features"), 0, head->aux_width(), "features");
  target_step(f, kv, *head, 30, T - 30, &rows);
  expect_rows_near(rows, *f.draft("draft-own-embed").find("features"), 30, head->aux_width(), "features");

  ForwardBatch bad;
  bad.tokens = {1};
  bad.chunks.push_back({kv, T, 1, LogitsMode::Last});
  bad.aux_layers = {9};
  bad.aux_hidden = &rows;
  std::vector<float> logits;
  Status st = f.target->forward(bad, &logits);
  EXPECT_FALSE(st.ok);
  EXPECT_NE(st.message.find("capture at layer 9"), std::string::npos) << st.message;
}

// The engine's order: prefill the target (capturing), hand the rows to the
// head, then per decode step: head scores first, target step, after_target.
void check_engine_flow(const std::string& name) {
  SCOPED_TRACE(name);
  Fixture f;
  std::unique_ptr<PrunedHead> head;
  std::string kind;
  Status st = make(f, spx::testing::fixture(kDir + "/" + name), &head, &kind);
  ASSERT_TRUE(st.ok) << st.message;
  const Json& scores = *f.draft(name).find("scores");
  const ModelConfig& c = f.target->config();
  const int T = static_cast<int>(f.prompt.size()), P0 = 21;
  KvStore store(f.backend.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* kv = nullptr;
  ASSERT_TRUE(store.allocate(1, T, &kv).ok);
  ASSERT_TRUE(head->open(5, T).ok);
  std::vector<float> rows, s;
  target_step(f, kv, *head, 0, P0, &rows);
  {
    // The prefill's rows go in through the batch form, as SparseDecoder would call it;
    // chunk 1 belongs to a request the head does not track.
    ForwardBatch b;
    b.tokens.assign(f.prompt.begin(), f.prompt.begin() + P0);
    b.tokens.push_back(7);
    b.chunks.push_back({kv, 0, P0, LogitsMode::Last});
    b.chunks.push_back({kv, 0, 1, LogitsMode::Last});
    rows.resize(rows.size() + static_cast<size_t>(head->aux_width()));
    ASSERT_TRUE((st = head->after_target({5, 99}, b, rows)).ok) << st.message;
  }
  EXPECT_EQ(head->tokens(5), P0);
  for (int p = P0; p < T; ++p) {
    std::vector<HeadChunk> hc = {{5, &f.prompt[p], 1, &s}};
    ASSERT_TRUE((st = head->forward(hc)).ok) << st.message;
    ASSERT_EQ(s.size(), static_cast<size_t>(c.num_heads) * (p + 1));
    const Json& want = scores.items()[p];
    for (int h = 0; h < c.num_heads; ++h) {
      const std::vector<float> w = spx::testing::floats(want.items()[h]);
      EXPECT_LT(spx::testing::relative_error(&s[static_cast<size_t>(h) * (p + 1)], w.data(), w.size()), 1e-4)
          << "position " << p << " head " << h;
    }
    target_step(f, kv, *head, p, 1, &rows);
    ASSERT_TRUE((st = head->after_target(5, &f.prompt[p], p, 1, rows.data())).ok) << st.message;
  }
  EXPECT_EQ(head->tokens(5), T);
  EXPECT_EQ(head->k_cache_bytes(), static_cast<uint64_t>(c.num_kv_heads) * T * c.head_dim * sizeof(float));
  // A chunk that does not continue the head is refused.
  st = head->after_target(5, f.prompt.data(), 3, 1, rows.data());
  EXPECT_FALSE(st.ok);
  head->close(5);
  EXPECT_EQ(head->tokens(5), -1);
}

// Checkpoints: the head's state (K cache + the last aux row) restored into a
// fresh head continues with the same scores.
TEST(Eagle3Head, StateRestoresIntoAFreshHead) {
  Fixture f;
  std::unique_ptr<PrunedHead> a, b;
  std::string kind;
  ASSERT_TRUE(make(f, spx::testing::fixture(kDir + "/draft"), &a, &kind).ok);
  ASSERT_TRUE(make(f, spx::testing::fixture(kDir + "/draft"), &b, &kind).ok);
  EXPECT_EQ(a->state_layers(), 0);
  const ModelConfig& c = f.target->config();
  const int T = static_cast<int>(f.prompt.size()), P0 = 30;
  KvStore store(f.backend.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* kv = nullptr;
  ASSERT_TRUE(store.allocate(1, T, &kv).ok);
  std::vector<float> rows, sa, sb;
  ASSERT_TRUE(a->open(1, T).ok);
  target_step(f, kv, *a, 0, P0, &rows);
  ASSERT_TRUE(a->after_target(1, f.prompt.data(), 0, P0, rows.data()).ok);

  spx::retrieval::HeadState st;
  ASSERT_TRUE(a->state(1, &st).ok);
  EXPECT_EQ(st.tokens, P0);
  ASSERT_EQ(st.aux.size(), static_cast<size_t>(a->aux_width()));
  ASSERT_TRUE(b->open(2, T + 3).ok);  // another capacity: rows are copied per head
  const int cap = st.capacity, D = c.head_dim;
  Status s = b->restore(
      2, P0,
      [&](int block, float* dst, int dst_cap) {
        ASSERT_EQ(block, 0);
        for (int h = 0; h < c.num_kv_heads; ++h)
          std::copy_n(st.scoring_k->data() + static_cast<size_t>(h) * cap * D, static_cast<size_t>(P0) * D,
                      dst + static_cast<size_t>(h) * dst_cap * D);
      },
      st.aux.data());
  ASSERT_TRUE(s.ok) << s.message;
  std::vector<HeadChunk> ha = {{1, &f.prompt[P0], 1, &sa}}, hb = {{2, &f.prompt[P0], 1, &sb}};
  ASSERT_TRUE(a->forward(ha).ok);
  ASSERT_TRUE(b->forward(hb).ok);
  EXPECT_EQ(sa, sb);
}

TEST(Eagle3Head, ScoresMatchReferenceBorrowedEmbedding) { check_engine_flow("draft"); }
TEST(Eagle3Head, ScoresMatchReferenceOwnEmbedding) { check_engine_flow("draft-own-embed"); }
// vLLM's speculators layout: nested transformer_layer_config, layers.0.*, fc with a bias.
TEST(Eagle3Head, ScoresMatchReferenceSpeculatorsLayout) { check_engine_flow("draft-speculators"); }

// Features given with the chunk (no target run): the reference's own hidden
// states, shifted by one, in two chunks.
TEST(Eagle3Head, ChunksWithFeatures) {
  Fixture f;
  std::unique_ptr<PrunedHead> head;
  std::string kind;
  ASSERT_TRUE(make(f, spx::testing::fixture(kDir + "/draft"), &head, &kind).ok);
  const Json& d = f.draft("draft");
  const int T = static_cast<int>(f.prompt.size()), W = head->aux_width(), split = 17;
  std::vector<float> feats(static_cast<size_t>(T) * W, 0.0f);  // row p: features of p-1
  for (int p = 1; p < T; ++p) {
    const std::vector<float> r = spx::testing::floats(d.find("features")->items()[p - 1]);
    std::copy(r.begin(), r.end(), feats.begin() + static_cast<int64_t>(p) * W);
  }
  ASSERT_TRUE(head->open(9, T).ok);
  std::vector<float> s;
  std::vector<HeadChunk> hc = {{9, f.prompt.data(), split, &s, feats.data()}};
  ASSERT_TRUE(head->forward(hc).ok);
  hc = {{9, f.prompt.data() + split, T - split, &s, feats.data() + static_cast<size_t>(split) * W}};
  Status st = head->forward(hc);
  ASSERT_TRUE(st.ok) << st.message;
  const Json& want = d.find("scores")->items()[T - 1];
  for (int h = 0; h < head->q_heads(); ++h) {
    const std::vector<float> w = spx::testing::floats(want.items()[h]);
    EXPECT_LT(spx::testing::relative_error(&s[static_cast<size_t>(h) * T], w.data(), w.size()), 1e-4);
  }
  EXPECT_FALSE(head->adopt(9, KvSequence()).ok);

  // Without features a decode token needs the target's rows of the previous
  // position (after_target): position 0 has none and needs none.
  ASSERT_TRUE(head->open(10, 4).ok);
  hc = {{10, f.prompt.data(), 1, &s}};
  ASSERT_TRUE(head->forward(hc).ok);
  hc = {{10, f.prompt.data() + 1, 1, &s}};
  st = head->forward(hc);
  EXPECT_FALSE(st.ok);
  EXPECT_NE(st.message.find("no target hidden states for position 0"), std::string::npos) << st.message;
}

// --- malformed directories ---------------------------------------------------

class Eagle3Malformed : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/spx-eagle3-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::ifstream in(spx::testing::fixture(kDir + "/draft/config.json"));
    config_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  void TearDown() override { fs::remove_all(dir_); }

  void write_config(const std::vector<std::pair<std::string, std::string>>& edits) {
    std::string text = config_;
    for (const auto& [from, to] : edits) {
      const size_t at = text.find(from);
      ASSERT_NE(at, std::string::npos) << from;
      text.replace(at, from.size(), to);
    }
    std::ofstream(dir_ + "/config.json") << text;
  }
  void write_config(const std::string& from, const std::string& to) {
    write_config(from.empty() ? std::vector<std::pair<std::string, std::string>>{}
                              : std::vector<std::pair<std::string, std::string>>{{from, to}});
  }
  void copy_weights() {
    fs::copy_file(spx::testing::fixture(kDir + "/draft/model.safetensors"), dir_ + "/model.safetensors");
  }
  // A safetensors file of zero f32 tensors.
  void write_tensors(const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors) {
    std::string header = "{";
    uint64_t off = 0;
    for (const auto& [name, shape] : tensors) {
      uint64_t n = 4;
      std::string dims;
      for (int64_t d : shape) {
        n *= static_cast<uint64_t>(d);
        dims += (dims.empty() ? "" : ",") + std::to_string(d);
      }
      header += (header.size() > 1 ? "," : "") + std::string("\"") + name + "\":{\"dtype\":\"F32\",\"shape\":[" +
                dims + "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + n) + "]}";
      off += n;
    }
    header += "}";
    std::ofstream out(dir_ + "/model.safetensors", std::ios::binary);
    const uint64_t len = header.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << header << std::string(off, '\0');
  }
  std::string load_error() {
    std::unique_ptr<PrunedHead> head;
    std::string kind;
    Status st = make(f_, dir_, &head, &kind);
    EXPECT_FALSE(st.ok);
    return st.message;
  }

  Fixture f_;
  std::string dir_, config_;
};

#define EXPECT_MENTIONS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << (msg)

TEST_F(Eagle3Malformed, NoWeights) {
  write_config("", "");
  EXPECT_MENTIONS(load_error(), "neither model.safetensors");
}

TEST_F(Eagle3Malformed, PytorchBinOnly) {
  write_config("", "");
  std::ofstream(dir_ + "/pytorch_model.bin") << "not read";
  EXPECT_MENTIONS(load_error(), "pytorch_model.bin");
}

TEST_F(Eagle3Malformed, TwoLayers) {
  write_config("\"num_hidden_layers\": 1", "\"num_hidden_layers\": 2");
  copy_weights();
  EXPECT_MENTIONS(load_error(), "one decoder layer");
}

TEST_F(Eagle3Malformed, HeadsDifferFromTarget) {
  write_config("\"num_attention_heads\": 4", "\"num_attention_heads\": 8");
  copy_weights();
  EXPECT_MENTIONS(load_error(), "attention heads (8 q / 2 kv) differ");
}

TEST_F(Eagle3Malformed, TargetHiddenDiffers) {
  write_config("\"hidden_size\": 64", "\"hidden_size\": 64, \"target_hidden_size\": 32");
  copy_weights();
  EXPECT_MENTIONS(load_error(), "fc reads target hidden size 32");
}

TEST_F(Eagle3Malformed, VocabularyDiffers) {
  write_config("\"vocab_size\": 258", "\"vocab_size\": 300");
  copy_weights();
  EXPECT_MENTIONS(load_error(), "vocabulary (300)");
}

TEST_F(Eagle3Malformed, AuxLayersOutsideTarget) {
  write_config("\"bos_token_id\"", "\"eagle_aux_hidden_state_layer_ids\": [1, 3, 9], \"bos_token_id\"");
  copy_weights();
  EXPECT_MENTIONS(load_error(), "eagle_aux_hidden_state_layer_ids");
}

TEST_F(Eagle3Malformed, SpeculatorsWithoutLayerConfig) {
  write_config({{"\"LlamaForCausalLMEagle3\"", "\"Eagle3Speculator\""},
                {"\"bos_token_id\"", "\"speculators_config\": {}, \"bos_token_id\""}});
  copy_weights();
  EXPECT_MENTIONS(load_error(), "needs a 'transformer_layer_config' object");
}

TEST_F(Eagle3Malformed, SpeculatorsEagleOne) {
  write_config({{"\"LlamaForCausalLMEagle3\"", "\"Eagle3Speculator\""},
                {"\"bos_token_id\"", "\"speculators_model_type\": \"eagle\", \"bos_token_id\""}});
  copy_weights();
  EXPECT_MENTIONS(load_error(), "speculators_model_type is \"eagle\"");
}

TEST_F(Eagle3Malformed, SpeculatorsTwoLayers) {
  std::ifstream in(spx::testing::fixture(kDir + "/draft-speculators/config.json"));
  config_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  write_config("\"num_hidden_layers\": 1", "\"num_hidden_layers\": 3");
  copy_weights();
  EXPECT_MENTIONS(load_error(), "one decoder layer");
}

TEST_F(Eagle3Malformed, SpeculatorsWrongFcBias) {
  write_config("", "");
  write_tensors({{"layers.0.self_attn.q_proj.weight", {64, 128}},
                 {"layers.0.self_attn.k_proj.weight", {32, 128}},
                 {"layers.0.input_layernorm.weight", {64}},
                 {"layers.0.hidden_norm.weight", {64}},
                 {"fc.weight", {64, 192}},
                 {"fc.bias", {192}}});
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, "fc.bias");
  EXPECT_MENTIONS(msg, "[64]");
}

TEST_F(Eagle3Malformed, NotTheLayout) {
  write_config("", "");
  write_tensors({{"fc.weight", {64, 192}}});
  EXPECT_MENTIONS(load_error(), "midlayer.self_attn.q_proj.weight");
}

TEST_F(Eagle3Malformed, WrongFcShape) {
  write_config("", "");
  write_tensors({{"midlayer.self_attn.q_proj.weight", {64, 128}}, {"fc.weight", {64, 64}}});
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, "fc.weight");
  EXPECT_MENTIONS(msg, "[64, 192]");
}

TEST_F(Eagle3Malformed, MissingNorm) {
  write_config("", "");
  write_tensors({{"midlayer.self_attn.q_proj.weight", {64, 128}}, {"fc.weight", {64, 192}}});
  EXPECT_MENTIONS(load_error(), "midlayer.input_layernorm.weight");
}

TEST_F(Eagle3Malformed, PoolingRefused) {
  write_config("", "");
  copy_weights();
  std::unique_ptr<PrunedHead> head;
  std::string kind;
  Status st = make(f_, dir_, &head, &kind, 2);
  EXPECT_FALSE(st.ok);
  EXPECT_MENTIONS(st.message, "one layer");
}

}  // namespace
