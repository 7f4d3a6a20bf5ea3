// Instantiates the header-only kernels behind the plain C++ entry points of
// ops.h, so .cc code (backend, tests, tools) never needs nvcc.
#include "cuda/ops.h"

#include <cstdlib>
#include <string>

#include "cuda/kernels/bias_add.cuh"
#include "cuda/kernels/decode_attention.cuh"
#include "cuda/kernels/decode_attention_mma.cuh"
#include "cuda/kernels/elementwise.cuh"
#include "cuda/kernels/embedding.cuh"
#include "cuda/kernels/kv_append.cuh"
#include "cuda/kernels/prefill_attention.cuh"
#include "cuda/kernels/qkv_rope.cuh"
#include "cuda/kernels/rmsnorm.cuh"
#include "cuda/kernels/rope.cuh"
#include "cuda/kernels/sampling.cuh"
#include "cuda/kernels/swiglu.cuh"

namespace spx::cuda {

static_assert(sizeof(SamplingRow) == sizeof(SamplingRowDev), "SamplingRow layout");

cudaError_t rmsnorm_forward(bf16* out, const bf16* in, const bf16* weight, int rows, int dim,
                            float eps, cudaStream_t stream) {
  return rmsnorm_launch<false>(out, nullptr, in, weight, rows, dim, eps, stream);
}

cudaError_t add_rmsnorm_forward(bf16* out, bf16* residual, const bf16* in, const bf16* weight,
                                int rows, int dim, float eps, cudaStream_t stream) {
  return rmsnorm_launch<true>(out, residual, in, weight, rows, dim, eps, stream);
}

cudaError_t head_rmsnorm_forward(bf16* x, const bf16* weight, int tokens, int heads,
                                 int head_dim, float eps, cudaStream_t stream) {
  return rmsnorm_launch<false>(x, nullptr, x, weight, tokens * heads, head_dim, eps, stream);
}

cudaError_t rope_forward(bf16* q, bf16* k, const int32_t* positions, const float* inv_freq,
                         int tokens, int q_heads, int kv_heads, int head_dim,
                         cudaStream_t stream) {
  return rope_launch(q, k, positions, inv_freq, tokens, q_heads, kv_heads, head_dim, stream);
}

cudaError_t swiglu_forward(bf16* out, const bf16* gate_up, int rows, int inter,
                           cudaStream_t stream) {
  return swiglu_launch(out, gate_up, gate_up + inter, rows, inter, 2 * inter, stream);
}

cudaError_t bias_add_forward(bf16* x, const bf16* bias, int rows, int dim, cudaStream_t stream) {
  return bias_add_launch(x, bias, rows, dim, stream);
}

cudaError_t embedding_forward(bf16* out, const bf16* table, const int32_t* ids, int tokens,
                              int dim, int vocab, cudaStream_t stream) {
  return embedding_launch(out, table, ids, tokens, dim, vocab, stream);
}

cudaError_t kv_append_forward(bf16* k_cache, bf16* v_cache, const bf16* k, const bf16* v,
                              const int32_t* slots, const int32_t* positions, int tokens,
                              int kv_heads, int head_dim, int capacity, cudaStream_t stream) {
  return kv_append_launch(k_cache, v_cache, k, v, slots, positions, tokens, kv_heads, head_dim,
                          capacity, stream);
}

size_t decode_attention_workspace_bytes(int batch, int q_heads, int head_dim, int max_splits) {
  const size_t rows = static_cast<size_t>(batch) * q_heads * max_splits;
  return rows * head_dim * sizeof(float) + rows * 2 * sizeof(float);
}

int decode_attention_split_tokens(int batch, int kv_heads, int max_len, int num_sms) {
  const int target_blocks = 4 * num_sms;
  const int units = batch * kv_heads > 0 ? batch * kv_heads : 1;
  int splits = (target_blocks + units - 1) / units;
  if (splits < 1) splits = 1;
  int split = (max_len + splits - 1) / splits;
  split = (split + kDecodeTile - 1) / kDecodeTile * kDecodeTile;
  // Short splits cost more in the merge than they win in parallelism.
  return split < 4 * kDecodeTile ? 4 * kDecodeTile : split;
}

static cudaError_t decode_attention_impl(bool mma, bf16* out, const bf16* q,
                                         const DecodeSeq* seqs, const int32_t* lengths, int batch,
                                         int q_heads, int kv_heads, int head_dim, float scale,
                                         int split_tokens, DecodeAttentionWorkspace ws,
                                         cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  if (kv_heads <= 0 || q_heads % kv_heads || split_tokens <= 0 || ws.max_splits <= 0)
    return cudaErrorInvalidValue;
  const int group = q_heads / kv_heads;
  // Head sizes of the real models (64, 128) and of the tiny test fixtures (16, 32).
#define SPX_DECODE_D(d)                                                                       \
  case d:                                                                                     \
    return decode_attention_launch_d<d>(mma, group, out, q, seqs, lengths, batch, kv_heads,   \
                                        scale, split_tokens, ws.partial_o, ws.partial_ml,     \
                                        ws.max_splits, stream);
  switch (head_dim) {
    SPX_DECODE_D(16)
    SPX_DECODE_D(32)
    SPX_DECODE_D(64)
    SPX_DECODE_D(128)
    default:
      return cudaErrorInvalidValue;
  }
#undef SPX_DECODE_D
}

// SPX_DECODE_KERNEL=simt forces the SIMT kernel (for comparisons).
static bool use_mma_decode() {
  static const bool simt = [] {
    const char* e = std::getenv("SPX_DECODE_KERNEL");
    return e != nullptr && std::string(e) == "simt";
  }();
  return !simt;
}

cudaError_t decode_attention_forward(bf16* out, const bf16* q, const DecodeSeq* seqs,
                                     const int32_t* lengths, int batch, int q_heads,
                                     int kv_heads, int head_dim, float scale, int split_tokens,
                                     DecodeAttentionWorkspace ws, cudaStream_t stream) {
  const bool mma = use_mma_decode();
  return decode_attention_impl(mma, out, q, seqs, lengths, batch, q_heads, kv_heads, head_dim,
                               scale, split_tokens, ws, stream);
}

cudaError_t decode_attention_simt_forward(bf16* out, const bf16* q, const DecodeSeq* seqs,
                                          const int32_t* lengths, int batch, int q_heads,
                                          int kv_heads, int head_dim, float scale,
                                          int split_tokens, DecodeAttentionWorkspace ws,
                                          cudaStream_t stream) {
  return decode_attention_impl(false, out, q, seqs, lengths, batch, q_heads, kv_heads, head_dim,
                               scale, split_tokens, ws, stream);
}

cudaError_t prefill_attention_forward(bf16* out, const bf16* q, const bf16* k_cache,
                                      const bf16* v_cache, int start, int tokens, int q_heads,
                                      int kv_heads, int head_dim, int capacity, float scale,
                                      cudaStream_t stream, int kernel) {
  return prefill_attention_launch(out, q, k_cache, v_cache, start, tokens, q_heads, kv_heads,
                                  head_dim, capacity, scale, stream, kernel);
}

cudaError_t sample_forward(int32_t* tokens, const float* logits, const SamplingRow* params,
                           int rows, int vocab, cudaStream_t stream) {
  return sample_launch(tokens, logits, reinterpret_cast<const SamplingRowDev*>(params), rows,
                       vocab, stream);
}

double sample_uniform(uint64_t seed, uint64_t step) { return sample_uniform_impl(seed, step); }

__global__ void fill_random_forward_kernel(bf16* x, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t r = splitmix64(seed * 0x100000001b3ull + i);
    const float u = static_cast<float>(r >> 40) * (1.f / 16777216.f);  // [0, 1)
    x[i] = __float2bfloat16((2.f * u - 1.f) * scale);
  }
}

cudaError_t fill_random_forward(bf16* x, size_t n, uint64_t seed, float scale,
                                cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const size_t blocks = (n + 255) / 256;
  fill_random_forward_kernel<<<static_cast<int>(blocks < 8192 ? blocks : 8192), 256, 0,
                               stream>>>(x, n, seed, scale);
  return cudaGetLastError();
}

cudaError_t rope_table_forward(bf16* x, const bf16* cos_t, const bf16* sin_t, int tokens,
                               int heads, int head_dim, cudaStream_t stream) {
  return rope_table_launch(x, cos_t, sin_t, tokens, heads, head_dim, stream);
}

cudaError_t swiglu_split_forward(bf16* out, const bf16* gate, const bf16* up, int rows,
                                 int inter, cudaStream_t stream) {
  return swiglu_launch(out, gate, up, rows, inter, inter, stream);
}

cudaError_t kv_write_forward(bf16* k_cache, bf16* v_cache, const bf16* k, const bf16* v,
                             int start, int tokens, int kv_heads, int head_dim, int capacity,
                             cudaStream_t stream) {
  return kv_write_launch(k_cache, v_cache, k, v, start, tokens, kv_heads, head_dim, capacity,
                         stream);
}

cudaError_t add_forward(bf16* x, const bf16* y, size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  add_forward_kernel<<<grid_for(n), 256, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

cudaError_t f32_to_bf16_forward(bf16* out, const float* in, size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  f32_to_bf16_kernel<<<grid_for(n), 256, 0, stream>>>(out, in, n);
  return cudaGetLastError();
}

cudaError_t f16_to_bf16_forward(bf16* out, const __half* in, size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  f16_to_bf16_kernel<<<grid_for(n), 256, 0, stream>>>(out, in, n);
  return cudaGetLastError();
}

cudaError_t bf16_to_f32_forward(float* out, const bf16* in, size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  bf16_to_f32_kernel<<<grid_for(n), 256, 0, stream>>>(out, in, n);
  return cudaGetLastError();
}

cudaError_t gather_rows_forward(bf16* out, const bf16* x, const int32_t* rows, int n_rows,
                                int dim, cudaStream_t stream) {
  if (n_rows <= 0) return cudaSuccess;
  gather_rows_kernel<<<n_rows, 256, 0, stream>>>(out, x, rows, dim);
  return cudaGetLastError();
}

cudaError_t qkv_rope_forward(bf16* q_out, bf16* k_cache, bf16* v_cache, const bf16* qkv,
                             const bf16* q_norm, const bf16* k_norm, const float* inv_freq,
                             const int32_t* positions, const int32_t* slots, int tokens,
                             int q_heads, int kv_heads, int head_dim, int capacity, float eps,
                             cudaStream_t stream) {
  return qkv_rope_launch(q_out, k_cache, v_cache, qkv, q_norm, k_norm, inv_freq, positions, slots,
                         tokens, q_heads, kv_heads, head_dim, capacity, eps, stream);
}

}  // namespace spx::cuda
