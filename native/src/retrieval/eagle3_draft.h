// The on-disk layout of EAGLE-3 draft checkpoints (SafeAILab EAGLE, SpecForge:
// e.g. yuhuili/EAGLE3-LLaMA3.1-Instruct-8B), read for the retrieval head:
//
//   config.json   architectures [".*Eagle3.*"] (LlamaForCausalLMEagle3, ...),
//                 a Llama config with num_hidden_layers 1; optional
//                 target_hidden_size, draft_vocab_size and
//                 eagle_aux_hidden_state_layer_ids (top level or in eagle_config)
//   safetensors   midlayer.{input_layernorm,hidden_norm,post_attention_layernorm}.weight
//                 midlayer.self_attn.{q,k,v}_proj.weight  [*, 2*hidden]
//                 midlayer.self_attn.o_proj.weight, midlayer.mlp.*
//                 fc.weight [hidden, 3*target_hidden], norm.weight,
//                 lm_head.weight [draft_vocab, hidden], d2t, t2d,
//                 embed_tokens.weight (optional: else the target's)
//   ("layers.0." is accepted for "midlayer.")
//
// vLLM's speculators layout (architectures ["Eagle3Speculator"],
// speculators_model_type "eagle3") is read too: the layer's Llama config is
// nested in transformer_layer_config (values equal to LlamaConfig's defaults
// may be left out), the layer is layers.0.*, fc may carry fc.bias [hidden],
// and eagle_aux_hidden_state_layer_ids sits at the top level.
//
// Aux layers follow vLLM's convention: id j is the hidden state at the input
// of target layer j (0: the embedding). Without ids in the config they are
// EAGLE's (2, L/2, L-3) for a target of L layers.
#pragma once

#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"

namespace spx::retrieval {

struct Eagle3Config {
  std::string architecture;
  bool speculators = false;     // the vLLM speculators layout (Eagle3Speculator)
  int hidden = 0, target_hidden = 0, vocab = 0, draft_vocab = 0;
  int heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  std::vector<int> aux_layers;  // three target layers, low to high
  bool own_embedding = false;   // set by the head once the weights are read
};

struct Eagle3Weights {
  Tensor embed;                 // [vocab, hidden] own, or the target's
  Tensor fc;                    // [hidden, 3*target_hidden]
  Tensor fc_bias;               // [hidden], or empty (the speculators layout has one)
  Tensor input_norm, hidden_norm;  // [hidden]
  // q_proj / k_proj split by input columns: over the normed embedding (the
  // first hidden columns) and over the normed fc output (the rest), so the
  // concatenation never has to be built.
  Tensor wq_e, wq_h;            // [heads*hd, hidden]
  Tensor wk_e, wk_h;            // [kv_heads*hd, hidden]
};

// True when dir/config.json names an EAGLE-3 draft architecture.
bool is_eagle3_dir(const std::string& dir);

// Reads config.json; target_layers fills default aux layers and checks given ones.
Status load_eagle3_config(const std::string& dir, int target_layers, Eagle3Config* out);

// Loads the kept tensors onto `backend` (embed only when the draft has its
// own: else out->embed stays empty) and counts every parameter tensor in the files (*all_params, without
// the d2t/t2d maps) and those kept (*kept_params, without a borrowed embedding).
Status load_eagle3_weights(const std::string& dir, const Eagle3Config& cfg, Backend* backend,
                           Eagle3Weights* out, uint64_t* all_params, uint64_t* kept_params);

}  // namespace spx::retrieval
