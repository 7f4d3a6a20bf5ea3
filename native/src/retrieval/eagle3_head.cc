#include "retrieval/eagle3_head.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/rope.h"

namespace spx::retrieval {

Status Eagle3Head::load(const std::string& dir, Transformer* target, Backend* backend,
                        std::unique_ptr<Eagle3Head>* out) {
  const ModelConfig& t = target->config();
  auto h = std::unique_ptr<Eagle3Head>(new Eagle3Head());
  Status st = load_eagle3_config(dir, t.num_layers, &h->cfg_);
  if (!st.ok) return st;
  Eagle3Config& c = h->cfg_;
  const std::string where = "EAGLE-3 draft '" + dir + "': ";
  if (c.vocab != t.vocab_size)
    return Status::Error(where + "its vocabulary (" + std::to_string(c.vocab) + ") differs from the target's (" +
                         std::to_string(t.vocab_size) + ")");
  if (c.target_hidden != t.hidden_size)
    return Status::Error(where + "fc reads target hidden size " + std::to_string(c.target_hidden) +
                         " but the target's hidden size is " + std::to_string(t.hidden_size));
  if (c.heads != t.num_heads || c.kv_heads != t.num_kv_heads)
    return Status::Error(where + "its attention heads (" + std::to_string(c.heads) + " q / " +
                         std::to_string(c.kv_heads) + " kv) differ from the target's (" +
                         std::to_string(t.num_heads) + " / " + std::to_string(t.num_kv_heads) +
                         "): selection is per target KV head");
  uint64_t all = 0, kept = 0;
  if (!(st = load_eagle3_weights(dir, c, backend, &h->w_, &all, &kept)).ok) return st;
  c.own_embedding = !h->w_.embed.empty();
  uint64_t borrowed = 0;
  if (!c.own_embedding) {
    // Published drafts for Llama-3.1-8B reuse the target's embedding table.
    if (c.hidden != t.hidden_size)
      return Status::Error(where + "it has no embed_tokens.weight and its hidden size (" + std::to_string(c.hidden) +
                           ") differs from the target's (" + std::to_string(t.hidden_size) +
                           "), so it cannot borrow the target's embedding");
    h->w_.embed = target->weights().embed;
    borrowed = static_cast<uint64_t>(h->w_.embed.numel());
  }
  h->be_ = backend;
  h->inv_freq_ = rope_inv_freq(c.rope, c.head_dim);
  h->weight_bytes_ = kept * sizeof(float);  // loaded as f32
  h->head_params_ = kept + borrowed;
  h->model_params_ = all + borrowed;
  *out = std::move(h);
  return Status::Ok();
}

bool Eagle3Head::use_device_select(int n_sink, int n_recent, bool reduce_max) {
  if (!reqs_.empty()) return false;  // only while no request holds a cache
  return ds_.attach(be_, cfg_.heads, cfg_.kv_heads, cfg_.head_dim, n_sink, n_recent, reduce_max);
}

Status Eagle3Head::open(uint64_t id, int capacity) {
  if (reqs_.count(id)) return Status::Error("retrieval head: request already open");
  if (capacity <= 0) return Status::Error("retrieval head: capacity must be positive");
  Request r;
  r.capacity = capacity;
  Status st = r.k.open(be_, ds_.hook != nullptr, cfg_.kv_heads, capacity, cfg_.head_dim);
  if (!st.ok) return st;
  reqs_[id] = std::move(r);
  return Status::Ok();
}

void Eagle3Head::close(uint64_t id) { reqs_.erase(id); }

int Eagle3Head::tokens(uint64_t id) const {
  auto it = reqs_.find(id);
  return it == reqs_.end() ? -1 : it->second.n_tokens;
}

uint64_t Eagle3Head::k_cache_bytes() const {
  uint64_t b = 0;
  for (const auto& [id, r] : reqs_) b += r.k.bytes();
  return b;
}

Status Eagle3Head::state(uint64_t id, HeadState* out) const {
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return Status::Error("retrieval head: unknown request");
  const Request& r = it->second;
  if (r.n_tokens > 0 && r.last_pos != r.n_tokens - 1)
    return Status::Error("EAGLE-3 head: the target's step for position " + std::to_string(r.n_tokens - 1) +
                         " has not been passed to after_target");
  *out = HeadState();
  out->tokens = r.n_tokens;
  out->capacity = r.capacity;
  Status st = r.k.snapshot(&out->scoring_k);
  if (!st.ok) return st;
  out->aux = r.n_tokens > 0 ? r.last : std::vector<float>(static_cast<size_t>(aux_width()), 0.0f);
  return Status::Ok();
}

Status Eagle3Head::restore(uint64_t id, int n, const HeadStateFill& fill, const float* aux) {
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return Status::Error("retrieval head: unknown request");
  Request& r = it->second;
  if (r.n_tokens != 0 || n < 0 || n > r.capacity)
    return Status::Error("retrieval head: cannot restore " + std::to_string(n) + " positions into this request");
  if (n > 0 && aux == nullptr) return Status::Error("EAGLE-3 head: the saved state has no aux row");
  Status st = r.k.load([&](float* dst) { fill(0, dst, r.capacity); });
  if (!st.ok) return st;
  r.n_tokens = n;
  if (n > 0) {
    r.last.assign(aux, aux + aux_width());
    r.last_pos = n - 1;
  }
  return Status::Ok();
}

Status Eagle3Head::ensure_workspace(int n) {
  if (n <= ws_cap_) return Status::Ok();
  const int64_t N = n, H = cfg_.hidden, D = cfg_.head_dim;
  const int64_t qd = static_cast<int64_t>(cfg_.heads) * D, kvd = static_cast<int64_t>(cfg_.kv_heads) * D;
  Status st;
  for (auto [t, shape] : std::vector<std::pair<Tensor*, std::vector<int64_t>>>{
           {&f_, {N, static_cast<int64_t>(aux_width())}}, {&a_, {N, H}}, {&b_, {N, H}},
           {&q_, {N, qd}}, {&qt_, {N, qd}}, {&k_, {N, kvd}}, {&kt_, {N, kvd}},
           {&cos_, {N, D / 2}}, {&sin_, {N, D / 2}}}) {
    if (!(st = be_->alloc(shape, DType::F32, t)).ok) return st;
  }
  ws_cap_ = n;
  return Status::Ok();
}

Status Eagle3Head::forward(const std::vector<HeadChunk>& chunks) {
  const size_t W = static_cast<size_t>(aux_width());
  std::vector<Item> items;
  feats_.clear();
  for (const HeadChunk& hc : chunks) {
    auto it = reqs_.find(hc.id);
    if (it == reqs_.end()) return Status::Error("retrieval head: unknown request");
    Request& r = it->second;
    if (Status st = check_head_chunk(hc, r.n_tokens, r.capacity, ds_.hook != nullptr); !st.ok)
      return st;
    const size_t at = feats_.size();
    if (hc.features) {
      feats_.insert(feats_.end(), hc.features, hc.features + hc.n * W);
    } else if (hc.n == 1 && (r.n_tokens == 0 || r.last_pos == r.n_tokens - 1)) {
      if (r.n_tokens == 0) feats_.resize(at + W, 0.0f);
      else feats_.insert(feats_.end(), r.last.begin(), r.last.end());
    } else if (hc.n > 1) {
      return Status::Error("EAGLE-3 head: a chunk of " + std::to_string(hc.n) +
                           " tokens needs the target's hidden states: prefill the target first and pass them "
                           "to after_target, or give the chunk its features");
    } else {
      return Status::Error("EAGLE-3 head: no target hidden states for position " + std::to_string(r.n_tokens - 1) +
                           " (the target's step must be passed to after_target, or the chunk must carry features)");
    }
    if (r.n_tokens == 0) std::fill(feats_.begin() + static_cast<int64_t>(at), feats_.begin() + static_cast<int64_t>(at + W), 0.0f);
    items.push_back({&r, hc.tokens, hc.n, hc.scores, &hc});
  }
  return project(items);
}

Status Eagle3Head::after_target(uint64_t id, const int32_t* tokens, int start, int n, const float* rows) {
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return Status::Error("retrieval head: unknown request");
  Request& r = it->second;
  const size_t W = static_cast<size_t>(aux_width());
  if (n <= 0) return Status::Error("EAGLE-3 head: empty target chunk");
  if (r.n_tokens == start) {
    // A prefilled chunk: its tokens pair with the rows one position earlier.
    if (start + n > r.capacity) return Status::Error("retrieval head: chunk exceeds the request's capacity");
    if (start > 0 && r.last_pos != start - 1)
      return Status::Error("EAGLE-3 head: no target hidden states for position " + std::to_string(start - 1));
    feats_.assign(W, 0.0f);
    if (start > 0) feats_ = r.last;
    feats_.insert(feats_.end(), rows, rows + static_cast<size_t>(n - 1) * W);
    Status st = project({{&r, tokens, n, nullptr}});
    if (!st.ok) return st;
  } else if (r.n_tokens != start + n) {
    return Status::Error("EAGLE-3 head: target chunk at positions " + std::to_string(start) + ".." +
                         std::to_string(start + n - 1) + " does not continue the head's " +
                         std::to_string(r.n_tokens) + " tokens");
  }
  r.last.assign(rows + static_cast<size_t>(n - 1) * W, rows + static_cast<size_t>(n) * W);
  r.last_pos = start + n - 1;
  return Status::Ok();
}

Status Eagle3Head::project(const std::vector<Item>& items) {
  int n = 0;
  std::vector<int32_t> toks, positions;
  for (const Item& it : items) {
    toks.insert(toks.end(), it.tokens, it.tokens + it.n);
    for (int t = 0; t < it.n; ++t) positions.push_back(it.r->n_tokens + t);
    n += it.n;
  }
  for (int32_t id : toks)
    if (id < 0 || id >= cfg_.vocab) return Status::Error("retrieval head: token id out of range");
  Status st = ensure_workspace(n);
  if (!st.ok) return st;
  Backend& be = *be_;
  const int64_t N = n, D = cfg_.head_dim, heads = cfg_.heads, kvh = cfg_.kv_heads;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  Tensor f = f_.rows(0, N), a = a_.rows(0, N), b = b_.rows(0, N);
  Tensor q = q_.rows(0, N), qt = qt_.rows(0, N), k = k_.rows(0, N), kt = kt_.rows(0, N);
  Tensor cos = cos_.rows(0, N), sin = sin_.rows(0, N);
  if (!(st = be.upload(feats_.data(), &f)).ok) return st;
  // The layer's input is [input_norm(embed(token)), hidden_norm(fc(features))].
  be.embedding(w_.embed, toks.data(), n, &a);
  be.rmsnorm(a, w_.input_norm, eps, &a);
  be.matmul(f, w_.fc, w_.fc_bias.empty() ? nullptr : &w_.fc_bias, &b);
  be.rmsnorm(b, w_.hidden_norm, eps, &b);
  be.matmul(a, w_.wq_e, nullptr, &q);
  be.matmul(b, w_.wq_h, nullptr, &qt);
  be.add(&q, qt);
  be.matmul(a, w_.wk_e, nullptr, &k);
  be.matmul(b, w_.wk_h, nullptr, &kt);
  be.add(&k, kt);
  Tensor q3 = q.reshaped({N, heads, D}), k3 = k.reshaped({N, kvh, D});
  st = rope_scoring_qk(be, inv_freq_, positions, &q3, &k3, &cos, &sin, ds_.hook ? nullptr : &kh_);
  if (!st.ok) return st;

  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<Tensor> qrows;  // the selection jobs' queries (views of q)
  qrows.reserve(items.size());
  std::vector<HeadSelectJob> jobs;
  int row = 0;
  for (const Item& it : items) {
    Request& r = *it.r;
    r.k.write(k.rows(row, it.n), ds_.hook ? nullptr : &kh_[static_cast<size_t>(row * kvh * D)], it.n, r.n_tokens);
    r.n_tokens += it.n;
    if (it.chunk && it.chunk->selection) {
      qrows.push_back(q.rows(row + it.n - 1, 1));
      jobs.push_back({&qrows.back(), &r.k.tensor(), r.n_tokens, it.chunk->budget, it.chunk->selection,
                      it.chunk->mass});
    }
    if (it.scores) {
      const int64_t T = r.n_tokens;
      qh_.resize(static_cast<size_t>(heads * D));
      if (!(st = be.download(q.rows(row + it.n - 1, 1), qh_.data())).ok) return st;
      it.scores->resize(static_cast<size_t>(heads * T));
      const float* kc = nullptr;
      if (!(st = r.k.host(&kbuf_, &kc)).ok) return st;
      score_rows(qh_.data(), kc, heads, heads / kvh, T, r.capacity, D, scale, it.scores->data());
    }
    row += it.n;
  }
  if (!jobs.empty())
    return ds_.run(jobs, static_cast<int>(heads), static_cast<int>(kvh), static_cast<int>(D), scale);
  return Status::Ok();
}

}  // namespace spx::retrieval
