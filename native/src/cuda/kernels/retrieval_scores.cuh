// Retrieval-head scoring (paper section 1) on the GPU: for each request's
// one decode query, the attention probabilities of every query head over the
// head's own K cache, reduced over each GQA group to one score per token and
// KV head, the input of topk_select.cuh.
//
// Two kernels, because a softmax over up to 131k tokens needs the whole row:
//   1. logits, split along T: a group's G query heads are the rows of an
//      m16n8k16 tile against 32-token K tiles (the decode kernel's S = Q K^T,
//      fetched the same way), so the K cache streams at memory speed;
//   2. one block per (request, KV head): an online max/sum over the group's
//      logit rows, then a second read that writes the group mean or max of
//      exp(x - max) / sum, as retrieval::Selector computes on the host.
#pragma once

#include "cuda/kernels/decode_attention_mma.cuh"

namespace spx::cuda {

constexpr int kScoreWarps = 4;
constexpr int kScoreTile = kMmaTile;                    // tokens per warp tile
constexpr int kScoreChunk = 4 * kScoreWarps * kScoreTile;  // tokens per block
constexpr int kScoreThreads = 512;                      // group kernel
constexpr int kScoreUnroll = 4;  // group kernel: tokens per thread in flight (few blocks per row)

template <int D>
constexpr size_t retrieval_logits_smem_bytes() {
  return size_t(kScoreWarps) * kScoreTile * (D + 8) * sizeof(bf16);
}

template <int D, int G>
__global__ void __launch_bounds__(kScoreWarps * 32)
    retrieval_logits_forward_kernel(float* logits,           // [batch, q_heads, stride]
                                    const bf16* q,           // [batch, q_heads, D]
                                    const DecodeSeq* seqs,   // [batch]
                                    const int32_t* lengths,  // [batch]
                                    int kv_heads, float scale, int64_t stride) {
  constexpr int kRow = D + 8;
  constexpr int kChunks = D / 8;
  constexpr int kKSteps = D / 16;
  constexpr int kSTiles = kScoreTile / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const int hk = blockIdx.y, b = blockIdx.z;
  const int len = static_cast<int>(min(static_cast<int64_t>(lengths[b]), stride));
  const int begin = blockIdx.x * kScoreChunk;
  if (begin >= len) return;
  const int end = min(len, begin + kScoreChunk);
  const int q_heads = kv_heads * G;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  bf16(*k_s)[kRow] = reinterpret_cast<bf16(*)[kRow]>(smem_raw) + warp * kScoreTile;
  const bf16* kg = seqs[b].k + static_cast<size_t>(hk) * seqs[b].capacity * D;

  uint32_t qa[kKSteps][4];
  load_group_query<D, G>(qa, q + (static_cast<size_t>(b) * q_heads + hk * G) * D, lane);
  float* out = logits + (static_cast<size_t>(b) * q_heads + hk * G + (g < G ? g : 0)) * stride;

  for (int t0 = begin + warp * kScoreTile; t0 < end; t0 += kScoreWarps * kScoreTile) {
    for (int c = lane; c < kScoreTile * kChunks; c += 32) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const bool ok = t0 + r < end;
      cp_async_16(&k_s[r][col], kg + static_cast<size_t>(ok ? t0 + r : begin) * D + col,
                  ok ? 16 : 0);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncwarp();
    float s[kSTiles][4];
    group_scores_tile<D>(s, qa, k_s, lane);
    if (g < G) {
#pragma unroll
      for (int n = 0; n < kSTiles; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int tok = t0 + n * 8 + 2 * t + e;
          if (tok < end) out[tok] = s[n][e] * scale;
        }
    }
    __syncwarp();  // the next tile's cp.async overwrites this warp's slice
  }
}

// (max, sum of exp(x - max)) pairs merge associatively.
__device__ __forceinline__ void softmax_stat_merge(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

// x[u][h] = logits row h at token t0 + u * kScoreThreads (0 past len): all
// loads issued before any use.
template <int G>
__device__ __forceinline__ void load_group_logits(float (&x)[kScoreUnroll][G],
                                                  const float* rows,  // [G, stride]
                                                  int64_t stride, int t0, int len) {
#pragma unroll
  for (int u = 0; u < kScoreUnroll; ++u)
#pragma unroll
    for (int h = 0; h < G; ++h) {
      const int t = t0 + u * kScoreThreads;
      x[u][h] = t < len ? rows[h * stride + t] : 0.f;
    }
}

template <int G, bool kMax>
__global__ void __launch_bounds__(kScoreThreads)
    retrieval_group_forward_kernel(float* scores,           // [batch, kv_heads, stride]
                                   const float* logits,     // [batch, q_heads, stride]
                                   const int32_t* lengths,  // [batch]
                                   int kv_heads, int64_t stride) {
  __shared__ float stat_s[kScoreThreads / 32][G][2];
  __shared__ float final_s[G][2];
  const int hk = blockIdx.x, b = blockIdx.y;
  const int len = static_cast<int>(min(static_cast<int64_t>(lengths[b]), stride));
  const int q_heads = kv_heads * G;
  const float* rows = logits + (static_cast<size_t>(b) * q_heads + hk * G) * stride;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  float m[G], s[G];
#pragma unroll
  for (int h = 0; h < G; ++h) m[h] = -INFINITY, s[h] = 0.f;
  for (int t0 = threadIdx.x; t0 < len; t0 += kScoreThreads * kScoreUnroll) {
    float x[kScoreUnroll][G];
    load_group_logits<G>(x, rows, stride, t0, len);
#pragma unroll
    for (int u = 0; u < kScoreUnroll; ++u) {
      if (t0 + u * kScoreThreads >= len) break;
#pragma unroll
      for (int h = 0; h < G; ++h) {
        if (x[u][h] > m[h]) {
          s[h] = s[h] * expf(m[h] - x[u][h]) + 1.f;
          m[h] = x[u][h];
        } else {
          s[h] += expf(x[u][h] - m[h]);
        }
      }
    }
  }
#pragma unroll
  for (int h = 0; h < G; ++h) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      softmax_stat_merge(m[h], s[h], __shfl_xor_sync(0xffffffffu, m[h], o),
                         __shfl_xor_sync(0xffffffffu, s[h], o));
    if (lane == 0) stat_s[warp][h][0] = m[h], stat_s[warp][h][1] = s[h];
  }
  __syncthreads();
  if (threadIdx.x < G) {
    const int h = threadIdx.x;
    float mh = -INFINITY, sh = 0.f;
    for (int w = 0; w < kScoreThreads / 32; ++w)
      softmax_stat_merge(mh, sh, stat_s[w][h][0], stat_s[w][h][1]);
    final_s[h][0] = mh;
    final_s[h][1] = sh > 0.f ? 1.f / sh : 0.f;
  }
  __syncthreads();
  float mx[G], inv[G];
#pragma unroll
  for (int h = 0; h < G; ++h) mx[h] = final_s[h][0], inv[h] = final_s[h][1];
  float* out = scores + (static_cast<size_t>(b) * kv_heads + hk) * stride;
  for (int t0 = threadIdx.x; t0 < len; t0 += kScoreThreads * kScoreUnroll) {
    float x[kScoreUnroll][G];
    load_group_logits<G>(x, rows, stride, t0, len);
#pragma unroll
    for (int u = 0; u < kScoreUnroll; ++u) {
      const int t = t0 + u * kScoreThreads;
      if (t >= len) break;
      float acc = 0.f;
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float p = expf(x[u][h] - mx[h]) * inv[h];
        acc = kMax ? fmaxf(acc, p) : acc + p;
      }
      out[t] = kMax ? acc : acc / G;
    }
  }
}

template <int D, int G>
inline cudaError_t retrieval_scores_launch_dg(float* scores, float* logits, const bf16* q,
                                              const DecodeSeq* seqs, const int32_t* lengths,
                                              int batch, int kv_heads, float scale,
                                              bool reduce_max, int64_t stride,
                                              cudaStream_t stream) {
  constexpr size_t smem = retrieval_logits_smem_bytes<D>();
  const int64_t chunks = (stride + kScoreChunk - 1) / kScoreChunk;
  retrieval_logits_forward_kernel<D, G>
      <<<dim3(static_cast<unsigned>(chunks), kv_heads, batch), kScoreWarps * 32, smem, stream>>>(
          logits, q, seqs, lengths, kv_heads, scale, stride);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  const dim3 grid(kv_heads, batch);
  if (reduce_max)
    retrieval_group_forward_kernel<G, true>
        <<<grid, kScoreThreads, 0, stream>>>(scores, logits, lengths, kv_heads, stride);
  else
    retrieval_group_forward_kernel<G, false>
        <<<grid, kScoreThreads, 0, stream>>>(scores, logits, lengths, kv_heads, stride);
  return cudaGetLastError();
}

template <int D>
inline cudaError_t retrieval_scores_launch_d(int group, float* scores, float* logits,
                                             const bf16* q, const DecodeSeq* seqs,
                                             const int32_t* lengths, int batch, int kv_heads,
                                             float scale, bool reduce_max, int64_t stride,
                                             cudaStream_t stream) {
  return dispatch_group(group, [&](auto g) {
    return retrieval_scores_launch_dg<D, decltype(g)::value>(
        scores, logits, q, seqs, lengths, batch, kv_heads, scale, reduce_max, stride, stream);
  });
}

}  // namespace spx::cuda
