// Host entry points of the CUDA kernels, callable from plain C++ (.cc files,
// tests, the backend). The kernels themselves live header-only in
// kernels/*.cuh; ops.cu instantiates them behind these declarations.
//
// Conventions (llm.c / flashinfer): every launcher is `<op>_forward(...,
// stream)`, returns cudaError_t (the launch error, never aborts), and takes
// raw device pointers whose shapes are given in the comment beside them.
// Activations and weights are bf16 (HF layout: weights [out, in] row-major);
// norms, softmax and logits accumulate in f32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace spx::cuda {

using bf16 = __nv_bfloat16;

// out = rmsnorm(in) * weight, per row, f32 accumulation (HF LlamaRMSNorm:
// the normalised value is rounded to bf16 before the weight multiply).
cudaError_t rmsnorm_forward(bf16* out,           // [rows, dim]
                            const bf16* in,      // [rows, dim]
                            const bf16* weight,  // [dim]
                            int rows, int dim, float eps, cudaStream_t stream);

// residual += in (rounded to bf16, as HF adds in bf16), then
// out = rmsnorm(residual) * weight.
cudaError_t add_rmsnorm_forward(bf16* out,           // [rows, dim]
                                bf16* residual,      // [rows, dim], updated in place
                                const bf16* in,      // [rows, dim]
                                const bf16* weight,  // [dim]
                                int rows, int dim, float eps, cudaStream_t stream);

// Qwen3's per-head q/k norm: rmsnorm over head_dim of every head of every
// token, in place.
cudaError_t head_rmsnorm_forward(bf16* x,             // [tokens, heads, head_dim]
                                 const bf16* weight,  // [head_dim]
                                 int tokens, int heads, int head_dim, float eps,
                                 cudaStream_t stream);

// Rotary embedding (HF rotate_half layout) on q and k in place.
// inv_freq carries any rope scaling (see rope_freq.h).
cudaError_t rope_forward(bf16* q,                  // [tokens, q_heads, head_dim]
                         bf16* k,                  // [tokens, kv_heads, head_dim]
                         const int32_t* positions, // [tokens]
                         const float* inv_freq,    // [head_dim / 2]
                         int tokens, int q_heads, int kv_heads, int head_dim,
                         cudaStream_t stream);

// out = silu(gate) * up, where gate_up holds [gate | up] per row (the fused
// gate_up projection's output).
cudaError_t swiglu_forward(bf16* out,            // [rows, inter]
                           const bf16* gate_up,  // [rows, 2 * inter]
                           int rows, int inter, cudaStream_t stream);

// x += bias per row (Qwen2-style q/k/v biases).
cudaError_t bias_add_forward(bf16* x,           // [rows, dim]
                             const bf16* bias,  // [dim]
                             int rows, int dim, cudaStream_t stream);

// out[t] = table[ids[t]]; ids outside [0, vocab) give a zero row (inputs
// are validated at the edge; the kernel must still not read out of bounds).
cudaError_t embedding_forward(bf16* out,            // [tokens, dim]
                              const bf16* table,    // [vocab, dim]
                              const int32_t* ids,   // [tokens]
                              int tokens, int dim, int vocab, cudaStream_t stream);

// Writes each token's k/v into the contiguous cache of its slot at its
// position.
cudaError_t kv_append_forward(bf16* k_cache,             // [slots, kv_heads, capacity, head_dim]
                              bf16* v_cache,             // [slots, kv_heads, capacity, head_dim]
                              const bf16* k,             // [tokens, kv_heads, head_dim]
                              const bf16* v,             // [tokens, kv_heads, head_dim]
                              const int32_t* slots,      // [tokens]
                              const int32_t* positions,  // [tokens], < capacity
                              int tokens, int kv_heads, int head_dim, int capacity,
                              cudaStream_t stream);

// Flash-decoding over contiguous per-request KV caches: one query token per
// request, requests of different lengths, each split along the sequence
// into chunks of split_tokens; a second kernel merges the chunks. GQA: the
// query heads of a group share one pass over their KV head, on the tensor
// cores for groups of up to 8 (kernels/decode_attention_mma.cuh).
struct DecodeSeq {
  const bf16* k;  // [kv_heads, capacity, head_dim] of this request (and layer)
  const bf16* v;  // [kv_heads, capacity, head_dim]
  int64_t capacity;
};
struct DecodeAttentionWorkspace {
  float* partial_o;   // [batch, q_heads, max_splits, head_dim]
  float* partial_ml;  // [batch, q_heads, max_splits, 2]  (max, sum) in log2 units
  int max_splits;     // max_splits * split_tokens must cover the longest request
};
// Bytes of workspace for a given batch and split count.
size_t decode_attention_workspace_bytes(int batch, int q_heads, int head_dim, int max_splits);
// Picks split_tokens so that batch * kv_heads * splits fills the GPU
// (about four blocks per multiprocessor), for contexts up to max_len.
int decode_attention_split_tokens(int batch, int kv_heads, int max_len, int num_sms);
cudaError_t decode_attention_forward(bf16* out,               // [batch, q_heads, head_dim]
                                     const bf16* q,           // [batch, q_heads, head_dim]
                                     const DecodeSeq* seqs,   // [batch], device memory
                                     const int32_t* lengths,  // [batch], tokens to attend (>= 1)
                                     int batch, int q_heads, int kv_heads, int head_dim,
                                     float scale, int split_tokens, DecodeAttentionWorkspace ws,
                                     cudaStream_t stream);

// The same with the SIMT (CUDA-core) kernel, which decode_attention_forward
// uses only when SPX_DECODE_KERNEL=simt; kept for comparison and tests.
// Both kernels serve GQA groups of 1 to 8 query heads per KV head.
cudaError_t decode_attention_simt_forward(bf16* out, const bf16* q, const DecodeSeq* seqs,
                                          const int32_t* lengths, int batch, int q_heads,
                                          int kv_heads, int head_dim, float scale,
                                          int split_tokens, DecodeAttentionWorkspace ws,
                                          cudaStream_t stream);

// Causal prefill attention for one request's chunk of queries, flash-style
// (tensor-core tiles, online softmax). Query i sits at position start + i and
// sees cache positions [0, start + i]; the chunk's own k/v must already be
// in the cache (kv_append_forward / kv_write_forward). kernel: 1 and 2 force
// the 64-row and the 128-row mma.sync kernels (2 for head dims 64 and 128,
// others run 1), 3 and 4 the wgmma kernels v3 and v3p (head dim 128 on an
// sm_90a build and device, else 2); 0 takes SPX_PREFILL_KERNEL=v1|v2|v3|v3p
// from the environment, else the default (prefill_attention.cuh says which).
cudaError_t prefill_attention_forward(bf16* out,            // [tokens, q_heads, head_dim]
                                      const bf16* q,        // [tokens, q_heads, head_dim]
                                      const bf16* k_cache,  // [kv_heads, capacity, head_dim]
                                      const bf16* v_cache,  // [kv_heads, capacity, head_dim]
                                      int start, int tokens, int q_heads, int kv_heads,
                                      int head_dim, int capacity, float scale,
                                      cudaStream_t stream, int kernel = 0);

// Per-row sampling parameters, in device memory.
struct SamplingRow {
  float temperature;  // <= 0: greedy
  int top_k;          // <= 0: off
  float top_p;        // >= 1: off
  uint64_t seed;
  uint64_t step;      // token index within the request: one draw per step
};
// Greedy / temperature / top-k / top-p sampling, one block per row.
// Ties in greedy go to the lowest id. Top-k keeps every token whose logit
// ties the k-th largest. The draw is a counter-based hash of (seed, step),
// so a request reproduces its tokens whatever batch it runs in.
cudaError_t sample_forward(int32_t* tokens,           // [rows]
                           const float* logits,       // [rows, vocab]
                           const SamplingRow* params, // [rows]
                           int rows, int vocab, cudaStream_t stream);
// The uniform draw in [0, 1) that sample_forward uses for (seed, step), for
// references on the host.
double sample_uniform(uint64_t seed, uint64_t step);

// Seeded fill with uniform values in [-scale, scale], for benchmarks and tests.
cudaError_t fill_random_forward(bf16* x, size_t n, uint64_t seed, float scale,
                                cudaStream_t stream);

}  // namespace spx::cuda

// ---- Glue for the engine's Backend interface (cuda_backend.cu) ----
namespace spx::cuda {
// Rotary embedding from host-computed tables, in place.
cudaError_t rope_table_forward(bf16* x,            // [tokens, heads, head_dim]
                               const bf16* cos_t,  // [tokens, head_dim / 2]
                               const bf16* sin_t,  // [tokens, head_dim / 2]
                               int tokens, int heads, int head_dim, cudaStream_t stream);
// out = silu(gate) * up with separate gate / up tensors (out may alias gate).
cudaError_t swiglu_split_forward(bf16* out,         // [rows, inter]
                                 const bf16* gate,  // [rows, inter]
                                 const bf16* up,    // [rows, inter]
                                 int rows, int inter, cudaStream_t stream);
// One request's chunk of k/v into its cache at start..start+tokens-1.
cudaError_t kv_write_forward(bf16* k_cache,  // [kv_heads, capacity, head_dim]
                             bf16* v_cache,  // [kv_heads, capacity, head_dim]
                             const bf16* k,  // [tokens, kv_heads, head_dim]
                             const bf16* v,  // [tokens, kv_heads, head_dim]
                             int start, int tokens, int kv_heads, int head_dim, int capacity,
                             cudaStream_t stream);
cudaError_t add_forward(bf16* x, const bf16* y, size_t n, cudaStream_t stream);  // x += y
cudaError_t f32_to_bf16_forward(bf16* out, const float* in, size_t n, cudaStream_t stream);
cudaError_t bf16_to_f32_forward(float* out, const bf16* in, size_t n, cudaStream_t stream);
cudaError_t f16_to_bf16_forward(bf16* out, const __half* in, size_t n, cudaStream_t stream);
cudaError_t gather_rows_forward(bf16* out,            // [n_rows, dim]
                                const bf16* x,        // [?, dim]
                                const int32_t* rows,  // [n_rows], device
                                int n_rows, int dim, cudaStream_t stream);
}  // namespace spx::cuda

namespace spx::cuda {
// Fused post-QKV step (kernels/qkv_rope.cuh): split [q | k | v], optional
// per-head q/k norm, RoPE, q out, k/v appended to each token's cache slot.
cudaError_t qkv_rope_forward(bf16* q_out,              // [tokens, q_heads, head_dim]
                             bf16* k_cache,            // [slots, kv_heads, capacity, head_dim]
                             bf16* v_cache,            // [slots, kv_heads, capacity, head_dim]
                             const bf16* qkv,          // [tokens, (q_heads + 2 kv_heads) * head_dim]
                             const bf16* q_norm,       // [head_dim] or nullptr
                             const bf16* k_norm,       // [head_dim] or nullptr
                             const float* inv_freq,    // [head_dim / 2]
                             const int32_t* positions, // [tokens]
                             const int32_t* slots,     // [tokens]
                             int tokens, int q_heads, int kv_heads, int head_dim, int capacity,
                             float eps, cudaStream_t stream);
}  // namespace spx::cuda
