// The model forward the CUDA benchmarks share: a decoder stack built
// directly from native/src/cuda over seeded random bf16 weights (speed does
// not depend on the values), its activation buffers, the dense prefill and the
// dense graph-captured decode step. dense_bench.cu and specontext_bench.cu
// include it (one executable each, so everything here has internal linkage).
//
// Not the engine's scheduler path: no tokenizer and no host work per step.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/check.h"
#include "cuda/gemm.h"
#include "cuda/ops.h"
#include "model_shapes.h"

namespace spx::bench {
namespace {

using cuda::bf16;
constexpr double kRooflineBytesPerS = 4.3e12;  // measured device copy on the H200

struct Layer {
  bf16 *attn_norm, *wqkv, *q_norm, *k_norm, *wo, *mlp_norm, *wgu, *wdown;
};

struct Model {
  ModelShape s;
  bf16 *embed = nullptr, *final_norm = nullptr, *lm_head = nullptr;
  std::vector<Layer> layers;
  float* inv_freq = nullptr;
  size_t step_weight_bytes = 0;  // weights one decode step reads
  size_t total_bytes = 0;        // every allocation of the model
  std::vector<void*> allocations;
  ~Model() {
    for (void* p : allocations) cudaFree(p);
  }
};

Status dev_alloc(Model& m, size_t bytes, void** out) {
  SPX_CUDA_TRY(cudaMalloc(out, bytes));
  m.allocations.push_back(*out);
  m.total_bytes += bytes;
  return Status::Ok();
}

Status random_matrix(Model& m, size_t n, uint64_t seed, bf16** out, bool counted = true) {
  SPX_STATUS_TRY(dev_alloc(m, n * sizeof(bf16), reinterpret_cast<void**>(out)));
  SPX_CUDA_TRY(cuda::fill_random_forward(*out, n, seed, 0.02f, 0));
  if (counted) m.step_weight_bytes += n * sizeof(bf16);
  return Status::Ok();
}

Status ones(Model& m, size_t n, bf16** out) {
  SPX_STATUS_TRY(dev_alloc(m, n * sizeof(bf16), reinterpret_cast<void**>(out)));
  std::vector<uint16_t> h(n, 0x3f80);  // bf16 1.0
  SPX_CUDA_TRY(cudaMemcpy(*out, h.data(), n * 2, cudaMemcpyHostToDevice));
  m.step_weight_bytes += n * sizeof(bf16);
  return Status::Ok();
}

Status make_model(const ModelShape& s, uint64_t seed, Model* m) {
  m->s = s;
  const size_t H = s.hidden, I = s.inter, D = s.head_dim;
  const size_t qkv = static_cast<size_t>(s.heads + 2 * s.kv_heads) * D;
  SPX_STATUS_TRY(random_matrix(*m, size_t(s.vocab) * H, seed++, &m->embed, false));
  SPX_STATUS_TRY(random_matrix(*m, size_t(s.vocab) * H, seed++, &m->lm_head));
  SPX_STATUS_TRY(ones(*m, H, &m->final_norm));
  for (int l = 0; l < s.layers; ++l) {
    Layer L{};
    SPX_STATUS_TRY(ones(*m, H, &L.attn_norm));
    SPX_STATUS_TRY(ones(*m, H, &L.mlp_norm));
    SPX_STATUS_TRY(random_matrix(*m, qkv * H, seed++, &L.wqkv));
    SPX_STATUS_TRY(random_matrix(*m, H * size_t(s.heads) * D, seed++, &L.wo));
    SPX_STATUS_TRY(random_matrix(*m, 2 * I * H, seed++, &L.wgu));
    SPX_STATUS_TRY(random_matrix(*m, H * I, seed++, &L.wdown));
    if (s.qk_norm) {
      SPX_STATUS_TRY(ones(*m, D, &L.q_norm));
      SPX_STATUS_TRY(ones(*m, D, &L.k_norm));
    }
    m->layers.push_back(L);
  }
  const auto inv = cuda::rope_inv_freq(s.rope_theta, s.head_dim, s.rope);
  SPX_STATUS_TRY(dev_alloc(*m, inv.size() * 4, reinterpret_cast<void**>(&m->inv_freq)));
  SPX_CUDA_TRY(cudaMemcpy(m->inv_freq, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice));
  SPX_CUDA_TRY(cudaDeviceSynchronize());
  return Status::Ok();
}

// Device allocations of one setting; freed when it goes out of scope.
struct Buffers {
  std::vector<void*> ptrs;
  size_t bytes = 0;
  Buffers() = default;
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;
  ~Buffers() {
    for (void* p : ptrs) cudaFree(p);
  }
  template <typename T>
  Status get(size_t n, T** out) {
    void* p = nullptr;
    const size_t b = std::max<size_t>(n, 1) * sizeof(T);
    SPX_CUDA_TRY(cudaMalloc(&p, b));
    ptrs.push_back(p);
    bytes += b;
    *out = static_cast<T*>(p);
    return Status::Ok();
  }
};

__global__ void advance_kernel(int32_t* positions, int32_t* lengths, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    positions[i] += 1;
    lengths[i] += 1;
  }
}

__global__ void iota_kernel(int32_t* x, int n, int mod) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = mod > 0 ? (i * 7919) % mod : i;
}

// One layer's KV as the fused qkv_rope kernel writes it.
struct LayerCache {
  bf16* k;  // [slots, kv_heads, capacity, head_dim]
  bf16* v;
  int capacity;
};

class Runner {
 public:
  Runner(const Model& m, cudaStream_t stream, cuda::Gemm* gemm)
      : m_(m), s_(m.s), stream_(stream), gemm_(gemm) {}

  // Per-token activation buffers for up to `rows` tokens at once.
  Status reserve(Buffers& b, int rows) {
    const size_t R = rows, H = s_.hidden, D = s_.head_dim;
    SPX_STATUS_TRY(b.get(R * H, &x_));
    SPX_STATUS_TRY(b.get(R * H, &h_));
    SPX_STATUS_TRY(b.get(R * H, &o_));
    SPX_STATUS_TRY(b.get(R * (s_.heads + 2 * s_.kv_heads) * D, &qkv_));
    SPX_STATUS_TRY(b.get(R * s_.heads * D, &q_));
    SPX_STATUS_TRY(b.get(R * s_.heads * D, &attn_));
    SPX_STATUS_TRY(b.get(R * 2 * s_.inter, &gu_));
    SPX_STATUS_TRY(b.get(R * s_.inter, &act_));
    return Status::Ok();
  }

  // Layers [first, last) over n rows (x_ holds the residual stream; h_ the
  // normed input of layer `first`, which layer 0 computes itself).
  // cache(l) gives layer l's KV; attend(l, cache) runs its attention into attn_.
  template <typename CacheOf, typename Attend>
  Status layers(int n, int first, int last, const int32_t* positions, const int32_t* slots,
                CacheOf cache, Attend attend) {
    const int H = s_.hidden, D = s_.head_dim, I = s_.inter;
    const int qkv_w = (s_.heads + 2 * s_.kv_heads) * D;
    if (first == 0)
      SPX_CUDA_TRY(cuda::rmsnorm_forward(h_, x_, m_.layers[0].attn_norm, n, H, s_.eps, stream_));
    for (int l = first; l < last; ++l) {
      const Layer& L = m_.layers[l];
      const LayerCache c = cache(l);
      SPX_STATUS_TRY(gemm_->run(qkv_, h_, L.wqkv, n, qkv_w, H, false, false, stream_));
      SPX_CUDA_TRY(cuda::qkv_rope_forward(q_, c.k, c.v, qkv_, L.q_norm, L.k_norm, m_.inv_freq,
                                          positions, slots, n, s_.heads, s_.kv_heads, D,
                                          c.capacity, s_.eps, stream_));
      SPX_STATUS_TRY(attend(l, c));
      SPX_STATUS_TRY(gemm_->run(o_, attn_, L.wo, n, H, s_.heads * D, false, false, stream_));
      SPX_CUDA_TRY(cuda::add_rmsnorm_forward(h_, x_, o_, L.mlp_norm, n, H, s_.eps, stream_));
      SPX_STATUS_TRY(gemm_->run(gu_, h_, L.wgu, n, 2 * I, H, false, false, stream_));
      SPX_CUDA_TRY(cuda::swiglu_forward(act_, gu_, n, I, stream_));
      SPX_STATUS_TRY(gemm_->run(o_, act_, L.wdown, n, H, I, false, false, stream_));
      const bf16* next = l + 1 < s_.layers ? m_.layers[l + 1].attn_norm : m_.final_norm;
      SPX_CUDA_TRY(cuda::add_rmsnorm_forward(h_, x_, o_, next, n, H, s_.eps, stream_));
    }
    return Status::Ok();
  }

  bf16 *x_, *h_, *o_, *qkv_, *q_, *attn_, *gu_, *act_;
  const Model& m_;
  const ModelShape& s_;
  cudaStream_t stream_;
  cuda::Gemm* gemm_;
};

struct Row {
  std::string phase, kernel = "mma";
  int context = 0, batch = 0, requested_batch = 0;
  double ms = 0, tokens_per_s = 0, eager_ms = 0, roofline_ms = 0, bytes = 0;
  std::string note;
};

size_t kv_bytes_per_token(const ModelShape& s) {
  return size_t(s.layers) * 2 * s.kv_heads * s.head_dim * sizeof(bf16);
}

// Milliseconds of `reps` calls of f on the stream, timed with events.
template <typename F>
Status time_ms(cudaStream_t stream, int reps, F f, float* ms) {
  cudaEvent_t e0, e1;
  SPX_CUDA_TRY(cudaEventCreate(&e0));
  SPX_CUDA_TRY(cudaEventCreate(&e1));
  SPX_CUDA_TRY(cudaEventRecord(e0, stream));
  for (int i = 0; i < reps; ++i) SPX_STATUS_TRY(f());
  SPX_CUDA_TRY(cudaEventRecord(e1, stream));
  SPX_CUDA_TRY(cudaEventSynchronize(e1));
  SPX_CUDA_TRY(cudaEventElapsedTime(ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return Status::Ok();
}

// Captures one call of f on the stream as a CUDA graph.
template <typename F>
Status capture(cudaStream_t stream, F f, cudaGraphExec_t* exec) {
  cudaGraph_t graph;
  SPX_CUDA_TRY(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const Status st = f();
  const cudaError_t end_err = cudaStreamEndCapture(stream, &graph);
  SPX_STATUS_TRY(st);
  SPX_CUDA_TRY(end_err);
  const cudaError_t inst = cudaGraphInstantiate(exec, graph, 0);
  cudaGraphDestroy(graph);
  SPX_CUDA_TRY(inst);
  return Status::Ok();
}

Status bench_prefill(const Model& m, cudaStream_t stream, cuda::Gemm* gemm, int T, int chunk,
                     Row* row) {
  const ModelShape& s = m.s;
  Buffers b;
  Runner r(m, stream, gemm);
  const int rows = std::min(chunk, T);
  SPX_STATUS_TRY(r.reserve(b, rows));
  const size_t layer_elems = size_t(s.kv_heads) * T * s.head_dim;
  bf16 *kc, *vc;
  SPX_STATUS_TRY(b.get(layer_elems * s.layers, &kc));
  SPX_STATUS_TRY(b.get(layer_elems * s.layers, &vc));
  int32_t *ids = nullptr, *pos = nullptr, *slots = nullptr;
  float* logits = nullptr;
  SPX_STATUS_TRY(b.get(T, &ids));
  SPX_STATUS_TRY(b.get(T, &pos));
  SPX_STATUS_TRY(b.get(T, &slots));
  SPX_STATUS_TRY(b.get(size_t(s.vocab), &logits));
  iota_kernel<<<(T + 255) / 256, 256, 0, stream>>>(ids, T, s.vocab);
  iota_kernel<<<(T + 255) / 256, 256, 0, stream>>>(pos, T, 0);
  SPX_CUDA_TRY(cudaMemsetAsync(slots, 0, T * sizeof(int32_t), stream));
  const float scale = 1.f / std::sqrt(float(s.head_dim));

  auto run = [&]() -> Status {
    for (int start = 0; start < T; start += chunk) {
      const int n = std::min(chunk, T - start);
      SPX_CUDA_TRY(cuda::embedding_forward(r.x_, m.embed, ids + start, n, s.hidden, s.vocab,
                                           stream));
      SPX_STATUS_TRY(r.layers(
          n, 0, s.layers, pos + start, slots,
          [&](int l) {
            return LayerCache{kc + l * layer_elems, vc + l * layer_elems, T};
          },
          [&](int, const LayerCache& c) -> Status {
            SPX_CUDA_TRY(cuda::prefill_attention_forward(r.attn_, r.q_, c.k, c.v, start, n,
                                                         s.heads, s.kv_heads, s.head_dim, T,
                                                         scale, stream));
            return Status::Ok();
          }));
      if (start + n == T)
        SPX_STATUS_TRY(gemm->run(logits, r.h_ + size_t(n - 1) * s.hidden, m.lm_head, 1, s.vocab,
                                 s.hidden, true, false, stream));
    }
    return Status::Ok();
  };
  SPX_STATUS_TRY(run());  // warm-up: cuBLASLt plans, module load
  SPX_CUDA_TRY(cudaStreamSynchronize(stream));
  const int reps = T <= 4096 ? 3 : 1;
  float ms = 0;
  SPX_STATUS_TRY(time_ms(stream, reps, run, &ms));
  row->phase = "prefill";
  row->context = T;
  row->batch = row->requested_batch = 1;
  row->ms = ms / reps;
  row->tokens_per_s = T / (row->ms / 1e3);
  row->note = "one request, chunks of " + std::to_string(chunk) + " tokens, last-token logits";
  return Status::Ok();
}

// Dense decode: `batch` requests whose caches hold `ctx` tokens of random
// K/V; one step (all layers, LM head, greedy sampling, position update) is
// one CUDA graph replayed `steps` times.
Status bench_decode(const Model& m, cudaStream_t stream, cuda::Gemm* gemm, int ctx, int batch,
                    int steps, int num_sms, bool simt, Row* row) {
  const ModelShape& s = m.s;
  Buffers b;
  Runner r(m, stream, gemm);
  SPX_STATUS_TRY(r.reserve(b, batch));
  const int warm = 3;
  const int cap = ctx + warm + 2 * steps + 8;
  const size_t layer_elems = size_t(batch) * s.kv_heads * cap * s.head_dim;
  bf16 *kc, *vc;
  SPX_STATUS_TRY(b.get(layer_elems * s.layers, &kc));
  SPX_STATUS_TRY(b.get(layer_elems * s.layers, &vc));
  // Random K/V for the context: the values do not change the work.
  SPX_CUDA_TRY(cuda::fill_random_forward(kc, layer_elems * s.layers, 7, 1.f, stream));
  SPX_CUDA_TRY(cuda::fill_random_forward(vc, layer_elems * s.layers, 8, 1.f, stream));
  int32_t *tokens, *pos, *len, *slots;
  float* logits = nullptr;
  cuda::SamplingRow* params;
  cuda::DecodeSeq* seqs;
  SPX_STATUS_TRY(b.get(batch, &tokens));
  SPX_STATUS_TRY(b.get(batch, &pos));
  SPX_STATUS_TRY(b.get(batch, &len));
  SPX_STATUS_TRY(b.get(batch, &slots));
  SPX_STATUS_TRY(b.get(size_t(batch) * s.vocab, &logits));
  SPX_STATUS_TRY(b.get(batch, &params));
  SPX_STATUS_TRY(b.get(size_t(batch) * s.layers, &seqs));
  std::vector<int32_t> h_tok(batch), h_pos(batch, ctx), h_len(batch, ctx + 1), h_slot(batch);
  for (int i = 0; i < batch; ++i) h_tok[i] = (i * 131) % s.vocab, h_slot[i] = i;
  std::vector<cuda::SamplingRow> h_params(batch, cuda::SamplingRow{0.f, 0, 1.f, 0, 0});
  std::vector<cuda::DecodeSeq> h_seqs(size_t(batch) * s.layers);
  for (int l = 0; l < s.layers; ++l)
    for (int i = 0; i < batch; ++i) {
      const size_t off = l * layer_elems + size_t(i) * s.kv_heads * cap * s.head_dim;
      h_seqs[size_t(l) * batch + i] = cuda::DecodeSeq{kc + off, vc + off, cap};
    }
  SPX_CUDA_TRY(cudaMemcpy(tokens, h_tok.data(), batch * 4, cudaMemcpyHostToDevice));
  SPX_CUDA_TRY(cudaMemcpy(pos, h_pos.data(), batch * 4, cudaMemcpyHostToDevice));
  SPX_CUDA_TRY(cudaMemcpy(len, h_len.data(), batch * 4, cudaMemcpyHostToDevice));
  SPX_CUDA_TRY(cudaMemcpy(slots, h_slot.data(), batch * 4, cudaMemcpyHostToDevice));
  SPX_CUDA_TRY(cudaMemcpy(params, h_params.data(), batch * sizeof(cuda::SamplingRow),
                          cudaMemcpyHostToDevice));
  SPX_CUDA_TRY(cudaMemcpy(seqs, h_seqs.data(), h_seqs.size() * sizeof(cuda::DecodeSeq),
                          cudaMemcpyHostToDevice));
  // Split plan sized for the capacity: fixed for the graph while lengths grow.
  const int split = cuda::decode_attention_split_tokens(batch, s.kv_heads, cap, num_sms);
  const int max_splits = (cap + split - 1) / split;
  char* ws;
  SPX_STATUS_TRY(b.get(cuda::decode_attention_workspace_bytes(batch, s.heads, s.head_dim,
                                                              max_splits),
                       &ws));
  cuda::DecodeAttentionWorkspace w{
      reinterpret_cast<float*>(ws),
      reinterpret_cast<float*>(ws) + size_t(batch) * s.heads * max_splits * s.head_dim,
      max_splits};
  const float scale = 1.f / std::sqrt(float(s.head_dim));

  auto step = [&]() -> Status {
    SPX_CUDA_TRY(cuda::embedding_forward(r.x_, m.embed, tokens, batch, s.hidden, s.vocab, stream));
    SPX_STATUS_TRY(r.layers(
        batch, 0, s.layers, pos, slots,
        [&](int l) { return LayerCache{kc + l * layer_elems, vc + l * layer_elems, cap}; },
        [&](int l, const LayerCache&) -> Status {
          auto attend = simt ? cuda::decode_attention_simt_forward : cuda::decode_attention_forward;
          SPX_CUDA_TRY(attend(r.attn_, r.q_, seqs + size_t(l) * batch, len, batch, s.heads,
                              s.kv_heads, s.head_dim, scale, split, w, stream));
          return Status::Ok();
        }));
    SPX_STATUS_TRY(gemm->run(logits, r.h_, m.lm_head, batch, s.vocab, s.hidden, true, false,
                             stream));
    SPX_CUDA_TRY(cuda::sample_forward(tokens, logits, params, batch, s.vocab, stream));
    advance_kernel<<<(batch + 127) / 128, 128, 0, stream>>>(pos, len, batch);
    SPX_CUDA_TRY(cudaGetLastError());
    return Status::Ok();
  };

  for (int i = 0; i < warm; ++i) SPX_STATUS_TRY(step());  // eager: plans, module load
  SPX_CUDA_TRY(cudaStreamSynchronize(stream));
  const int eager_steps = std::max(2, steps / 4);
  float eager_ms = 0;
  SPX_STATUS_TRY(time_ms(stream, eager_steps, step, &eager_ms));

  cudaGraphExec_t exec;
  SPX_STATUS_TRY(capture(stream, step, &exec));
  SPX_CUDA_TRY(cudaGraphLaunch(exec, stream));  // warm the graph
  SPX_CUDA_TRY(cudaStreamSynchronize(stream));
  float ms = 0;
  const Status timed = time_ms(
      stream, steps,
      [&]() -> Status {
        SPX_CUDA_TRY(cudaGraphLaunch(exec, stream));
        return Status::Ok();
      },
      &ms);
  cudaGraphExecDestroy(exec);
  SPX_STATUS_TRY(timed);

  // Sanity: every request produced a token id in range.
  std::vector<int32_t> out(batch);
  SPX_CUDA_TRY(cudaMemcpy(out.data(), tokens, batch * 4, cudaMemcpyDeviceToHost));
  for (int t : out)
    if (t < 0 || t >= s.vocab) return Status::Error("decode produced token id " + std::to_string(t));

  row->phase = "decode";
  row->kernel = simt ? "simt" : "mma";
  row->context = ctx;
  row->batch = batch;
  row->ms = ms / steps;
  row->eager_ms = eager_ms / eager_steps;
  row->tokens_per_s = batch / (row->ms / 1e3);
  const double mid_ctx = ctx + warm + eager_steps + 1 + steps / 2.0;  // average context timed
  row->bytes = double(m.step_weight_bytes) + double(batch) * mid_ctx * kv_bytes_per_token(s);
  row->roofline_ms = row->bytes / kRooflineBytesPerS * 1e3;
  row->note = "CUDA graph per step, greedy sampling on GPU, split " + std::to_string(split);
  return Status::Ok();
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) v.push_back(std::atoi(item.c_str()));
  return v;
}

const ModelShape* find_shape(const std::string& name) {
  static const auto shapes = model_shapes();
  for (const auto& s : shapes)
    if (s.name == name) return &s;
  return nullptr;
}

}  // namespace
}  // namespace spx::bench
