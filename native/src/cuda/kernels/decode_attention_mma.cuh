// Flash-decoding on the tensor cores, for GQA groups of up to 8 query heads.
//
// The SIMT kernel (decode_attention.cuh) spends ~30 instructions per token
// and head on shared-memory reads and FMAs, which at 32k context keeps it
// near 2.3 TB/s instead of the 4.3 TB/s the bytes allow. Here a group's G
// query heads become the rows of an m16n8k16 A operand (rows G..15 are
// zero), so S = Q K^T and O += P V are a few mma.sync per 16 tokens with
// fragments fetched by ldmatrix: about 6 instructions per token.
//
// Each of the 4 warps streams its own 32-token tiles (tiles warp, warp+4,
// ...) through its own shared-memory slice with cp.async and keeps its own
// online-softmax state, so warps never wait for each other until the end of
// the split, where their states merge. Output goes to the same partials as
// the SIMT kernel, merged across splits by decode_attention_merge_kernel.
#pragma once

#include "cuda/kernels/common.cuh"
#include "cuda/kernels/decode_attention.cuh"

namespace spx::cuda {

constexpr int kMmaTile = 32;  // tokens per warp tile (group_scores_tile's 4 n-tiles)
constexpr int kMmaWarps = 4;

// Which cache rows a decode pass reads for request b and KV head hk: the
// dense path reads positions 0 .. lengths[b] - 1; the sparse path
// (sparse_decode_attention.cuh) reads the positions its selection lists.
// `lengths` is what the split merge needs either way: rows per request.
struct DenseRows {
  static constexpr bool kGather = false;  // position(i) == i: no lookup
  const int32_t* lengths;                 // [batch]
  __device__ __forceinline__ int count(int b) const { return lengths[b]; }
  __device__ __forceinline__ int position(int b, int hk, int i) const { return i; }
};

// A group's G query heads as m16n8k16 A fragments for every 16-dim k-step:
// row g is head g; rows G..15 (and all of rows 8..15) stay zero.
template <int D, int G>
__device__ __forceinline__ void load_group_query(uint32_t (&qa)[D / 16][4],
                                                 const bf16* q_group,  // [G, D]
                                                 int lane) {
  const int g = lane / 4, t = lane % 4;
  const bool valid = g < G;
  const bf16* qr = q_group + (valid ? g : 0) * D;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    qa[kk][0] = valid ? *reinterpret_cast<const uint32_t*>(qr + kk * 16 + 2 * t) : 0u;
    qa[kk][1] = 0u;
    qa[kk][2] = valid ? *reinterpret_cast<const uint32_t*>(qr + kk * 16 + 2 * t + 8) : 0u;
    qa[kk][3] = 0u;
  }
}

// S = Q K^T for one kMmaTile-token tile of K in shared memory: 4 n-tiles of
// 8 tokens; s[n][e] is head lane/4, token n*8 + 2(lane%4) + e. ldmatrix x4
// fetches B fragments for two n-tiles of one k-step: matrices (tokens n0..,
// dims c), (n0.., c+8), (n0+8.., c), (n0+8.., c+8).
template <int D>
__device__ __forceinline__ void group_scores_tile(float (&s)[4][4],
                                                  const uint32_t (&qa)[D / 16][4],
                                                  const bf16 (*k_s)[D + 8], int lane) {
#pragma unroll
  for (int n = 0; n < 4; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
  const int mi = lane / 8, mr = lane % 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < 2; ++np) {
      uint32_t r[4];
      ldmatrix_x4(r, &k_s[np * 16 + mr + (mi >> 1) * 8][kk * 16 + (mi & 1) * 8]);
      mma_bf16_16816(s[2 * np], qa[kk], r);
      mma_bf16_16816(s[2 * np + 1], qa[kk], r + 2);
    }
  }
}

template <int D>
constexpr size_t decode_mma_smem_bytes() {
  // Per warp: K and V tiles [kMmaTile][D + 8] bf16. The end-of-split merge
  // reuses the space for [warps][8][D] f32 outputs plus (m, l) per row.
  const size_t tiles = size_t(kMmaWarps) * 2 * kMmaTile * (D + 8) * sizeof(bf16);
  const size_t merge = size_t(kMmaWarps) * 8 * (D + 2) * sizeof(float);
  return tiles > merge ? tiles : merge;
}

template <int D, int G, typename Rows>
__global__ void __launch_bounds__(kMmaWarps * 32)
    decode_attention_mma_forward_kernel(const bf16* q,          // [batch, q_heads, D]
                                        const DecodeSeq* seqs,  // [batch]
                                        Rows rows,              // DenseRows or SelectedRows
                                        float* partial_o,        // [batch, q_heads, max_splits, D]
                                        float* partial_ml,       // [batch, q_heads, max_splits, 2]
                                        int kv_heads, float scale_log2, int split_tokens,
                                        int max_splits) {
  static_assert(G >= 1 && G <= 8, "one m16 tile holds up to 8 heads");
  constexpr int kRow = D + 8;
  constexpr int kChunks = D / 8;
  constexpr int kKSteps = D / 16;
  constexpr int kSTiles = kMmaTile / 8;
  constexpr int kOTiles = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const int split = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int len = rows.count(b);
  const int begin = split * split_tokens;
  if (begin >= len) return;
  const int end = min(len, begin + split_tokens);
  const int q_heads = kv_heads * G;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;

  bf16(*k_s)[kRow] = reinterpret_cast<bf16(*)[kRow]>(smem_raw) + warp * 2 * kMmaTile;
  bf16(*v_s)[kRow] = k_s + kMmaTile;

  const DecodeSeq seq = seqs[b];
  const size_t kv_base = static_cast<size_t>(hk) * seq.capacity * D;
  const bf16* kg = seq.k + kv_base;
  const bf16* vg = seq.v + kv_base;

  uint32_t qa[kKSteps][4];
  load_group_query<D, G>(qa, q + (static_cast<size_t>(b) * q_heads + hk * G) * D, lane);

  float o[kOTiles][2];
#pragma unroll
  for (int n = 0; n < kOTiles; ++n) o[n][0] = o[n][1] = 0.f;
  float m = -INFINITY, l = 0.f;

  // Gathered rows: lane i holds the cache position of the tile's row i,
  // looked up one tile ahead so the lookup hides behind the tile's loads.
  const int first = begin + warp * kMmaTile;
  int pos_next = 0;
  if constexpr (Rows::kGather) {
    if (first < end) pos_next = rows.position(b, hk, min(first + lane, end - 1));
  }

  for (int t0 = first; t0 < end; t0 += kMmaWarps * kMmaTile) {
    [[maybe_unused]] const int pos = pos_next;
    for (int c = lane; c < kMmaTile * kChunks; c += 32) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const bool ok = t0 + r < end;
      int row = ok ? t0 + r : begin;
      if constexpr (Rows::kGather) row = __shfl_sync(0xffffffffu, pos, r);
      const size_t src = static_cast<size_t>(row) * D + col;
      cp_async_16(&k_s[r][col], kg + src, ok ? 16 : 0);
      cp_async_16(&v_s[r][col], vg + src, ok ? 16 : 0);
    }
    cp_async_commit();
    if constexpr (Rows::kGather) {
      const int next = t0 + kMmaWarps * kMmaTile;
      if (next < end) pos_next = rows.position(b, hk, min(next + lane, end - 1));
    }
    cp_async_wait<0>();
    __syncwarp();

    float s[kSTiles][4];
    group_scores_tile<D>(s, qa, k_s, lane);

    // Online softmax on row g (head g); rows g+8 are padding.
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < kSTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tok = t0 + n * 8 + 2 * t + e;
        s[n][e] = tok < end ? s[n][e] * scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[n][e]);
      }
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m, mx);  // finite: every tile holds a valid token
    const float alpha = exp2f(m - m_new);
    m = m_new;
    float sum = 0.f;
#pragma unroll
    for (int n = 0; n < kSTiles; ++n) {
      s[n][0] = exp2f(s[n][0] - m_new);
      s[n][1] = exp2f(s[n][1] - m_new);
      sum += s[n][0] + s[n][1];
    }
    l = l * alpha + sum;  // this thread's share; the quad sums at the end
#pragma unroll
    for (int n = 0; n < kOTiles; ++n) {
      o[n][0] *= alpha;
      o[n][1] *= alpha;
    }

    const int mi = lane / 8, mr = lane % 8;
    // O += P V: per 16-token k-step, ldmatrix.trans gives B fragments for two
    // n-tiles of dims: matrices (tokens k.., dims c), (k+8.., c), (k.., c+8),
    // (k+8.., c+8).
#pragma unroll
    for (int kk = 0; kk < kMmaTile / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
      a[1] = 0u;
      a[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = 0u;
#pragma unroll
      for (int np = 0; np < kOTiles / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, &v_s[kk * 16 + mr + (mi & 1) * 8][np * 16 + (mi >> 1) * 8]);
        float c0[4] = {o[2 * np][0], o[2 * np][1], 0.f, 0.f};
        float c1[4] = {o[2 * np + 1][0], o[2 * np + 1][1], 0.f, 0.f};
        mma_bf16_16816(c0, a, r);
        mma_bf16_16816(c1, a, r + 2);
        o[2 * np][0] = c0[0];
        o[2 * np][1] = c0[1];
        o[2 * np + 1][0] = c1[0];
        o[2 * np + 1][1] = c1[1];
      }
    }
    __syncwarp();  // the next tile's cp.async overwrites this warp's slice
  }

  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);

  // Merge the warps' states through shared memory (the tiles are done).
  __syncthreads();
  float* o_s = reinterpret_cast<float*>(smem_raw);           // [warps][8][D]
  float* ml_s = o_s + kMmaWarps * 8 * D;                       // [warps][8][2]
  if (g < G) {
#pragma unroll
    for (int n = 0; n < kOTiles; ++n) {
      o_s[(warp * 8 + g) * D + n * 8 + 2 * t] = o[n][0];
      o_s[(warp * 8 + g) * D + n * 8 + 2 * t + 1] = o[n][1];
    }
    if (t == 0) {
      ml_s[(warp * 8 + g) * 2] = m;
      ml_s[(warp * 8 + g) * 2 + 1] = l;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < G * D; e += kMmaWarps * 32) {
    const int h = e / D, d = e % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) mx = fmaxf(mx, ml_s[(w * 8 + h) * 2]);
    float num = 0.f, den = 0.f;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) {
      const float mw = ml_s[(w * 8 + h) * 2];
      if (mw == -INFINITY) continue;  // a warp that had no tile in this split
      const float wt = exp2f(mw - mx);
      num += wt * o_s[(w * 8 + h) * D + d];
      den += wt * ml_s[(w * 8 + h) * 2 + 1];
    }
    const size_t row = (static_cast<size_t>(b) * q_heads + hk * G + h) * max_splits + split;
    partial_o[row * D + d] = num / den;
    if (d == 0) {
      partial_ml[row * 2] = mx;
      partial_ml[row * 2 + 1] = den;
    }
  }
}

// Launches the tensor-core kernel over the rows `rows` names (no merge).
template <int D, int G, typename Rows>
inline cudaError_t decode_attention_mma_launch(const bf16* q, const DecodeSeq* seqs, Rows rows,
                                               int batch, int kv_heads, float scale_log2,
                                               int split_tokens, float* partial_o,
                                               float* partial_ml, int max_splits,
                                               cudaStream_t stream) {
  constexpr size_t smem = decode_mma_smem_bytes<D>();
  static bool configured = false;  // raising the limit is a host call: once per instantiation
  if (!configured) {
    const cudaError_t e = cudaFuncSetAttribute(decode_attention_mma_forward_kernel<D, G, Rows>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
    configured = true;
  }
  decode_attention_mma_forward_kernel<D, G, Rows>
      <<<dim3(max_splits, kv_heads, batch), kMmaWarps * 32, smem, stream>>>(
          q, seqs, rows, partial_o, partial_ml, kv_heads, scale_log2, split_tokens, max_splits);
  return cudaGetLastError();
}

// Launches either decode kernel (tensor-core `mma`, or the SIMT one from
// decode_attention.cuh), then the merge of the splits.
template <int D, int G>
inline cudaError_t decode_attention_launch_dg(bool mma, bf16* out, const bf16* q,
                                              const DecodeSeq* seqs, const int32_t* lengths,
                                              int batch, int kv_heads, float scale,
                                              int split_tokens, float* partial_o,
                                              float* partial_ml, int max_splits,
                                              cudaStream_t stream) {
  const float scale_log2 = scale * 1.4426950408889634f;
  if (mma) {
    const cudaError_t e = decode_attention_mma_launch<D, G>(
        q, seqs, DenseRows{lengths}, batch, kv_heads, scale_log2, split_tokens, partial_o,
        partial_ml, max_splits, stream);
    if (e != cudaSuccess) return e;
  } else {
    decode_attention_forward_kernel<D, G><<<dim3(max_splits, kv_heads, batch), kDecodeThreads,
                                            0, stream>>>(q, seqs, lengths, partial_o, partial_ml,
                                                         kv_heads, scale_log2, split_tokens,
                                                         max_splits);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  decode_attention_merge_kernel<<<dim3(kv_heads * G, batch), D, 0, stream>>>(
      out, partial_o, partial_ml, lengths, D, split_tokens, max_splits);
  return cudaGetLastError();
}

template <int D>
inline cudaError_t decode_attention_launch_d(bool mma, int group, bf16* out, const bf16* q,
                                             const DecodeSeq* seqs, const int32_t* lengths,
                                             int batch, int kv_heads, float scale,
                                             int split_tokens, float* po, float* pml,
                                             int max_splits, cudaStream_t stream) {
  return dispatch_group(group, [&](auto g) {
    return decode_attention_launch_dg<D, decltype(g)::value>(
        mma, out, q, seqs, lengths, batch, kv_heads, scale, split_tokens, po, pml, max_splits,
        stream);
  });
}

}  // namespace spx::cuda
