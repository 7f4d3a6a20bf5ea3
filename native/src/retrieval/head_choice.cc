#include "retrieval/head_choice.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "retrieval/eagle3_head.h"

namespace spx::retrieval {

namespace {

// Equal as loaded: same shape, same values bit for bit (compared in blocks of
// rows, so a large embedding needs little host memory).
bool same_tensor(Backend* be, const Tensor& a, const Tensor& b) {
  if (a.empty() || b.empty()) return a.empty() == b.empty();
  if (a.shape != b.shape) return false;
  const int64_t rows = a.dim(0), per = a.row_elems();
  const int64_t block = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(per, 1));
  std::vector<float> x, y;
  for (int64_t r = 0; r < rows; r += block) {
    const int64_t n = std::min(block, rows - r);
    x.resize(static_cast<size_t>(n * per));
    y.resize(x.size());
    if (!be->download(a.rows(r, n), x.data()).ok || !be->download(b.rows(r, n), y.data()).ok) return false;
    if (std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) != 0) return false;
  }
  return true;
}

}  // namespace

bool shares_lower_layers(const Transformer& target, const Transformer& dlm, int scoring_layer,
                         std::string* why) {
  const ModelConfig& t = target.config();
  const ModelConfig& d = dlm.config();
  auto no = [&](const std::string& s) {
    if (why) *why = s;
    return false;
  };
  if (target.backend() != dlm.backend()) return no("another backend");
  if (scoring_layer < 0 || scoring_layer >= d.num_layers || scoring_layer >= t.num_layers)
    return no("scoring layer outside the models");
  if (d.hidden_size != t.hidden_size || d.intermediate_size != t.intermediate_size ||
      d.num_heads != t.num_heads || d.num_kv_heads != t.num_kv_heads || d.head_dim != t.head_dim ||
      d.vocab_size != t.vocab_size || d.rms_norm_eps != t.rms_norm_eps || d.qkv_bias != t.qkv_bias ||
      d.o_bias != t.o_bias || d.mlp_bias != t.mlp_bias || d.qk_norm != t.qk_norm)
    return no("another shape");
  if (dlm.rope_inv_freq() != target.rope_inv_freq()) return no("another RoPE");
  Backend* be = target.backend();
  if (!same_tensor(be, dlm.weights().embed, target.weights().embed)) return no("another embedding");
  for (int l = 0; l < scoring_layer; ++l) {
    const LayerWeights& a = dlm.weights().layers[static_cast<size_t>(l)];
    const LayerWeights& b = target.weights().layers[static_cast<size_t>(l)];
    const Tensor* ta[] = {&a.attn_norm, &a.wq, &a.wk, &a.wv, &a.wo, &a.bq, &a.bk, &a.bv, &a.bo,
                          &a.q_norm, &a.k_norm, &a.mlp_norm, &a.w_gate, &a.w_up, &a.w_down,
                          &a.b_gate, &a.b_up, &a.b_down};
    const Tensor* tb[] = {&b.attn_norm, &b.wq, &b.wk, &b.wv, &b.wo, &b.bq, &b.bk, &b.bv, &b.bo,
                          &b.q_norm, &b.k_norm, &b.mlp_norm, &b.w_gate, &b.w_up, &b.w_down,
                          &b.b_gate, &b.b_up, &b.b_down};
    for (size_t i = 0; i < sizeof(ta) / sizeof(ta[0]); ++i)
      if (!same_tensor(be, *ta[i], *tb[i])) return no("layer " + std::to_string(l) + " differs");
  }
  return true;
}

std::string fallback_note(float used, float asked) {
  if (!(used > 0)) return "";
  char mass[32];
  std::snprintf(mass, sizeof mass, "%.3g", used);
  return std::string("; full attention when the selection carries under ") + mass + " of its mass" +
         (asked < 0 ? " (the head's recommendation)" : "");
}

std::string recommended_dlm_dir(const std::string& model_dir) {
  std::string d = model_dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return d.empty() ? d : d + "-head";
}

bool has_distilled_head(const ModelConfig& t) {
  // SmolLM2-135M(-Instruct): the one target a head was distilled for.
  return t.architecture == "LlamaForCausalLM" && t.num_layers == 30 && t.hidden_size == 576 &&
         t.num_heads == 9 && t.num_kv_heads == 3 && t.vocab_size == 49152;
}

int recommended_layers(const ModelConfig& target) {
  // A quarter of the depth (7 of 30 layers on SmolLM2-135M): with the layers
  // below the scoring layer dense, the best balance of recall, top-1 and
  // perplexity we measured (docs/specontext.md).
  return std::max(1, target.num_layers / 4);
}

// No pooling: the pooled layers are the dense ones below the scoring layer,
// so pooling optimises the selection for layers that do not use it
// (measured: higher recall on average, worse perplexity).
int recommended_pool(const ModelConfig& target) { return 1; }

Status make_head(Transformer* target, Backend* backend, const HeadChoice& choice,
                 std::unique_ptr<Transformer>* dlm_model, std::unique_ptr<PrunedHead>* head,
                 std::string* kind, double* fallback_mass) {
  const ModelConfig& c = target->config();
  double unused = 0;
  if (fallback_mass == nullptr) fallback_mass = &unused;
  *fallback_mass = 0;
  const int given = (!choice.dlm_dir.empty()) + (choice.oracle_layer >= 0);
  if (given > 1) return Status::Error("give at most one of a DLM directory and an oracle layer");
  if (choice.oracle_layer >= 0) {
    if (choice.oracle_layer >= c.num_layers)
      return Status::Error("oracle layer " + std::to_string(choice.oracle_layer) + " outside the target's " +
                           std::to_string(c.num_layers) + " layers");
    const int pool = std::max(choice.pool, 1);
    *kind = "oracle layer " + std::to_string(choice.oracle_layer) +
            (pool > 1 ? ", pooled over " + std::to_string(pool) + " layers" : "");
    return PrunedHead::make(target, choice.oracle_layer, head, pool);
  }
  if (!choice.dlm_dir.empty() && is_eagle3_dir(choice.dlm_dir)) {
    if (choice.dlm_layers > 1 || choice.pool > 1)
      return Status::Error("an EAGLE-3 draft has one layer: --dlm-layers and pooling do not apply");
    std::unique_ptr<Eagle3Head> e3;
    Status st = Eagle3Head::load(choice.dlm_dir, target, backend, &e3);
    if (!st.ok) return Status::Error("cannot load the DLM: " + st.message);
    const std::vector<int>& aux = e3->aux_layers();
    *kind = "eagle3 " + choice.dlm_dir + " (target layers " + std::to_string(aux[0]) + "," +
            std::to_string(aux[1]) + "," + std::to_string(aux[2]) + ")";
    return PrunedHead::make_eagle3(std::move(e3), head);
  }
  if (!choice.dlm_dir.empty()) {
    Status st = Transformer::load(choice.dlm_dir, backend, dlm_model);
    if (!st.ok) return Status::Error("cannot load the DLM: " + st.message);
    const ModelConfig& d = (*dlm_model)->config();
    if (d.vocab_size != c.vocab_size)
      return Status::Error("the DLM's vocabulary (" + std::to_string(d.vocab_size) +
                           ") differs from the target's (" + std::to_string(c.vocab_size) + ")");
    if (d.num_heads != c.num_heads || d.num_kv_heads != c.num_kv_heads)
      return Status::Error("the DLM's attention heads differ from the target's");
    const int k = choice.dlm_layers > 0 ? choice.dlm_layers : d.num_layers;
    if (k > d.num_layers) return Status::Error("dlm layers exceed the DLM's depth");
    *fallback_mass = d.spx_fallback_mass;
    const int pool = std::max(choice.pool, 1);
    std::string why;
    if (shares_lower_layers(*target, **dlm_model, k - 1, &why)) {
      // Only the scoring layer is the DLM's own: the head keeps those tensors
      // and runs the rest on the target, which then keeps those layers dense.
      st = PrunedHead::make(target, k - 1, head, pool, &(*dlm_model)->weights().layers[static_cast<size_t>(k - 1)]);
      dlm_model->reset();
      *kind = "dlm " + choice.dlm_dir + " scoring layer " + std::to_string(k - 1) +
              " (shares the target's lower layers: those run dense, the target's KV adopted)";
      std::fprintf(stderr, "spx: retrieval head: %s\n", kind->c_str());
      return st;
    }
    *kind = "dlm " + choice.dlm_dir + " scoring layer " + std::to_string(k - 1) + " (own lower layers: " + why +
            "; every target layer sparse)";
    std::fprintf(stderr, "spx: retrieval head: %s\n", kind->c_str());
    return PrunedHead::make(dlm_model->get(), k - 1, head, pool);
  }
  const bool rec = choice.dlm_layers <= 0;
  std::string note;
  if (rec && choice.pool <= 0 && !choice.model_dir.empty()) {
    // The recommended distilled head, when assembled next to the target.
    const std::string dir = recommended_dlm_dir(choice.model_dir);
    if (std::filesystem::is_regular_file(dir + "/config.json")) {
      std::unique_ptr<Transformer> dlm;
      Status st = Transformer::load(dir, backend, &dlm);
      std::string why = st.ok ? "" : st.message;
      const int s = st.ok ? dlm->config().num_layers - 1 : 0;
      if (st.ok && shares_lower_layers(*target, *dlm, s, &why)) {
        st = PrunedHead::make(target, s, head, 1, &dlm->weights().layers[static_cast<size_t>(s)]);
        *fallback_mass = dlm->config().spx_fallback_mass;
        *kind = "distilled " + dir + ", first " + std::to_string(s + 1) + " layers, scoring layer " +
                std::to_string(s) + " (recommended; lower layers the target's own: dense, KV adopted)";
        return st;
      }
      note = "; the distilled head at " + dir + " does not fit this target (" + why + ")";
    } else if (has_distilled_head(c)) {
      note = "; no distilled head at " + dir + " (make setup assembles it)";
    }
    if (!note.empty())
      std::fprintf(stderr, "spx: retrieval head: self-derived%s\n", note.c_str());
  }
  const int k = choice.dlm_layers > 0 ? choice.dlm_layers : recommended_layers(c);
  if (k > c.num_layers)
    return Status::Error("dlm layers " + std::to_string(k) + " exceed the target's " +
                         std::to_string(c.num_layers) + " layers");
  const int pool = choice.pool > 0 ? choice.pool : (rec ? std::min(recommended_pool(c), k) : 1);
  *kind = "self-derived, first " + std::to_string(k) + " layers" +
          (pool > 1 ? ", pooled over the last " + std::to_string(pool) : "") + (rec ? " (recommended" + note + ")" : "");
  return PrunedHead::make(target, k - 1, head, pool);
}

}  // namespace spx::retrieval
