// Causal prefill attention, flash-style, on the tensor cores.
//
// Prefill attention is compute-bound (T^2 * D per head), so it runs on
// mma.sync m16n8k16 (bf16 in, f32 accumulate) rather than CUDA cores: a
// block of 4 warps owns 64 query rows of one query head, each warp 16 rows
// kept in registers as A fragments. K/V tiles of 64 tokens pass through
// padded shared memory; S = Q K^T stays in registers, the online softmax
// runs on the accumulator layout (a row lives in one quad of lanes), and
// the probabilities are re-packed in registers as the A operand of P V
// (the C layout of two adjacent n-tiles is exactly the A layout).
//
// K/V tiles are double-buffered (cp.async for tile j+1 in flight while tile
// j is multiplied) and reach the tensor cores through ldmatrix, four 8x8
// fragments per instruction (the first H200 run, with one buffer and scalar
// fragment loads, ran at 0.6x HF's flash attention at 32k).
//
// Queries are a chunk of one request at positions start..start+T-1; keys
// are the cache positions 0..start+T-1, so a long prompt is prefilled chunk
// by chunk with the same kernel.
//
// This kernel is now "v1": head dims 64 and 128 go to the 128-row kernel in
// prefill_attention_v2.cuh unless SPX_PREFILL_KERNEL=v1; 16 and 32 (the tiny
// test fixtures) stay here. Head dim 128 on an sm_90a build and an H100/H200
// can take the wgmma kernel in prefill_attention_v3.cuh (SPX_PREFILL_KERNEL=v3).
#pragma once

#include <cstdlib>
#include <cstring>

#include "cuda/kernels/common.cuh"
#include "cuda/kernels/prefill_attention_v2.cuh"
#include "cuda/kernels/prefill_attention_v3.cuh"

namespace spx::cuda {

constexpr int kPrefillRows = 64;  // query rows per block (16 per warp)
constexpr int kPrefillKeys = 64;  // keys per tile

template <int D>
constexpr size_t prefill_smem_bytes() {
  return size_t(2) * 2 * kPrefillKeys * (D + 8) * sizeof(bf16);  // 2 stages of K and V
}

template <int D>
__global__ void __launch_bounds__(128)
    prefill_attention_forward_kernel(bf16* out,            // [tokens, q_heads, D]
                                     const bf16* q,        // [tokens, q_heads, D]
                                     const bf16* k_cache,  // [kv_heads, capacity, D]
                                     const bf16* v_cache,  // [kv_heads, capacity, D]
                                     int start, int tokens, int q_heads, int kv_heads,
                                     int capacity, float scale_log2) {
  constexpr int kRow = D + 8;  // padding makes the fragment loads conflict-free
  constexpr int kChunks = D / 8;
  constexpr int kKSteps = D / 16;            // k-steps of Q K^T
  constexpr int kSTiles = kPrefillKeys / 8;  // n-tiles of S
  constexpr int kOTiles = D / 8;             // n-tiles of O
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // [stage][K or V][kPrefillKeys][kRow]
  bf16(*tiles)[kRow] = reinterpret_cast<bf16(*)[kRow]>(smem_raw);
  auto k_tile = [&](int stage) { return tiles + (stage * 2) * kPrefillKeys; };
  auto v_tile = [&](int stage) { return tiles + (stage * 2 + 1) * kPrefillKeys; };

  const int h = blockIdx.y;
  const int hk = h / (q_heads / kv_heads);
  // Later query blocks see more keys: start them first to shorten the tail.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kPrefillRows;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int mi = lane / 8, mr = lane % 8;  // ldmatrix: matrix and row this lane addresses
  const size_t q_stride = static_cast<size_t>(q_heads) * D;

  // Stage this block's Q rows through the first K buffer, then keep them as
  // A fragments in registers.
  {
    bf16(*q_s)[kRow] = k_tile(0);
    for (int c = tid; c < kPrefillRows * kChunks; c += 128) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const bool ok = q0 + r < tokens;
      cp_async_16(&q_s[r][col], q + (ok ? q0 + r : 0) * q_stride + h * D + col, ok ? 16 : 0);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
  }
  uint32_t qa[kKSteps][4];
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    // A fragment of rows warp*16.., cols kk*16..: matrices (rows 0-7, cols 0-7),
    // (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15).
    ldmatrix_x4(qa[kk], &k_tile(0)[warp * 16 + mr + (mi & 1) * 8][kk * 16 + (mi >> 1) * 8]);
  }
  __syncthreads();

  const int qpos0 = start + q0 + warp * 16 + g;  // position of this thread's first row
  const int qpos1 = qpos0 + 8;
  const int kv_end = start + min(q0 + kPrefillRows, tokens);
  const size_t kv_base = static_cast<size_t>(hk) * capacity * D;
  const bf16* kg = k_cache + kv_base;
  const bf16* vg = v_cache + kv_base;

  auto load_tile = [&](int stage, int j0) {
    bf16(*ks)[kRow] = k_tile(stage);
    bf16(*vs)[kRow] = v_tile(stage);
    for (int c = tid; c < kPrefillKeys * kChunks; c += 128) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const bool ok = j0 + r < kv_end;
      const size_t src = static_cast<size_t>(ok ? j0 + r : 0) * D + col;
      cp_async_16(&ks[r][col], kg + src, ok ? 16 : 0);
      cp_async_16(&vs[r][col], vg + src, ok ? 16 : 0);
    }
    cp_async_commit();
  };

  float o[kOTiles][4];
#pragma unroll
  for (int n = 0; n < kOTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  const int n_tiles = (kv_end + kPrefillKeys - 1) / kPrefillKeys;
  load_tile(0, 0);
  for (int j = 0; j < n_tiles; ++j) {
    const int j0 = j * kPrefillKeys;
    if (j + 1 < n_tiles) {
      load_tile((j + 1) & 1, j0 + kPrefillKeys);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    bf16(*k_s)[kRow] = k_tile(j & 1);
    bf16(*v_s)[kRow] = v_tile(j & 1);

    // Skip the MMAs of a tile that lies wholly above this warp's diagonal
    // (warp-uniform, so the shuffles below stay convergent).
    const bool visible = j0 <= start + q0 + warp * 16 + 15;
    if (visible) {
      float s[kSTiles][4];
#pragma unroll
      for (int n = 0; n < kSTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
        for (int np = 0; np < kSTiles / 2; ++np) {
          uint32_t b[4];
          ldmatrix_x4(b, &k_s[np * 16 + mr + (mi >> 1) * 8][kk * 16 + (mi & 1) * 8]);
          mma_bf16_16816(s[2 * np], qa[kk], b);
          mma_bf16_16816(s[2 * np + 1], qa[kk], b + 2);
        }
      }
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int n = 0; n < kSTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = j0 + n * 8 + 2 * t + (e & 1);
          const int qp = e < 2 ? qpos0 : qpos1;
          s[n][e] = key <= qp ? s[n][e] * scale_log2 : -INFINITY;
        }
        mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
        mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
      }
#pragma unroll
      for (int x = 1; x <= 2; x <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
      }
      const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
      // A row with nothing visible yet keeps m = -inf; use 0 as its reference
      // so exp2 gives 0 rather than NaN.
      const float ref0 = mn0 == -INFINITY ? 0.f : mn0;
      const float ref1 = mn1 == -INFINITY ? 0.f : mn1;
      const float a0 = exp2f(m0 - ref0), a1 = exp2f(m1 - ref1);
      m0 = mn0;
      m1 = mn1;
      float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
      for (int n = 0; n < kSTiles; ++n) {
        s[n][0] = exp2f(s[n][0] - ref0);
        s[n][1] = exp2f(s[n][1] - ref0);
        s[n][2] = exp2f(s[n][2] - ref1);
        s[n][3] = exp2f(s[n][3] - ref1);
        sum0 += s[n][0] + s[n][1];
        sum1 += s[n][2] + s[n][3];
      }
      l0 = l0 * a0 + sum0;  // per-thread partial row sums; the quad reduces at the end
      l1 = l1 * a1 + sum1;
#pragma unroll
      for (int n = 0; n < kOTiles; ++n) {
        o[n][0] *= a0;
        o[n][1] *= a0;
        o[n][2] *= a1;
        o[n][3] *= a1;
      }
#pragma unroll
      for (int kk = 0; kk < kPrefillKeys / 16; ++kk) {
        uint32_t a[4];
        a[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
        a[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
        a[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        a[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int np = 0; np < kOTiles / 2; ++np) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, &v_s[kk * 16 + mr + (mi & 1) * 8][np * 16 + (mi >> 1) * 8]);
          mma_bf16_16816(o[2 * np], a, b);
          mma_bf16_16816(o[2 * np + 1], a, b + 2);
        }
      }
    }
    __syncthreads();  // the next iteration's load overwrites this stage
  }

#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, x);
    l1 += __shfl_xor_sync(0xffffffffu, l1, x);
  }
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
#pragma unroll
  for (int n = 0; n < kOTiles; ++n) {
    const int col = h * D + n * 8 + 2 * t;
    if (r0 < tokens)
      *reinterpret_cast<__nv_bfloat162*>(out + r0 * q_stride + col) =
          __floats2bfloat162_rn(o[n][0] * inv0, o[n][1] * inv0);
    if (r1 < tokens)
      *reinterpret_cast<__nv_bfloat162*>(out + r1 * q_stride + col) =
          __floats2bfloat162_rn(o[n][2] * inv1, o[n][3] * inv1);
  }
}

template <int D>
inline cudaError_t prefill_attention_launch_d(dim3 grid, bf16* out, const bf16* q,
                                              const bf16* k_cache, const bf16* v_cache, int start,
                                              int tokens, int q_heads, int kv_heads, int capacity,
                                              float sl, cudaStream_t stream) {
  constexpr size_t smem = prefill_smem_bytes<D>();
  static bool configured = false;  // raising the limit is a host call: once per instantiation
  if (!configured) {
    const cudaError_t e = cudaFuncSetAttribute(prefill_attention_forward_kernel<D>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
    configured = true;
  }
  prefill_attention_forward_kernel<D><<<grid, 128, smem, stream>>>(
      out, q, k_cache, v_cache, start, tokens, q_heads, kv_heads, capacity, sl);
  return cudaGetLastError();
}

// The version taken when neither the caller nor SPX_PREFILL_KERNEL names one.
// 3: on the H200 at 686a964 it ran 1.37-1.43x faster than 2 (486 TFLOP/s at
// 32k) with bit-identical outputs on prefill_bench's inputs; where it cannot
// run (not sm_90a, not 9.0, head dim not 128) version 3 falls back to 2.
constexpr int kPrefillDefaultVersion = 3;

// version: 1 = the 64-row kernel above, 2 = prefill_attention_v2.cuh (head
// dims 64 and 128; others fall back to 1), 3 = prefill_attention_v3.cuh
// (wgmma; head dim 128 where prefill_attention_v3_usable(), else 2's rules),
// 4 = its pipelined variant (same conditions), 0 = the environment's choice
// (SPX_PREFILL_KERNEL=v1, v2, v3 or v3p), else
// kPrefillDefaultVersion (docs/cuda.md "Prefill attention" has the timings);
// v1 stays for comparison and as a fallback.
inline cudaError_t prefill_attention_launch(bf16* out, const bf16* q, const bf16* k_cache,
                                            const bf16* v_cache, int start, int tokens,
                                            int q_heads, int kv_heads, int head_dim, int capacity,
                                            float scale, cudaStream_t stream, int version = 0) {
  if (tokens <= 0) return cudaSuccess;
  if (kv_heads <= 0 || q_heads % kv_heads || start < 0 || start + tokens > capacity)
    return cudaErrorInvalidValue;
  const float sl = scale * 1.4426950408889634f;
  if (version == 0) {
    static const int chosen = [] {
      const char* e = std::getenv("SPX_PREFILL_KERNEL");
      if (e && std::strcmp(e, "v1") == 0) return 1;
      if (e && std::strcmp(e, "v2") == 0) return 2;
      if (e && std::strcmp(e, "v3") == 0) return 3;
      if (e && std::strcmp(e, "v3p") == 0) return 4;
      return kPrefillDefaultVersion;
    }();
    version = chosen;
  }
  if ((version == 3 || version == 4) && head_dim == 128 && prefill_attention_v3_usable())
    return prefill_attention_v3_launch(version == 4, out, q, k_cache, v_cache, start, tokens,
                                       q_heads, kv_heads, capacity, sl, stream);
  if (version == 3 || version == 4) version = 2;  // other head dims, or no sm_90a: v2's rules
  if (version == 2 && head_dim == 128)
    return prefill_attention_v2_launch_d<128>(out, q, k_cache, v_cache, start, tokens, q_heads,
                                              kv_heads, capacity, sl, stream);
  if (version == 2 && head_dim == 64)
    return prefill_attention_v2_launch_d<64>(out, q, k_cache, v_cache, start, tokens, q_heads,
                                             kv_heads, capacity, sl, stream);
  const dim3 grid((tokens + kPrefillRows - 1) / kPrefillRows, q_heads);
  // Head sizes of the real models (64, 128) and of the tiny test fixtures (16, 32).
#define SPX_PREFILL_D(d)                                                                     \
  case d:                                                                                    \
    return prefill_attention_launch_d<d>(grid, out, q, k_cache, v_cache, start, tokens,      \
                                         q_heads, kv_heads, capacity, sl, stream);
  switch (head_dim) {
    SPX_PREFILL_D(16)
    SPX_PREFILL_D(32)
    SPX_PREFILL_D(64)
    SPX_PREFILL_D(128)
    default:
      return cudaErrorInvalidValue;
  }
#undef SPX_PREFILL_D
  return cudaGetLastError();
}

}  // namespace spx::cuda
