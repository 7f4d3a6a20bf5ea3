// Causal prefill attention, second version: 128 query rows per block, 32 per
// warp, so every K/V fragment read from shared memory feeds two m16n8k16
// MMAs instead of one.
//
// Why: the first kernel (prefill_attention.cuh, 16 rows per warp with Q in
// registers) read 64 B of shared memory per 1 kFLOP and ran at about
// 180 TFLOP/s on the H200, half of PyTorch's flash attention. Here a warp owns
// 32 rows (two m-halves of 16), Q stays in shared memory and is re-read per
// k-step (its 32 rows would not fit in registers beside a 32x128 f32
// accumulator), and each K or V ldmatrix serves both halves: 40 B of shared
// memory per 1 kFLOP. Other changes:
//   - one barrier per K/V tile: the copy of tile j+1 is issued right after
//     the barrier that proves every warp has left tile j-1's buffer;
//   - the causal mask is applied only on tiles that cross a warp's diagonal,
//     and tiles wholly above it are skipped (warp-uniform);
//   - the softmax scale is folded into one FFMA before exp2, which runs on
//     the SFU alone (ex2.approx.ftz).
// Layout conventions (fragments, ldmatrix addressing) are those of
// prefill_attention.cuh and common.cuh.
#pragma once

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

constexpr int kPrefill2Rows = 128;  // query rows per block (32 per warp, 4 warps)
constexpr int kPrefill2Keys = 64;   // keys per K/V tile

// 2^x on the SFU alone. The arguments here are scores minus their running
// max (<= 0) or -inf, so ex2.approx's flush of results below 2^-126 to 0 is
// harmless; exp2f would add a range check and two fix-up multiplies to each
// of the 64 exponentials a thread takes per tile.
__device__ __forceinline__ float exp2_sfu(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <int D>
constexpr size_t prefill2_smem_bytes() {
  // Q [128][D+8] + 2 stages of K and V [64][D+8]; the +8 bf16 (16 B) row pad
  // keeps ldmatrix's eight row addresses in distinct bank groups.
  return (size_t(kPrefill2Rows) + size_t(2) * 2 * kPrefill2Keys) * (D + 8) * sizeof(bf16);
}

template <int D>
__global__ void __launch_bounds__(128, 2)
    prefill_attention_v2_kernel(bf16* out,            // [tokens, q_heads, D]
                                const bf16* q,        // [tokens, q_heads, D]
                                const bf16* k_cache,  // [kv_heads, capacity, D]
                                const bf16* v_cache,  // [kv_heads, capacity, D]
                                int start, int tokens, int q_heads, int kv_heads, int capacity,
                                float scale_log2) {
  static_assert(D == 64 || D == 128, "the copy loops assume 128 % (D / 8) == 0 and D >= 64");
  constexpr int kRow = D + 8;
  constexpr int kChunks = D / 8;        // 16-byte chunks per row
  constexpr int kKSteps = D / 16;       // k-steps of Q K^T
  constexpr int kSTiles = kPrefill2Keys / 8;  // n-tiles of S
  constexpr int kOTiles = D / 8;        // n-tiles of O
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16(*q_s)[kRow] = reinterpret_cast<bf16(*)[kRow]>(smem_raw);
  bf16(*kv_s)[kRow] = q_s + kPrefill2Rows;  // [stage][K or V][kPrefill2Keys]
  auto k_tile = [&](int stage) { return kv_s + (stage * 2) * kPrefill2Keys; };
  auto v_tile = [&](int stage) { return kv_s + (stage * 2 + 1) * kPrefill2Keys; };

  const int h = blockIdx.y;
  const int hk = h / (q_heads / kv_heads);
  // Later query blocks see more keys: start them first to shorten the tail.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kPrefill2Rows;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int mi = lane / 8, mr = lane % 8;  // ldmatrix: matrix and row this lane addresses
  const size_t q_stride = static_cast<size_t>(q_heads) * D;
  const int wrow = warp * 32;  // this warp's first row in the block

  const int kv_end = start + min(q0 + kPrefill2Rows, tokens);
  const size_t kv_base = static_cast<size_t>(hk) * capacity * D;
  const bf16* kg = k_cache + kv_base;
  const bf16* vg = v_cache + kv_base;

  // Copies: thread tid moves 16-byte chunk (tid % kChunks) of rows
  // tid / kChunks + i * kRowStep.
  constexpr int kRowStep = 128 / kChunks;
  const int crow = tid / kChunks, ccol = (tid % kChunks) * 8;
  auto load_tile = [&](int stage, int j0) {
    bf16(*ks)[kRow] = k_tile(stage);
    bf16(*vs)[kRow] = v_tile(stage);
#pragma unroll
    for (int i = 0; i < kPrefill2Keys / kRowStep; ++i) {
      const int r = crow + i * kRowStep;
      const bool ok = j0 + r < kv_end;  // past the end: zero-filled, masked below
      const size_t src = static_cast<size_t>(ok ? j0 + r : 0) * D + ccol;
      cp_async_16(&ks[r][ccol], kg + src, ok ? 16 : 0);
      cp_async_16(&vs[r][ccol], vg + src, ok ? 16 : 0);
    }
  };

  // Q and the first K/V tile travel in one cp.async group.
#pragma unroll
  for (int i = 0; i < kPrefill2Rows / kRowStep; ++i) {
    const int r = crow + i * kRowStep;
    const bool ok = q0 + r < tokens;
    cp_async_16(&q_s[r][ccol], q + static_cast<size_t>(ok ? q0 + r : 0) * q_stride + h * D + ccol,
                ok ? 16 : 0);
  }
  load_tile(0, 0);
  cp_async_commit();

  float o[2][kOTiles][4];
#pragma unroll
  for (int mh = 0; mh < 2; ++mh)
#pragma unroll
    for (int n = 0; n < kOTiles; ++n) o[mh][n][0] = o[mh][n][1] = o[mh][n][2] = o[mh][n][3] = 0.f;
  // Running max (raw score units) and per-thread partial sums of this thread's
  // four rows: [m-half][row g or g+8].
  float m[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};
  float l[2][2] = {{0.f, 0.f}, {0.f, 0.f}};

  const int pos_lo = start + q0 + wrow;  // this warp's first and last query positions
  const int pos_hi = pos_lo + 31;
  const int n_tiles = (kv_end + kPrefill2Keys - 1) / kPrefill2Keys;
  for (int j = 0; j < n_tiles; ++j) {
    const int j0 = j * kPrefill2Keys;
    cp_async_wait<0>();  // tile j (and Q) landed for this thread's copies
    __syncthreads();     // ... for everyone's; and every warp has left tile j-1
    if (j + 1 < n_tiles) {
      load_tile((j + 1) & 1, j0 + kPrefill2Keys);  // into tile j-1's buffer
      cp_async_commit();
    }
    if (j0 > pos_hi) continue;  // wholly above this warp's diagonal (warp-uniform)
    bf16(*k_s)[kRow] = k_tile(j & 1);
    bf16(*v_s)[kRow] = v_tile(j & 1);

    float s[2][kSTiles][4];
#pragma unroll
    for (int mh = 0; mh < 2; ++mh)
#pragma unroll
      for (int n = 0; n < kSTiles; ++n) s[mh][n][0] = s[mh][n][1] = s[mh][n][2] = s[mh][n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      uint32_t qa[2][4];
#pragma unroll
      for (int mh = 0; mh < 2; ++mh)
        ldmatrix_x4(qa[mh], &q_s[wrow + mh * 16 + mr + (mi & 1) * 8][kk * 16 + (mi >> 1) * 8]);
#pragma unroll
      for (int np = 0; np < kSTiles / 2; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, &k_s[np * 16 + mr + (mi >> 1) * 8][kk * 16 + (mi & 1) * 8]);
#pragma unroll
        for (int mh = 0; mh < 2; ++mh) {
          mma_bf16_16816(s[mh][2 * np], qa[mh], b);
          mma_bf16_16816(s[mh][2 * np + 1], qa[mh], b + 2);
        }
      }
    }

    // Only a tile reaching past the warp's first position can hide a key
    // from one of its rows (keys past kv_end are past every valid row too).
    if (j0 + kPrefill2Keys - 1 > pos_lo) {
#pragma unroll
      for (int mh = 0; mh < 2; ++mh)
#pragma unroll
        for (int n = 0; n < kSTiles; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = j0 + n * 8 + 2 * t + (e & 1);
            const int qp = pos_lo + mh * 16 + g + (e >> 1) * 8;
            if (key > qp) s[mh][n][e] = -INFINITY;
          }
    }

    uint32_t p[2][kPrefill2Keys / 16][4];  // P as A fragments of P V
#pragma unroll
    for (int mh = 0; mh < 2; ++mh) {
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int n = 0; n < kSTiles; ++n) {
        mx0 = fmaxf(mx0, fmaxf(s[mh][n][0], s[mh][n][1]));
        mx1 = fmaxf(mx1, fmaxf(s[mh][n][2], s[mh][n][3]));
      }
#pragma unroll
      for (int x = 1; x <= 2; x <<= 1) {  // a row lives in one quad of lanes
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
      }
      const float mn0 = fmaxf(m[mh][0], mx0), mn1 = fmaxf(m[mh][1], mx1);
      // A row with nothing visible yet keeps m = -inf; 0 as its reference
      // makes exp2 give 0 rather than NaN.
      const float ref0 = mn0 == -INFINITY ? 0.f : mn0 * scale_log2;
      const float ref1 = mn1 == -INFINITY ? 0.f : mn1 * scale_log2;
      const float a0 = exp2_sfu(m[mh][0] * scale_log2 - ref0);
      const float a1 = exp2_sfu(m[mh][1] * scale_log2 - ref1);
      m[mh][0] = mn0;
      m[mh][1] = mn1;
      float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
      for (int n = 0; n < kSTiles; ++n) {
        s[mh][n][0] = exp2_sfu(fmaf(s[mh][n][0], scale_log2, -ref0));
        s[mh][n][1] = exp2_sfu(fmaf(s[mh][n][1], scale_log2, -ref0));
        s[mh][n][2] = exp2_sfu(fmaf(s[mh][n][2], scale_log2, -ref1));
        s[mh][n][3] = exp2_sfu(fmaf(s[mh][n][3], scale_log2, -ref1));
        sum0 += s[mh][n][0] + s[mh][n][1];
        sum1 += s[mh][n][2] + s[mh][n][3];
      }
      l[mh][0] = l[mh][0] * a0 + sum0;  // partial per thread; the quad reduces at the end
      l[mh][1] = l[mh][1] * a1 + sum1;
#pragma unroll
      for (int n = 0; n < kOTiles; ++n) {
        o[mh][n][0] *= a0;
        o[mh][n][1] *= a0;
        o[mh][n][2] *= a1;
        o[mh][n][3] *= a1;
      }
      // The C layout of two adjacent n-tiles is the A layout of one k-step.
#pragma unroll
      for (int kk = 0; kk < kPrefill2Keys / 16; ++kk) {
        p[mh][kk][0] = pack_bf16x2(s[mh][2 * kk][0], s[mh][2 * kk][1]);
        p[mh][kk][1] = pack_bf16x2(s[mh][2 * kk][2], s[mh][2 * kk][3]);
        p[mh][kk][2] = pack_bf16x2(s[mh][2 * kk + 1][0], s[mh][2 * kk + 1][1]);
        p[mh][kk][3] = pack_bf16x2(s[mh][2 * kk + 1][2], s[mh][2 * kk + 1][3]);
      }
    }

#pragma unroll
    for (int kk = 0; kk < kPrefill2Keys / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kOTiles / 2; ++np) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, &v_s[kk * 16 + mr + (mi & 1) * 8][np * 16 + (mi >> 1) * 8]);
#pragma unroll
        for (int mh = 0; mh < 2; ++mh) {
          mma_bf16_16816(o[mh][2 * np], p[mh][kk], b);
          mma_bf16_16816(o[mh][2 * np + 1], p[mh][kk], b + 2);
        }
      }
    }
  }

#pragma unroll
  for (int mh = 0; mh < 2; ++mh) {
    float l0 = l[mh][0], l1 = l[mh][1];
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      l0 += __shfl_xor_sync(0xffffffffu, l0, x);
      l1 += __shfl_xor_sync(0xffffffffu, l1, x);
    }
    const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    const int r0 = q0 + wrow + mh * 16 + g, r1 = r0 + 8;
#pragma unroll
    for (int n = 0; n < kOTiles; ++n) {
      const int col = h * D + n * 8 + 2 * t;
      if (r0 < tokens)
        *reinterpret_cast<__nv_bfloat162*>(out + r0 * q_stride + col) =
            __floats2bfloat162_rn(o[mh][n][0] * inv0, o[mh][n][1] * inv0);
      if (r1 < tokens)
        *reinterpret_cast<__nv_bfloat162*>(out + r1 * q_stride + col) =
            __floats2bfloat162_rn(o[mh][n][2] * inv1, o[mh][n][3] * inv1);
    }
  }
}

template <int D>
inline cudaError_t prefill_attention_v2_launch_d(bf16* out, const bf16* q, const bf16* k_cache,
                                                 const bf16* v_cache, int start, int tokens,
                                                 int q_heads, int kv_heads, int capacity,
                                                 float scale_log2, cudaStream_t stream) {
  constexpr size_t smem = prefill2_smem_bytes<D>();
  static bool configured = false;  // raising the limit is a host call: once per instantiation
  if (!configured) {
    const cudaError_t e = cudaFuncSetAttribute(prefill_attention_v2_kernel<D>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
    configured = true;
  }
  const dim3 grid((tokens + kPrefill2Rows - 1) / kPrefill2Rows, q_heads);
  prefill_attention_v2_kernel<D><<<grid, 128, smem, stream>>>(
      out, q, k_cache, v_cache, start, tokens, q_heads, kv_heads, capacity, scale_log2);
  return cudaGetLastError();
}

}  // namespace spx::cuda
