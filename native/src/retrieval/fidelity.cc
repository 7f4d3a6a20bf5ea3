#include "retrieval/fidelity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "backend/registry.h"
#include "kv/slot_map.h"

namespace spx::retrieval {

namespace {

struct StepOutcome {
  int argmax = 0;
  double nll = 0;
};

StepOutcome score_logits(const std::vector<float>& logits, int vocab, int32_t next) {
  StepOutcome o;
  float mx = logits[0];
  for (int i = 1; i < vocab; ++i)
    if (logits[i] > mx) mx = logits[i], o.argmax = i;
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  o.nll = -(static_cast<double>(logits[next]) - mx - std::log(sum));
  return o;
}

Status copy_kv(Backend* be, const KvSequence& src, KvSequence* dst, std::vector<float>* scratch) {
  for (size_t l = 0; l < src.k.size(); ++l) {
    for (auto [s, d] : {std::make_pair(&src.k[l], &dst->k[l]), std::make_pair(&src.v[l], &dst->v[l])}) {
      scratch->resize(static_cast<size_t>(s->numel()));
      Status st = be->download(*s, scratch->data());
      if (st.ok) st = be->upload(scratch->data(), d);
      if (!st.ok) return st;
    }
  }
  dst->n_tokens = src.n_tokens;
  return Status::Ok();
}

// Runs tokens [begin, end) into kv (which holds the ones before) in chunks.
// With capture layers, (*hidden)[i] (one vector per capture layer) gets
// [end - begin, hidden] appended: every token's hidden state at the input of
// capture[i] (heads scoring with their own weights on the target's lower
// layers adopt from them; EAGLE-3 heads read them as features).
Status prefill(Transformer* m, KvSequence* kv, const std::vector<int32_t>& tokens, int begin, int end,
               int chunk, const std::vector<int>& capture, std::vector<std::vector<float>>* hidden) {
  std::vector<float> logits, rows;
  const size_t H = static_cast<size_t>(m->config().hidden_size), A = capture.size();
  for (int b = begin; b < end; b += chunk) {
    const int c = std::min(chunk, end - b);
    ForwardBatch batch;
    batch.tokens.assign(tokens.begin() + b, tokens.begin() + b + c);
    batch.chunks.push_back({kv, b, c, LogitsMode::None});
    if (A > 0) {
      batch.aux_layers = capture;
      batch.aux_hidden = &rows;
    }
    Status st = m->forward(batch, &logits);
    if (!st.ok) return st;
    for (size_t a = 0; a < A; ++a)
      for (int t = 0; t < c; ++t) {
        const float* r = rows.data() + (static_cast<size_t>(t) * A + a) * H;
        (*hidden)[a].insert((*hidden)[a].end(), r, r + H);
      }
  }
  return Status::Ok();
}

}  // namespace

namespace {

// One head's and one budget's sparse run.
struct SparseRun {
  int sparse_from = 0;                    // layers below attend fully
  std::vector<std::vector<int32_t>> sel;  // [S][KVH * B]; empty: the step attended fully
  std::vector<StepOutcome> out;           // [S]
  std::vector<double> recalls;            // per (step, layer, head)
  std::vector<double> per_layer;          // [L]
  int agree = 0;
  double nll = 0;
};

// scoring_input: the prefill's hidden states at the head's scoring layer
// (own_scoring heads), else null. features: EAGLE-3 heads' input rows
// [N + S, aux_width] (row p: the target's aux states at p - 1), else null.
Status head_scores(Transformer* target, PrunedHead* head, const KvSequence& base,
                   const std::vector<int32_t>& tokens, const FidelityOptions& opt,
                   const float* scoring_input, const float* features,
                   std::vector<std::vector<float>>* scores) {
  const int N = opt.context, S = opt.steps;
  const size_t W = static_cast<size_t>(head->aux_width());
  auto feats = [&](int p) { return features ? features + static_cast<size_t>(p) * W : nullptr; };
  Status st = head->open(1, base.capacity);
  if (!st.ok) return st;
  if (head->source() == target) {
    st = head->adopt(1, base, scoring_input);  // the prefill was full attention: same caches
  } else {
    for (int b = 0; b < N && st.ok; b += opt.prefill_chunk) {
      std::vector<HeadChunk> hc = {{1, tokens.data() + b, std::min(opt.prefill_chunk, N - b), nullptr, feats(b)}};
      st = head->forward(hc);
    }
  }
  scores->assign(S, {});
  for (int s = 0; s < S && st.ok; ++s) {
    std::vector<HeadChunk> hc = {{1, tokens.data() + N + s, 1, &(*scores)[s], feats(N + s)}};
    st = head->forward(hc);
  }
  head->close(1);
  return st;
}

// EAGLE-3 features [N + S, 3 * hidden]: row p holds the target's states at
// the input of the head's aux layers for position p - 1 (EAGLE's pairing),
// row 0 zeros. hidden[a] holds capture[a]'s rows for positions 0..N+S-2.
std::vector<float> eagle3_features(const PrunedHead& head, const std::vector<int>& capture,
                                   const std::vector<std::vector<float>>& hidden, int rows, size_t H) {
  const std::vector<int>& aux = head.aux_layers();
  std::vector<float> f(static_cast<size_t>(rows) * aux.size() * H, 0.0f);
  for (size_t j = 0; j < aux.size(); ++j) {
    const size_t a = static_cast<size_t>(std::find(capture.begin(), capture.end(), aux[j]) - capture.begin());
    for (int p = 1; p < rows; ++p)
      std::copy_n(hidden[a].data() + static_cast<size_t>(p - 1) * H, H,
                  f.data() + (static_cast<size_t>(p) * aux.size() + j) * H);
  }
  return f;
}

}  // namespace

Status run_fidelity(Transformer* target, const std::vector<PrunedHead*>& heads,
                    const std::vector<int32_t>& tokens, const FidelityOptions& opt,
                    std::vector<FidelityReport>* reports, const FidelityProgress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = target->config();
  const int N = opt.context, S = opt.steps;
  if (N <= 0 || S <= 0) return Status::Error("fidelity: context and steps must be > 0");
  if (static_cast<int64_t>(tokens.size()) < static_cast<int64_t>(N) + S + 1)
    return Status::Error("fidelity: the text has " + std::to_string(tokens.size()) +
                         " tokens, context + steps + 1 = " + std::to_string(N + S + 1) + " needed");
  if (opt.budgets.empty()) return Status::Error("fidelity: no budgets");
  if (opt.sparse_from > c.num_layers)
    return Status::Error("fidelity: sparse_from " + std::to_string(opt.sparse_from) + " is past the model's " +
                         std::to_string(c.num_layers) + " layers");
  for (int b : opt.budgets)
    if (b <= 0) return Status::Error("fidelity: budgets must be > 0");
  for (PrunedHead* h : heads)
    if (h->q_heads() != c.num_heads || h->kv_heads() != c.num_kv_heads)
      return Status::Error("fidelity: the head's q/kv heads differ from the target's");
  auto say = [&](const std::string& s) {
    if (progress) progress(s);
  };

  Backend* be = target->backend();
  const int cap = N + S;
  const int L = c.num_layers, H = c.num_heads, KVH = c.num_kv_heads, D = c.head_dim;
  const int G = H / KVH, V = c.vocab_size;
  const size_t NB = opt.budgets.size();
  KvStore store(be, L, KVH, D);
  KvSequence *base = nullptr, *work = nullptr;
  Status st = store.allocate(1, cap, &base);
  if (st.ok) st = store.allocate(2, cap, &work);
  if (!st.ok) return st;
  std::vector<int> capture;  // layers whose input some head adopts from
  for (PrunedHead* h : heads)
    if (h->source() == target && h->scoring_input_layer() >= 0 &&
        std::find(capture.begin(), capture.end(), h->scoring_input_layer()) == capture.end())
      capture.push_back(h->scoring_input_layer());
  bool eagle3 = false;  // EAGLE-3 heads read the target's aux hidden states
  for (PrunedHead* h : heads)
    for (int l : h->aux_layers()) {
      eagle3 = true;
      if (std::find(capture.begin(), capture.end(), l) == capture.end()) capture.push_back(l);
    }
  std::vector<std::vector<float>> hidden(capture.size());
  say("prefill " + std::to_string(N) + " tokens");
  if (!(st = prefill(target, base, tokens, 0, N, opt.prefill_chunk, capture, &hidden)).ok) return st;
  if (eagle3 && S > 1) {
    // The teacher-forced tokens' own states (positions N..N+S-2), from a
    // full-attention pass on a copy: each decode step's head input is the
    // state of the position before it, as in the engine.
    std::vector<float> scratch;
    if (!(st = copy_kv(be, *base, work, &scratch)).ok) return st;
    if (!(st = prefill(target, work, tokens, N, N + S - 1, opt.prefill_chunk, capture, &hidden)).ok) return st;
  }

  reports->assign(heads.size(), {});
  std::vector<std::vector<SparseRun>> runs(heads.size(), std::vector<SparseRun>(NB));
  std::vector<float> scratch, logits;
  Selector selector;
  for (size_t hi = 0; hi < heads.size(); ++hi) {
    PrunedHead* head = heads[hi];
    FidelityReport& rep = (*reports)[hi];
    rep.context = N;
    rep.steps = S;
    rep.scoring_layer = head->scoring_layer();
    rep.head_params = head->head_params();
    rep.head_model_params = head->model_params();
    rep.target_params = model_param_count(*target);
    rep.budgets.assign(NB, {});
    say("retrieval head, scoring layer " + std::to_string(head->scoring_layer()));
    std::vector<std::vector<float>> scores;
    const float* scoring_input = nullptr;
    for (size_t a = 0; a < capture.size(); ++a)
      if (head->source() == target && capture[a] == head->scoring_input_layer()) scoring_input = hidden[a].data();
    std::vector<float> features;
    if (!head->aux_layers().empty())
      features = eagle3_features(*head, capture, hidden, N + S, static_cast<size_t>(c.hidden_size));
    if (!(st = head_scores(target, head, *base, tokens, opt, scoring_input,
                           features.empty() ? nullptr : features.data(), &scores)).ok)
      return st;
    for (size_t bi = 0; bi < NB; ++bi) {
      const int B = opt.budgets[bi];
      BudgetFidelity& r = rep.budgets[bi];
      SparseRun& run = runs[hi][bi];
      r.budget = B;
      r.full_attention = cap <= B;
      say("sparse decode B=" + std::to_string(B));
      if (!(st = copy_kv(be, *base, work, &scratch)).ok) return st;
      SlotTable slots;
      slots.configure(KVH, 2LL * D * static_cast<int64_t>(sizeof(float)) * L);
      slots.open_request(0, B);
      SelectOptions so = opt.select;
      so.budget = B;
      int fallbacks = 0, selected_steps = 0;
      double mass = 0;
      uint64_t loads = 0, slot_total = 0;
      run.sel.assign(S, {});
      run.sparse_from = opt.sparse_from >= 0 ? opt.sparse_from
                        : opt.dense_head_layers && head->source() == target ? head->scoring_layer()
                                                                             : 0;
      run.out.assign(S, {});
      run.per_layer.assign(L, 0.0);
      for (int s = 0; s < S; ++s) {
        const int T = N + s + 1;
        std::vector<int32_t> idx(static_cast<size_t>(KVH) * B);
        SelectResult res = selector.select(scores[s].data(), head->pool(), H, KVH, T, T, so, idx.data());
        ForwardChunk ch{work, N + s, 1, LogitsMode::Last};
        if (!res.full || res.fallback) {
          run.sel[s] = idx;
          mass += res.mean_mass;
          ++selected_steps;
          // Elastic loading between consecutive selections (the first fill is no reload).
          if (!slots.update(0, idx.data(), B, nullptr, nullptr)) return Status::Error("fidelity: bad selection");
          if (selected_steps > 1) {
            loads += slots.last_step().loads;
            slot_total += slots.last_step().slots;
          }
        }
        if (res.fallback) ++fallbacks;
        if (!res.full) {
          ch.selection = run.sel[s].data();
          ch.budget = B;
          ch.sparse_from_layer = run.sparse_from;
        }
        ForwardBatch batch;
        batch.tokens = {tokens[N + s]};
        batch.chunks.push_back(ch);
        if (!(st = target->forward(batch, &logits)).ok) return st;
        run.out[s] = score_logits(logits, V, tokens[N + s + 1]);
      }
      r.fallback_rate = static_cast<double>(fallbacks) / S;
      r.reload_fraction = slot_total ? static_cast<double>(loads) / slot_total : 0.0;
      r.head_mass_mean = selected_steps ? mass / selected_steps : 1.0;
    }
  }

  // The full-attention reference, on the prefilled cache itself, and the
  // recall of every run's selections under its attention.
  say("full-attention reference");
  double nll_full = 0;
  std::vector<float> q;
  std::vector<double> probs;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  for (int s = 0; s < S; ++s) {
    ForwardBatch batch;
    batch.tokens = {tokens[N + s]};
    batch.chunks.push_back({base, N + s, 1, LogitsMode::Last});
    batch.q_capture = &q;
    if (!(st = target->forward(batch, &logits)).ok) return st;
    const StepOutcome full = score_logits(logits, V, tokens[N + s + 1]);
    nll_full += full.nll;
    for (auto& per_head : runs)
      for (SparseRun& run : per_head) {
        run.agree += run.out[s].argmax == full.argmax;
        run.nll += run.out[s].nll;
      }
    const int T = N + s + 1;
    probs.resize(static_cast<size_t>(T));
    for (int l = 0; l < L; ++l) {
      scratch.resize(static_cast<size_t>(base->k[l].numel()));
      if (!(st = be->download(base->k[l], scratch.data())).ok) return st;
      for (int h = 0; h < H; ++h) {
        const float* qv = q.data() + (static_cast<size_t>(l) * H + h) * D;
        const float* kc = scratch.data() + static_cast<size_t>(h / G) * cap * D;
        double mx = -1e30, sum = 0;
        for (int t = 0; t < T; ++t) {
          float dot = 0;
          for (int d = 0; d < D; ++d) dot += qv[d] * kc[static_cast<size_t>(t) * D + d];
          probs[t] = dot * scale;
          mx = std::max(mx, probs[t]);
        }
        for (int t = 0; t < T; ++t) sum += probs[t] = std::exp(probs[t] - mx);
        for (auto& per_head : runs) {
          for (size_t bi = 0; bi < NB; ++bi) {
            SparseRun& run = per_head[bi];
            const int B = opt.budgets[bi];
            double m = sum;
            if (!run.sel[s].empty() && l >= run.sparse_from) {
              m = 0;
              const int32_t* ix = run.sel[s].data() + static_cast<size_t>(h / G) * B;
              for (int i = 0; i < B; ++i)
                if (ix[i] >= 0 && ix[i] < T) m += probs[ix[i]];
            }
            run.recalls.push_back(m / sum);
            run.per_layer[l] += m / sum / (static_cast<double>(H) * S);
          }
        }
      }
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (size_t hi = 0; hi < heads.size(); ++hi) {
    FidelityReport& rep = (*reports)[hi];
    rep.ppl_full = std::exp(nll_full / S);
    rep.seconds = seconds;
    for (size_t bi = 0; bi < NB; ++bi) {
      BudgetFidelity& r = rep.budgets[bi];
      SparseRun& run = runs[hi][bi];
      std::vector<double>& v = run.recalls;
      double sum = 0, sq = 0;
      for (double x : v) sum += x;
      r.recall_mean = sum / v.size();
      for (double x : v) sq += (x - r.recall_mean) * (x - r.recall_mean);
      r.recall_std = std::sqrt(sq / v.size());
      std::sort(v.begin(), v.end());
      r.recall_min = v.front();
      r.recall_p10 = v[v.size() / 10];
      r.recall_per_layer = run.per_layer;
      r.top1_agreement = static_cast<double>(run.agree) / S;
      r.ppl_sparse = std::exp(run.nll / S);
      r.ppl_ratio = r.ppl_sparse / rep.ppl_full;
    }
  }
  return Status::Ok();
}

Status run_fidelity(Transformer* target, PrunedHead* head, const std::vector<int32_t>& tokens,
                    const FidelityOptions& opt, FidelityReport* report,
                    const FidelityProgress& progress) {
  std::vector<FidelityReport> reports;
  Status st = run_fidelity(target, std::vector<PrunedHead*>{head}, tokens, opt, &reports, progress);
  if (st.ok) *report = std::move(reports[0]);
  return st;
}

Status eval_fidelity(const FidelityRequest& req, FidelityReport* report,
                     const FidelityProgress& progress) {
  Status st;
  std::unique_ptr<Backend> backend = make_backend(req.device, req.threads, &st);
  if (!backend) return st.ok ? Status::Error("no backend for " + req.device) : st;
  std::unique_ptr<Transformer> target, dlm;
  if (!(st = Transformer::load(req.model_dir, backend.get(), &target)).ok) return st;
  for (int32_t id : req.tokens)
    if (id < 0 || id >= target->config().vocab_size) return Status::Error("token id out of range");
  if (req.options.context + req.options.steps > target->config().max_position)
    return Status::Error("context + steps exceed the model's " +
                         std::to_string(target->config().max_position) + " positions");
  std::unique_ptr<PrunedHead> head;
  std::string kind;
  HeadChoice choice = req.head;
  if (choice.model_dir.empty()) choice.model_dir = req.model_dir;  // the recommended head lives next to it
  double recommended = 0;
  if (!(st = make_head(target.get(), backend.get(), choice, &dlm, &head, &kind, &recommended)).ok) return st;
  // A threshold < 0 (the command's default) is the head's recommendation,
  // as in `generate --budget`.
  FidelityOptions options = req.options;
  options.select.fallback_mass = resolve_fallback(req.options.select.fallback_mass, recommended);
  if (!(options.select.fallback_mass < 1)) return Status::Error("the fallback threshold must be below 1");
  st = run_fidelity(target.get(), head.get(), req.tokens, options, report, progress);
  report->head_kind = kind + fallback_note(options.select.fallback_mass, req.options.select.fallback_mass);
  report->fallback_mass = options.select.fallback_mass;
  return st;
}

}  // namespace spx::retrieval
