// SpeContext decode speed on one GPU against our dense mode (issue 6, Speed).
//
// The target is bench_model.cuh's decoder stack (seeded random bf16 weights);
// the retrieval head is a seeded random EAGLE-like layer at the target's
// width sharing its embedding, pruned as the paper prunes it: per step it
// norms the token's embedding, projects Q and K, applies RoPE, appends K to
// its own K cache, scores every cached token (retrieval_scores_forward, GQA
// group max) and picks B per KV head (topk_select_forward). Its cost is part
// of every measured step.
//
// SpeContext step: head -> selection -> every target layer attends only to
// the selection (sparse_decode_attention_forward). Layers whose KV the
// planner (planner/memory_plan.h, paper Eq. 6-8) puts in host memory keep
// full K/V in one pinned, mapped host pool and B device slots per request and
// KV head; the slot maps diff each step's selection against what the slots
// hold, and only the missing rows are gathered on a low-priority copy
// stream, queued for all host layers at once so each lands at least a layer
// ahead of its use; host layer l waits on its own event. New tokens' K/V are
// written straight into the host tier (the fused qkv_rope kernel through the
// mapped pointer) and copied into their slot inside the layer. Two paths
// (--slot-path):
//   device (default): the diff runs on the GPU (slot_map_update_forward) and
//     the gathers read the list's length there (elastic_gather_list_forward,
//     a few persistent blocks, so the compute stream keeps its SMs); nothing
//     visits the host, and the step is one CUDA graph like the device-only
//     one (the breakdown comes from eager steps of the same work);
//   host: the selection goes to the host, kv/slot_map.h diffs it on all
//     cores, the lists are uploaded, and elastic_gather_forward's grid is
//     sized to the list (the previous design, kept for comparison).
//
// Dense step: bench_decode (full flash-decoding, the dense_bench path).
//
// Whole 32k-token generations do not fit a 10-minute run, so each system is
// timed at sampled context positions across the output range (KV filled with
// random values up to that length; warm-up steps, then timed steps); the
// report (specontext_report.py) integrates step time over the output range
// (trapezoid) and adds the measured prefill. JSON keeps every raw figure.
//
// Batches: device-max (every layer on the device), common, "max" (host tier
// forced, pool capped at --max-host-gb 32), and the transfer-aware rule's
// batch per selection source (planner/transfer_budget.h: a calibration run
// at the end of the range measures the reload fraction and the gather
// bandwidth) with, for --search settings, its neighbours rule-2, +2, +4. The
// host pool is sized from MemAvailable minus --host-headroom-gb (--host-gb
// overrides).
//
//   specontext_bench --json out.json [--quick] [--settings 2048:16384,...]
//       [--search none|all|in:out,...] [--exposed-share 0.1] [--host-gb N]
//       [--gather-blocks 16] [--offload-only] [--batches 29,31 [--batch-selection drift]]
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <thread>

#include "bench_model.cuh"
#include "cuda/host_memory.h"
#include "cuda/sparse_ops.h"
#include "kv/slot_map.h"
#include "planner/memory_plan.h"
#include "planner/transfer_budget.h"

namespace spx::bench {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Options {
  std::string model = "llama-3.1-8b", json;
  std::vector<std::pair<int, int>> settings = {{2048, 16384}, {2048, 32768}, {16384, 2048},
                                               {32768, 2048}};
  int budget = 2048, n_sink = 4, n_recent = 16;
  int positions_long = 5, positions_short = 3;  // sampled positions, outputs >= / < 8192
  int warm = 3, steps = 6;
  int common = 8;            // the batch every system runs
  double host_gb = 0;        // pinned host pool cap; 0: MemAvailable - host_headroom_gb
  double host_headroom_gb = 16;  // host memory left to everything else when sizing the pool
  double max_host_gb = 32;   // the "max" rows' host-tier cap (the session-3 batch, for comparison)
  double exposed_share = 0.10;   // admission: predicted exposed transfer share at the end
  int calib_layers = 2;      // host layers of the reload / bandwidth calibration run
  int search_step = 2;       // candidate batches rule-step, rule, rule+step, rule+2*step
  // Settings with the batch search (the two the targets name a batch for).
  std::vector<std::pair<int, int>> search = {{2048, 32768}, {32768, 2048}};
  bool search_all = false;
  double spare_gb = 4;       // device memory left unplanned
  double device_gb = 0;      // > 0: pretend the device has only this much free (smoke runs)
  double keep = 0.8;         // drift run: share of last step's selection kept
  int chunk = 8192;
  bool skip_dense = false, skip_offload = false;
  bool offload_only = false;          // only the host-tier runs (breakdowns)
  std::string slot_path = "device";   // device | host | both
  // Persistent gather grid (device path). 16 fill PCIe; fewer slow the
  // compute less while gathers run, but at [2k,32k] (drift, batches 29/31) 8
  // gained only 0.3-0.9% and 4 lost 2.4% at 31 (bench/README.md, session 4).
  int gather_blocks = 16;
  // --batches: only these host-tier batches (kind "fixed"), with one selection
  // source, instead of the rule's and the "max" rows (a gather-grid or other
  // A/B at a known batch without the calibration runs).
  std::vector<int> batches;
  std::string batch_selection = "drift";  // drift | random-head
  cuda::HostPages host_pages = cuda::HostPages::kHuge;  // --host-pages huge|small|cudahostalloc
};

// ---- the retrieval head -----------------------------------------------------
struct Head {
  bf16 *norm = nullptr, *wq = nullptr, *wk = nullptr;
  size_t bytes = 0;
};

Status make_head(Model& m, uint64_t seed, Head* h) {
  const ModelShape& s = m.s;
  const size_t before = m.total_bytes;
  SPX_STATUS_TRY(ones(m, s.hidden, &h->norm));
  SPX_STATUS_TRY(random_matrix(m, size_t(s.heads) * s.head_dim * s.hidden, seed, &h->wq));
  SPX_STATUS_TRY(random_matrix(m, size_t(s.kv_heads) * s.head_dim * s.hidden, seed + 1, &h->wk));
  h->bytes = m.total_bytes - before;
  SPX_CUDA_TRY(cudaDeviceSynchronize());
  return Status::Ok();
}

// cache[slots[i], h, positions[i], :] = k[i, h, :]: the head keeps K only (no V).
__global__ void k_append_kernel(bf16* cache,               // [slots, kv_heads, capacity, head_dim]
                                const bf16* k,             // [n, kv_heads, head_dim]
                                const int32_t* slots,      // [n]
                                const int32_t* positions,  // [n]
                                int kv_heads, int head_dim, int capacity) {
  const int h = blockIdx.x, i = blockIdx.y;
  const size_t row = (size_t(slots[i]) * kv_heads + h) * capacity + positions[i];
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    cache[row * head_dim + d] = k[(size_t(i) * kv_heads + h) * head_dim + d];
}

// ---- pinned memory ----------------------------------------------------------
struct Pinned {
  void* p = nullptr;
  size_t bytes = 0;
  Pinned() = default;
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;
  ~Pinned() {
    if (p) cudaFreeHost(p);
  }
  Status alloc(size_t n, unsigned flags = cudaHostAllocDefault) {
    SPX_CUDA_TRY(cudaHostAlloc(&p, std::max<size_t>(n, 1), flags));
    bytes = n;
    return Status::Ok();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

// The host tier: one mapped pinned pool, carved per measurement into host
// layers of [R, kv_heads, capacity, head_dim] K then V. Backed by
// transparent huge pages unless --host-pages says otherwise
// (cuda/host_memory.h: the gathers' rows are scattered over tens of GB).
struct HostPool {
  cuda::MappedHost mem;
  char* dev = nullptr;  // the device-visible pointer of mem
  double alloc_s = 0, fill_s = 0;
  double d2h_gbps = 0, h2d_gbps = 0;
};

// ---- memory planning ----------------------------------------------------------
struct Memory {
  size_t free0 = 0;  // device bytes for KV and workspaces, after weights and spare
};

size_t workspace_bytes(const ModelShape& s, int R, int cap, int budget, int num_sms) {
  const size_t H = s.hidden, D = s.head_dim, QH = s.heads, KV = s.kv_heads;
  size_t b = size_t(R) * (3 * H + (QH + 2 * KV) * D + 2 * QH * D + 3 * size_t(s.inter)) * 2;
  b += size_t(R) * s.vocab * 4;                       // logits
  b += size_t(R) * (H + (QH + KV) * D) * 2;           // head activations
  b += size_t(R) * (KV + QH) * size_t(cap) * 4;       // scores + score logits
  const int split_d = cuda::decode_attention_split_tokens(R, s.kv_heads, cap, num_sms);
  const int split_s = cuda::decode_attention_split_tokens(R, s.kv_heads, budget, num_sms);
  const int splits = std::max((cap + split_d - 1) / split_d, (budget + split_s - 1) / split_s);
  b += cuda::decode_attention_workspace_bytes(R, s.heads, s.head_dim, splits);
  b += size_t(R) * KV * budget * (4 * 2 + sizeof(cuda::SlotCopy));  // selection, slot ids, copies
  b += cuda::slot_map_state_bytes(R, s.kv_heads, budget, cap);       // device slot maps
  b += size_t(R) * 1024 + (64u << 20);  // small arrays, allocator slack
  return b;
}

size_t dense_kv_bytes(const ModelShape& s, int R, int cap) {
  return size_t(R) * cap * kv_bytes_per_token(s);
}

int dense_max_batch(const ModelShape& s, const Memory& mem, int cap, int num_sms) {
  int best = 0;
  for (int R = 1; R <= 4096; ++R) {
    if (dense_kv_bytes(s, R, cap) + workspace_bytes(s, R, cap, 1, num_sms) > mem.free0) break;
    best = R;
  }
  return best;
}

planner::PlanInput plan_input(const Model& m, const Head& head, const Memory& mem, int R, int cap,
                              int budget, int num_sms) {
  planner::PlanInput in;
  in.model.layers = m.s.layers;
  in.model.kv_heads = m.s.kv_heads;
  in.model.head_dim = m.s.head_dim;
  in.model.alpha = 0;  // GQA is served in the kernels: no repeat_kv buffer
  in.model.target_weight_bytes = int64_t(m.total_bytes - head.bytes);
  in.model.dlm_weight_bytes = int64_t(head.bytes);
  in.requests = R;
  in.budget = budget;
  in.gpu_bytes = int64_t(mem.free0 + m.total_bytes);
  in.measured_overhead_bytes = int64_t(workspace_bytes(m.s, R, cap, budget, num_sms));
  return in;
}

// Host layers the planner wants at sequence capacity `cap`; -1 if nothing fits.
int host_layers_for(const Model& m, const Head& head, const Memory& mem, int R, int cap,
                    int budget, int num_sms) {
  const planner::PlanInput in = plan_input(m, head, mem, R, cap, budget, num_sms);
  planner::Plan plan;
  std::string err;
  if (!planner::make_plan(in, &plan, &err)) return -1;
  const planner::Placement p = planner::place(in, plan, cap);
  return p.fits ? p.host_layers : -1;
}

size_t host_layer_bytes(const ModelShape& s, int R, int hcap) {
  return size_t(R) * s.kv_heads * hcap * s.head_dim * sizeof(bf16) * 2;
}

// Host bytes a batch needs in the pool at capacity `cap` (0: all on the device).
size_t host_need(const Model& m, const Head& head, const Memory& mem, int R, int cap, int budget,
                 int num_sms) {
  const int h = host_layers_for(m, head, mem, R, cap, budget, num_sms);
  return h > 0 ? size_t(h) * host_layer_bytes(m.s, R, cap) : 0;
}

// MemAvailable from /proc/meminfo in bytes; 0 if unknown.
size_t mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  size_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

// What the transfer-aware rule (planner/transfer_budget.h) needs from one
// setting's measurements, and what it answered.
struct Calibration {
  std::string selection;  // random-head | drift-NN
  int batch = 0, host_layers = 0, position = 0;
  double reload = 0, gather_gbps = 0, transfer_ms = 0, exposed_ms = 0, step_ms = 0;
  planner::StepTime step;
  planner::Admission rule;
  bool ok = false;
  std::string error;
};

// The rule for one selection source: the workspace is affine in R, so its
// fixed part and per-request part come from two batches.
Status admit_batch(const Model& m, const Head& head, const Memory& mem, int cap, int budget,
                   int num_sms, size_t host_pool, double share, Calibration* c) {
  planner::AdmissionInput in;
  in.base = plan_input(m, head, mem, 1, cap, budget, num_sms);
  const int64_t w1 = int64_t(workspace_bytes(m.s, 1, cap, budget, num_sms));
  const int64_t w64 = int64_t(workspace_bytes(m.s, 64, cap, budget, num_sms));
  in.overhead_per_request_bytes = (w64 - w1 + 62) / 63;  // rounded up: never optimistic
  in.base.measured_overhead_bytes = std::max<int64_t>(0, w1 - in.overhead_per_request_bytes);
  in.end_len = cap;
  in.host_pool_bytes = int64_t(host_pool);
  in.transfer.kv_heads = m.s.kv_heads;
  in.transfer.head_dim = m.s.head_dim;
  in.transfer.budget = budget;
  in.transfer.reload_fraction = std::min(1.0, std::max(0.0, c->reload));
  in.transfer.gather_gbps = c->gather_gbps;
  in.transfer.max_exposed_share = share;
  in.step = c->step;
  std::string err;
  if (!planner::admit(in, &c->rule, &err)) return Status::Error("admission: " + err);
  return Status::Ok();
}

// ---- one measurement ----------------------------------------------------------
struct Meas {
  std::string system, mode, selection, batch_kind, note, slot_path;
  int in = 0, out = 0, batch = 0, position = 0, host_layers = 0;
  double ms = 0, head_ms = 0, compute_ms = 0, transfer_ms = 0, exposed_ms = 0, hidden_ms = 0;
  double cpu_slot_ms = 0, gpu_slot_ms = 0, gpu_step_ms = 0, eager_ms = 0;
  double bytes_elastic = 0, bytes_full = 0, reload_fraction = 0;
  long long rows_checked = 0, row_mismatches = 0, selection_violations = 0;
};

struct Bench {
  Options o;
  Model m;
  Head head;
  cudaStream_t cs = nullptr, xs = nullptr;  // compute, copy
  cuda::Gemm gemm;
  int num_sms = 0;
  Memory mem;
  HostPool pool;
};

void parallel_for(int n, const std::function<void(int, int)>& fn) {
  const int hw = std::max(1u, std::thread::hardware_concurrency());
  const int T = std::min(n, hw);
  if (T <= 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> ts;
  for (int t = 0; t < T; ++t) {
    const int a = int(int64_t(n) * t / T), b = int(int64_t(n) * (t + 1) / T);
    ts.emplace_back([&fn, a, b] { fn(a, b); });
  }
  for (auto& t : ts) t.join();
}

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Drift run: the host tier's selection for every step, made before the timed
// steps (the real system gets its selection from the head; building these
// must not count as its work). Step k keeps a seeded random `keep` share of
// step k-1's selection, always holds the newest token, and fills the rest with
// random earlier tokens (as a random head would pick them); ascending.
// `mark` is the calling thread's scratch over positions, stamps never reused.
void drift_step(std::vector<int32_t>& prev, int n, int32_t length, double keep, uint64_t& rng,
                std::vector<uint32_t>& mark, uint32_t& stamp, int32_t* out) {
  ++stamp;
  int m = 0;
  auto take = [&](int32_t t) {
    if (m < n && t >= 0 && t < length && mark[t] != stamp) {
      mark[t] = stamp;
      out[m++] = t;
    }
  };
  take(length - 1);
  if (prev.size() == size_t(n)) {
    const int kept = int(keep * n);
    for (int i = 0; i < kept; ++i) {  // partial Fisher-Yates over prev
      const int j = i + int(splitmix(rng) % uint64_t(n - i));
      std::swap(prev[i], prev[j]);
      take(prev[i]);
    }
  }
  for (int tries = 0; m < n && tries < 4 * n; ++tries) take(int32_t(splitmix(rng) % uint64_t(length)));
  for (int32_t t = int32_t(splitmix(rng) % uint64_t(length)), i = 0; m < n && i < length; ++i)
    take((t + i) % length);  // dense corner: length close to n
  std::sort(out, out + n);
  prev.assign(out, out + n);
}

enum class Selection { kHead, kDrift, kNoGather };

// SpeContext at context `ctx` with `R` requests and `host` host layers
// (0: everything on the device, the step is one CUDA graph). kDrift: the host
// tier sees the drift selections; kNoGather: the control run, the same step
// with the copy stream's gathers left out (attention reads stale slots), to
// show what the transfers cost beyond the compute stream's waits.
Status bench_spec(Bench& bn, int ctx, int R, int host, Selection mode, bool device_maps,
                  Meas* meas) {
  const bool drift = mode == Selection::kDrift, gather = mode != Selection::kNoGather;
  const Options& o = bn.o;
  const Model& m = bn.m;
  const ModelShape& s = m.s;
  const int L = s.layers, KV = s.kv_heads, QH = s.heads, D = s.head_dim, H = s.hidden;
  const int B = o.budget, Lg = L - host;
  const int cap = ctx + o.warm + o.steps + 8;
  cudaStream_t cs = bn.cs, xs = bn.xs;
  Buffers b;
  Runner r(m, cs, &bn.gemm);
  SPX_STATUS_TRY(r.reserve(b, R));

  // Device-resident layers: full caches with random K/V up to ctx.
  const size_t layer_elems = size_t(R) * KV * cap * D;
  bf16 *kc = nullptr, *vc = nullptr;
  if (Lg > 0) {
    SPX_STATUS_TRY(b.get(layer_elems * Lg, &kc));
    SPX_STATUS_TRY(b.get(layer_elems * Lg, &vc));
    SPX_CUDA_TRY(cuda::fill_random_forward(kc, layer_elems * Lg, 17, 1.f, cs));
    SPX_CUDA_TRY(cuda::fill_random_forward(vc, layer_elems * Lg, 18, 1.f, cs));
  }
  // The head: activations, its K cache (random up to ctx), scores, selection.
  bf16 *hh, *hq, *hk, *hcache;
  float *scores, *slog;
  int32_t *sel, *counts;
  SPX_STATUS_TRY(b.get(size_t(R) * H, &hh));
  SPX_STATUS_TRY(b.get(size_t(R) * QH * D, &hq));
  SPX_STATUS_TRY(b.get(size_t(R) * KV * D, &hk));
  SPX_STATUS_TRY(b.get(layer_elems, &hcache));
  SPX_CUDA_TRY(cuda::fill_random_forward(hcache, layer_elems, 19, 1.f, cs));
  SPX_STATUS_TRY(b.get(size_t(R) * KV * cap, &scores));
  SPX_STATUS_TRY(b.get(size_t(R) * QH * cap, &slog));
  SPX_STATUS_TRY(b.get(size_t(R) * KV * B, &sel));
  SPX_STATUS_TRY(b.get(R, &counts));
  // Step state.
  int32_t *tokens, *pos, *len, *slot_idx;
  float* logits;
  cuda::SamplingRow* params;
  cuda::DecodeSeq *seqs, *hseqs;
  SPX_STATUS_TRY(b.get(R, &tokens));
  SPX_STATUS_TRY(b.get(R, &pos));
  SPX_STATUS_TRY(b.get(R, &len));
  SPX_STATUS_TRY(b.get(R, &slot_idx));
  SPX_STATUS_TRY(b.get(size_t(R) * s.vocab, &logits));
  SPX_STATUS_TRY(b.get(R, &params));
  SPX_STATUS_TRY(b.get(size_t(R) * std::max(Lg, 1), &seqs));
  SPX_STATUS_TRY(b.get(R, &hseqs));
  {
    std::vector<int32_t> h_tok(R), h_pos(R, ctx), h_len(R, ctx + 1), h_slot(R);
    for (int i = 0; i < R; ++i) h_tok[i] = (i * 131) % s.vocab, h_slot[i] = i;
    std::vector<cuda::SamplingRow> h_params(R, cuda::SamplingRow{0.f, 0, 1.f, 0, 0});
    std::vector<cuda::DecodeSeq> h_seqs(size_t(R) * std::max(Lg, 1)), h_hseqs(R);
    for (int l = 0; l < Lg; ++l)
      for (int i = 0; i < R; ++i) {
        const size_t off = l * layer_elems + size_t(i) * KV * cap * D;
        h_seqs[size_t(l) * R + i] = cuda::DecodeSeq{kc + off, vc + off, cap};
      }
    for (int i = 0; i < R; ++i) {
      const bf16* k = hcache + size_t(i) * KV * cap * D;
      h_hseqs[i] = cuda::DecodeSeq{k, k, cap};  // only K is read
    }
    SPX_CUDA_TRY(cudaMemcpy(tokens, h_tok.data(), R * 4, cudaMemcpyHostToDevice));
    SPX_CUDA_TRY(cudaMemcpy(pos, h_pos.data(), R * 4, cudaMemcpyHostToDevice));
    SPX_CUDA_TRY(cudaMemcpy(len, h_len.data(), R * 4, cudaMemcpyHostToDevice));
    SPX_CUDA_TRY(cudaMemcpy(slot_idx, h_slot.data(), R * 4, cudaMemcpyHostToDevice));
    SPX_CUDA_TRY(cudaMemcpy(params, h_params.data(), R * sizeof(cuda::SamplingRow),
                            cudaMemcpyHostToDevice));
    SPX_CUDA_TRY(cudaMemcpy(seqs, h_seqs.data(), h_seqs.size() * sizeof(cuda::DecodeSeq),
                            cudaMemcpyHostToDevice));
    SPX_CUDA_TRY(cudaMemcpy(hseqs, h_hseqs.data(), R * sizeof(cuda::DecodeSeq),
                            cudaMemcpyHostToDevice));
  }
  const int split = cuda::decode_attention_split_tokens(R, KV, B, bn.num_sms);
  const int max_splits = (B + split - 1) / split;
  char* ws;
  SPX_STATUS_TRY(b.get(cuda::decode_attention_workspace_bytes(R, QH, D, max_splits), &ws));
  const cuda::DecodeAttentionWorkspace w{
      reinterpret_cast<float*>(ws),
      reinterpret_cast<float*>(ws) + size_t(R) * QH * max_splits * D, max_splits};
  const float scale = 1.f / std::sqrt(float(D));

  // ---- the host tier
  const int hcap = host > 0 ? int(bn.pool.mem.bytes / (size_t(host) * host_layer_bytes(s, R, 1)))
                            : 0;
  if (host > 0 && hcap < cap)
    return Status::Error("host pool too small for " + std::to_string(host) + " layers of " +
                         std::to_string(R) + " requests at " + std::to_string(cap) + " tokens");
  const size_t slot_elems = size_t(R) * KV * B * D;  // per host layer, K or V
  bf16 *slot_k = nullptr, *slot_v = nullptr;
  cuda::HostKv* host_kv = nullptr;
  cuda::SlotKv* slot_kv = nullptr;
  cuda::DecodeSeq* slot_seqs = nullptr;
  cuda::SlotCopy *copies_d = nullptr, *fresh_d = nullptr;
  int32_t* slotsel_d = nullptr;
  Pinned sel_h, counts_h, copies_h, fresh_h, slotsel_h;
  std::vector<bf16*> host_k(host), host_v(host);  // device-visible pointers per host layer
  std::vector<std::vector<SlotMap>> maps;
  std::vector<int32_t> drift_sel;  // [warm + steps, R, KV, B]
  if (host > 0) {
    SPX_STATUS_TRY(b.get(slot_elems * host, &slot_k));
    SPX_STATUS_TRY(b.get(slot_elems * host, &slot_v));
    SPX_CUDA_TRY(cudaMemsetAsync(slot_k, 0, slot_elems * host * sizeof(bf16), cs));
    SPX_CUDA_TRY(cudaMemsetAsync(slot_v, 0, slot_elems * host * sizeof(bf16), cs));
    SPX_STATUS_TRY(b.get(size_t(host) * R, &host_kv));
    SPX_STATUS_TRY(b.get(size_t(host) * R, &slot_kv));
    SPX_STATUS_TRY(b.get(size_t(host) * R, &slot_seqs));
    SPX_STATUS_TRY(b.get(size_t(R) * KV * B, &copies_d));
    SPX_STATUS_TRY(b.get(size_t(R) * KV, &fresh_d));
    SPX_STATUS_TRY(b.get(size_t(R) * KV * B, &slotsel_d));
    SPX_STATUS_TRY(sel_h.alloc(size_t(R) * KV * B * 4));
    SPX_STATUS_TRY(counts_h.alloc(size_t(R) * 4));
    SPX_STATUS_TRY(copies_h.alloc(size_t(R) * KV * B * sizeof(cuda::SlotCopy)));
    SPX_STATUS_TRY(fresh_h.alloc(size_t(R) * KV * sizeof(cuda::SlotCopy)));
    SPX_STATUS_TRY(slotsel_h.alloc(size_t(R) * KV * B * 4));
    const size_t half = host_layer_bytes(s, R, hcap) / 2;
    std::vector<cuda::HostKv> hk_h(size_t(host) * R);
    std::vector<cuda::SlotKv> sk_h(size_t(host) * R);
    std::vector<cuda::DecodeSeq> ss_h(size_t(host) * R);
    for (int j = 0; j < host; ++j) {
      host_k[j] = reinterpret_cast<bf16*>(bn.pool.dev + 2 * half * j);
      host_v[j] = reinterpret_cast<bf16*>(bn.pool.dev + 2 * half * j + half);
      for (int i = 0; i < R; ++i) {
        const size_t hoff = size_t(i) * KV * hcap * D, soff = size_t(i) * KV * B * D;
        hk_h[size_t(j) * R + i] = cuda::HostKv{host_k[j] + hoff, host_v[j] + hoff, hcap};
        bf16* sk = slot_k + j * slot_elems + soff;
        bf16* sv = slot_v + j * slot_elems + soff;
        sk_h[size_t(j) * R + i] = cuda::SlotKv{sk, sv};
        ss_h[size_t(j) * R + i] = cuda::DecodeSeq{sk, sv, B};
      }
    }
    SPX_CUDA_TRY(cudaMemcpy(host_kv, hk_h.data(), hk_h.size() * sizeof(cuda::HostKv),
                            cudaMemcpyHostToDevice));
    SPX_CUDA_TRY(cudaMemcpy(slot_kv, sk_h.data(), sk_h.size() * sizeof(cuda::SlotKv),
                            cudaMemcpyHostToDevice));
    SPX_CUDA_TRY(cudaMemcpy(slot_seqs, ss_h.data(), ss_h.size() * sizeof(cuda::DecodeSeq),
                            cudaMemcpyHostToDevice));
    maps.assign(R, std::vector<SlotMap>(KV, SlotMap(B)));
    if (drift) {
      // The device path also runs a warm-up and the timed graph steps.
      const int total = o.warm + o.steps + (device_maps ? 1 + o.steps : 0);
      drift_sel.assign(size_t(total) * R * KV * B, -1);
      parallel_for(R, [&](int a, int e) {
        std::vector<uint32_t> mark(cap, 0);
        uint32_t stamp = 0;
        for (int i = a; i < e; ++i)
          for (int h = 0; h < KV; ++h) {
            std::vector<int32_t> prev;
            uint64_t rng = 0x5eed0000ull + uint64_t(i) * 131u + h;
            for (int k = 0; k < total; ++k) {
              const int32_t length = ctx + k + 1;
              const int n = std::min<int>(length, B);
              drift_step(prev, n, length, o.keep, rng, mark, stamp,
                         drift_sel.data() + ((size_t(k) * R + i) * KV + h) * B);
            }
          }
      });
    }
  }
  SPX_CUDA_TRY(cudaStreamSynchronize(cs));

  // ---- step pieces
  auto head_step = [&]() -> Status {
    SPX_CUDA_TRY(cuda::embedding_forward(r.x_, m.embed, tokens, R, H, s.vocab, cs));
    SPX_CUDA_TRY(cuda::rmsnorm_forward(hh, r.x_, bn.head.norm, R, H, s.eps, cs));
    SPX_STATUS_TRY(bn.gemm.run(hq, hh, bn.head.wq, R, QH * D, H, false, false, cs));
    SPX_STATUS_TRY(bn.gemm.run(hk, hh, bn.head.wk, R, KV * D, H, false, false, cs));
    SPX_CUDA_TRY(cuda::rope_forward(hq, hk, pos, m.inv_freq, R, QH, KV, D, cs));
    k_append_kernel<<<dim3(KV, R), 128, 0, cs>>>(hcache, hk, slot_idx, pos, KV, D, cap);
    SPX_CUDA_TRY(cudaGetLastError());
    SPX_CUDA_TRY(cuda::retrieval_scores_forward(scores, slog, hq, hseqs, len, R, QH, KV, D, scale,
                                                true, cap, cs));
    SPX_CUDA_TRY(cuda::topk_select_forward(sel, counts, nullptr, scores, len, R, KV, cap, B,
                                           o.n_sink, o.n_recent, cs));
    return Status::Ok();
  };
  auto device_cache = [&](int l) {
    return LayerCache{kc + l * layer_elems, vc + l * layer_elems, cap};
  };
  auto device_attend = [&](int l, const LayerCache&) -> Status {
    SPX_CUDA_TRY(cuda::sparse_decode_attention_forward(r.attn_, r.q_, seqs + size_t(l) * R, sel,
                                                       counts, R, QH, KV, D, B, scale, split, w,
                                                       cs));
    return Status::Ok();
  };
  auto tail = [&]() -> Status {
    SPX_STATUS_TRY(bn.gemm.run(logits, r.h_, m.lm_head, R, s.vocab, H, true, false, cs));
    SPX_CUDA_TRY(cuda::sample_forward(tokens, logits, params, R, s.vocab, cs));
    advance_kernel<<<(R + 127) / 128, 128, 0, cs>>>(pos, len, R);
    SPX_CUDA_TRY(cudaGetLastError());
    return Status::Ok();
  };

  std::vector<cudaEvent_t> ev(6 + 3 * std::max(host, 1));
  for (auto& e : ev) SPX_CUDA_TRY(cudaEventCreate(&e));
  struct EventsGuard {
    std::vector<cudaEvent_t>& ev;
    ~EventsGuard() {
      for (auto e : ev) cudaEventDestroy(e);
    }
  } guard{ev};
  cudaEvent_t ev_start = ev[0], ev_sel = ev[1], ev_d2h = ev[2], ev_dev = ev[3], ev_copy0 = ev[4],
              ev_end = ev[5];
  auto ev_gather = [&](int j) { return ev[6 + 3 * j]; };
  auto ev_pre = [&](int j) { return ev[7 + 3 * j]; };
  auto ev_post = [&](int j) { return ev[8 + 3 * j]; };
  auto elapsed = [](cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return double(ms);
  };

  meas->batch = R;
  meas->position = ctx;
  meas->host_layers = host;
  const int timed = o.steps;

  // Host layers, both slot-map paths: the layer's cache is the host tier;
  // attention reads the slots through the selection -> slot list.
  auto host_cache = [&](int l) {
    return LayerCache{host_k[l - Lg], host_v[l - Lg], hcap};
  };
  int n_fresh = 0;  // the fresh list's length (device path: one entry per row)
  auto host_attend = [&](int l, const LayerCache&) -> Status {
    const int j = l - Lg;
    // The step's own token: just written to the host tier, now into its slot.
    SPX_CUDA_TRY(cuda::elastic_gather_forward(fresh_d, n_fresh, host_kv + size_t(j) * R,
                                              slot_kv + size_t(j) * R, KV, D, B, cs));
    SPX_CUDA_TRY(cuda::sparse_decode_attention_forward(r.attn_, r.q_, slot_seqs + size_t(j) * R,
                                                       slotsel_d, counts, R, QH, KV, D, B, scale,
                                                       split, w, cs));
    return Status::Ok();
  };
  // Elastic check: every slot of the first and last request, every head, in
  // the last host layer holds exactly its token's host row. tokens_of(i, t)
  // fills t [KV, B] with request i's slot tokens (-1: empty).
  auto check_slots = [&](const std::function<Status(int, std::vector<int32_t>*)>& tokens_of)
      -> Status {
    const int j = host - 1;
    const size_t half = host_layer_bytes(s, R, hcap) / 2;
    const bf16* hk_base = reinterpret_cast<const bf16*>(static_cast<char*>(bn.pool.mem.host) + 2 * half * j);
    const bf16* hv_base = reinterpret_cast<const bf16*>(static_cast<char*>(bn.pool.mem.host) + 2 * half * j + half);
    std::vector<uint16_t> dk(size_t(KV) * B * D), dv(size_t(KV) * B * D);
    std::vector<int32_t> toks(size_t(KV) * B);
    for (int i : {0, R - 1}) {
      const size_t soff = j * slot_elems + size_t(i) * KV * B * D;
      SPX_CUDA_TRY(cudaMemcpy(dk.data(), slot_k + soff, dk.size() * 2, cudaMemcpyDeviceToHost));
      SPX_CUDA_TRY(cudaMemcpy(dv.data(), slot_v + soff, dv.size() * 2, cudaMemcpyDeviceToHost));
      SPX_STATUS_TRY(tokens_of(i, &toks));
      for (int h = 0; h < KV; ++h)
        for (int sl = 0; sl < B; ++sl) {
          const int32_t t = toks[size_t(h) * B + sl];
          if (t < 0) continue;
          const size_t hrow = ((size_t(i) * KV + h) * hcap + t) * D;
          const size_t drow = (size_t(h) * B + sl) * D;
          ++meas->rows_checked;
          meas->row_mismatches += std::memcmp(&dk[drow], hk_base + hrow, D * 2) != 0 ||
                                  std::memcmp(&dv[drow], hv_base + hrow, D * 2) != 0;
        }
    }
    return Status::Ok();
  };

  if (host == 0) {
    // Everything on the device: the selection never leaves it.
    auto step = [&]() -> Status {
      SPX_STATUS_TRY(head_step());
      SPX_STATUS_TRY(r.layers(R, 0, L, pos, slot_idx, device_cache, device_attend));
      return tail();
    };
    double head_sum = 0, step_sum = 0;
    int head_n = 0;
    for (int i = 0; i < o.warm; ++i) {  // eager warm-up, timed for the head's share
      SPX_CUDA_TRY(cudaEventRecord(ev_start, cs));
      SPX_STATUS_TRY(head_step());
      SPX_CUDA_TRY(cudaEventRecord(ev_sel, cs));
      SPX_STATUS_TRY(r.layers(R, 0, L, pos, slot_idx, device_cache, device_attend));
      SPX_STATUS_TRY(tail());
      SPX_CUDA_TRY(cudaEventRecord(ev_end, cs));
      SPX_CUDA_TRY(cudaEventSynchronize(ev_end));
      if (i > 0 || o.warm == 1) {
        head_sum += elapsed(ev_start, ev_sel);
        step_sum += elapsed(ev_start, ev_end);
        ++head_n;
      }
    }
    cudaGraphExec_t exec;
    SPX_STATUS_TRY(capture(cs, step, &exec));
    SPX_CUDA_TRY(cudaGraphLaunch(exec, cs));
    SPX_CUDA_TRY(cudaStreamSynchronize(cs));
    float ms = 0;
    const Status st = time_ms(
        cs, timed,
        [&]() -> Status {
          SPX_CUDA_TRY(cudaGraphLaunch(exec, cs));
          return Status::Ok();
        },
        &ms);
    cudaGraphExecDestroy(exec);
    SPX_STATUS_TRY(st);
    meas->mode = "device";
    meas->ms = ms / timed;
    meas->gpu_step_ms = meas->ms;
    const double eager = head_n ? step_sum / head_n : meas->ms;
    // The head's share of an eager step, applied to the graph step.
    meas->head_ms = head_n ? meas->ms * (head_sum / head_n) / eager : 0;
    meas->compute_ms = meas->ms - meas->head_ms;
    meas->note = "one CUDA graph per step; head share from eager steps";
  } else if (device_maps) {
    // Host layers, device path: the diff on the GPU right after the head,
    // the persistent list gathers on the copy stream; no host round trip.
    int32_t *st_tok, *st_used, *st_tslot, *st_stamp, *n_copies, *drift_cur = nullptr,
        *drift_d = nullptr;
    cuda::SlotMapCounters* counters;
    SPX_STATUS_TRY(b.get(size_t(R) * KV * B, &st_tok));
    SPX_STATUS_TRY(b.get(size_t(R) * KV * B, &st_used));
    SPX_STATUS_TRY(b.get(size_t(R) * KV * cap, &st_tslot));
    SPX_STATUS_TRY(b.get(size_t(R) * KV, &st_stamp));
    SPX_STATUS_TRY(b.get(1, &n_copies));
    SPX_STATUS_TRY(b.get(1, &counters));
    const cuda::SlotMapState st{st_tok, st_used, st_tslot, st_stamp, cap};
    SPX_CUDA_TRY(cuda::slot_map_reset(st, 0, R, KV, B, cs));
    SPX_CUDA_TRY(cudaMemsetAsync(counters, 0, sizeof(cuda::SlotMapCounters), cs));
    const size_t sel_elems = size_t(R) * KV * B;
    if (drift) {  // every step's drift selection on the device, copied in before each step
      SPX_STATUS_TRY(b.get(drift_sel.size(), &drift_d));
      SPX_STATUS_TRY(b.get(sel_elems, &drift_cur));
      SPX_CUDA_TRY(cudaMemcpy(drift_d, drift_sel.data(), drift_sel.size() * 4,
                              cudaMemcpyHostToDevice));
    }
    n_fresh = R * KV;
    long long drift_step_no = 0;
    auto next_drift = [&]() -> Status {
      if (!drift) return Status::Ok();
      if (size_t(drift_step_no + 1) * sel_elems > drift_sel.size())
        return Status::Error("drift selections exhausted");
      SPX_CUDA_TRY(cudaMemcpyAsync(drift_cur, drift_d + size_t(drift_step_no) * sel_elems,
                                   sel_elems * 4, cudaMemcpyDeviceToDevice, cs));
      ++drift_step_no;
      return Status::Ok();
    };
    // One step; `timing` records the breakdown events (eager only: a graph
    // keeps just the fork/join events).
    auto step = [&](bool timing) -> Status {
      if (timing) SPX_CUDA_TRY(cudaEventRecord(ev_start, cs));
      SPX_STATUS_TRY(head_step());
      if (timing) SPX_CUDA_TRY(cudaEventRecord(ev_sel, cs));
      SPX_CUDA_TRY(cudaMemsetAsync(n_copies, 0, 4, cs));
      SPX_CUDA_TRY(cuda::slot_map_update_forward(copies_d, n_copies, fresh_d, slotsel_d, counters,
                                                 st, drift ? drift_cur : sel, counts, len,
                                                 nullptr, R, KV, B, cs));
      SPX_CUDA_TRY(cudaEventRecord(ev_copy0, cs));
      SPX_CUDA_TRY(cudaStreamWaitEvent(xs, ev_copy0, 0));
      for (int j = 0; j < host; ++j) {
        if (gather)
          SPX_CUDA_TRY(cuda::elastic_gather_list_forward(copies_d, n_copies,
                                                         host_kv + size_t(j) * R,
                                                         slot_kv + size_t(j) * R, KV, D, B,
                                                         o.gather_blocks, xs));
        SPX_CUDA_TRY(cudaEventRecord(ev_gather(j), xs));
      }
      SPX_STATUS_TRY(r.layers(R, 0, Lg, pos, slot_idx, device_cache, device_attend));
      if (timing) SPX_CUDA_TRY(cudaEventRecord(ev_dev, cs));
      for (int j = 0; j < host; ++j) {
        if (timing && j > 0) SPX_CUDA_TRY(cudaEventRecord(ev_pre(j), cs));
        SPX_CUDA_TRY(cudaStreamWaitEvent(cs, ev_gather(j), 0));
        if (timing) SPX_CUDA_TRY(cudaEventRecord(ev_post(j), cs));
        SPX_STATUS_TRY(r.layers(R, Lg + j, Lg + j + 1, pos, slot_idx, host_cache, host_attend));
      }
      SPX_STATUS_TRY(tail());
      if (timing) SPX_CUDA_TRY(cudaEventRecord(ev_end, cs));
      return Status::Ok();
    };
    auto loads_now = [&](cuda::SlotMapCounters* k) -> Status {
      SPX_CUDA_TRY(cudaMemcpy(k, counters, sizeof(*k), cudaMemcpyDeviceToHost));
      return Status::Ok();
    };
    double sums[6] = {0};  // head, slot diff, compute, transfer, exposed, step
    for (int i = 0; i < o.warm + timed; ++i) {
      SPX_STATUS_TRY(next_drift());
      SPX_STATUS_TRY(step(true));
      SPX_CUDA_TRY(cudaEventSynchronize(ev_end));
      if (i < o.warm) continue;
      const double step_ms = elapsed(ev_start, ev_end), head_ms = elapsed(ev_start, ev_sel);
      double exposed = elapsed(ev_dev, ev_post(0));
      for (int j = 1; j < host; ++j) exposed += elapsed(ev_pre(j), ev_post(j));
      const double diff_ms = elapsed(ev_sel, ev_copy0);
      sums[0] += head_ms;
      sums[1] += diff_ms;
      sums[2] += step_ms - head_ms - diff_ms - exposed;
      sums[3] += elapsed(ev_copy0, ev_gather(host - 1));
      sums[4] += exposed;
      sums[5] += step_ms;
    }
    cuda::SlotMapCounters k0{}, k1{};
    SPX_STATUS_TRY(loads_now(&k0));
    // The same step as one CUDA graph: the number the throughput uses.
    cudaGraphExec_t exec = nullptr;
    const Status cap_st = capture(cs, [&]() { return step(false); }, &exec);
    double graph_ms = 0;
    if (cap_st.ok) {
      SPX_STATUS_TRY(next_drift());
      SPX_CUDA_TRY(cudaGraphLaunch(exec, cs));
      SPX_CUDA_TRY(cudaStreamSynchronize(cs));
      SPX_STATUS_TRY(loads_now(&k0));
      float ms = 0;
      const Status t = time_ms(
          cs, timed,
          [&]() -> Status {
            SPX_STATUS_TRY(next_drift());
            SPX_CUDA_TRY(cudaGraphLaunch(exec, cs));
            return Status::Ok();
          },
          &ms);
      cudaGraphExecDestroy(exec);
      SPX_STATUS_TRY(t);
      graph_ms = ms / timed;
    } else {
      std::fprintf(stderr, "specontext_bench: graph capture of the host-tier step failed (%s); "
                           "eager timing only\n", cap_st.message.c_str());
      cudaGetLastError();
    }
    SPX_STATUS_TRY(loads_now(&k1));
    // Loads per step from the counters over the graph steps (eager ones if no graph).
    const double steps_counted = cap_st.ok ? timed : 0;
    const double row_bytes = 2.0 * D * sizeof(bf16) * host;  // K+V, all host layers
    const int32_t length_end = ctx + 1 + o.warm + timed + (cap_st.ok ? 1 + timed : 0);
    double loads = 0;
    if (steps_counted > 0) {
      loads = double(k1.loads - k0.loads) / steps_counted;
    } else {
      loads = double(k1.loads) / (o.warm + timed);  // eager only: every step
    }
    meas->mode = "offload";
    meas->slot_path = "device";
    meas->eager_ms = sums[5] / timed;
    meas->ms = cap_st.ok ? graph_ms : meas->eager_ms;
    meas->gpu_step_ms = meas->ms;
    meas->head_ms = sums[0] / timed;
    meas->gpu_slot_ms = sums[1] / timed;
    meas->compute_ms = sums[2] / timed;
    meas->transfer_ms = sums[3] / timed;
    meas->exposed_ms = sums[4] / timed;
    meas->hidden_ms = std::max(0.0, meas->transfer_ms - meas->exposed_ms);
    meas->bytes_elastic = loads * row_bytes;
    meas->bytes_full = double(R) * KV * std::min<int32_t>(length_end - 1, B) * row_bytes;
    meas->reload_fraction = meas->bytes_full > 0 ? meas->bytes_elastic / meas->bytes_full : 0;
    meas->selection_violations = (long long)k1.bad_rows;
    meas->note = std::string(cap_st.ok ? "ms = one CUDA graph per step" : "ms = eager steps") +
                 "; breakdown (head, slot diff on the GPU, compute, transfer, exposed) from eager "
                 "steps; exposed = compute-stream wait on the host tier" +
                 (gather ? "" : "; control: the same step without the copy-stream gathers");
    if (!gather) return Status::Ok();

    SPX_STATUS_TRY(check_slots([&](int i, std::vector<int32_t>* toks) -> Status {
      SPX_CUDA_TRY(cudaMemcpy(toks->data(), st_tok + size_t(i) * KV * B, toks->size() * 4,
                              cudaMemcpyDeviceToHost));
      return Status::Ok();
    }));
  } else {
    // Host layers: selection to the host, slot diff, gathers on the copy stream.
    std::vector<std::vector<cuda::SlotCopy>> req_copies(R), req_fresh(R);
    std::vector<int64_t> req_loads(R), req_sel(R);
    std::atomic<long long> violations{0};
    long long step_no = 0;
    double sums[8] = {0};  // head, compute, transfer, exposed, cpu, gpu step, bytes elastic, full
    auto step = [&](bool record) -> Status {
      ++step_no;
      SPX_CUDA_TRY(cudaEventRecord(ev_start, cs));
      SPX_STATUS_TRY(head_step());
      SPX_CUDA_TRY(cudaEventRecord(ev_sel, cs));
      SPX_CUDA_TRY(cudaStreamWaitEvent(xs, ev_sel, 0));
      SPX_CUDA_TRY(cudaMemcpyAsync(sel_h.p, sel, size_t(R) * KV * B * 4, cudaMemcpyDeviceToHost, xs));
      SPX_CUDA_TRY(cudaMemcpyAsync(counts_h.p, counts, size_t(R) * 4, cudaMemcpyDeviceToHost, xs));
      SPX_CUDA_TRY(cudaEventRecord(ev_d2h, xs));
      SPX_STATUS_TRY(r.layers(R, 0, Lg, pos, slot_idx, device_cache, device_attend));
      SPX_CUDA_TRY(cudaEventRecord(ev_dev, cs));
      // CPU: slot-map diff while the device layers run.
      SPX_CUDA_TRY(cudaEventSynchronize(ev_d2h));
      const auto t0 = Clock::now();
      const int32_t length = ctx + int32_t(step_no);  // every request has the same length
      const int32_t newest = length - 1;
      const int32_t* sel_all = sel_h.as<int32_t>();
      const int32_t* cnt = counts_h.as<int32_t>();
      int32_t* slotsel = slotsel_h.as<int32_t>();
      parallel_for(R, [&](int a, int e) {
        std::vector<int32_t> slots;
        std::vector<SlotLoad> loads;
        for (int i = a; i < e; ++i) {
          const int n = cnt[i];
          long long bad = n != std::min(length, B);
          const int nn = std::max(0, std::min(n, B));
          slots.resize(size_t(KV) * nn);
          req_copies[i].clear();
          req_fresh[i].clear();
          req_loads[i] = 0;
          req_sel[i] = int64_t(KV) * nn;
          for (int h = 0; h < KV; ++h) {
            const int32_t* row = sel_all + (size_t(i) * KV + h) * B;
            for (int k = 0; k < nn; ++k)  // the head's selection: valid, ascending
              bad += row[k] < 0 || row[k] >= length || (k > 0 && row[k] <= row[k - 1]);
            if (drift)  // this step's precomputed drift selection instead of the head's
              row = drift_sel.data() + ((size_t(step_no - 1) * R + i) * KV + h) * B;
            loads.clear();
            const int got = maps[i][h].update(row, nn, &loads, slots.data() + size_t(h) * nn);
            if (got < 0) {
              ++bad;
              continue;
            }
            req_loads[i] += got;
            for (const SlotLoad& ld : loads) {
              const cuda::SlotCopy c{i, h, ld.token, ld.slot};
              (ld.token == newest ? req_fresh[i] : req_copies[i]).push_back(c);
            }
            int32_t* out = slotsel + (size_t(i) * KV + h) * B;
            std::copy(slots.data() + size_t(h) * nn, slots.data() + size_t(h) * nn + nn, out);
            std::fill(out + nn, out + B, -1);
          }
          violations += bad;
        }
      });
      std::vector<size_t> off(R + 1, 0), foff(R + 1, 0);
      for (int i = 0; i < R; ++i) {
        off[i + 1] = off[i] + req_copies[i].size();
        foff[i + 1] = foff[i] + req_fresh[i].size();
      }
      parallel_for(R, [&](int a, int e) {
        for (int i = a; i < e; ++i) {
          std::copy(req_copies[i].begin(), req_copies[i].end(),
                    copies_h.as<cuda::SlotCopy>() + off[i]);
          std::copy(req_fresh[i].begin(), req_fresh[i].end(), fresh_h.as<cuda::SlotCopy>() + foff[i]);
        }
      });
      const int n_copies = int(off[R]);
      n_fresh = int(foff[R]);
      const double cpu_ms = seconds_since(t0) * 1e3;
      // Copy stream: the lists, then every host layer's gather.
      SPX_CUDA_TRY(cudaEventRecord(ev_copy0, xs));
      if (n_copies > 0)
        SPX_CUDA_TRY(cudaMemcpyAsync(copies_d, copies_h.p, size_t(n_copies) * sizeof(cuda::SlotCopy),
                                     cudaMemcpyHostToDevice, xs));
      if (n_fresh > 0)
        SPX_CUDA_TRY(cudaMemcpyAsync(fresh_d, fresh_h.p, size_t(n_fresh) * sizeof(cuda::SlotCopy),
                                     cudaMemcpyHostToDevice, xs));
      SPX_CUDA_TRY(cudaMemcpyAsync(slotsel_d, slotsel_h.p, size_t(R) * KV * B * 4,
                                   cudaMemcpyHostToDevice, xs));
      for (int j = 0; j < host; ++j) {
        if (n_copies > 0 && gather)
          SPX_CUDA_TRY(cuda::elastic_gather_forward(copies_d, n_copies, host_kv + size_t(j) * R,
                                                    slot_kv + size_t(j) * R, KV, D, B, xs));
        SPX_CUDA_TRY(cudaEventRecord(ev_gather(j), xs));
      }
      for (int j = 0; j < host; ++j) {
        if (j > 0) SPX_CUDA_TRY(cudaEventRecord(ev_pre(j), cs));
        SPX_CUDA_TRY(cudaStreamWaitEvent(cs, ev_gather(j), 0));
        SPX_CUDA_TRY(cudaEventRecord(ev_post(j), cs));
        SPX_STATUS_TRY(r.layers(R, Lg + j, Lg + j + 1, pos, slot_idx, host_cache, host_attend));
      }
      SPX_STATUS_TRY(tail());
      SPX_CUDA_TRY(cudaEventRecord(ev_end, cs));
      SPX_CUDA_TRY(cudaEventSynchronize(ev_end));
      if (record) {
        const double step_ms = elapsed(ev_start, ev_end), head_ms = elapsed(ev_start, ev_sel);
        double exposed = elapsed(ev_dev, ev_post(0));
        for (int j = 1; j < host; ++j) exposed += elapsed(ev_pre(j), ev_post(j));
        const double transfer = elapsed(ev_copy0, ev_gather(host - 1));
        int64_t loads = 0, selected = 0;
        for (int i = 0; i < R; ++i) loads += req_loads[i], selected += req_sel[i];
        const double row_bytes = 2.0 * D * sizeof(bf16) * host;  // K+V, all host layers
        sums[0] += head_ms;
        sums[1] += step_ms - head_ms - exposed;
        sums[2] += transfer;
        sums[3] += exposed;
        sums[4] += cpu_ms;
        sums[5] += step_ms;
        sums[6] += loads * row_bytes;
        sums[7] += selected * row_bytes;
      }
      return Status::Ok();
    };
    for (int i = 0; i < o.warm; ++i) SPX_STATUS_TRY(step(false));
    const auto t0 = Clock::now();
    for (int i = 0; i < timed; ++i) SPX_STATUS_TRY(step(true));
    const double wall_ms = seconds_since(t0) * 1e3 / timed;
    meas->mode = "offload";
    meas->slot_path = "host";
    meas->ms = wall_ms;
    meas->eager_ms = wall_ms;
    meas->head_ms = sums[0] / timed;
    meas->compute_ms = sums[1] / timed;
    meas->transfer_ms = sums[2] / timed;
    meas->exposed_ms = sums[3] / timed;
    meas->hidden_ms = std::max(0.0, meas->transfer_ms - meas->exposed_ms);
    meas->cpu_slot_ms = sums[4] / timed;
    meas->gpu_step_ms = sums[5] / timed;
    meas->bytes_elastic = sums[6] / timed;
    meas->bytes_full = sums[7] / timed;
    meas->reload_fraction = sums[7] > 0 ? sums[6] / sums[7] : 0;
    meas->selection_violations = violations.load();
    meas->note = gather ? "eager launches; ms = host wall clock per step (incl. the slot-map diff "
                          "and a sync per step); exposed = compute-stream wait on the host tier"
                        : "control: the same step without the copy-stream gathers";
    if (!gather) return Status::Ok();

    SPX_STATUS_TRY(check_slots([&](int i, std::vector<int32_t>* toks) -> Status {
      for (int h = 0; h < KV; ++h)
        for (int sl = 0; sl < B; ++sl) (*toks)[size_t(h) * B + sl] = maps[i][h].token_in(sl);
      return Status::Ok();
    }));
  }
  std::vector<int32_t> out(R);
  SPX_CUDA_TRY(cudaMemcpy(out.data(), tokens, R * 4, cudaMemcpyDeviceToHost));
  for (int t : out)
    if (t < 0 || t >= s.vocab) return Status::Error("decode produced token id " + std::to_string(t));
  return Status::Ok();
}

// The head's prefill: its K over the prompt (embedding, norm, Q/K, RoPE, append).
Status bench_head_prefill(Bench& bn, int T, double* ms_out) {
  const ModelShape& s = bn.m.s;
  const int n = std::min(bn.o.chunk, T), KV = s.kv_heads, D = s.head_dim;
  Buffers b;
  bf16 *x, *hh, *q, *k, *cache;
  int32_t *ids, *pos, *zeros;
  SPX_STATUS_TRY(b.get(size_t(n) * s.hidden, &x));
  SPX_STATUS_TRY(b.get(size_t(n) * s.hidden, &hh));
  SPX_STATUS_TRY(b.get(size_t(n) * s.heads * D, &q));
  SPX_STATUS_TRY(b.get(size_t(n) * KV * D, &k));
  SPX_STATUS_TRY(b.get(size_t(KV) * T * D, &cache));
  SPX_STATUS_TRY(b.get(T, &ids));
  SPX_STATUS_TRY(b.get(T, &pos));
  SPX_STATUS_TRY(b.get(n, &zeros));
  SPX_CUDA_TRY(cudaMemsetAsync(zeros, 0, size_t(n) * 4, bn.cs));
  iota_kernel<<<(T + 255) / 256, 256, 0, bn.cs>>>(ids, T, s.vocab);
  iota_kernel<<<(T + 255) / 256, 256, 0, bn.cs>>>(pos, T, 0);
  auto run = [&]() -> Status {
    for (int start = 0; start < T; start += n) {
      const int c = std::min(n, T - start);
      SPX_CUDA_TRY(cuda::embedding_forward(x, bn.m.embed, ids + start, c, s.hidden, s.vocab, bn.cs));
      SPX_CUDA_TRY(cuda::rmsnorm_forward(hh, x, bn.head.norm, c, s.hidden, s.eps, bn.cs));
      SPX_STATUS_TRY(bn.gemm.run(q, hh, bn.head.wq, c, s.heads * D, s.hidden, false, false, bn.cs));
      SPX_STATUS_TRY(bn.gemm.run(k, hh, bn.head.wk, c, KV * D, s.hidden, false, false, bn.cs));
      SPX_CUDA_TRY(cuda::rope_forward(q, k, pos + start, bn.m.inv_freq, c, s.heads, KV, D, bn.cs));
      k_append_kernel<<<dim3(KV, c), 128, 0, bn.cs>>>(cache, k, zeros, pos + start, KV, D, T);
      SPX_CUDA_TRY(cudaGetLastError());
    }
    return Status::Ok();
  };
  SPX_STATUS_TRY(run());
  SPX_CUDA_TRY(cudaStreamSynchronize(bn.cs));
  float ms = 0;
  SPX_STATUS_TRY(time_ms(bn.cs, 3, run, &ms));
  *ms_out = ms / 3;
  return Status::Ok();
}

// Host pool: allocation, a random fill through the mapped pointer, and the
// pinned copy bandwidth both ways.
Status make_pool(Bench& bn, size_t bytes) {
  HostPool& p = bn.pool;
  auto t0 = Clock::now();
  SPX_STATUS_TRY(cuda::alloc_mapped_host(bytes, bn.o.host_pages, &p.mem));
  p.alloc_s = seconds_since(t0);
  std::printf("host pool: %.1f GB, %s (%.1f GB on transparent huge pages)\n", p.mem.bytes / 1e9,
              p.mem.how.c_str(), p.mem.huge_bytes == size_t(-1) ? -1.0 : p.mem.huge_bytes / 1e9);
  p.dev = static_cast<char*>(p.mem.device);
  t0 = Clock::now();
  SPX_CUDA_TRY(cuda::fill_random_forward(reinterpret_cast<bf16*>(p.dev), bytes / 2, 23, 1.f, bn.cs));
  SPX_CUDA_TRY(cudaStreamSynchronize(bn.cs));
  p.fill_s = seconds_since(t0);
  const size_t n = std::min<size_t>(bytes, size_t(1) << 30);
  Buffers b;
  char* d = nullptr;
  SPX_STATUS_TRY(b.get(n, &d));
  float ms = 0;
  SPX_STATUS_TRY(time_ms(bn.cs, 2, [&]() -> Status {
    SPX_CUDA_TRY(cudaMemcpyAsync(p.mem.host, d, n, cudaMemcpyDeviceToHost, bn.cs));
    return Status::Ok();
  }, &ms));
  p.d2h_gbps = 2.0 * n / (ms / 1e3) / 1e9;
  SPX_STATUS_TRY(time_ms(bn.cs, 2, [&]() -> Status {
    SPX_CUDA_TRY(cudaMemcpyAsync(d, p.mem.host, n, cudaMemcpyHostToDevice, bn.cs));
    return Status::Ok();
  }, &ms));
  p.h2d_gbps = 2.0 * n / (ms / 1e3) / 1e9;
  return Status::Ok();
}

// ---- JSON ---------------------------------------------------------------------
struct Output {
  std::string path;
  std::vector<std::string> prefill, decode, batches, admission;
  std::string header;
  void write() const {
    if (path.empty()) return;
    std::ofstream f(path);
    f << "{" << header << ",\n \"prefill\": [\n";
    for (size_t i = 0; i < prefill.size(); ++i)
      f << "  " << prefill[i] << (i + 1 < prefill.size() ? ",\n" : "\n");
    f << " ],\n \"batches\": [\n";
    for (size_t i = 0; i < batches.size(); ++i)
      f << "  " << batches[i] << (i + 1 < batches.size() ? ",\n" : "\n");
    f << " ],\n \"admission\": [\n";
    for (size_t i = 0; i < admission.size(); ++i)
      f << "  " << admission[i] << (i + 1 < admission.size() ? ",\n" : "\n");
    f << " ],\n \"decode\": [\n";
    for (size_t i = 0; i < decode.size(); ++i)
      f << "  " << decode[i] << (i + 1 < decode.size() ? ",\n" : "\n");
    f << " ]}\n";
  }
};

std::string meas_json(const Meas& x) {
  std::ostringstream f;
  f << "{\"system\": \"" << x.system << "\", \"mode\": \"" << x.mode << "\", \"selection\": \""
    << x.selection << "\", \"batch_kind\": \"" << x.batch_kind << "\", \"in\": " << x.in
    << ", \"out\": " << x.out << ", \"batch\": " << x.batch << ", \"position\": " << x.position
    << ", \"host_layers\": " << x.host_layers << ", \"ms\": " << x.ms
    << ", \"gpu_step_ms\": " << x.gpu_step_ms << ", \"head_ms\": " << x.head_ms
    << ", \"compute_ms\": " << x.compute_ms << ", \"transfer_ms\": " << x.transfer_ms
    << ", \"exposed_ms\": " << x.exposed_ms << ", \"hidden_ms\": " << x.hidden_ms
    << ", \"cpu_slot_ms\": " << x.cpu_slot_ms << ", \"gpu_slot_ms\": " << x.gpu_slot_ms
    << ", \"eager_ms\": " << x.eager_ms << ", \"slot_path\": \"" << x.slot_path << "\""
    << ", \"bytes_elastic\": " << x.bytes_elastic
    << ", \"bytes_full\": " << x.bytes_full << ", \"reload_fraction\": " << x.reload_fraction
    << ", \"rows_checked\": " << x.rows_checked << ", \"row_mismatches\": " << x.row_mismatches
    << ", \"selection_violations\": " << x.selection_violations << ", \"note\": \"" << x.note
    << "\"}";
  return f.str();
}

std::vector<int> sampled_positions(const Options& o, int in, int out) {
  const int P = out >= 8192 ? o.positions_long : o.positions_short;
  std::vector<int> v;
  for (int k = 0; k < P; ++k)
    v.push_back(in + int(std::llround(double(k) * out / std::max(P - 1, 1))));
  return v;
}

std::vector<std::pair<int, int>> parse_settings(const std::string& s) {
  std::vector<std::pair<int, int>> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t c = item.find(':');
    if (c == std::string::npos) continue;
    v.emplace_back(std::atoi(item.substr(0, c).c_str()), std::atoi(item.substr(c + 1).c_str()));
  }
  return v;
}

int run(int argc, char** argv) {
  Bench bn;
  Options& o = bn.o;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--quick") {  // smoke: tiny shape, a small device, every path
      o.model = "tiny-128";
      o.settings = {{300, 200}, {600, 100}};
      o.budget = 64;
      o.positions_long = o.positions_short = 3;
      o.warm = 2;
      o.steps = 3;
      o.common = 2;
      o.host_gb = o.max_host_gb = 0.25;
      o.search = {{300, 200}};
      o.search_step = 1;
      o.device_gb = 0.08;
      o.chunk = 256;
      continue;
    }
    if (k == "--skip-dense") {
      o.skip_dense = true;
      continue;
    }
    if (k == "--skip-offload") {
      o.skip_offload = true;
      continue;
    }
    if (k == "--offload-only") {  // only the host-tier runs (no dense, no device-only)
      o.offload_only = o.skip_dense = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "option %s needs a value\n", k.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    if (k == "--model") o.model = v;
    else if (k == "--json") o.json = v;
    else if (k == "--settings") o.settings = parse_settings(v);
    else if (k == "--budget") o.budget = std::atoi(v.c_str());
    else if (k == "--positions") o.positions_long = std::atoi(v.c_str());
    else if (k == "--positions-short") o.positions_short = std::atoi(v.c_str());
    else if (k == "--warm") o.warm = std::atoi(v.c_str());
    else if (k == "--steps") o.steps = std::atoi(v.c_str());
    else if (k == "--common") o.common = std::atoi(v.c_str());
    else if (k == "--host-gb") o.host_gb = std::atof(v.c_str());
    else if (k == "--host-headroom-gb") o.host_headroom_gb = std::atof(v.c_str());
    else if (k == "--max-host-gb") o.max_host_gb = std::atof(v.c_str());
    else if (k == "--exposed-share") o.exposed_share = std::atof(v.c_str());
    else if (k == "--calib-layers") o.calib_layers = std::atoi(v.c_str());
    else if (k == "--search-step") o.search_step = std::atoi(v.c_str());
    else if (k == "--search") {  // none | all | in:out,...
      o.search_all = v == "all";
      o.search = v == "none" || v == "all" ? decltype(o.search){} : parse_settings(v);
    }
    else if (k == "--spare-gb") o.spare_gb = std::atof(v.c_str());
    else if (k == "--device-gb") o.device_gb = std::atof(v.c_str());
    else if (k == "--keep") o.keep = std::atof(v.c_str());
    else if (k == "--chunk") o.chunk = std::atoi(v.c_str());
    else if (k == "--slot-path") o.slot_path = v;
    else if (k == "--gather-blocks") o.gather_blocks = std::atoi(v.c_str());
    else if (k == "--batches") {
      std::stringstream ss(v);
      for (std::string item; std::getline(ss, item, ',');)
        if (!item.empty()) o.batches.push_back(std::atoi(item.c_str()));
    }
    else if (k == "--batch-selection") o.batch_selection = v;
    else if (k == "--host-pages") {
      if (v == "huge") o.host_pages = cuda::HostPages::kHuge;
      else if (v == "small") o.host_pages = cuda::HostPages::kSmall;
      else if (v == "cudahostalloc") o.host_pages = cuda::HostPages::kCudaHostAlloc;
      else {
        std::fprintf(stderr, "--host-pages must be huge, small or cudahostalloc\n");
        return 2;
      }
    }
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "specontext_bench: %s\n", st.message.c_str());
    return 1;
  };
  const ModelShape* shape = find_shape(o.model);
  if (!shape) return fail(Status::Error("unknown model " + o.model));
  if (o.settings.empty() || o.budget < 1 || o.steps < 1 || o.warm < 1)
    return fail(Status::Error("bad options (settings, budget, steps, warm)"));
  if (o.slot_path != "device" && o.slot_path != "host" && o.slot_path != "both")
    return fail(Status::Error("--slot-path must be device, host or both"));
  if (o.gather_blocks < 1 || o.gather_blocks > 1024)
    return fail(Status::Error("--gather-blocks must be 1..1024"));
  if (o.batch_selection != "drift" && o.batch_selection != "random-head")
    return fail(Status::Error("--batch-selection must be drift or random-head"));
  for (int R : o.batches)
    if (R < 1) return fail(Status::Error("--batches takes positive batch sizes"));
  if (!(o.exposed_share >= 0 && o.exposed_share < 1))
    return fail(Status::Error("--exposed-share must be in [0, 1)"));
  if (o.calib_layers < 1 || o.search_step < 1)
    return fail(Status::Error("--calib-layers and --search-step must be >= 1"));
  if (o.slot_path != "host" && o.budget > 2048)
    return fail(Status::Error("the device slot maps take budgets up to 2048 (--slot-path host)"));
  if (cudaDeviceGetAttribute(&bn.num_sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess)
    return fail(Status::Error("no CUDA device"));
  // The compute stream outranks the copy stream: the gathers' blocks wait on
  // PCIe, and a freed SM should go to the layer computation first.
  int least = 0, greatest = 0;
  cudaDeviceGetStreamPriorityRange(&least, &greatest);
  cudaStreamCreateWithPriority(&bn.cs, cudaStreamNonBlocking, greatest);
  cudaStreamCreateWithPriority(&bn.xs, cudaStreamNonBlocking, least);
  Status st = bn.gemm.init();
  if (!st.ok) return fail(st);
  const auto t_start = Clock::now();
  st = make_model(*shape, 1234, &bn.m);
  if (st.ok) st = make_head(bn.m, 999, &bn.head);
  if (!st.ok) return fail(st);
  const ModelShape& s = bn.m.s;
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  const double spare = o.spare_gb * 1e9;
  bn.mem.free0 = size_t(std::max(0.0, double(free_b) - spare));
  if (o.device_gb > 0) bn.mem.free0 = std::min(bn.mem.free0, size_t(o.device_gb * 1e9));
  std::printf("%s: weights %.2f GB (head %.1f MB), device free %.1f GB, planned %.1f GB\n",
              o.model.c_str(), bn.m.total_bytes / 1e9, bn.head.bytes / 1e6, free_b / 1e9,
              bn.mem.free0 / 1e9);

  Output out;
  out.path = o.json;
  double host_cap_gb = 0, mem_avail_gb = 0;
  auto set_header = [&]() {
    std::ostringstream h;
    h << "\"model\": \"" << o.model << "\", \"budget\": " << o.budget << ", \"n_sink\": "
      << o.n_sink << ", \"n_recent\": " << o.n_recent << ", \"warm_steps\": " << o.warm
      << ", \"timed_steps\": " << o.steps << ", \"drift_keep\": " << o.keep
      << ", \"weights_gb\": " << bn.m.total_bytes / 1e9 << ", \"head_mb\": " << bn.head.bytes / 1e6
      << ", \"device_total_gb\": " << total_b / 1e9 << ", \"device_planned_gb\": "
      << bn.mem.free0 / 1e9 << ", \"spare_gb\": " << o.spare_gb << ", \"host_pool_gb\": "
      << bn.pool.mem.bytes / 1e9 << ", \"host_pool_alloc_s\": " << bn.pool.alloc_s
      << ", \"host_pool_pages\": \"" << bn.pool.mem.how << "\", \"host_pool_huge_gb\": "
      << double(int64_t(bn.pool.mem.huge_bytes)) / 1e9
      << ", \"host_pool_fill_s\": " << bn.pool.fill_s << ", \"pinned_d2h_gbps\": "
      << bn.pool.d2h_gbps << ", \"pinned_h2d_gbps\": " << bn.pool.h2d_gbps
      << ", \"num_sms\": " << bn.num_sms << ", \"kv_row_bytes\": " << 2 * s.kv_heads * s.head_dim * 2
      << ", \"host_mem_available_gb\": " << mem_avail_gb << ", \"host_tier_cap_gb\": " << host_cap_gb
      << ", \"max_rows_host_cap_gb\": " << o.max_host_gb << ", \"host_headroom_gb\": "
      << o.host_headroom_gb << ", \"exposed_share_max\": " << o.exposed_share
      << ", \"calib_layers\": " << o.calib_layers << ", \"search_step\": " << o.search_step;
    out.header = h.str();
  };
  set_header();

  // ---- batches per setting (the planner for SpeContext)
  struct Plan {
    int in, out, cap, dense_max, spec_dev_max, spec_max, spec_max_host, common;
    bool search = false;
    Meas dev_end, common_end;        // all-device steps at the end of the range
    std::vector<Calibration> calib;  // per selection source: reload, bandwidth, the rule
  };
  std::vector<Plan> plans;
  const int margin = o.warm + o.steps + 8;
  // The host tier may take what the OS has left (MemAvailable) minus headroom;
  // --host-gb overrides. The "max" rows keep the session-3 cap (--max-host-gb).
  const size_t avail = mem_available_bytes();
  const size_t host_cap =
      o.host_gb > 0 ? size_t(o.host_gb * 1e9)
                    : size_t(std::max(0.0, double(avail) - o.host_headroom_gb * 1e9));
  const size_t max_cap = std::min(host_cap, size_t(o.max_host_gb * 1e9));
  std::printf("host memory available %.1f GB; host tier cap %.1f GB (%s); \"max\" rows cap %.1f GB\n",
              avail / 1e9, host_cap / 1e9, o.host_gb > 0 ? "--host-gb" : "MemAvailable - headroom",
              max_cap / 1e9);
  size_t pool_bytes = 0;
  for (auto [in, outn] : o.settings) {
    Plan p{in, outn, in + outn + margin, 0, 0, 0, 0, 0};
    p.dense_max = dense_max_batch(s, bn.mem, p.cap, bn.num_sms);
    for (int R = 1; R <= 4096; ++R) {
      const int h = host_layers_for(bn.m, bn.head, bn.mem, R, p.cap, o.budget, bn.num_sms);
      if (h < 0) break;
      if (h == 0) p.spec_dev_max = R;
      if (size_t(h) * host_layer_bytes(s, R, p.cap) > max_cap) break;
      p.spec_max = R;
      p.spec_max_host = h;
    }
    if (o.skip_offload || p.spec_max_host == 0 || !o.batches.empty()) p.spec_max = p.spec_max_host = 0;
    p.common = std::min({o.common, p.dense_max, p.spec_dev_max});
    p.search = o.search_all || std::find(o.search.begin(), o.search.end(),
                                         std::make_pair(in, outn)) != o.search.end();
    pool_bytes = std::max(pool_bytes, size_t(p.spec_max_host) * host_layer_bytes(s, p.spec_max, p.cap));
    if (!o.skip_offload && !o.offload_only && o.batches.empty() && p.spec_dev_max > 0)  // calibration
      pool_bytes = std::max(pool_bytes, size_t(std::max(1, std::min(o.calib_layers, s.layers - 1))) *
                                            host_layer_bytes(s, p.spec_dev_max, p.cap));
    std::printf("setting [%d,%d]: dense max %d, specontext device-only max %d, with host tier %d "
                "(%d host layers at the end), common %d\n",
                in, outn, p.dense_max, p.spec_dev_max, p.spec_max, p.spec_max_host, p.common);
    std::ostringstream b;
    b << "{\"in\": " << in << ", \"out\": " << outn << ", \"capacity\": " << p.cap
      << ", \"dense_max\": " << p.dense_max << ", \"specontext_device_max\": " << p.spec_dev_max
      << ", \"specontext_max\": " << p.spec_max << ", \"specontext_max_host_layers\": "
      << p.spec_max_host << ", \"common\": " << p.common << "}";
    out.batches.push_back(b.str());
    plans.push_back(p);
  }
  auto grow_pool = [&](size_t bytes) -> Status {
    if (bytes <= bn.pool.mem.bytes) return Status::Ok();
    if (bytes > host_cap)
      return Status::Error("host pool of " + std::to_string(bytes / 1000000) + " MB over the cap");
    bn.pool = HostPool{};  // frees the smaller one first
    SPX_STATUS_TRY(make_pool(bn, bytes));
    std::printf("host pool %.1f GB: pinned in %.1f s, filled in %.2f s; pinned copies D2H %.1f "
                "GB/s, H2D %.1f GB/s\n",
                bytes / 1e9, bn.pool.alloc_s, bn.pool.fill_s, bn.pool.d2h_gbps, bn.pool.h2d_gbps);
    std::fflush(stdout);
    return Status::Ok();
  };
  if (pool_bytes > 0) {
    st = grow_pool(pool_bytes);
    if (!st.ok) return fail(st);
  }
  host_cap_gb = host_cap / 1e9;
  mem_avail_gb = avail / 1e9;
  set_header();
  out.write();
  std::fflush(stdout);

  // ---- prefill: the target's (ours, shared by both modes) and the head's
  std::vector<int> ins;
  for (const Plan& p : plans)
    if (std::find(ins.begin(), ins.end(), p.in) == ins.end()) ins.push_back(p.in);
  for (int T : ins) {
    Row row;
    st = bench_prefill(bn.m, bn.cs, &bn.gemm, T, o.chunk, &row);
    if (!st.ok) return fail(st);
    double head_ms = 0;
    st = bench_head_prefill(bn, T, &head_ms);
    if (!st.ok) return fail(st);
    std::printf("prefill %6d tokens: target %9.1f ms, head %7.2f ms\n", T, row.ms, head_ms);
    std::ostringstream f;
    f << "{\"system\": \"ours\", \"tokens\": " << T << ", \"ms\": " << row.ms
      << ", \"head_ms\": " << head_ms << ", \"note\": \"" << row.note << "\"}";
    out.prefill.push_back(f.str());
    out.write();
    std::fflush(stdout);
  }

  auto emit = [&](Meas& x) {
    std::printf("%-10s %-7s %-11s %-10s [%5d,%5d] R %3d pos %6d host %2d%s: %8.2f ms/step "
                "(eager %.2f; head %.2f, compute %.2f, transfer %.2f, exposed %.2f, slot diff "
                "cpu %.2f gpu %.2f) reload %.3f%s\n",
                x.system.c_str(), x.mode.c_str(), x.selection.c_str(), x.batch_kind.c_str(), x.in,
                x.out, x.batch, x.position, x.host_layers,
                x.slot_path.empty() ? "" : (" " + x.slot_path + "-maps").c_str(), x.ms, x.eager_ms,
                x.head_ms, x.compute_ms, x.transfer_ms, x.exposed_ms, x.cpu_slot_ms, x.gpu_slot_ms,
                x.reload_fraction,
                x.row_mismatches || x.selection_violations ? "  CHECK FAILED" : "");
    std::fflush(stdout);
    out.decode.push_back(meas_json(x));
    out.write();
  };
  int failures = 0;
  auto report_fail = [&](const char* what, const Status& e) {
    std::fprintf(stderr, "specontext_bench: %s: %s\n", what, e.message.c_str());
    ++failures;
  };

  // Positions of a host-tier run: the usual grid, plus, where the host tier
  // starts inside the range, the last position with every layer on the device
  // and the middle of the rest, so the integral does not spread the host
  // tier's cost over a grid interval it only covers the end of.
  auto host_positions = [&](const Plan& p, int R) {
    std::vector<int> v = sampled_positions(o, p.in, p.out);
    const int first = v.front(), end = v.back();
    auto on_device = [&](int ctx) {
      return host_layers_for(bn.m, bn.head, bn.mem, R, ctx + margin, o.budget, bn.num_sms) == 0;
    };
    if (on_device(first) && !on_device(end)) {
      int lo = first, hi = end;  // on_device(lo), !on_device(hi)
      while (hi - lo > 1) {
        const int mid = lo + (hi - lo) / 2;
        (on_device(mid) ? lo : hi) = mid;
      }
      for (int x : {lo, lo + (end - lo) / 2})
        if (x > first && x < end && std::find(v.begin(), v.end(), x) == v.end()) v.push_back(x);
      std::sort(v.begin(), v.end());
    }
    return v;
  };
  const std::string drift_name = "drift-" + std::to_string(int(o.keep * 100));

  // ---- phase 1, every setting: dense, SpeContext on the device, calibration
  for (Plan& p : plans) {
    const std::vector<int> positions = sampled_positions(o, p.in, p.out);
    struct Job {
      const char* kind;
      int R;
    };
    // Dense (ours), at its largest batch and the common batch.
    if (!o.skip_dense)
      for (Job j : {Job{"max", p.dense_max}, Job{"common", p.common}}) {
        if (j.R < 1 || (std::string(j.kind) == "common" && j.R == p.dense_max)) continue;
        for (int ctx : positions) {
          Row row;
          Status e = bench_decode(bn.m, bn.cs, &bn.gemm, ctx, j.R, o.steps, bn.num_sms, false, &row);
          if (!e.ok) {
            report_fail("dense decode", e);
            break;
          }
          Meas x;
          x.system = "ours-dense";
          x.mode = "device";
          x.selection = "none";
          x.batch_kind = j.kind;
          x.in = p.in, x.out = p.out, x.batch = j.R, x.position = ctx;
          x.ms = x.gpu_step_ms = x.compute_ms = row.ms;
          x.note = row.note;
          emit(x);
        }
      }
    // SpeContext with everything on the device: largest batch and common batch.
    for (Job j : {Job{"device-max", p.spec_dev_max}, Job{"common", p.common}}) {
      if (o.offload_only) break;
      if (j.R < 1 || (std::string(j.kind) == "common" && j.R == p.spec_dev_max)) continue;
      for (int ctx : positions) {
        Meas x;
        x.system = "specontext";
        x.selection = "random-head";
        x.batch_kind = j.kind;
        x.in = p.in, x.out = p.out;
        Status e = bench_spec(bn, ctx, j.R, 0, Selection::kHead, false, &x);
        if (!e.ok) {
          report_fail("specontext decode", e);
          break;
        }
        emit(x);
        if (ctx == positions.back()) (std::string(j.kind) == "common" ? p.common_end : p.dev_end) = x;
      }
    }
    // Calibration for the transfer-aware rule, per selection source: the
    // device-max batch at the end of the range with a few layers forced to
    // the host tier gives the reload fraction and the gather bandwidth.
    if (o.skip_offload || o.offload_only || !o.batches.empty() || p.dev_end.batch < 1 ||
        bn.pool.mem.bytes == 0)
      continue;
    const Meas& dev = p.dev_end;
    planner::StepTime stm;
    if (p.common_end.batch > 0 && p.common_end.batch != dev.batch)
      stm.per_request_ms = std::max(0.0, (dev.ms - p.common_end.ms) / (dev.batch - p.common_end.batch));
    else
      stm.per_request_ms = dev.ms / dev.batch;
    stm.fixed_ms = std::max(0.0, dev.ms - stm.per_request_ms * dev.batch);
    // The gathers start after the head; the last host layer waits for all.
    stm.hide_share = double(s.layers - 1) / s.layers * std::max(0.0, 1.0 - dev.head_ms / dev.ms);
    for (Selection mode : {Selection::kHead, Selection::kDrift}) {
      Calibration c;
      c.selection = mode == Selection::kHead ? "random-head" : drift_name;
      c.batch = dev.batch;
      c.host_layers = std::max(1, std::min(o.calib_layers, s.layers - 1));
      c.position = positions.back();
      c.step = stm;
      Meas x;
      Status e = bench_spec(bn, c.position, c.batch, c.host_layers, mode, true, &x);
      if (!e.ok) {
        c.error = e.message;
        report_fail("calibration", e);
      } else {
        c.reload = x.reload_fraction;
        c.transfer_ms = x.transfer_ms;
        c.exposed_ms = x.exposed_ms;
        c.step_ms = x.ms;
        c.gather_gbps = x.transfer_ms > 0 ? x.bytes_elastic / (x.transfer_ms * 1e6) : 0;
        if (x.row_mismatches || x.selection_violations) ++failures;
        if (c.gather_gbps <= 0) {
          c.error = "no transfer measured";
        } else {
          e = admit_batch(bn.m, bn.head, bn.mem, p.cap, o.budget, bn.num_sms, host_cap,
                          o.exposed_share, &c);
          if (e.ok) c.ok = true;
          else c.error = e.message, report_fail("admission", e);
        }
      }
      std::printf("calibration [%d,%d] %-11s R %3d host %d pos %6d: reload %.3f, gather %.1f GB/s "
                  "(%.2f ms), step %.2f ms; step model %.3f + %.4f R ms, hide %.2f -> rule: batch %d "
                  "(%d host layers, %lld of at most %lld layer-requests, predicted exposed %.1f%%; "
                  "next refused by %s)%s%s\n",
                  p.in, p.out, c.selection.c_str(), c.batch, c.host_layers, c.position, c.reload,
                  c.gather_gbps, c.transfer_ms, c.step_ms, stm.fixed_ms, stm.per_request_ms,
                  stm.hide_share, c.rule.requests, c.rule.host_layers,
                  (long long)c.rule.layer_requests, (long long)c.rule.max_layer_requests,
                  100 * c.rule.exposed_share, c.rule.limited_by.c_str(), c.ok ? "" : " FAILED: ",
                  c.error.c_str());
      std::fflush(stdout);
      p.calib.push_back(c);
    }
  }

  // ---- phase 2: the candidate batches per selection source, and the pool they need
  struct Cand {
    const Plan* p;
    int R;
    std::string kind, selection;
    Selection mode;
  };
  std::vector<Cand> cands;
  size_t need = pool_bytes;
  for (const Plan& p : plans) {
    for (int R : o.batches) {  // --batches: fixed host-tier batches, no rule
      if (o.skip_offload) break;
      if (host_layers_for(bn.m, bn.head, bn.mem, R, p.cap, o.budget, bn.num_sms) < 0) {
        report_fail("--batches", Status::Error("no placement for batch " + std::to_string(R)));
        continue;
      }
      need = std::max(need, host_need(bn.m, bn.head, bn.mem, R, p.cap, o.budget, bn.num_sms));
      const bool drift = o.batch_selection == "drift";
      cands.push_back(Cand{&p, R, "fixed", drift ? drift_name : "random-head",
                           drift ? Selection::kDrift : Selection::kHead});
    }
    for (const Calibration& c : p.calib) {
      std::vector<int> batches;
      std::ostringstream js;
      if (c.ok) {
        const int r = c.rule.requests, d = o.search_step;
        batches = p.search ? std::vector<int>{r - d, r, r + d, r + 2 * d} : std::vector<int>{r};
      }
      std::vector<int> kept;
      for (int R : batches) {
        // All-device batches are the device-max row's business.
        if (R <= p.spec_dev_max) continue;
        if (host_layers_for(bn.m, bn.head, bn.mem, R, p.cap, o.budget, bn.num_sms) < 0) continue;
        const size_t hb = host_need(bn.m, bn.head, bn.mem, R, p.cap, o.budget, bn.num_sms);
        if (hb > host_cap) continue;
        need = std::max(need, hb);
        kept.push_back(R);
        cands.push_back(Cand{&p, R, R == c.rule.requests ? "rule" : "search", c.selection,
                             c.selection == "random-head" ? Selection::kHead : Selection::kDrift});
      }
      const planner::Admission& a = c.rule;
      js << "{\"in\": " << p.in << ", \"out\": " << p.out << ", \"selection\": \"" << c.selection
         << "\", \"ok\": " << (c.ok ? "true" : "false") << ", \"error\": \"" << c.error
         << "\", \"calibration\": {\"batch\": " << c.batch << ", \"host_layers\": " << c.host_layers
         << ", \"position\": " << c.position << ", \"reload_fraction\": " << c.reload
         << ", \"gather_gbps\": " << c.gather_gbps << ", \"transfer_ms\": " << c.transfer_ms
         << ", \"exposed_ms\": " << c.exposed_ms << ", \"step_ms\": " << c.step_ms
         << "}, \"step_model\": {\"fixed_ms\": " << c.step.fixed_ms << ", \"per_request_ms\": "
         << c.step.per_request_ms << ", \"hide_share\": " << c.step.hide_share
         << "}, \"rule\": {\"requests\": " << a.requests << ", \"host_layers\": " << a.host_layers
         << ", \"layer_requests\": " << a.layer_requests << ", \"max_layer_requests\": "
         << a.max_layer_requests << ", \"step_ms\": " << a.step_ms << ", \"transfer_ms\": "
         << a.transfer_ms << ", \"exposed_ms\": " << a.exposed_ms << ", \"exposed_share\": "
         << a.exposed_share << ", \"limited_by\": \"" << a.limited_by << "\"}, \"search\": "
         << (p.search ? "true" : "false") << ", \"candidates\": [";
      for (size_t i = 0; i < kept.size(); ++i) js << (i ? ", " : "") << kept[i];
      js << "]}";
      out.admission.push_back(js.str());
    }
  }
  out.write();
  st = grow_pool(need);
  if (!st.ok) report_fail("host pool for the candidates", st), cands.clear();
  set_header();
  out.write();

  // ---- phase 3: the host tier (the "max" rows, then the rule's candidates)
  for (const Plan& p : plans) {
    // SpeContext past the device: the planner moves the last layers to the
    // host tier as the context grows (host layers at each position).
    if (p.spec_max > p.spec_dev_max)
      for (int ctx : host_positions(p, p.spec_max)) {
        const int cap = ctx + margin;
        const int h = host_layers_for(bn.m, bn.head, bn.mem, p.spec_max, cap, o.budget, bn.num_sms);
        if (h < 0) {
          report_fail("planner", Status::Error("no placement at " + std::to_string(cap)));
          continue;
        }
        std::vector<bool> paths;  // device slot maps?
        if (o.slot_path != "host") paths.push_back(true);
        if (o.slot_path != "device" && h > 0) paths.push_back(false);
        if (paths.empty()) paths.push_back(false);  // host path asked, nothing on the host yet
        for (bool device_maps : paths)
        for (Selection mode : {Selection::kHead, Selection::kDrift, Selection::kNoGather}) {
          if (h == 0 && mode != Selection::kHead) continue;  // nothing moves: one run serves all
          // With both paths, the host path's rows get their own system name
          // so the report's "specontext" rows stay one design.
          Meas x;
          x.system = device_maps || o.slot_path != "both" ? "specontext" : "specontext-host-maps";
          x.selection = h == 0                      ? "any"
                        : mode == Selection::kDrift ? drift_name
                        : mode == Selection::kHead  ? "random-head"
                                                    : "no-gather";
          x.batch_kind = "max";
          x.in = p.in, x.out = p.out;
          Status e = bench_spec(bn, ctx, p.spec_max, h, mode, device_maps, &x);
          if (!e.ok) {
            report_fail("specontext offload decode", e);
            continue;
          }
          emit(x);
          if (x.row_mismatches || x.selection_violations) ++failures;
        }
      }
    // The rule's batch (and, where searched, its neighbours) per selection
    // source; all-device positions are measured once per batch and shared.
    std::map<std::pair<int, int>, Meas> device_runs;
    for (const Cand& c : cands) {
      if (c.p != &p) continue;
      for (int ctx : host_positions(p, c.R)) {
        const int h = host_layers_for(bn.m, bn.head, bn.mem, c.R, ctx + margin, o.budget, bn.num_sms);
        if (h < 0) {
          report_fail("planner", Status::Error("no placement for a candidate at " + std::to_string(ctx)));
          continue;
        }
        Meas x;
        Status e = Status::Ok();
        auto it = device_runs.find({c.R, ctx});
        if (h == 0 && it != device_runs.end()) {
          x = it->second;
        } else {
          e = bench_spec(bn, ctx, c.R, h, h == 0 ? Selection::kHead : c.mode, h > 0, &x);
          if (e.ok && h == 0) device_runs[{c.R, ctx}] = x;
        }
        if (!e.ok) {
          report_fail("specontext candidate decode", e);
          continue;
        }
        x.system = "specontext";
        x.selection = c.selection;
        x.batch_kind = c.kind;
        x.in = p.in, x.out = p.out;
        emit(x);
        if (x.row_mismatches || x.selection_violations) ++failures;
      }
    }
  }
  std::printf("specontext_bench: done in %.1f s, %d failure(s)\n", seconds_since(t_start), failures);
  cudaStreamDestroy(bn.cs);
  cudaStreamDestroy(bn.xs);
  return failures ? 1 : 0;
}

}  // namespace
}  // namespace spx::bench

int main(int argc, char** argv) { return spx::bench::run(argc, argv); }
