// The host SlotTable path's view that the GPU test of the device slot maps
// (cuda_engine_slot_map_test.cc) compares against: after every sparse step,
// SparseDecoder::slot_list() maps each selected token to a slot whose K and
// V rows, in every host-tier layer's slot buffer (tier_keys / tier_values),
// equal that token's rows of the full cache; slots are distinct per head.
// On the CPU backend the slot maps are always the host's.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "retrieval/sparse_decoder.h"
#include "sparse_prefill.h"
#include "test_util.h"

namespace {

using namespace spx;
using namespace spx::retrieval;

class SlotList : public ::testing::TestWithParam<const char*> {};

TEST_P(SlotList, SelectedTokensSitInTheirSlots) {
  auto backend = make_cpu_backend(1);
  std::unique_ptr<Transformer> model;
  ASSERT_TRUE(Transformer::load(spx::testing::fixture(GetParam()), backend.get(), &model).ok);
  const ModelConfig& c = model->config();
  std::unique_ptr<SparseDecoder> dec;
  ASSERT_TRUE(SparseDecoder::make(model.get(), backend.get(), HeadChoice{}, SelectOptions{}, &dec).ok);
  EXPECT_FALSE(dec->device_slot_maps());
  const int prompt = 60, steps = 10, cap = prompt + steps, B = 12;
  KvStore store(backend.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* kv = nullptr;
  ASSERT_TRUE(store.allocate(3, cap, &kv).ok);
  ASSERT_TRUE(dec->admit(3, cap, B, kv).ok);
  std::vector<int32_t> tokens(cap);
  for (int i = 0; i < cap; ++i) tokens[i] = (i * 37 + 11) % 250;
  const std::vector<uint64_t> ids = {3};
  std::vector<float> logits;
  Status st = spx::testing::sparse_prefill(dec.get(), model.get(), kv, 3, tokens, prompt);
  ASSERT_TRUE(st.ok) << st.message;
  std::vector<int32_t> slots;
  const size_t D = static_cast<size_t>(c.head_dim);
  std::vector<float> full(static_cast<size_t>(c.num_kv_heads) * cap * D);
  std::vector<float> buf(static_cast<size_t>(c.num_kv_heads) * B * D);
  int checked = 0;
  for (int s = 0; s < steps; ++s) {
    if (s == 4) ASSERT_TRUE(dec->set_host_layers(1).ok);  // slots start empty, refill
    ForwardBatch b;
    b.tokens = {tokens[prompt + s]};
    b.chunks.push_back({kv, prompt + s, 1, LogitsMode::Last});
    ASSERT_TRUE(dec->before_forward(ids, &b).ok);
    const ForwardChunk& ch = b.chunks[0];
    ASSERT_NE(ch.selection, nullptr);
    const std::vector<int32_t> sel(ch.selection, ch.selection + static_cast<size_t>(c.num_kv_heads) * B);
    ASSERT_TRUE(model->forward(b, &logits).ok);
    ASSERT_TRUE(dec->slot_list(3, &slots).ok);
    ASSERT_EQ(slots.size(), sel.size());
    for (int h = 0; h < c.num_kv_heads; ++h) {
      std::set<int32_t> distinct(slots.begin() + h * B, slots.begin() + (h + 1) * B);
      EXPECT_EQ(distinct.size(), static_cast<size_t>(B)) << "step " << s << " head " << h;
    }
    const std::vector<Tensor>* tk = dec->tier_keys(3);
    const std::vector<Tensor>* tv = dec->tier_values(3);
    ASSERT_NE(tk, nullptr);
    ASSERT_NE(tv, nullptr);
    EXPECT_EQ(tk->empty(), s < 4);
    for (size_t l = 0; l < tk->size(); ++l) {
      if ((*tk)[l].empty()) continue;
      for (int part = 0; part < 2; ++part) {
        ASSERT_TRUE(backend->download(part ? (*tv)[l] : (*tk)[l], buf.data()).ok);
        ASSERT_TRUE(backend->download(part ? kv->v[l] : kv->k[l], full.data()).ok);
        for (int h = 0; h < c.num_kv_heads; ++h)
          for (int i = 0; i < B; ++i) {
            const size_t j = static_cast<size_t>(h) * B + i;
            ASSERT_GE(slots[j], 0);
            ASSERT_LT(slots[j], B);
            const float* a = &buf[(static_cast<size_t>(h) * B + slots[j]) * D];
            const float* r = &full[(static_cast<size_t>(h) * cap + sel[j]) * D];
            EXPECT_TRUE(std::equal(a, a + D, r)) << "step " << s << " layer " << l << " head " << h;
            ++checked;
          }
      }
    }
  }
  EXPECT_GT(checked, 0);
  EXPECT_FALSE(dec->slot_list(99, &slots).ok);  // unknown request
  dec->release(3);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SlotList, ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-qwen3"));

}  // namespace
