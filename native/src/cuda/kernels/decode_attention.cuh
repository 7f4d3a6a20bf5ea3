// Flash-decoding over a contiguous KV cache.
//
// Decode attention is bound by reading K and V once. A block owns one
// (request, kv head, split): it streams its split's tokens through shared
// memory in tiles of 32 (cp.async, double-buffered), scores them against
// all G query heads of the group at once (so GQA reads KV once, not G
// times), keeps an online softmax per head, and writes an unnormalised
// partial (o / l, m, l). A second small kernel merges the splits. Splitting
// the sequence is what keeps 132 multiprocessors busy at batch 1.
//
// Blocks past a request's length return at once, so the grid can be sized
// for the cache capacity and captured in a CUDA graph while lengths change.
// Each request brings its own cache (a DecodeSeq), so the engine's
// per-request caches and a benchmark's slot arrays both fit.
#pragma once

#include "cuda/kernels/common.cuh"
#include "cuda/ops.h"

namespace spx::cuda {

constexpr int kDecodeTile = 32;
constexpr int kDecodeThreads = 128;

template <int D, int G>
__global__ void __launch_bounds__(kDecodeThreads)
    decode_attention_forward_kernel(const bf16* q,           // [batch, q_heads, D]
                                    const DecodeSeq* seqs,   // [batch]
                                    const int32_t* lengths,  // [batch]
                                    float* partial_o,        // [batch, q_heads, max_splits, D]
                                    float* partial_ml,       // [batch, q_heads, max_splits, 2]
                                    int kv_heads, float scale_log2, int split_tokens,
                                    int max_splits) {
  constexpr int kRow = D + 8;  // 16 bytes of padding: rows fall in different banks
  constexpr int kChunks = D / 8;
  constexpr int kOutPerThread = (G * D + kDecodeThreads - 1) / kDecodeThreads;
  __shared__ float q_s[G][D];
  __shared__ __align__(16) bf16 k_s[2][kDecodeTile][kRow];
  __shared__ __align__(16) bf16 v_s[2][kDecodeTile][kRow];
  __shared__ float p_s[G][kDecodeTile];
  __shared__ float alpha_s[G], m_s[G], l_s[G];

  const int split = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int len = lengths[b];
  const int begin = split * split_tokens;
  if (begin >= len) return;
  const int end = min(len, begin + split_tokens);
  const int q_heads = kv_heads * G;
  const int tid = threadIdx.x;

  const DecodeSeq seq = seqs[b];
  const size_t kv_base = static_cast<size_t>(hk) * seq.capacity * D;
  const bf16* kg = seq.k + kv_base;
  const bf16* vg = seq.v + kv_base;

  for (int e = tid; e < G * D; e += kDecodeThreads) {
    const int h = e / D, d = e % D;
    q_s[h][d] = __bfloat162float(q[(static_cast<size_t>(b) * q_heads + hk * G + h) * D + d]) *
                scale_log2;
  }
  if (tid < G) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.f;
  }

  auto load_tile = [&](int buf, int t0) {
    for (int c = tid; c < kDecodeTile * kChunks; c += kDecodeThreads) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const bool ok = t0 + r < end;
      const size_t src = static_cast<size_t>(ok ? t0 + r : begin) * D + col;
      cp_async_16(&k_s[buf][r][col], kg + src, ok ? 16 : 0);
      cp_async_16(&v_s[buf][r][col], vg + src, ok ? 16 : 0);
    }
    cp_async_commit();
  };

  float acc[kOutPerThread];
#pragma unroll
  for (int j = 0; j < kOutPerThread; ++j) acc[j] = 0.f;

  const int tiles = (end - begin + kDecodeTile - 1) / kDecodeTile;
  load_tile(0, begin);
  for (int it = 0; it < tiles; ++it) {
    const int buf = it & 1;
    const int t0 = begin + it * kDecodeTile;
    if (it + 1 < tiles) {
      load_tile(buf ^ 1, t0 + kDecodeTile);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    // Scores: one (head, token) pair per thread and step.
    for (int p = tid; p < G * kDecodeTile; p += kDecodeThreads) {
      const int h = p / kDecodeTile, t = p % kDecodeTile;
      float s = -INFINITY;
      if (t0 + t < end) {
        s = 0.f;
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          const Bf16x8 kv = *reinterpret_cast<const Bf16x8*>(&k_s[buf][t][c * 8]);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const float2 f = __bfloat1622float2(kv.v[j]);
            s += f.x * q_s[h][c * 8 + 2 * j] + f.y * q_s[h][c * 8 + 2 * j + 1];
          }
        }
      }
      p_s[h][t] = s;
    }
    __syncthreads();

    // Online softmax, one warp per head (tile width = warp width).
    for (int h = tid / 32; h < G; h += kDecodeThreads / 32) {
      const int lane = tid & 31;
      const float s = p_s[h][lane];
      const float m_old = m_s[h];
      const float m_new = fmaxf(m_old, warp_max(s));  // finite: every tile has a valid token
      const float p = exp2f(s - m_new);
      const float sum = warp_sum(p);
      p_s[h][lane] = p;
      if (lane == 0) {
        const float alpha = exp2f(m_old - m_new);
        alpha_s[h] = alpha;
        l_s[h] = l_s[h] * alpha + sum;
        m_s[h] = m_new;
      }
    }
    __syncthreads();

#pragma unroll
    for (int j = 0; j < kOutPerThread; ++j) {
      const int o = tid + j * kDecodeThreads;
      if (o < G * D) {
        const int h = o / D, d = o % D;
        float a = acc[j] * alpha_s[h];
#pragma unroll 8
        for (int t = 0; t < kDecodeTile; ++t) a += p_s[h][t] * __bfloat162float(v_s[buf][t][d]);
        acc[j] = a;
      }
    }
    __syncthreads();  // the next iteration's load overwrites the other buffer
  }

#pragma unroll
  for (int j = 0; j < kOutPerThread; ++j) {
    const int o = tid + j * kDecodeThreads;
    if (o < G * D) {
      const int h = o / D, d = o % D;
      const size_t row = (static_cast<size_t>(b) * q_heads + hk * G + h) * max_splits + split;
      partial_o[row * D + d] = acc[j] / l_s[h];
    }
  }
  if (tid < G) {
    const size_t row = (static_cast<size_t>(b) * q_heads + hk * G + tid) * max_splits + split;
    partial_ml[row * 2] = m_s[tid];
    partial_ml[row * 2 + 1] = l_s[tid];
  }
}

// Merges a request's splits: weights exp2(m_i - M) * l_i. One block per
// (q head, request), one thread per output element. Static: ops.cu and
// sparse_ops.cu both launch it, each from its own copy.
static __global__ void decode_attention_merge_kernel(bf16* out,                // [batch, q_heads, D]
                                              const float* partial_o,   // [batch, q_heads, max_splits, D]
                                              const float* partial_ml,  // [batch, q_heads, max_splits, 2]
                                              const int32_t* lengths,   // [batch]
                                              int head_dim, int split_tokens, int max_splits) {
  const int h = blockIdx.x, b = blockIdx.y, q_heads = gridDim.x;
  const int splits = min(max_splits, (lengths[b] + split_tokens - 1) / split_tokens);
  const size_t row = (static_cast<size_t>(b) * q_heads + h) * max_splits;
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, partial_ml[(row + s) * 2]);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float num = 0.f, den = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float w = exp2f(partial_ml[(row + s) * 2] - mx) * partial_ml[(row + s) * 2 + 1];
      num += w * partial_o[(row + s) * head_dim + d];
      den += w;
    }
    out[(static_cast<size_t>(b) * q_heads + h) * head_dim + d] =
        __float2bfloat16(den > 0.f ? num / den : 0.f);
  }
}

}  // namespace spx::cuda
