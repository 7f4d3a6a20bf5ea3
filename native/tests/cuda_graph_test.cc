// The dense decode step recorded as a CUDA graph and replayed (StepGraph,
// docs/cuda.md) against the same steps run eagerly:
// - the model alone: logits bit for bit over many greedy steps while the
//   batch changes (a request joins through a mixed prefill + decode step,
//   one ends and its cache is freed, another is admitted), with the
//   recapture and replay counts each schedule implies;
// - the engine on cuda:0 with SPX_CUDA_GRAPHS on and off: the same greedy
//   tokens for requests that join and finish mid-run, replays counted.
// Models: the tiny fixtures, plus the random llama-mid / qwen3-mid
// checkpoints that tools/gpu_test.sh lists in SPX_CUDA_MODEL_DIRS.
#include <gtest/gtest.h>

#ifndef SPX_HAVE_CUDA
TEST(CudaGraph, Skipped) { GTEST_SKIP() << "built without CUDA (nvcc not found)"; }
#else
#include <algorithm>
#include <cstdlib>
#include <map>

#include "backend/registry.h"
#include "collect_sink.h"
#include "cuda_test_util.h"
#include "kv/kv_store.h"
#include "model/transformer.h"
#include "test_util.h"

namespace spx {
namespace {

using testing::fixture;

// The tiny fixtures (256 positions) with short prompts; the random
// checkpoints with prompts long enough for several attention splits.
std::vector<std::pair<std::string, int>> models() {
  std::vector<std::pair<std::string, int>> out = {
      {fixture("tiny-llama"), 120}, {fixture("tiny-qwen2"), 120}, {fixture("tiny-qwen3"), 120}};
  const char* dirs = std::getenv("SPX_CUDA_MODEL_DIRS");
  std::string all = dirs ? dirs : "";
  size_t begin = 0;
  while (begin < all.size()) {
    const size_t end = std::min(all.find(',', begin), all.size());
    if (end > begin) out.emplace_back(all.substr(begin, end - begin), 300);
    begin = end + 1;
  }
  return out;
}

struct Trace {
  std::vector<std::vector<float>> logits;  // per forward
  StepGraphStats stats;
};

constexpr int kSteps = 12;  // dense steps per batch shape

// One model on cuda:0 running a fixed schedule, greedy tokens fed back:
//   A, B, C prefill; kSteps dense steps of {A, B, C};
//   D's prefill with the decode of A, B, C in one mixed step;
//   kSteps dense steps of {A, B, C, D}; B ends (cache freed), E is admitted
//   and prefilled alone; kSteps dense steps of {A, C, D, E}.
class Schedule {
 public:
  Schedule(const std::string& dir, bool graphs, int base_len) : base_(base_len) {
    Status st;
    be_ = make_backend("cuda:0", 0, &st);
    EXPECT_TRUE(st.ok) << st.message;
    if (!be_) return;
    st = Transformer::load(dir, be_.get(), &model_);
    EXPECT_TRUE(st.ok) << dir << ": " << st.message;
    if (!model_) return;
    model_->set_step_graphs(graphs);
    const ModelConfig& c = model_->config();
    kv_ = std::make_unique<KvStore>(be_.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  }

  void run(Trace* out) {
    ASSERT_TRUE(model_ != nullptr);
    admit('A', base_ + 3);
    admit('B', base_ / 2 + 1);
    admit('C', base_ + 17);
    for (char r : {'A', 'B', 'C'}) ASSERT_NO_FATAL_FAILURE(forward({r}, {}, out));
    for (int s = 0; s < kSteps; ++s) ASSERT_NO_FATAL_FAILURE(forward({}, {'A', 'B', 'C'}, out));
    admit('D', base_ - 7);
    ASSERT_NO_FATAL_FAILURE(forward({'D'}, {'A', 'B', 'C'}, out));
    for (int s = 0; s < kSteps; ++s) ASSERT_NO_FATAL_FAILURE(forward({}, {'A', 'B', 'C', 'D'}, out));
    kv_->free(reqs_['B'].id);
    reqs_.erase('B');
    admit('E', base_ / 2 + 1);  // B's length: its capacity, maybe its memory too
    ASSERT_NO_FATAL_FAILURE(forward({'E'}, {}, out));
    for (int s = 0; s < kSteps; ++s) ASSERT_NO_FATAL_FAILURE(forward({}, {'A', 'C', 'D', 'E'}, out));
    out->stats = model_->graph_stats();
  }

 private:
  struct Req {
    uint64_t id = 0;
    std::vector<int32_t> prompt;
    KvSequence* kv = nullptr;
    int32_t next = 0;  // the greedy token to feed
  };

  void admit(char name, int len) {
    Req r;
    r.id = static_cast<uint64_t>(name);
    const int vocab = model_->config().vocab_size;
    for (int i = 0; i < len; ++i) r.prompt.push_back(static_cast<int32_t>(rng_() % vocab));
    const Status st = kv_->allocate(r.id, len + 4 * kSteps, &r.kv);
    ASSERT_TRUE(st.ok) << st.message;
    reqs_[name] = r;
  }

  void forward(const std::vector<char>& prefill, const std::vector<char>& decode, Trace* out) {
    ForwardBatch b;
    for (char p : prefill) {
      Req& r = reqs_[p];
      b.chunks.push_back(ForwardChunk{r.kv, 0, static_cast<int>(r.prompt.size())});
      b.tokens.insert(b.tokens.end(), r.prompt.begin(), r.prompt.end());
    }
    for (char d : decode) {
      Req& r = reqs_[d];
      b.chunks.push_back(ForwardChunk{r.kv, r.kv->n_tokens, 1});
      b.tokens.push_back(r.next);
    }
    std::vector<float> logits;
    const Status st = model_->forward(b, &logits);
    ASSERT_TRUE(st.ok) << st.message;
    const size_t V = static_cast<size_t>(model_->config().vocab_size);
    ASSERT_EQ(logits.size(), (prefill.size() + decode.size()) * V);
    size_t row = 0;
    for (const std::vector<char>* list : {&prefill, &decode})
      for (char x : *list) {
        const float* l = logits.data() + row++ * V;
        reqs_[x].next = static_cast<int32_t>(std::max_element(l, l + V) - l);
      }
    out->logits.push_back(std::move(logits));
  }

  int base_;
  std::mt19937 rng_{7};
  std::unique_ptr<Backend> be_;
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<KvStore> kv_;
  std::map<char, Req> reqs_;
};

TEST(CudaGraph, DecodeStepReplayEqualsEagerBitForBit) {
  SPX_REQUIRE_GPU();
  for (const auto& [dir, base] : models()) {
    SCOPED_TRACE(dir);
    Trace eager, graph;
    {
      Schedule s(dir, false, base);
      ASSERT_NO_FATAL_FAILURE(s.run(&eager));
    }
    {
      Schedule s(dir, true, base);
      ASSERT_NO_FATAL_FAILURE(s.run(&graph));
    }
    ASSERT_EQ(eager.logits.size(), graph.logits.size());
    size_t differ = 0;
    for (size_t i = 0; i < eager.logits.size(); ++i) {
      ASSERT_EQ(eager.logits[i].size(), graph.logits[i].size());
      const bool same = std::memcmp(eager.logits[i].data(), graph.logits[i].data(),
                                    eager.logits[i].size() * sizeof(float)) == 0;
      if (!same && differ++ < 5) {
        size_t j = 0;
        while (eager.logits[i][j] == graph.logits[i][j]) ++j;
        ADD_FAILURE() << "forward " << i << ": logits differ first at " << j << " ("
                      << eager.logits[i][j] << " eager, " << graph.logits[i][j] << " graph)";
      }
    }
    EXPECT_EQ(differ, 0u);
    // Each of the three batch shapes: one eager step sizes the buffers, the
    // next is recorded, and every dense step from then on is a replay.
    EXPECT_EQ(eager.stats.replays, 0u);
    EXPECT_EQ(eager.stats.captures, 0u);
    EXPECT_EQ(graph.stats.failures, 0u);
    EXPECT_EQ(graph.stats.captures, 3u);
    EXPECT_EQ(graph.stats.replays, 3u * (kSteps - 1));
    std::printf("%s: %zu forwards equal bit for bit, %llu captures, %llu replays\n", dir.c_str(),
                eager.logits.size(), static_cast<unsigned long long>(graph.stats.captures),
                static_cast<unsigned long long>(graph.stats.replays));
  }
}

struct EngineRun {
  std::vector<std::vector<int32_t>> tokens;
  EngineStats stats;
};

// Three requests of different lengths; when the first has 6 tokens (on the
// engine thread, so the join lands on the same step every run) two more
// join; all finish at different steps, so the batch grows and shrinks.
EngineRun generate(const std::string& dir, int base, bool graphs) {
  EngineRun out;
  setenv("SPX_CUDA_GRAPHS", graphs ? "1" : "0", 1);
  EngineOptions o;
  o.model_dir = dir;
  o.device = "cuda:0";
  o.max_batch = 8;
  Status st;
  auto engine = Engine::open(o, &st);
  unsetenv("SPX_CUDA_GRAPHS");
  EXPECT_TRUE(st.ok) << st.message;
  if (!engine) return out;
  std::mt19937 rng(11);
  const int vocab = engine->info().vocab_size;
  auto request = [&](int len, int n_new) {
    GenerateRequest r;
    for (int i = 0; i < len; ++i) r.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    r.max_new_tokens = n_new;
    return r;
  };
  const std::vector<GenerateRequest> reqs = {request(base, 20), request(base / 2, 34),
                                             request(base + 9, 27), request(base / 3, 25),
                                             request(base - 5, 12)};
  std::vector<std::shared_ptr<testing::CollectSink>> sinks;
  for (size_t i = 0; i < reqs.size(); ++i) sinks.push_back(std::make_shared<testing::CollectSink>());
  Engine* e = engine.get();
  sinks[0]->on_each = [&, e](int32_t, size_t n) {
    if (n != 6) return;
    for (size_t i = 3; i < reqs.size(); ++i) {
      Status s;
      e->submit(reqs[i], sinks[i], &s);
      EXPECT_TRUE(s.ok) << s.message;
    }
  };
  for (size_t i = 0; i < 3; ++i) {
    e->submit(reqs[i], sinks[i], &st);
    EXPECT_TRUE(st.ok) << st.message;
  }
  for (auto& s : sinks) {
    EXPECT_TRUE(s->wait(120));
    EXPECT_EQ(s->error(), "");
    out.tokens.push_back(s->tokens());
  }
  out.stats = engine->stats();
  engine->close();
  return out;
}

TEST(CudaGraph, EngineGreedyTokensEqualWithGraphsOnAndOff) {
  SPX_REQUIRE_GPU();
  for (const auto& [dir, base] : models()) {
    SCOPED_TRACE(dir);
    const EngineRun off = generate(dir, base, false);
    const EngineRun on = generate(dir, base, true);
    ASSERT_EQ(off.tokens.size(), 5u);
    ASSERT_EQ(on.tokens.size(), 5u);
    for (size_t i = 0; i < on.tokens.size(); ++i) EXPECT_EQ(on.tokens[i], off.tokens[i]) << "request " << i;
    EXPECT_EQ(off.stats.graph_replays, 0u);
    EXPECT_EQ(on.stats.graph_failures, 0u);
    EXPECT_GT(on.stats.graph_captures, 0u);
    EXPECT_GT(on.stats.graph_replays, 0u);
    std::printf("%s: engine tokens equal with graphs on/off; %llu captures, %llu replays of %llu decode tokens\n",
                dir.c_str(), static_cast<unsigned long long>(on.stats.graph_captures),
                static_cast<unsigned long long>(on.stats.graph_replays),
                static_cast<unsigned long long>(on.stats.decode_tokens));
  }
}

}  // namespace
}  // namespace spx
#endif  // SPX_HAVE_CUDA
