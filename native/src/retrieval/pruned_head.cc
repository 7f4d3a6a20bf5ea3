#include "retrieval/pruned_head.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/rope.h"
#include "retrieval/eagle3_head.h"

namespace spx::retrieval {

namespace {

uint64_t params(const Tensor& t) { return t.empty() ? 0 : static_cast<uint64_t>(t.numel()); }

uint64_t layer_params(const LayerWeights& l) {
  uint64_t n = 0;
  for (const Tensor* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.bq, &l.bk, &l.bv, &l.bo,
                          &l.q_norm, &l.k_norm, &l.mlp_norm, &l.w_gate, &l.w_up, &l.w_down,
                          &l.b_gate, &l.b_up, &l.b_down})
    n += params(*t);
  return n;
}

}  // namespace

void score_rows(const float* q, const float* k, int64_t heads, int64_t group, int64_t T, int64_t cap,
                int64_t D, float scale, float* out) {
  for (int64_t h = 0; h < heads; ++h) {
    const float* qv = q + h * D;
    const float* kc = k + (h / group) * cap * D;
    float* o = out + h * T;
    for (int64_t t = 0; t < T; ++t) {
      const float* kr = kc + t * D;
      float dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += qv[d] * kr[d];
      o[t] = dot * scale;
    }
  }
}

void write_k_rows(const float* rows, int64_t n, int64_t kv_heads, int64_t D, int64_t cap, int64_t pos, float* k) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t g = 0; g < kv_heads; ++g)
      std::memcpy(k + (g * cap + pos + t) * D, rows + (t * kv_heads + g) * D, D * sizeof(float));
}

Status check_head_chunk(const HeadChunk& hc, int n_tokens, int capacity, bool device_hook) {
  if (hc.n <= 0 || n_tokens + hc.n > capacity)
    return Status::Error("retrieval head: chunk exceeds the request's capacity");
  if (hc.selection && !device_hook)
    return Status::Error("retrieval head: a selection asked of a head that scores on the host");
  if (hc.selection && (hc.budget <= 0 || n_tokens + hc.n <= hc.budget))
    return Status::Error("retrieval head: device selection needs a context longer than the budget");
  return Status::Ok();
}

Status rope_scoring_qk(Backend& be, const std::vector<float>& inv_freq,
                       const std::vector<int32_t>& positions, Tensor* q3, Tensor* k3, Tensor* cos,
                       Tensor* sin, std::vector<float>* host_k) {
  const int64_t N = q3->dim(0), D = q3->dim(2);
  std::vector<float> ch(static_cast<size_t>(N * D / 2)), sh(ch.size());
  rope_tables(inv_freq, positions.data(), N, ch.data(), sh.data());
  Status st = be.upload(ch.data(), cos);
  if (st.ok) st = be.upload(sh.data(), sin);
  if (!st.ok) return st;
  be.rope(q3, *cos, *sin);
  be.rope(k3, *cos, *sin);
  if (host_k == nullptr) return Status::Ok();
  host_k->resize(static_cast<size_t>(k3->numel()));
  return be.download(*k3, host_k->data());
}

uint64_t model_param_count(const Transformer& model) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  uint64_t n = params(w.embed) + params(w.norm) + (c.tie_word_embeddings ? 0 : params(w.lm_head));
  for (const LayerWeights& l : w.layers) n += layer_params(l);
  return n;
}

Status PrunedHead::make(Transformer* model, int scoring_layer, std::unique_ptr<PrunedHead>* out,
                        int pool, const LayerWeights* scoring) {
  const ModelConfig& c = model->config();
  if (scoring_layer < 0 || scoring_layer >= c.num_layers) {
    return Status::Error("retrieval head: scoring layer " + std::to_string(scoring_layer) +
                         " outside the model's " + std::to_string(c.num_layers) + " layers");
  }
  if (pool < 1 || pool > scoring_layer + 1)
    return Status::Error("retrieval head: cannot pool " + std::to_string(pool) + " layers up to layer " +
                         std::to_string(scoring_layer));
  const ModelWeights& w = model->weights();
  const LayerWeights& own = w.layers[static_cast<size_t>(scoring_layer)];
  if (scoring) {
    // Same layout as the model's scoring layer, or the projections would not fit its caches.
    for (auto [a, b] : {std::make_pair(&scoring->attn_norm, &own.attn_norm), std::make_pair(&scoring->wq, &own.wq),
                        std::make_pair(&scoring->wk, &own.wk), std::make_pair(&scoring->bq, &own.bq),
                        std::make_pair(&scoring->bk, &own.bk), std::make_pair(&scoring->q_norm, &own.q_norm),
                        std::make_pair(&scoring->k_norm, &own.k_norm)})
      if (a->empty() != b->empty() || a->shape != b->shape)
        return Status::Error("retrieval head: the scoring layer's tensors do not fit the model's layer " +
                             std::to_string(scoring_layer));
  }
  auto h = std::unique_ptr<PrunedHead>(new PrunedHead());
  h->model_ = model;
  h->own_scoring_ = scoring != nullptr;
  // Only what scoring reads: a DLM's other tensors can then be freed.
  const LayerWeights& sw = scoring ? *scoring : own;
  h->scoring_.attn_norm = sw.attn_norm;
  h->scoring_.wq = sw.wq;
  h->scoring_.wk = sw.wk;
  h->scoring_.bq = sw.bq;
  h->scoring_.bk = sw.bk;
  h->scoring_.q_norm = sw.q_norm;
  h->scoring_.k_norm = sw.k_norm;
  h->q_heads_ = c.num_heads;
  h->kv_heads_ = c.num_kv_heads;
  h->layer_ = scoring_layer;
  h->pool_ = pool;
  h->store_ = std::make_unique<KvStore>(model->backend(), scoring_layer, c.num_kv_heads, c.head_dim);
  h->head_params_ = params(w.embed);
  h->model_params_ = model_param_count(*model);
  for (int l = 0; l < scoring_layer; ++l) h->head_params_ += layer_params(w.layers[static_cast<size_t>(l)]);
  h->head_params_ += layer_params(h->scoring_);
  *out = std::move(h);
  return Status::Ok();
}

Status PrunedHead::make_eagle3(std::unique_ptr<Eagle3Head> eagle3, std::unique_ptr<PrunedHead>* out) {
  auto h = std::unique_ptr<PrunedHead>(new PrunedHead());
  const Eagle3Config& c = eagle3->config();
  h->q_heads_ = c.heads;
  h->kv_heads_ = c.kv_heads;
  h->head_params_ = eagle3->head_params();
  h->model_params_ = eagle3->model_params();
  h->eagle3_ = std::move(eagle3);
  *out = std::move(h);
  return Status::Ok();
}

PrunedHead::~PrunedHead() = default;

bool PrunedHead::use_device_select(int n_sink, int n_recent, bool reduce_max) {
  // Pooled layers score on the host (their K caches are the head's own
  // layers'); a head switches only while it holds no request's cache.
  if (eagle3_) return eagle3_->use_device_select(n_sink, n_recent, reduce_max);
  if (pool_ != 1 || !reqs_.empty()) return false;
  const ModelConfig& c = model_->config();
  return ds_.attach(model_->backend(), c.num_heads, c.num_kv_heads, c.head_dim, n_sink, n_recent, reduce_max);
}

bool PrunedHead::device_select() const { return eagle3_ ? eagle3_->device_select() : ds_.hook != nullptr; }

const std::vector<int>& PrunedHead::aux_layers() const {
  static const std::vector<int> none;
  return eagle3_ ? eagle3_->aux_layers() : none;
}

int PrunedHead::aux_width() const { return eagle3_ ? eagle3_->aux_width() : 0; }

Status PrunedHead::after_target(uint64_t id, const int32_t* tokens, int start, int n, const float* rows) {
  return eagle3_ ? eagle3_->after_target(id, tokens, start, n, rows) : Status::Ok();
}

Status PrunedHead::after_target(const std::vector<uint64_t>& ids, const ForwardBatch& batch,
                                const std::vector<float>& rows) {
  if (!eagle3_) return Status::Ok();
  const size_t W = static_cast<size_t>(aux_width());
  size_t row = 0;
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    const ForwardChunk& ch = batch.chunks[i];
    if (tokens(ids[i]) >= 0) {
      if (rows.size() < (row + static_cast<size_t>(ch.n_tokens)) * W)
        return Status::Error("EAGLE-3 head: the target batch captured no hidden states (ForwardBatch::aux_hidden)");
      Status st = eagle3_->after_target(ids[i], batch.tokens.data() + row, ch.start_pos, ch.n_tokens, &rows[row * W]);
      if (!st.ok) return st;
    }
    row += static_cast<size_t>(ch.n_tokens);
  }
  return Status::Ok();
}

uint64_t PrunedHead::weight_bytes(const Transformer* target) const {
  if (eagle3_) return eagle3_->weight_bytes();
  if (model_ != target) return model_->weight_bytes();
  if (!own_scoring_) return 0;
  uint64_t b = 0;  // the scoring layer's own tensors
  for (const Tensor* t : {&scoring_.attn_norm, &scoring_.wq, &scoring_.wk, &scoring_.bq, &scoring_.bk,
                          &scoring_.q_norm, &scoring_.k_norm})
    b += t->empty() ? 0 : t->nbytes();
  return b;
}

uint64_t PrunedHead::k_cache_bytes() const {
  if (eagle3_) return eagle3_->k_cache_bytes();
  uint64_t b = 0;
  for (const auto& [id, r] : reqs_) b += r.k.bytes();
  return b + store_->bytes_in_use();
}

Status PrunedHead::open(uint64_t id, int capacity) {
  if (eagle3_) return eagle3_->open(id, capacity);
  if (reqs_.count(id)) return Status::Error("retrieval head: request already open");
  Request r;
  r.capacity = capacity;
  Status st = store_->allocate(id, capacity, &r.kv);
  if (!st.ok) return st;
  const ModelConfig& c = model_->config();
  if (!(st = r.k.open(model_->backend(), ds_.hook != nullptr, c.num_kv_heads, capacity, c.head_dim)).ok) {
    store_->free(id);
    return st;
  }
  reqs_[id] = std::move(r);
  return Status::Ok();
}

void PrunedHead::close(uint64_t id) {
  if (eagle3_) return eagle3_->close(id);
  reqs_.erase(id);
  store_->free(id);
}

int PrunedHead::tokens(uint64_t id) const {
  if (eagle3_) return eagle3_->tokens(id);
  auto it = reqs_.find(id);
  return it == reqs_.end() ? -1 : it->second.n_tokens;
}

Status PrunedHead::adopt(uint64_t id, const KvSequence& kv, const float* scoring_input) {
  if (eagle3_) return Status::Error("retrieval head: an EAGLE-3 head computes its own K cache");
  if (own_scoring_ && scoring_input == nullptr && kv.n_tokens > 0)
    return Status::Error("retrieval head: adopting a cache needs the hidden states at the scoring layer");
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return Status::Error("retrieval head: unknown request");
  Request& r = it->second;
  if (r.n_tokens != 0 || r.capacity != kv.capacity || kv.k.size() <= static_cast<size_t>(layer_))
    return Status::Error("retrieval head: cannot adopt a cache of another shape");
  Backend* be = model_->backend();
  std::vector<float> buf;
  Status st;
  // The scoring layer's K is the cache's own unless the head scores with its own weights.
  for (int l = 0; l <= (own_scoring_ ? layer_ - 1 : layer_); ++l) {
    buf.resize(static_cast<size_t>(kv.k[l].numel()));
    if (!(st = be->download(kv.k[l], buf.data())).ok) return st;
    if (l == layer_) {
      // Same layout: [kv_heads, capacity, head_dim].
      if (!(st = r.k.set(buf.data())).ok) return st;
      break;
    }
    if (!(st = be->upload(buf.data(), &r.kv->k[l])).ok) return st;
    if (!(st = be->download(kv.v[l], buf.data())).ok) return st;
    if (!(st = be->upload(buf.data(), &r.kv->v[l])).ok) return st;
  }
  if (own_scoring_) {
    // The scoring K from the source's hidden states, a workspace at a time.
    const int64_t H = model_->config().hidden_size;
    const int step = 512;
    std::vector<int32_t> positions;
    for (int b = 0; b < kv.n_tokens; b += step) {
      const int n = std::min(step, kv.n_tokens - b);
      if (!(st = ensure_workspace(n)).ok) return st;
      Tensor x = x_.rows(0, n);
      if (!(st = be->upload(scoring_input + static_cast<size_t>(b) * H, &x)).ok) return st;
      positions.resize(static_cast<size_t>(n));
      for (int t = 0; t < n; ++t) positions[static_cast<size_t>(t)] = b + t;
      if (!(st = project(x, positions)).ok) return st;
      r.k.write(k_.rows(0, n), ds_.hook ? nullptr : kh_.data(), n, b);
    }
  }
  r.n_tokens = kv.n_tokens;
  r.kv->n_tokens = kv.n_tokens;
  return Status::Ok();
}

int PrunedHead::state_layers() const { return eagle3_ ? 0 : layer_; }

int PrunedHead::head_dim() const { return eagle3_ ? eagle3_->config().head_dim : model_->config().head_dim; }

Status PrunedHead::state(uint64_t id, HeadState* out) const {
  if (eagle3_) return eagle3_->state(id, out);
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return Status::Error("retrieval head: unknown request");
  const Request& r = it->second;
  *out = HeadState();
  out->tokens = r.n_tokens;
  out->capacity = r.capacity;
  for (int l = 0; l < layer_; ++l) {
    out->k.push_back(r.kv->k[static_cast<size_t>(l)]);
    out->v.push_back(r.kv->v[static_cast<size_t>(l)]);
  }
  return r.k.snapshot(&out->scoring_k);
}

Status PrunedHead::restore(uint64_t id, int n, const HeadStateFill& fill, const float* aux) {
  if (eagle3_) return eagle3_->restore(id, n, fill, aux);
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return Status::Error("retrieval head: unknown request");
  Request& r = it->second;
  if (r.n_tokens != 0 || n < 0 || n > r.capacity)
    return Status::Error("retrieval head: cannot restore " + std::to_string(n) + " positions into this request");
  Backend* be = model_->backend();
  std::vector<float> buf;
  for (int l = 0; l < layer_; ++l) {
    for (int which = 0; which < 2; ++which) {
      Tensor& t = which == 0 ? r.kv->k[static_cast<size_t>(l)] : r.kv->v[static_cast<size_t>(l)];
      buf.assign(static_cast<size_t>(t.numel()), 0.0f);
      fill(2 * l + which, buf.data(), r.capacity);
      Status st = be->upload(buf.data(), &t);
      if (!st.ok) return st;
    }
  }
  Status st = r.k.load([&](float* dst) { fill(2 * layer_, dst, r.capacity); });
  if (!st.ok) return st;
  r.n_tokens = n;
  r.kv->n_tokens = n;
  return Status::Ok();
}

Status PrunedHead::ensure_workspace(int n) {
  if (n <= ws_cap_) return Status::Ok();
  const ModelConfig& c = model_->config();
  Backend* be = model_->backend();
  const int64_t N = n, D = c.head_dim;
  Status st;
  if (!(st = be->alloc({N, c.hidden_size}, DType::F32, &h_)).ok) return st;
  if (own_scoring_ && !(st = be->alloc({N, c.hidden_size}, DType::F32, &x_)).ok) return st;
  if (!(st = be->alloc({N, c.num_heads * D}, DType::F32, &q_)).ok) return st;
  if (!(st = be->alloc({N, c.num_kv_heads * D}, DType::F32, &k_)).ok) return st;
  if (!(st = be->alloc({N, D / 2}, DType::F32, &cos_)).ok) return st;
  if (!(st = be->alloc({N, D / 2}, DType::F32, &sin_)).ok) return st;
  ws_cap_ = n;
  return Status::Ok();
}

Status PrunedHead::project(const Tensor& x, const std::vector<int32_t>& positions) {
  // The scoring layer: norm, Q/K projections, per-head norms, RoPE.
  const ModelConfig& c = model_->config();
  Backend& be = *model_->backend();
  const LayerWeights& w = scoring_;
  const int64_t N = x.dim(0), D = c.head_dim, heads = c.num_heads, kvh = c.num_kv_heads;
  Tensor h = h_.rows(0, N), q = q_.rows(0, N), k = k_.rows(0, N);
  Tensor cos = cos_.rows(0, N), sin = sin_.rows(0, N);
  const float eps = static_cast<float>(c.rms_norm_eps);
  be.rmsnorm(x, w.attn_norm, eps, &h);
  be.matmul(h, w.wq, w.bq.empty() ? nullptr : &w.bq, &q);
  be.matmul(h, w.wk, w.bk.empty() ? nullptr : &w.bk, &k);
  Tensor q3 = q.reshaped({N, heads, D}), k3 = k.reshaped({N, kvh, D});
  if (c.qk_norm) {
    be.rmsnorm(q3, w.q_norm, eps, &q3);
    be.rmsnorm(k3, w.k_norm, eps, &k3);
  }
  return rope_scoring_qk(be, model_->rope_inv_freq(), positions, &q3, &k3, &cos, &sin,
                         ds_.hook ? nullptr : &kh_);
}

Status PrunedHead::forward(const std::vector<HeadChunk>& chunks) {
  if (eagle3_) return eagle3_->forward(chunks);
  const ModelConfig& c = model_->config();
  ForwardBatch batch;
  batch.n_layers = layer_;
  std::vector<int32_t> positions;
  for (const HeadChunk& hc : chunks) {
    auto it = reqs_.find(hc.id);
    if (it == reqs_.end()) return Status::Error("retrieval head: unknown request");
    Request& r = it->second;
    if (Status st = check_head_chunk(hc, r.n_tokens, r.capacity, ds_.hook != nullptr); !st.ok)
      return st;
    ForwardChunk ch;
    ch.kv = r.kv;
    ch.start_pos = r.n_tokens;
    ch.n_tokens = hc.n;
    ch.logits = LogitsMode::None;
    batch.chunks.push_back(ch);
    batch.tokens.insert(batch.tokens.end(), hc.tokens, hc.tokens + hc.n);
    for (int t = 0; t < hc.n; ++t) positions.push_back(r.n_tokens + t);
  }
  const int n = static_cast<int>(batch.tokens.size());
  Tensor x;
  batch.hidden_out = &x;
  if (pool_ > 1) batch.q_capture = &qcap_;
  std::vector<float> unused;
  Status st = model_->forward(batch, &unused);
  if (!st.ok) return st;
  if (!(st = ensure_workspace(n)).ok) return st;

  if (!(st = project(x, positions)).ok) return st;
  Backend& be = *model_->backend();
  const int64_t N = n, D = c.head_dim, heads = c.num_heads, kvh = c.num_kv_heads;
  Tensor q = q_.rows(0, N), k = k_.rows(0, N);

  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t group = heads / kvh;
  std::vector<Tensor> qrows;  // the selection jobs' queries (views of q)
  qrows.reserve(chunks.size());
  std::vector<HeadSelectJob> jobs;
  int row = 0, ci = -1;
  for (const HeadChunk& hc : chunks) {
    ++ci;
    Request& r = reqs_[hc.id];
    r.k.write(k.rows(row, hc.n), ds_.hook ? nullptr : &kh_[static_cast<size_t>(row * kvh * D)], hc.n, r.n_tokens);
    r.n_tokens += hc.n;
    if (hc.selection) {
      qrows.push_back(q.rows(row + hc.n - 1, 1));
      jobs.push_back({&qrows.back(), &r.k.tensor(), r.n_tokens, hc.budget, hc.selection, hc.mass});
    }
    if (hc.scores) {
      const int64_t T = r.n_tokens;
      qh_.resize(static_cast<size_t>(heads * D));
      if (!(st = be.download(q.rows(row + hc.n - 1, 1), qh_.data())).ok) return st;
      hc.scores->resize(static_cast<size_t>(pool_ * heads * T));
      // Pooled layers below: their captured query against their own K cache.
      for (int p = 0; p + 1 < pool_; ++p) {
        const int l = layer_ - pool_ + 1 + p;
        kbuf_.resize(static_cast<size_t>(r.kv->k[l].numel()));
        if (!(st = be.download(r.kv->k[l], kbuf_.data())).ok) return st;
        const float* ql = &qcap_[(static_cast<size_t>(ci) * layer_ + l) * heads * D];
        score_rows(ql, kbuf_.data(), heads, group, T, r.capacity, D, scale,
                   hc.scores->data() + static_cast<size_t>(p) * heads * T);
      }
      const float* kc = nullptr;
      if (!(st = r.k.host(&kbuf_, &kc)).ok) return st;
      score_rows(qh_.data(), kc, heads, group, T, r.capacity, D, scale,
                 hc.scores->data() + static_cast<size_t>(pool_ - 1) * heads * T);
    }
    row += hc.n;
  }
  if (!jobs.empty())
    return ds_.run(jobs, static_cast<int>(heads), static_cast<int>(kvh), static_cast<int>(D), scale);
  return Status::Ok();
}

}  // namespace spx::retrieval
