// Greedy sampling where the logits are (issue 6) on the CPU:
// - sampling/greedy.h's argmax_rows (rows cut into pieces that run in
//   parallel) against sampling::argmax row by row: random rows and the hard
//   cases (ties, -inf, NaN, -0 / +0), vocabularies around the piece size;
// - the CPU backend's argmax_rows / read_argmax, and its refusal of more rows
//   than it computed;
// - Transformer::forward with ForwardBatch::greedy_ids against the argmax of
//   the logits it returns otherwise (prefill and decode rows, tiny fixtures);
// - the engine with SPX_DEVICE_ARGMAX on and off: the same tokens, dense and
//   sparse, with a sampled request in the batch for part of the run.
#include <gtest/gtest.h>

#include <tuple>

#include "backend/registry.h"
#include "greedy_cases.h"
#include "kv/kv_store.h"
#include "model/transformer.h"
#include "sampling/greedy.h"
#include "sampling/sampler.h"
#include "test_util.h"
#include "util/thread_pool.h"

namespace spx {
namespace {

void expect_rows_argmax(const std::vector<float>& x, int rows, int vocab, const std::vector<int32_t>& got,
                        const std::string& what) {
  int bad = 0;
  for (int r = 0; r < rows && bad < 10; ++r) {
    const int32_t want = argmax(x.data() + static_cast<size_t>(r) * vocab, vocab);
    if (got[r] != want) ++bad;
    EXPECT_EQ(got[r], want) << what << " vocab " << vocab << " row " << r << " (case " << r % 12 << ")";
  }
}

TEST(Greedy, ArgmaxRowsEqualsArgmax) {
  ThreadPool pool(4);
  ThreadPool::Bind bind(&pool);
  for (int vocab : {1, 2, 17, 16384, 16385, 49152, 128256}) {
    const int rows = vocab == 1 ? 5 : 30;
    const std::vector<float> x = testing::hard_rows(rows, vocab, static_cast<uint32_t>(vocab));
    std::vector<int32_t> got(rows, -1);
    argmax_rows(x.data(), rows, vocab, got.data());
    expect_rows_argmax(x, rows, vocab, got, "argmax_rows");
  }
  // A tie across pieces: the first piece's index wins.
  const int vocab = 3 * 16384 + 7;
  std::vector<float> x(vocab, 0.f);
  x[16384 + 5] = x[2 * 16384] = x[vocab - 1] = 9.f;
  int32_t id = -1;
  argmax_rows(x.data(), 1, vocab, &id);
  EXPECT_EQ(id, 16384 + 5);
}

TEST(Greedy, CpuBackendArgmaxRows) {
  auto be = make_cpu_backend(3);
  ASSERT_TRUE(be->has_argmax());
  const int rows = 24, vocab = 49152 + 3;
  const std::vector<float> x = testing::hard_rows(rows, vocab, 5);
  Tensor t;
  ASSERT_TRUE(be->alloc({rows, vocab}, DType::F32, &t).ok);
  ASSERT_TRUE(be->upload(x.data(), &t).ok);
  be->argmax_rows(t);
  std::vector<int32_t> got(rows, -1);
  Status st = be->read_argmax(rows, got.data());
  ASSERT_TRUE(st.ok) << st.message;
  expect_rows_argmax(x, rows, vocab, got, "cpu backend");
  st = be->read_argmax(rows + 1, got.data());
  EXPECT_FALSE(st.ok);
  EXPECT_NE(st.message.find("read_argmax"), std::string::npos) << st.message;
}

// Two copies of one model, the same steps: one asks for greedy ids, the
// other for logits; the ids are the logits' argmax and no logits come back.
TEST(Greedy, ForwardGreedyIdsAreTheLogitsArgmax) {
  for (const char* name : {"tiny-llama", "tiny-qwen3"}) {
    const std::string dir = testing::fixture(name);
    auto be = make_cpu_backend(2);
    std::unique_ptr<Transformer> a, b;
    ASSERT_TRUE(Transformer::load(dir, be.get(), &a).ok) << dir;
    ASSERT_TRUE(Transformer::load(dir, be.get(), &b).ok) << dir;
    const ModelConfig& c = a->config();
    KvStore kva(be.get(), c.num_layers, c.num_kv_heads, c.head_dim), kvb(be.get(), c.num_layers, c.num_kv_heads, c.head_dim);
    KvSequence *a1, *a2, *b1, *b2;
    ASSERT_TRUE(kva.allocate(1, 64, &a1).ok && kva.allocate(2, 64, &a2).ok);
    ASSERT_TRUE(kvb.allocate(1, 64, &b1).ok && kvb.allocate(2, 64, &b2).ok);
    std::vector<int32_t> next = {3, 7};
    std::vector<int32_t> prompt;
    for (int t = 0; t < 20; ++t) prompt.push_back((t * 13 + 1) % c.vocab_size);
    for (int step = 0; step < 6; ++step) {
      ForwardBatch fa, fb;
      std::vector<int32_t> ids;
      std::vector<float> la, lb;
      for (auto [ba, kv1, kv2] : {std::tuple{&fa, a1, a2}, std::tuple{&fb, b1, b2}}) {
        // Step 0: request 1's prompt with request 2's first token (a mixed
        // step, all rows' logits); then both decode (a dense step).
        if (step == 0) {
          ba->chunks.push_back(ForwardChunk{kv1, 0, static_cast<int>(prompt.size()), LogitsMode::All});
          ba->tokens = prompt;
        } else {
          ba->chunks.push_back(ForwardChunk{kv1, kv1->n_tokens, 1});
          ba->tokens.push_back(next[0]);
        }
        ba->chunks.push_back(ForwardChunk{kv2, kv2->n_tokens, 1});
        ba->tokens.push_back(next[1]);
      }
      fa.greedy_ids = &ids;
      Status st = a->forward(fa, &la);
      ASSERT_TRUE(st.ok) << st.message;
      st = b->forward(fb, &lb);
      ASSERT_TRUE(st.ok) << st.message;
      EXPECT_TRUE(la.empty()) << dir << " step " << step;
      const size_t rows = lb.size() / c.vocab_size;
      ASSERT_EQ(ids.size(), rows) << dir << " step " << step;
      for (size_t r = 0; r < rows; ++r)
        EXPECT_EQ(ids[r], argmax(lb.data() + r * c.vocab_size, c.vocab_size)) << dir << " step " << step << " row " << r;
      next = {ids[rows - 2], ids[rows - 1]};
    }
  }
}

TEST(Greedy, EngineTokensEqualWithDeviceArgmaxOnAndOff) {
  for (const char* name : {"tiny-llama", "tiny-qwen2", "tiny-qwen3"}) {
    const std::string dir = testing::fixture(name);
    for (const std::vector<int>& budgets : {std::vector<int>{0}, std::vector<int>{16, 24}}) {
      const std::string what = dir + (budgets[0] ? " sparse" : " dense");
      const testing::SwitchRun off = testing::run_greedy_switch("cpu", dir, false, budgets, 60);
      const testing::SwitchRun on = testing::run_greedy_switch("cpu", dir, true, budgets, 60);
      testing::expect_same_tokens(on, off, what);
      if (budgets[0]) {
        EXPECT_GT(on.stats.sparse_steps, 0u) << what;
      }
    }
  }
}

}  // namespace
}  // namespace spx
