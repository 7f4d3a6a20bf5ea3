// The prologue the sparse-decoding tests share (header only): one request's
// prompt through SparseDecoder and the target as one prefill chunk.
#pragma once

#include <cstdint>
#include <vector>

#include "retrieval/sparse_decoder.h"

namespace spx::testing {

// Feeds tokens[0, prompt) of request `id` (cache `kv`, admitted to `dec`):
// the head's prefill, the target's forward (last logits) and the head's
// after-step. The first failure is returned.
inline Status sparse_prefill(retrieval::SparseDecoder* dec, Transformer* model, KvSequence* kv,
                             uint64_t id, const std::vector<int32_t>& tokens, int prompt) {
  const std::vector<uint64_t> ids = {id};
  ForwardBatch pre;
  pre.tokens.assign(tokens.begin(), tokens.begin() + prompt);
  pre.chunks.push_back({kv, 0, prompt, LogitsMode::Last});
  std::vector<float> logits;
  Status st = dec->before_forward(ids, &pre);
  if (st.ok) st = model->forward(pre, &logits);
  if (st.ok) st = dec->after_forward(ids, pre);
  return st;
}

}  // namespace spx::testing
