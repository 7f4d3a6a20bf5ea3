#include "model/transformer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "kernels/cpu/rope.h"
#include "model/checkpoint.h"
#include "sampling/sampler.h"

namespace spx {

Status Transformer::load(const std::string& dir, Backend* backend,
                         std::unique_ptr<Transformer>* out) {
  auto t = std::unique_ptr<Transformer>(new Transformer());
  t->backend_ = backend;
  Checkpoint ckpt;
  Status st = ckpt.open(dir);  // checks the directory exists first
  if (!st.ok) return st;
  st = load_model_config(dir, &t->cfg_);
  if (!st.ok) return st;
  st = load_weights(ckpt, t->cfg_, backend, &t->w_);
  if (!st.ok) return st;
  t->inv_freq_ = spx::rope_inv_freq(t->cfg_.rope, t->cfg_.head_dim);
  const char* graphs = std::getenv("SPX_CUDA_GRAPHS");
  t->graphs_ = graphs == nullptr || std::string(graphs) != "0";
  const char* sparse_graphs = std::getenv("SPX_SPARSE_GRAPHS");
  t->sparse_graphs_ = sparse_graphs == nullptr || std::string(sparse_graphs) != "0";
  const char* argmax = std::getenv("SPX_DEVICE_ARGMAX");
  t->device_argmax_ = argmax == nullptr || std::string(argmax) != "0";
  auto add = [&](const Tensor& x) { t->weight_bytes_ += x.empty() ? 0 : x.nbytes(); };
  add(t->w_.embed);
  add(t->w_.norm);
  if (!t->cfg_.tie_word_embeddings) add(t->w_.lm_head);
  for (const auto& l : t->w_.layers) {
    for (const Tensor* x : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.bq, &l.bk, &l.bv, &l.bo,
                            &l.q_norm, &l.k_norm, &l.mlp_norm, &l.w_gate, &l.w_up, &l.w_down,
                            &l.b_gate, &l.b_up, &l.b_down})
      add(*x);
  }
  *out = std::move(t);
  return Status::Ok();
}

Status Transformer::ensure_workspace(int n) {
  if (n <= ws_.capacity) return Status::Ok();
  const int64_t N = n, H = cfg_.hidden_size, D = cfg_.head_dim, I = cfg_.intermediate_size;
  const int64_t qd = cfg_.num_heads * D, kvd = cfg_.num_kv_heads * D;
  Workspace w;
  Status st;
  for (auto [t, shape] : std::vector<std::pair<Tensor*, std::vector<int64_t>>>{
           {&w.x, {N, H}},     {&w.h, {N, H}},      {&w.q, {N, qd}},    {&w.k, {N, kvd}},
           {&w.v, {N, kvd}},   {&w.attn, {N, qd}},  {&w.tmp, {N, H}},   {&w.gate, {N, I}},
           {&w.up, {N, I}},    {&w.cos, {N, D / 2}}, {&w.sin, {N, D / 2}}}) {
    if (!(st = backend_->alloc(shape, DType::F32, t)).ok) return st;
  }
  w.capacity = n;
  ws_ = std::move(w);
  ws_generation_++;
  return Status::Ok();
}

Status Transformer::ensure_decode_logits(int n) {
  if (n <= dec_rows_) return Status::Ok();
  Status st;
  if (!(st = backend_->alloc({n, cfg_.hidden_size}, DType::F32, &dec_normed_)).ok) return st;
  if (!(st = backend_->alloc({n, cfg_.vocab_size}, DType::F32, &dec_logits_)).ok) return st;
  dec_rows_ = n;
  ws_generation_++;
  return Status::Ok();
}

bool Transformer::dense_decode(const ForwardBatch& b, int n_layers_run, int n_layers, bool sparse) {
  if (b.n_layers >= 0 || n_layers_run != n_layers || b.hidden_out || b.q_capture || b.tier_load ||
      b.aux_hidden)
    return false;
  for (const ForwardChunk& ch : b.chunks) {
    if (ch.n_tokens != 1 || ch.logits != LogitsMode::Last || ch.selection != nullptr ||
        (ch.selection_device != nullptr && !sparse))
      return false;
    if (ch.tier_k)
      for (const Tensor& t : *ch.tier_k)
        if (!t.empty()) return false;
  }
  return true;
}

std::vector<uint64_t> Transformer::step_key(const ForwardBatch& b) const {
  // Greedy steps end in the argmax (its buffer belongs to the backend).
  std::vector<uint64_t> key{b.chunks.size(), ws_generation_, backend_greedy(b) ? 1u : 0u};
  for (const ForwardChunk& ch : b.chunks) {
    key.push_back(static_cast<uint64_t>(ch.kv->capacity));
    // Device selections: where the recorded attention reads them, and how.
    key.push_back(reinterpret_cast<uintptr_t>(ch.selection_device));
    key.push_back(static_cast<uint64_t>(ch.selection_device ? ch.budget : 0));
    key.push_back(static_cast<uint64_t>(ch.selection_device ? ch.sparse_from_layer : 0));
    for (size_t l = 0; l < ch.kv->k.size(); ++l) {
      key.push_back(reinterpret_cast<uintptr_t>(ch.kv->k[l].data));
      key.push_back(reinterpret_cast<uintptr_t>(ch.kv->v[l].data));
    }
  }
  return key;
}

Status Transformer::forward(const ForwardBatch& batch, std::vector<float>* logits) {
  const Status st = forward_rows(batch, logits);
  if (!st.ok || !batch.greedy_ids || backend_greedy(batch) || logits->empty()) return st;
  // Greedy ids asked of a backend without argmax_rows: from the downloaded rows.
  const int V = cfg_.vocab_size;
  const size_t rows = logits->size() / static_cast<size_t>(V);
  batch.greedy_ids->resize(rows);
  for (size_t r = 0; r < rows; ++r) (*batch.greedy_ids)[r] = argmax(logits->data() + r * static_cast<size_t>(V), V);
  return st;
}

Status Transformer::forward_rows(const ForwardBatch& batch, std::vector<float>* logits) {
  const ModelConfig& c = cfg_;
  const int n = static_cast<int>(batch.tokens.size());
  int total = 0;
  std::vector<int32_t> positions;
  std::vector<int32_t> logit_rows;
  positions.reserve(static_cast<size_t>(n));
  for (const auto& ch : batch.chunks) {
    if (ch.kv == nullptr || ch.n_tokens <= 0) return Status::Error("forward: empty chunk");
    if (ch.start_pos != ch.kv->n_tokens)
      return Status::Error("forward: chunk does not continue its KV cache");
    if (ch.start_pos + ch.n_tokens > ch.kv->capacity)
      return Status::Error("forward: chunk exceeds its KV capacity");
    for (int t = 0; t < ch.n_tokens; ++t) positions.push_back(ch.start_pos + t);
    if (ch.logits == LogitsMode::Last) logit_rows.push_back(total + ch.n_tokens - 1);
    if (ch.logits == LogitsMode::All)
      for (int t = 0; t < ch.n_tokens; ++t) logit_rows.push_back(total + t);
    total += ch.n_tokens;
  }
  if (total != n || n == 0) return Status::Error("forward: token count does not match chunks");
  for (int32_t id : batch.tokens)
    if (id < 0 || id >= c.vocab_size) return Status::Error("forward: token id out of range");

  const int n_layers = batch.n_layers >= 0 ? std::min(batch.n_layers, c.num_layers) : c.num_layers;
  for (int a : batch.aux_layers)
    if (batch.aux_hidden && (a < 0 || a > n_layers))
      return Status::Error("forward: hidden-state capture at layer " + std::to_string(a) + " outside the " +
                           std::to_string(n_layers) + " layers run");

  Status st = ensure_workspace(n);
  if (!st.ok) return st;
  const bool dense = dense_decode(batch, n_layers, c.num_layers, sparse_graphs_);
  if (dense && !(st = ensure_decode_logits(n)).ok) return st;
  Backend& be = *backend_;
  const bool greedy = backend_greedy(batch);
  const int64_t N = n, H = c.hidden_size, D = c.head_dim;
  if (batch.greedy_ids) batch.greedy_ids->clear();
  std::vector<float> c_host(static_cast<size_t>(N * D / 2)), s_host(c_host.size());
  rope_tables(inv_freq_, positions.data(), N, c_host.data(), s_host.data());
  // After the step's kernels: the caches hold the chunks, the logits come back.
  auto finish = [&]() -> Status {
    for (const auto& ch : batch.chunks) ch.kv->n_tokens = ch.start_pos + ch.n_tokens;
    logits->clear();
    if (batch.n_layers >= 0) {
      if (batch.hidden_out) *batch.hidden_out = ws_.x.rows(0, N);
      return Status::Ok();
    }
    if (!dense) return Status::Ok();
    if (greedy) {
      batch.greedy_ids->resize(static_cast<size_t>(N));
      return be.read_argmax(n, batch.greedy_ids->data());
    }
    logits->resize(static_cast<size_t>(N * c.vocab_size));
    return be.download(dec_logits_.rows(0, N), logits->data());
  };

  // Dense decode: replay the recorded step, or record it when this shape
  // ran eagerly on the step before (that step sized every buffer it needs).
  StepGraph* graph = dense && graphs_ ? be.step_graph() : nullptr;
  if (graph) {
    DecodeStepInputs in;
    in.ids = batch.tokens.data();
    in.positions = positions.data();
    in.cos = c_host.data();
    in.sin = s_host.data();
    in.n = n;
    in.half = static_cast<int>(D / 2);
    // A step graph that cannot be set up or recorded never fails the step:
    // it runs eagerly, and graphs stay off for this model.
    auto give_up = [&](const Status& why) {
      graph_stats_.failures++;
      graphs_ = false;
      std::fprintf(stderr, "spx: recording the decode step as a CUDA graph failed, decode runs eagerly: %s\n",
                   why.message.c_str());
    };
    const std::vector<uint64_t> key = step_key(batch);
    bool ready = false;
    if (!(st = graph->set_inputs(in)).ok) {
      give_up(st);
    } else if (graph->has(key)) {
      ready = true;
    } else if (key == warm_key_) {
      const auto t0 = std::chrono::steady_clock::now();
      Status queued = graph->begin_capture(), captured;
      if (queued.ok) {
        queued = queue_step(batch, n_layers, dense, true);
        captured = graph->end_capture(key);
      }
      graph_stats_.capture_ms +=
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (queued.ok && captured.ok) {
        ready = true;
        graph_stats_.captures++;
      } else {
        give_up(queued.ok ? captured : queued);
      }
    }
    if (ready) {
      if (!(st = graph->replay()).ok) return st;
      graph_stats_.replays++;
      return finish();
    }
    warm_key_ = key;
  }

  Tensor cos = ws_.cos.rows(0, N), sin = ws_.sin.rows(0, N);
  if (!(st = be.upload(c_host.data(), &cos)).ok) return st;
  if (!(st = be.upload(s_host.data(), &sin)).ok) return st;
  if (!(st = queue_step(batch, n_layers, dense, false)).ok) return st;
  if (!(st = finish()).ok) return st;
  if (dense || batch.n_layers >= 0 || logit_rows.empty()) return Status::Ok();

  const int64_t R = static_cast<int64_t>(logit_rows.size());
  const float eps = static_cast<float>(c.rms_norm_eps);
  Tensor x = ws_.x.rows(0, N);
  // Only the rows that are sampled go through the final norm and LM head.
  Tensor sel, normed, out;
  if (!(st = be.alloc({R, H}, DType::F32, &sel)).ok) return st;
  if (!(st = be.alloc({R, H}, DType::F32, &normed)).ok) return st;
  if (!(st = be.alloc({R, c.vocab_size}, DType::F32, &out)).ok) return st;
  be.gather_rows(x, logit_rows, &sel);
  be.rmsnorm(sel, w_.norm, eps, &normed);
  be.matmul(normed, w_.lm_head, nullptr, &out);
  if (greedy) {
    be.argmax_rows(out);
    batch.greedy_ids->resize(static_cast<size_t>(R));
    return be.read_argmax(static_cast<int>(R), batch.greedy_ids->data());
  }
  logits->resize(static_cast<size_t>(R * c.vocab_size));
  return be.download(out, logits->data());
}

Status Transformer::queue_step(const ForwardBatch& batch, int n_layers, bool dense, bool recording) {
  const ModelConfig& c = cfg_;
  Backend& be = *backend_;
  Status st;
  const int n = static_cast<int>(batch.tokens.size());
  const int64_t N = n, H = c.hidden_size, D = c.head_dim;
  const int64_t heads = c.num_heads, kvh = c.num_kv_heads;
  Tensor x = ws_.x.rows(0, N), h = ws_.h.rows(0, N), tmp = ws_.tmp.rows(0, N);
  Tensor q = ws_.q.rows(0, N), k = ws_.k.rows(0, N), v = ws_.v.rows(0, N);
  Tensor attn = ws_.attn.rows(0, N), gate = ws_.gate.rows(0, N), up = ws_.up.rows(0, N);
  Tensor cos = ws_.cos.rows(0, N), sin = ws_.sin.rows(0, N);
  if (recording) be.step_graph()->rope_tables(&cos, &sin);
  be.embedding(w_.embed, batch.tokens.data(), n, &x);

  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<AttentionSegment> segs(batch.chunks.size());
  std::vector<KvRowWrite> kv_rows(dense ? batch.chunks.size() : 0);
  const int64_t n_chunks = static_cast<int64_t>(batch.chunks.size());
  if (batch.q_capture) batch.q_capture->resize(static_cast<size_t>(n_chunks * n_layers * heads * D));
  // Scatters x (the input of layer l) into the captured columns that ask for it.
  std::vector<float> aux_rows;
  auto capture = [&](int l) -> Status {
    if (!batch.aux_hidden) return Status::Ok();
    const size_t width = batch.aux_layers.size() * static_cast<size_t>(H);
    for (size_t i = 0; i < batch.aux_layers.size(); ++i) {
      if (batch.aux_layers[i] != l) continue;
      aux_rows.resize(static_cast<size_t>(N * H));
      Status s = be.download(x, aux_rows.data());
      if (!s.ok) return s;
      for (int64_t r = 0; r < N; ++r)
        std::copy_n(&aux_rows[static_cast<size_t>(r * H)], H, &(*batch.aux_hidden)[r * width + i * H]);
    }
    return Status::Ok();
  };
  if (batch.aux_hidden) batch.aux_hidden->assign(static_cast<size_t>(N) * batch.aux_layers.size() * H, 0.0f);
  for (int l = 0; l < n_layers; ++l) {
    if (!(st = capture(l)).ok) return st;
    const LayerWeights& w = w_.layers[static_cast<size_t>(l)];
    be.rmsnorm(x, w.attn_norm, eps, &h);
    be.matmul(h, w.wq, w.bq.empty() ? nullptr : &w.bq, &q);
    be.matmul(h, w.wk, w.bk.empty() ? nullptr : &w.bk, &k);
    be.matmul(h, w.wv, w.bv.empty() ? nullptr : &w.bv, &v);
    Tensor q3 = q.reshaped({N, heads, D}), k3 = k.reshaped({N, kvh, D});
    Tensor v3 = v.reshaped({N, kvh, D});
    if (c.qk_norm) {
      be.rmsnorm(q3, w.q_norm, eps, &q3);
      be.rmsnorm(k3, w.k_norm, eps, &k3);
    }
    be.rope(&q3, cos, sin);
    be.rope(&k3, cos, sin);
    if (batch.q_capture) {
      int64_t last = -1;
      for (int64_t i = 0; i < n_chunks; ++i) {
        last += batch.chunks[static_cast<size_t>(i)].n_tokens;
        st = be.download(q.rows(last, 1), batch.q_capture->data() + (i * n_layers + l) * heads * D);
        if (!st.ok) return st;
      }
    }
    int row = 0;
    for (size_t i = 0; i < batch.chunks.size(); ++i) {
      const ForwardChunk& ch = batch.chunks[i];
      Tensor* kc = &ch.kv->k[static_cast<size_t>(l)];
      Tensor* vc = &ch.kv->v[static_cast<size_t>(l)];
      if (dense) kv_rows[i] = KvRowWrite{kc, vc, ch.start_pos};
      else be.kv_write(k3.rows(row, ch.n_tokens), v3.rows(row, ch.n_tokens), ch.start_pos, kc, vc);
      AttentionSegment& s = segs[i];
      s.q_begin = row;
      s.n_q = ch.n_tokens;
      s.start_pos = ch.start_pos;
      s.k_cache = kc;
      s.v_cache = vc;
      s.selection = l >= ch.sparse_from_layer ? ch.selection : nullptr;
      s.device_selection = l >= ch.sparse_from_layer ? ch.selection_device : nullptr;
      s.budget = ch.budget;
      if (ch.tier_k && !(*ch.tier_k)[static_cast<size_t>(l)].empty()) {
        // Host-tier layer: attend to the device slot buffer through slot indices.
        s.k_cache = &(*ch.tier_k)[static_cast<size_t>(l)];
        s.v_cache = &(*ch.tier_v)[static_cast<size_t>(l)];
        s.selection = ch.tier_slots;
        s.device_selection = ch.tier_slots_device;
      }
      row += ch.n_tokens;
    }
    // A decode step's writes go in one call (one launch on the GPU).
    if (dense) be.kv_write_rows(k3, v3, kv_rows);
    if (batch.tier_load) {
      st = batch.tier_load(l);  // this step's own K/V into host-tier slots
      if (!st.ok) return st;
    }
    Tensor attn3 = attn.reshaped({N, heads, D});
    be.attention(q3, segs, scale, &attn3);
    be.matmul(attn, w.wo, w.bo.empty() ? nullptr : &w.bo, &tmp);
    be.add(&x, tmp);

    be.rmsnorm(x, w.mlp_norm, eps, &h);
    be.matmul(h, w.w_gate, w.b_gate.empty() ? nullptr : &w.b_gate, &gate);
    be.matmul(h, w.w_up, w.b_up.empty() ? nullptr : &w.b_up, &up);
    be.swiglu(gate, up, &gate);
    be.matmul(gate, w.w_down, w.b_down.empty() ? nullptr : &w.b_down, &tmp);
    be.add(&x, tmp);
  }
  if (!(st = capture(n_layers)).ok) return st;
  if (dense) {
    // Every row is sampled: the final norm and LM head run on x itself.
    Tensor normed = dec_normed_.rows(0, N), out = dec_logits_.rows(0, N);
    be.rmsnorm(x, w_.norm, eps, &normed);
    be.matmul(normed, w_.lm_head, nullptr, &out);
    if (backend_greedy(batch)) be.argmax_rows(out);  // finish() reads the ids
  }
  return Status::Ok();
}

}  // namespace spx
