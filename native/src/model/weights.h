// The model's parameters on a backend, loaded from a checkpoint with every
// tensor's shape checked against the config.
#pragma once

#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/checkpoint.h"
#include "model/config.h"

namespace spx {

struct LayerWeights {
  Tensor attn_norm;              // [hidden]
  Tensor wq, wk, wv, wo;         // [heads*hd, hidden], [kvh*hd, hidden] x2, [hidden, heads*hd]
  Tensor bq, bk, bv, bo;         // biases when the config has them (else empty)
  Tensor q_norm, k_norm;         // [hd] (Qwen3)
  Tensor mlp_norm;               // [hidden]
  Tensor w_gate, w_up, w_down;   // [inter, hidden] x2, [hidden, inter]
  Tensor b_gate, b_up, b_down;   // Llama mlp_bias
};

struct ModelWeights {
  Tensor embed;    // [vocab, hidden]
  Tensor norm;     // [hidden]
  Tensor lm_head;  // [vocab, hidden]; shares embed's memory when tied
  std::vector<LayerWeights> layers;
};

Status load_weights(const Checkpoint& ckpt, const ModelConfig& cfg, Backend* backend,
                    ModelWeights* out);

}  // namespace spx
