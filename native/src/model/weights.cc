#include "model/weights.h"

namespace spx {

namespace {

class Loader {
 public:
  Loader(const Checkpoint& ckpt, Backend* backend) : ckpt_(ckpt), backend_(backend) {}

  Status load(const std::string& name, const std::vector<int64_t>& shape, Tensor* out) {
    Status st = backend_->alloc(shape, DType::F32, out);
    if (!st.ok) return Status::Error("loading '" + name + "': " + st.message);
    if (backend_->name() == "cpu") return ckpt_.read_f32(name, shape, out->f32());
    if (backend_->uploads_raw_weights()) {
      const void* bytes = nullptr;
      WeightDtype dtype;
      st = ckpt_.raw(name, shape, &bytes, &dtype);
      if (!st.ok) return st;
      st = backend_->upload_weights(bytes, dtype, out);
      return st.ok ? st : Status::Error("loading '" + name + "': " + st.message);
    }
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    staging_.resize(static_cast<size_t>(n));
    st = ckpt_.read_f32(name, shape, staging_.data());
    if (!st.ok) return st;
    return backend_->upload(staging_.data(), out);
  }

  Status load_optional(bool wanted, const std::string& name, const std::vector<int64_t>& shape,
                       Tensor* out) {
    if (!wanted) return Status::Ok();
    return load(name, shape, out);
  }

 private:
  const Checkpoint& ckpt_;
  Backend* backend_;
  std::vector<float> staging_;
};

}  // namespace

Status load_weights(const Checkpoint& ckpt, const ModelConfig& c, Backend* backend,
                    ModelWeights* out) {
  Loader ld(ckpt, backend);
  const int64_t H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size, D = c.head_dim;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * D;
  const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * D;
  Status st;
#define SPX_TRY(expr) \
  if (!(st = (expr)).ok) return st
  SPX_TRY(ld.load("model.embed_tokens.weight", {V, H}, &out->embed));
  SPX_TRY(ld.load("model.norm.weight", {H}, &out->norm));
  // HF ties lm_head to the embedding when tie_word_embeddings is set, whatever
  // the file holds; untied models must ship lm_head.
  if (c.tie_word_embeddings) {
    out->lm_head = out->embed;
  } else {
    SPX_TRY(ld.load("lm_head.weight", {V, H}, &out->lm_head));
  }
  out->layers.resize(static_cast<size_t>(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& w = out->layers[static_cast<size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    SPX_TRY(ld.load(p + "input_layernorm.weight", {H}, &w.attn_norm));
    SPX_TRY(ld.load(p + "self_attn.q_proj.weight", {q_dim, H}, &w.wq));
    SPX_TRY(ld.load(p + "self_attn.k_proj.weight", {kv_dim, H}, &w.wk));
    SPX_TRY(ld.load(p + "self_attn.v_proj.weight", {kv_dim, H}, &w.wv));
    SPX_TRY(ld.load(p + "self_attn.o_proj.weight", {H, q_dim}, &w.wo));
    SPX_TRY(ld.load_optional(c.qkv_bias, p + "self_attn.q_proj.bias", {q_dim}, &w.bq));
    SPX_TRY(ld.load_optional(c.qkv_bias, p + "self_attn.k_proj.bias", {kv_dim}, &w.bk));
    SPX_TRY(ld.load_optional(c.qkv_bias, p + "self_attn.v_proj.bias", {kv_dim}, &w.bv));
    SPX_TRY(ld.load_optional(c.o_bias, p + "self_attn.o_proj.bias", {H}, &w.bo));
    SPX_TRY(ld.load_optional(c.qk_norm, p + "self_attn.q_norm.weight", {D}, &w.q_norm));
    SPX_TRY(ld.load_optional(c.qk_norm, p + "self_attn.k_norm.weight", {D}, &w.k_norm));
    SPX_TRY(ld.load(p + "post_attention_layernorm.weight", {H}, &w.mlp_norm));
    SPX_TRY(ld.load(p + "mlp.gate_proj.weight", {I, H}, &w.w_gate));
    SPX_TRY(ld.load(p + "mlp.up_proj.weight", {I, H}, &w.w_up));
    SPX_TRY(ld.load(p + "mlp.down_proj.weight", {H, I}, &w.w_down));
    SPX_TRY(ld.load_optional(c.mlp_bias, p + "mlp.gate_proj.bias", {I}, &w.b_gate));
    SPX_TRY(ld.load_optional(c.mlp_bias, p + "mlp.up_proj.bias", {I}, &w.b_up));
    SPX_TRY(ld.load_optional(c.mlp_bias, p + "mlp.down_proj.bias", {H}, &w.b_down));
  }
#undef SPX_TRY
  return Status::Ok();
}

}  // namespace spx
