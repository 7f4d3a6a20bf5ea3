#include "retrieval/eagle3_draft.h"

#include <sys/stat.h>

#include <algorithm>
#include <set>

#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "util/json.h"
#include "util/mapped_file.h"

namespace spx::retrieval {

namespace {

bool is_file(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Status read_config(const std::string& dir, std::string* text, Json* root, std::string* arch) {
  Status st = read_text_file(dir + "/config.json", text);
  if (!st.ok) return st;
  if (!(st = Json::parse(*text, root)).ok) return Status::Error(dir + "/config.json: " + st.message);
  const Json* archs = root->find("architectures");
  if (archs == nullptr || !archs->is_array() || archs->items().empty() || !archs->items()[0].is_string())
    return Status::Error(dir + "/config.json: missing 'architectures'");
  *arch = archs->items()[0].as_string();
  return Status::Ok();
}

// The safetensors files of a checkpoint directory, for counting parameters.
Status weight_files(const std::string& dir, std::vector<std::string>* out) {
  if (is_file(dir + "/model.safetensors")) {
    out->push_back(dir + "/model.safetensors");
    return Status::Ok();
  }
  const std::string index = dir + "/model.safetensors.index.json";
  if (is_file(index)) {
    std::string text;
    Json root;
    Status st = read_text_file(index, &text);
    if (st.ok) st = Json::parse(text, &root);
    if (!st.ok) return Status::Error(index + ": " + st.message);
    const Json* map = root.find("weight_map");
    if (map == nullptr || !map->is_object()) return Status::Error(index + ": missing 'weight_map'");
    std::set<std::string> shards;
    for (const auto& [name, file] : map->members())
      if (file.is_string()) shards.insert(file.as_string());
    for (const std::string& s : shards) out->push_back(dir + "/" + s);
    return Status::Ok();  // Checkpoint::open validates the names
  }
  if (is_file(dir + "/pytorch_model.bin"))
    return Status::Error("EAGLE-3 draft '" + dir +
                         "' ships pytorch_model.bin only; the engine reads safetensors: convert it with "
                         "tools/make_eagle3_fixture.py --convert DIR");
  return Status::Error("EAGLE-3 draft '" + dir + "' has neither model.safetensors nor model.safetensors.index.json");
}

Status get_optional_int(const Json& obj, const char* key, int* out) {
  const Json* v = obj.find(key);
  if (v == nullptr || v->is_null()) return Status::Ok();
  if (!v->is_integer() || v->as_int() < 1 || v->as_int() > (1ll << 30))
    return Status::Error(std::string("config.json: '") + key + "' must be a positive integer");
  *out = static_cast<int>(v->as_int());
  return Status::Ok();
}

}  // namespace

bool is_eagle3_dir(const std::string& dir) {
  std::string text, arch;
  Json root;
  return read_config(dir, &text, &root, &arch).ok && arch.find("Eagle3") != std::string::npos;
}

Status load_eagle3_config(const std::string& dir, int target_layers, Eagle3Config* out) {
  std::string text, arch;
  Json root;
  Status st = read_config(dir, &text, &root, &arch);
  if (!st.ok) return st;
  const std::string where = "EAGLE-3 draft '" + dir + "': ";
  if (arch.find("Eagle3") == std::string::npos)
    return Status::Error(where + "architecture '" + arch + "' is not an EAGLE-3 draft");
  // The draft layer is a Llama decoder layer: read the rest as a Llama config,
  // which validates heads, head_dim, RoPE (incl. llama3 scaling) and the norm.
  std::string llama;
  const Json* layer = root.find("transformer_layer_config");
  const bool speculators = layer != nullptr || root.find("speculators_config") != nullptr ||
                           root.find("speculators_model_type") != nullptr;
  if (speculators) {
    // vLLM's speculators layout (Eagle3Speculator): the layer's config is nested
    // and written by transformers' to_diff_dict(), which drops every value equal
    // to LlamaConfig's default, so those defaults are put back first (a later
    // key wins in Json::find).
    const Json* type = root.find("speculators_model_type");
    if (type != nullptr && !(type->is_string() && type->as_string() == "eagle3"))
      return Status::Error(where + "speculators_model_type is " + type->dump() +
                           "; only 'eagle3' drafts are EAGLE-3 heads");
    if (layer == nullptr || !layer->is_object())
      return Status::Error(where + "the speculators layout needs a 'transformer_layer_config' object");
    llama = R"({"vocab_size":32000,"hidden_size":4096,"intermediate_size":11008,"num_hidden_layers":32,)"
            R"("num_attention_heads":32,"max_position_embeddings":2048,"rms_norm_eps":1e-06,)"
            R"("rope_theta":10000.0,"hidden_act":"silu",)";
    const std::string nested = layer->dump();
    if (nested.size() > 2) llama += nested.substr(1, nested.size() - 2) + ",";
    llama += R"("architectures":["LlamaForCausalLM"]})";
  } else {
    llama = text;
    const std::string quoted = "\"" + arch + "\"";
    llama.replace(llama.find(quoted), quoted.size(), "\"LlamaForCausalLM\"");
  }
  ModelConfig mc;
  if (!(st = parse_model_config(llama, &mc)).ok) return Status::Error(where + st.message);
  if (mc.num_layers != 1)
    return Status::Error(where + "num_hidden_layers is " + std::to_string(mc.num_layers) +
                         "; an EAGLE-3 draft has one decoder layer");
  Eagle3Config c;
  c.architecture = arch;
  c.speculators = speculators;
  c.hidden = mc.hidden_size;
  c.target_hidden = mc.hidden_size;
  c.vocab = mc.vocab_size;
  c.draft_vocab = mc.vocab_size;
  c.heads = mc.num_heads;
  c.kv_heads = mc.num_kv_heads;
  c.head_dim = mc.head_dim;
  c.intermediate = mc.intermediate_size;
  c.rms_norm_eps = mc.rms_norm_eps;
  c.rope = mc.rope;
  if (!(st = get_optional_int(root, "target_hidden_size", &c.target_hidden)).ok) return Status::Error(where + st.message);
  if (!(st = get_optional_int(root, "draft_vocab_size", &c.draft_vocab)).ok) return Status::Error(where + st.message);

  const Json* ids = root.find("eagle_aux_hidden_state_layer_ids");
  if (ids == nullptr || ids->is_null()) {
    const Json* ec = root.find("eagle_config");
    if (ec != nullptr && ec->is_object()) ids = ec->find("eagle_aux_hidden_state_layer_ids");
  }
  if (ids != nullptr && !ids->is_null()) {
    if (!ids->is_array() || ids->items().size() != 3)
      return Status::Error(where + "eagle_aux_hidden_state_layer_ids must list three target layers");
    for (const Json& v : ids->items()) {
      if (!v.is_integer() || v.as_int() < 0 || v.as_int() > target_layers)
        return Status::Error(where + "eagle_aux_hidden_state_layer_ids must be layers in [0, " +
                             std::to_string(target_layers) + "] of the target");
      c.aux_layers.push_back(static_cast<int>(v.as_int()));
    }
  } else {
    if (target_layers < 3)
      return Status::Error(where + "the target has " + std::to_string(target_layers) +
                           " layers; EAGLE-3's default aux layers (2, L/2, L-3) need at least 3");
    c.aux_layers = {2, target_layers / 2, target_layers - 3};
  }
  *out = c;
  return Status::Ok();
}

Status load_eagle3_weights(const std::string& dir, const Eagle3Config& c, Backend* backend,
                           Eagle3Weights* out, uint64_t* all_params, uint64_t* kept_params) {
  const std::string where = "EAGLE-3 draft '" + dir + "': ";
  std::vector<std::string> files;
  Status st = weight_files(dir, &files);
  if (!st.ok) return st;
  Checkpoint ckpt;
  if (!(st = ckpt.open(dir)).ok) return Status::Error(where + st.message);
  std::string p;
  for (const char* prefix : {"midlayer.", "layers.0."})
    if (ckpt.has(std::string(prefix) + "self_attn.q_proj.weight")) p = prefix;
  if (p.empty())
    return Status::Error(where + "no 'midlayer.self_attn.q_proj.weight' (nor 'layers.0.self_attn.q_proj.weight'): "
                         "not the EAGLE-3 layout");

  const int64_t H = c.hidden, TH = c.target_hidden, D = c.head_dim;
  const int64_t qd = static_cast<int64_t>(c.heads) * D, kvd = static_cast<int64_t>(c.kv_heads) * D;
  std::vector<float> host;
  uint64_t kept = 0;
  auto read = [&](const std::string& name, const std::vector<int64_t>& shape) -> Status {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    host.resize(static_cast<size_t>(n));
    kept += static_cast<uint64_t>(n);
    Status s = ckpt.read_f32(name, shape, host.data());
    return s.ok ? s : Status::Error(where + s.message);
  };
  auto put = [&](const float* src, const std::vector<int64_t>& shape, Tensor* dst) -> Status {
    Status s = backend->alloc(shape, DType::F32, dst);
    if (s.ok) s = backend->upload(src, dst);
    return s;
  };
  auto load = [&](const std::string& name, const std::vector<int64_t>& shape, Tensor* dst) -> Status {
    Status s = read(name, shape);
    return s.ok ? put(host.data(), shape, dst) : s;
  };
  // [rows, 2H] -> its first H columns and its last H columns.
  auto load_split = [&](const std::string& name, int64_t rows, Tensor* first, Tensor* second) -> Status {
    Status s = read(name, {rows, 2 * H});
    if (!s.ok) return s;
    std::vector<float> a(static_cast<size_t>(rows * H)), b(a.size());
    for (int64_t r = 0; r < rows; ++r) {
      std::copy_n(&host[static_cast<size_t>(r * 2 * H)], H, &a[static_cast<size_t>(r * H)]);
      std::copy_n(&host[static_cast<size_t>(r * 2 * H + H)], H, &b[static_cast<size_t>(r * H)]);
    }
    if (!(s = put(a.data(), {rows, H}, first)).ok) return s;
    return put(b.data(), {rows, H}, second);
  };

  Eagle3Weights w;
#define SPX_TRY(expr) \
  if (!(st = (expr)).ok) return st
  SPX_TRY(load("fc.weight", {H, 3 * TH}, &w.fc));
  if (ckpt.has("fc.bias")) SPX_TRY(load("fc.bias", {H}, &w.fc_bias));
  SPX_TRY(load(p + "input_layernorm.weight", {H}, &w.input_norm));
  SPX_TRY(load(p + "hidden_norm.weight", {H}, &w.hidden_norm));
  SPX_TRY(load_split(p + "self_attn.q_proj.weight", qd, &w.wq_e, &w.wq_h));
  SPX_TRY(load_split(p + "self_attn.k_proj.weight", kvd, &w.wk_e, &w.wk_h));
  for (const char* name : {"embed_tokens.weight", "model.embed_tokens.weight"}) {
    if (w.embed.empty() && ckpt.has(name)) SPX_TRY(load(name, {c.vocab, H}, &w.embed));
  }
#undef SPX_TRY

  uint64_t all = 0;
  for (const std::string& f : files) {
    SafetensorsFile sf;
    if (!(st = sf.open(f)).ok) return Status::Error(where + st.message);
    for (const auto& [name, t] : sf.header().tensors) {
      const bool weight = t.dtype == StDtype::F32 || t.dtype == StDtype::F16 || t.dtype == StDtype::BF16;
      if (weight && name != "d2t" && name != "t2d") all += static_cast<uint64_t>(t.numel());
    }
  }
  *out = std::move(w);
  *all_params = all;
  *kept_params = kept;
  return Status::Ok();
}

}  // namespace spx::retrieval
