// A tiny fixture (or a random checkpoint made by tools/make_random_weights.py)
// with its transformers reference.json, loaded on some backend and prefilled
// with the reference prompt: the common first half of the CPU and GPU logits
// tests.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_store.h"
#include "model/transformer.h"
#include "test_util.h"

namespace spx::testing {

struct ReferenceRun {
  Json ref;
  std::unique_ptr<Transformer> model;
  std::unique_ptr<KvStore> kv;
  KvSequence* seq = nullptr;
  std::vector<int32_t> prompt, gen;  // reference prompt and HF greedy continuation
  std::vector<float> logits;         // [prompt, vocab] from one full-prompt forward
  size_t vocab = 0;
};

// Loads `dir` on `backend`, sizes the cache for prompt + continuation and
// prefills the prompt with every position's logits. Use ASSERT_NO_FATAL_FAILURE.
inline void prefill_reference(const std::string& dir, Backend* backend, ReferenceRun* r) {
  r->ref = load_json(dir + "/reference.json");
  ASSERT_TRUE(r->ref.is_object()) << dir;
  Status st = Transformer::load(dir, backend, &r->model);
  ASSERT_TRUE(st.ok) << st.message;
  const ModelConfig& c = r->model->config();
  r->vocab = static_cast<size_t>(c.vocab_size);
  r->prompt = ints(*r->ref.find("prompt_ids"));
  r->gen = ints(*r->ref.find("generated_ids"));
  r->kv = std::make_unique<KvStore>(backend, c.num_layers, c.num_kv_heads, c.head_dim);
  ASSERT_TRUE(r->kv->allocate(1, static_cast<int>(r->prompt.size() + r->gen.size()), &r->seq).ok);
  ForwardBatch batch;
  batch.tokens = r->prompt;
  batch.chunks.push_back(
      ForwardChunk{r->seq, 0, static_cast<int>(r->prompt.size()), LogitsMode::All});
  st = r->model->forward(batch, &r->logits);
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_EQ(r->logits.size(), r->prompt.size() * r->vocab);
}

// One forward of `ids` from position 0 in a cache of its own (freed on
// return): logits of every position (All) or of the last one (Last).
inline void forward_ids(Transformer* model, Backend* backend, const std::vector<int32_t>& ids,
                        LogitsMode mode, std::vector<float>* logits) {
  const ModelConfig& c = model->config();
  KvStore kv(backend, c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* seq = nullptr;
  ASSERT_TRUE(kv.allocate(1, static_cast<int>(ids.size()), &seq).ok);
  ForwardBatch b;
  b.tokens = ids;
  b.chunks.push_back(ForwardChunk{seq, 0, static_cast<int>(ids.size()), mode});
  Status st = model->forward(b, logits);
  ASSERT_TRUE(st.ok) << st.message;
}

// One KV-cached decode step of `token` on the prefilled sequence.
inline void decode_step(ReferenceRun* r, int32_t token, std::vector<float>* row) {
  ForwardBatch step;
  step.tokens = {token};
  step.chunks.push_back(ForwardChunk{r->seq, r->seq->n_tokens, 1, LogitsMode::Last});
  Status st = r->model->forward(step, row);
  ASSERT_TRUE(st.ok) << st.message;
}

}  // namespace spx::testing
