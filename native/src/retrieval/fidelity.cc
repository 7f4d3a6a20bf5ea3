#include "retrieval/fidelity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

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

Status prefill(Transformer* m, KvSequence* kv, const std::vector<int32_t>& tokens, int n, int chunk) {
  std::vector<float> logits;
  for (int b = 0; b < n; b += chunk) {
    const int c = std::min(chunk, n - b);
    ForwardBatch batch;
    batch.tokens.assign(tokens.begin() + b, tokens.begin() + b + c);
    batch.chunks.push_back({kv, b, c, LogitsMode::None});
    Status st = m->forward(batch, &logits);
    if (!st.ok) return st;
  }
  return Status::Ok();
}

}  // namespace

Status run_fidelity(Transformer* target, PrunedHead* head, const std::vector<int32_t>& tokens,
                    const FidelityOptions& opt, FidelityReport* report,
                    const FidelityProgress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = target->config();
  const int N = opt.context, S = opt.steps;
  if (N <= 0 || S <= 0) return Status::Error("fidelity: context and steps must be > 0");
  if (static_cast<int64_t>(tokens.size()) < static_cast<int64_t>(N) + S + 1)
    return Status::Error("fidelity: the text has " + std::to_string(tokens.size()) +
                         " tokens, context + steps + 1 = " + std::to_string(N + S + 1) + " needed");
  if (opt.budgets.empty()) return Status::Error("fidelity: no budgets");
  for (int b : opt.budgets)
    if (b <= 0) return Status::Error("fidelity: budgets must be > 0");
  if (head->q_heads() != c.num_heads || head->kv_heads() != c.num_kv_heads)
    return Status::Error("fidelity: the head's q/kv heads differ from the target's");
  auto say = [&](const std::string& s) {
    if (progress) progress(s);
  };

  Backend* be = target->backend();
  const int cap = N + S;
  const int L = c.num_layers, H = c.num_heads, KVH = c.num_kv_heads, D = c.head_dim;
  const int G = H / KVH, V = c.vocab_size;
  KvStore store(be, L, KVH, D);
  KvSequence *base = nullptr, *work = nullptr;
  Status st = store.allocate(1, cap, &base);
  if (st.ok) st = store.allocate(2, cap, &work);
  if (!st.ok) return st;

  say("prefill target");
  if (!(st = prefill(target, base, tokens, N, opt.prefill_chunk)).ok) return st;
  say("retrieval head");
  if (!(st = head->open(1, cap)).ok) return st;
  for (int b = 0; b < N && st.ok; b += opt.prefill_chunk) {
    std::vector<HeadChunk> hc = {{1, tokens.data() + b, std::min(opt.prefill_chunk, N - b), nullptr}};
    st = head->forward(hc);
  }
  std::vector<std::vector<float>> scores(S);  // [S][H, T_s]
  for (int s = 0; s < S && st.ok; ++s) {
    std::vector<HeadChunk> hc = {{1, tokens.data() + N + s, 1, &scores[s]}};
    st = head->forward(hc);
  }
  head->close(1);
  if (!st.ok) return st;

  report->context = N;
  report->steps = S;
  report->scoring_layer = head->scoring_layer();
  report->head_params = head->head_params();
  report->head_model_params = head->model_params();
  report->budgets.assign(opt.budgets.size(), {});

  // sel[b][s]: [KVH, B] (empty when the step attends fully)
  std::vector<std::vector<std::vector<int32_t>>> sel(opt.budgets.size(), std::vector<std::vector<int32_t>>(S));
  std::vector<std::vector<StepOutcome>> sparse(opt.budgets.size(), std::vector<StepOutcome>(S));
  std::vector<float> scratch, logits;
  Selector selector;
  for (size_t bi = 0; bi < opt.budgets.size(); ++bi) {
    const int B = opt.budgets[bi];
    BudgetFidelity& r = report->budgets[bi];
    r.budget = B;
    r.full_attention = cap <= B;
    say("sparse decode B=" + std::to_string(B));
    if (!(st = copy_kv(be, *base, work, &scratch)).ok) return st;
    SlotTable slots;
    slots.configure(KVH, 2LL * D * static_cast<int64_t>(sizeof(float)) * L);
    slots.open_request(0, B);
    SelectOptions so = opt.select;
    so.budget = B;
    int fallbacks = 0, sparse_steps = 0;
    double mass = 0;
    uint64_t loads = 0, slot_total = 0;
    for (int s = 0; s < S; ++s) {
      const int T = N + s + 1;
      std::vector<int32_t> idx(static_cast<size_t>(KVH) * B);
      SelectResult res = selector.select(scores[s].data(), H, KVH, T, T, so, idx.data());
      ForwardChunk ch{work, N + s, 1, LogitsMode::Last};
      if (!res.full || res.fallback) {
        sel[bi][s] = idx;
        mass += res.mean_mass;
        ++sparse_steps;
        if (s > 0) {
          // Reload fraction between consecutive steps (the first fill is not a reload).
          slots.update(0, idx.data(), B, nullptr, nullptr);
          loads += slots.last_step().loads;
          slot_total += slots.last_step().slots;
        } else {
          slots.update(0, idx.data(), B, nullptr, nullptr);
        }
      }
      if (res.fallback) ++fallbacks;
      if (!res.full) {
        ch.selection = sel[bi][s].data();
        ch.budget = B;
      }
      ForwardBatch batch;
      batch.tokens = {tokens[N + s]};
      batch.chunks.push_back(ch);
      if (!(st = target->forward(batch, &logits)).ok) return st;
      sparse[bi][s] = score_logits(logits, V, tokens[N + s + 1]);
    }
    r.fallback_rate = static_cast<double>(fallbacks) / S;
    r.reload_fraction = slot_total ? static_cast<double>(loads) / slot_total : 0.0;
    r.head_mass_mean = sparse_steps ? mass / sparse_steps : 1.0;
  }

  say("full reference");
  std::vector<std::vector<double>> recalls(opt.budgets.size());
  std::vector<std::vector<double>> per_layer(opt.budgets.size(), std::vector<double>(L, 0.0));
  std::vector<double> probs;
  double nll_full = 0;
  std::vector<int> agree(opt.budgets.size(), 0);
  std::vector<double> nll_sparse(opt.budgets.size(), 0.0);
  std::vector<float> q;
  for (int s = 0; s < S; ++s) {
    ForwardBatch batch;
    batch.tokens = {tokens[N + s]};
    batch.chunks.push_back({base, N + s, 1, LogitsMode::Last});
    batch.q_capture = &q;
    if (!(st = target->forward(batch, &logits)).ok) return st;
    const StepOutcome full = score_logits(logits, V, tokens[N + s + 1]);
    nll_full += full.nll;
    for (size_t bi = 0; bi < opt.budgets.size(); ++bi) {
      agree[bi] += sparse[bi][s].argmax == full.argmax;
      nll_sparse[bi] += sparse[bi][s].nll;
    }
    const int T = N + s + 1;
    probs.resize(static_cast<size_t>(T));
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
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
        for (size_t bi = 0; bi < opt.budgets.size(); ++bi) {
          const int B = opt.budgets[bi];
          double m = 0;
          if (sel[bi][s].empty()) {
            m = sum;
          } else {
            const int32_t* ix = sel[bi][s].data() + static_cast<size_t>(h / G) * B;
            for (int i = 0; i < B; ++i)
              if (ix[i] >= 0 && ix[i] < T) m += probs[ix[i]];
          }
          recalls[bi].push_back(m / sum);
          per_layer[bi][l] += m / sum / (H * S);
        }
      }
    }
  }
  report->ppl_full = std::exp(nll_full / S);
  for (size_t bi = 0; bi < opt.budgets.size(); ++bi) {
    BudgetFidelity& r = report->budgets[bi];
    std::vector<double>& v = recalls[bi];
    double sum = 0, sq = 0;
    for (double x : v) sum += x;
    r.recall_mean = sum / v.size();
    for (double x : v) sq += (x - r.recall_mean) * (x - r.recall_mean);
    r.recall_std = std::sqrt(sq / v.size());
    std::sort(v.begin(), v.end());
    r.recall_min = v.front();
    r.recall_p10 = v[v.size() / 10];
    r.recall_per_layer = per_layer[bi];
    r.top1_agreement = static_cast<double>(agree[bi]) / S;
    r.ppl_sparse = std::exp(nll_sparse[bi] / S);
    r.ppl_ratio = r.ppl_sparse / report->ppl_full;
  }
  report->target_params = model_param_count(*target);
  report->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Status::Ok();
}

}  // namespace spx::retrieval
