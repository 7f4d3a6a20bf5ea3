// The model hyper-parameters read from a Hugging Face config.json, for the
// architectures the engine runs (Llama, Qwen2, Qwen3). Everything the forward
// needs is resolved here once (head_dim, rope scaling, biases, q/k norm), so
// the model code branches on flags, not on architecture names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace spx {

struct RopeConfig {
  double theta = 10000.0;
  // "default" or "llama3" (the only scalings supported so far).
  std::string type = "default";
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position = 8192;
};

struct ModelConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_position = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;   // Qwen2, or Llama with attention_bias
  bool o_bias = false;     // Llama with attention_bias
  bool mlp_bias = false;   // Llama with mlp_bias
  bool qk_norm = false;    // Qwen3: RMSNorm over each head of q and k
  std::vector<int32_t> eos_token_ids;
  // A retrieval head's recommended fallback threshold (config key
  // "specontext_fallback_mass", written by tools/train_head.py assemble): the
  // selection mass under which a step attends fully when the user sets none.
  // 0: no fallback. Ignored on a target.
  double spx_fallback_mass = 0.0;
};

// Parses and validates config.json text.
Status parse_model_config(const std::string& text, ModelConfig* out);
// Reads <dir>/config.json.
Status load_model_config(const std::string& dir, ModelConfig* out);

}  // namespace spx
