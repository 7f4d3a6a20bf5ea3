#include "model/config.h"

#include <algorithm>
#include <cmath>

#include "util/json.h"
#include "util/mapped_file.h"

namespace spx {

namespace {

const char* const kArchitectures[] = {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"};

// Reads a positive int field; missing uses *out as default when allow_default.
Status get_int(const Json& root, const char* key, int* out, bool required, int min_value = 1) {
  const Json* v = root.find(key);
  if (v == nullptr || v->is_null()) {
    if (required) return Status::Error(std::string("config.json: missing '") + key + "'");
    return Status::Ok();
  }
  if (!v->is_integer() || v->as_int() < min_value || v->as_int() > (1ll << 30))
    return Status::Error(std::string("config.json: '") + key + "' must be an integer >= " +
                         std::to_string(min_value));
  *out = static_cast<int>(v->as_int());
  return Status::Ok();
}

Status get_double(const Json& obj, const char* key, double* out) {
  const Json* v = obj.find(key);
  if (v == nullptr || v->is_null()) return Status::Ok();
  if (!v->is_number()) return Status::Error(std::string("config.json: '") + key + "' must be a number");
  *out = v->as_double();
  return Status::Ok();
}

Status get_bool(const Json& obj, const char* key, bool* out) {
  const Json* v = obj.find(key);
  if (v == nullptr || v->is_null()) return Status::Ok();
  if (!v->is_bool()) return Status::Error(std::string("config.json: '") + key + "' must be true or false");
  *out = v->as_bool();
  return Status::Ok();
}

// transformers < 5 writes rope_theta + rope_scaling; transformers >= 5 writes
// rope_parameters {rope_type, rope_theta, ...}. Both are accepted.
Status parse_rope(const Json& root, RopeConfig* rope) {
  Status st = get_double(root, "rope_theta", &rope->theta);
  if (!st.ok) return st;
  const Json* scaling = root.find("rope_parameters");
  if (scaling == nullptr || scaling->is_null()) scaling = root.find("rope_scaling");
  if (scaling != nullptr && !scaling->is_null()) {
    if (!scaling->is_object()) return Status::Error("config.json: rope scaling must be an object");
    st = get_double(*scaling, "rope_theta", &rope->theta);
    if (!st.ok) return st;
    const Json* type = scaling->find("rope_type");
    if (type == nullptr) type = scaling->find("type");
    if (type != nullptr && !type->is_string())
      return Status::Error("config.json: rope_type must be a string");
    rope->type = type ? type->as_string() : "default";
    if (rope->type == "llama3") {
      double orig = rope->original_max_position;
      if (!(st = get_double(*scaling, "factor", &rope->factor)).ok) return st;
      if (!(st = get_double(*scaling, "low_freq_factor", &rope->low_freq_factor)).ok) return st;
      if (!(st = get_double(*scaling, "high_freq_factor", &rope->high_freq_factor)).ok) return st;
      if (!(st = get_double(*scaling, "original_max_position_embeddings", &orig)).ok) return st;
      rope->original_max_position = static_cast<int>(orig);
      if (!(rope->factor > 0) || !(rope->low_freq_factor > 0) ||
          !(rope->high_freq_factor > rope->low_freq_factor) || rope->original_max_position <= 0)
        return Status::Error("config.json: invalid llama3 rope scaling parameters");
    } else if (rope->type != "default") {
      return Status::Error("config.json: unsupported rope scaling type '" + rope->type + "'");
    }
  }
  if (!(rope->theta > 0) || !std::isfinite(rope->theta))
    return Status::Error("config.json: rope_theta must be positive");
  return Status::Ok();
}

// eos_token_id is an int or a list of ints.
Status add_eos_ids(const Json& root, int vocab_size, std::vector<int32_t>* out) {
  const Json* eos = root.find("eos_token_id");
  if (eos == nullptr || eos->is_null()) return Status::Ok();
  std::vector<const Json*> ids;
  if (eos->is_array()) {
    for (const Json& e : eos->items()) ids.push_back(&e);
  } else {
    ids.push_back(eos);
  }
  for (const Json* e : ids) {
    if (!e->is_integer() || e->as_int() < 0 || e->as_int() >= vocab_size)
      return Status::Error("eos_token_id out of range");
    const int32_t id = static_cast<int32_t>(e->as_int());
    if (std::find(out->begin(), out->end(), id) == out->end()) out->push_back(id);
  }
  return Status::Ok();
}

}  // namespace

Status parse_model_config(const std::string& text, ModelConfig* out) {
  *out = ModelConfig();
  Json root;
  Status st = Json::parse(text, &root);
  if (!st.ok) return Status::Error("config.json: " + st.message);
  if (!root.is_object()) return Status::Error("config.json: not a JSON object");

  const Json* archs = root.find("architectures");
  if (archs == nullptr || !archs->is_array() || archs->items().empty() || !archs->items()[0].is_string())
    return Status::Error("config.json: missing 'architectures'");
  out->architecture = archs->items()[0].as_string();
  bool supported = false;
  for (const char* a : kArchitectures) supported |= out->architecture == a;
  if (!supported)
    return Status::Error("unsupported architecture '" + out->architecture +
                         "' (supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)");

  ModelConfig& c = *out;
  if (!(st = get_int(root, "vocab_size", &c.vocab_size, true)).ok) return st;
  if (!(st = get_int(root, "hidden_size", &c.hidden_size, true)).ok) return st;
  if (!(st = get_int(root, "intermediate_size", &c.intermediate_size, true)).ok) return st;
  if (!(st = get_int(root, "num_hidden_layers", &c.num_layers, true)).ok) return st;
  if (!(st = get_int(root, "num_attention_heads", &c.num_heads, true)).ok) return st;
  c.num_kv_heads = c.num_heads;
  if (!(st = get_int(root, "num_key_value_heads", &c.num_kv_heads, false)).ok) return st;
  if (c.hidden_size % c.num_heads != 0 && root.find("head_dim") == nullptr)
    return Status::Error("config.json: hidden_size is not a multiple of num_attention_heads");
  c.head_dim = c.hidden_size / c.num_heads;
  if (!(st = get_int(root, "head_dim", &c.head_dim, false)).ok) return st;
  if (c.head_dim % 2 != 0) return Status::Error("config.json: head_dim must be even for RoPE");
  if (c.num_heads % c.num_kv_heads != 0)
    return Status::Error("config.json: num_attention_heads must be a multiple of num_key_value_heads");
  c.max_position = 2048;
  if (!(st = get_int(root, "max_position_embeddings", &c.max_position, false)).ok) return st;
  if (!(st = get_double(root, "rms_norm_eps", &c.rms_norm_eps)).ok) return st;
  if (!(c.rms_norm_eps > 0)) return Status::Error("config.json: rms_norm_eps must be positive");
  if (!(st = parse_rope(root, &c.rope)).ok) return st;
  if (!(st = get_bool(root, "tie_word_embeddings", &c.tie_word_embeddings)).ok) return st;
  if (!(st = get_double(root, "specontext_fallback_mass", &c.spx_fallback_mass)).ok) return st;
  if (!(c.spx_fallback_mass >= 0 && c.spx_fallback_mass < 1))
    return Status::Error("config.json: specontext_fallback_mass must be in [0, 1)");

  // Qwen2 configs carry sliding-window fields; the engine attends over the
  // whole context, so a config that really uses a window is refused.
  bool sliding = false;
  if (!(st = get_bool(root, "use_sliding_window", &sliding)).ok) return st;
  if (sliding) return Status::Error("config.json: sliding-window attention (use_sliding_window) is not supported");

  const Json* act = root.find("hidden_act");
  if (act != nullptr && !(act->is_string() && act->as_string() == "silu"))
    return Status::Error("config.json: only hidden_act 'silu' is supported");

  if (out->architecture == "LlamaForCausalLM") {
    bool attention_bias = false;
    if (!(st = get_bool(root, "attention_bias", &attention_bias)).ok) return st;
    if (!(st = get_bool(root, "mlp_bias", &c.mlp_bias)).ok) return st;
    c.qkv_bias = c.o_bias = attention_bias;
  } else if (out->architecture == "Qwen2ForCausalLM") {
    c.qkv_bias = true;
  } else {  // Qwen3
    bool attention_bias = false;
    if (!(st = get_bool(root, "attention_bias", &attention_bias)).ok) return st;
    c.qkv_bias = c.o_bias = attention_bias;
    c.qk_norm = true;
  }

  st = add_eos_ids(root, c.vocab_size, &c.eos_token_ids);
  if (!st.ok) return Status::Error("config.json: " + st.message);
  return Status::Ok();
}

Status load_model_config(const std::string& dir, ModelConfig* out) {
  std::string text;
  Status st = read_text_file(dir + "/config.json", &text);
  if (!st.ok) return st;
  st = parse_model_config(text, out);
  if (!st.ok) return st;
  // Chat models often list extra end-of-turn ids only in generation_config.json
  // (e.g. Llama 3's <|eot_id|>). That file is optional metadata, so a missing
  // or unreadable one changes nothing.
  Json gen;
  if (read_text_file(dir + "/generation_config.json", &text).ok && Json::parse(text, &gen).ok &&
      gen.is_object()) {
    std::vector<int32_t> ids = out->eos_token_ids;
    if (add_eos_ids(gen, out->vocab_size, &ids).ok) out->eos_token_ids = ids;
  }
  return Status::Ok();
}

}  // namespace spx
