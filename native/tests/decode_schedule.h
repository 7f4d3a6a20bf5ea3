// A fixed decode schedule over one model, greedy tokens fed back, for the
// recorded decode step's tests (cuda_graph_test on the GPU, step_graph_test
// on the CPU): the batch grows through a mixed prefill + decode step, one
// request ends and its cache is freed, another is admitted. Header only.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kv/kv_store.h"
#include "model/transformer.h"

namespace spx::testing {

struct Trace {
  std::vector<std::vector<float>> logits;  // per forward
  StepGraphStats stats;
};

constexpr int kSteps = 12;  // dense steps per batch shape

// Runs on `backend` (the caller keeps it alive):
//   A, B, C prefill; kSteps dense steps of {A, B, C};
//   D's prefill with the decode of A, B, C in one mixed step;
//   kSteps dense steps of {A, B, C, D}; B ends (cache freed), E is admitted
//   and prefilled alone; kSteps dense steps of {A, C, D, E}.
// With graphs on, each of the three dense shapes runs one eager step, is
// recorded on the next and replayed from then on: 3 captures, 3 * (kSteps - 1)
// replays.
class Schedule {
 public:
  Schedule(Backend* backend, const std::string& dir, bool graphs, int base_len)
      : base_(base_len), be_(backend) {
    const Status st = Transformer::load(dir, be_, &model_);
    EXPECT_TRUE(st.ok) << dir << ": " << st.message;
    if (!model_) return;
    model_->set_step_graphs(graphs);
    const ModelConfig& c = model_->config();
    kv_ = std::make_unique<KvStore>(be_, c.num_layers, c.num_kv_heads, c.head_dim);
  }
  const Transformer* model() const { return model_.get(); }

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
  Backend* be_;
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<KvStore> kv_;
  std::map<char, Req> reqs_;
};

// Every forward's logits equal bit for bit; prints the first differences.
inline void expect_same_logits(const Trace& want, const Trace& got) {
  ASSERT_EQ(want.logits.size(), got.logits.size());
  size_t differ = 0;
  for (size_t i = 0; i < want.logits.size(); ++i) {
    ASSERT_EQ(want.logits[i].size(), got.logits[i].size());
    const bool same = std::memcmp(want.logits[i].data(), got.logits[i].data(),
                                  want.logits[i].size() * sizeof(float)) == 0;
    if (!same && differ++ < 5) {
      size_t j = 0;
      while (want.logits[i][j] == got.logits[i][j]) ++j;
      ADD_FAILURE() << "forward " << i << ": logits differ first at " << j << " ("
                    << want.logits[i][j] << " eager, " << got.logits[i][j] << " graph)";
    }
  }
  EXPECT_EQ(differ, 0u);
}

// Graphs off: nothing recorded. Graphs on: the counts Schedule implies.
inline void expect_schedule_counts(const Trace& eager, const Trace& graph) {
  EXPECT_EQ(eager.stats.captures, 0u);
  EXPECT_EQ(eager.stats.replays, 0u);
  EXPECT_EQ(graph.stats.failures, 0u);
  EXPECT_EQ(graph.stats.captures, 3u);
  EXPECT_EQ(graph.stats.replays, 3u * (kSteps - 1));
}

}  // namespace spx::testing
