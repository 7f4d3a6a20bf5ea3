// Causal prefill attention, third version: Hopper tensor cores (wgmma),
// head dim 128 only, sm_90a builds only.
//
// Why: v2 (mma.sync, prefill_attention_v2.cuh) tops out near 350 TFLOP/s on
// the H200, a third of the chip's dense bf16 rate; at 32k tokens attention is
// about half of the 8B model's prefill. wgmma reads both operands of Q K^T
// and the B operand of P V straight from shared memory (no ldmatrix, no
// per-warp fragment traffic) and runs a 64-row tile per warpgroup per
// instruction.
//
// Common shape of the two kernels here:
//   - a block is two warpgroups (256 threads) and owns 128 query rows of one
//     query head, 64 rows per warpgroup; all threads copy (cp.async), there is
//     no producer warpgroup;
//   - Q [128 x 128] and the K and V tiles [64 x 128] sit in shared memory in
//     the 128-byte-swizzled layout wgmma reads: each tile is two column
//     halves of 64 bf16 (128 B per row), rows in 8-row atoms of 1 KB whose
//     16-byte chunks are permuted by chunk ^ (row % 8); atoms are 1 KB
//     aligned because the hardware applies the swizzle to address bits;
//   - S = Q K^T: eight m64n64k16 wgmma (A = Q and B = K, both K-major from
//     shared memory); softmax on the accumulator layout (the same per-warp
//     layout as mma.sync's C, rows 16w+g and 16w+g+8), P re-packed in
//     registers as the A operand of O += P V: four m64n128k16 wgmma with B = V
//     read MN-major (transposed) from shared memory;
//   - a warpgroup skips tiles wholly above its diagonal and masks only tiles
//     crossing it; longest query tiles launch first (as v2).
// prefill_attention_v3_kernel (version 3) waits for each wgmma batch at once
// and runs two blocks per multiprocessor (128 registers), so one warpgroup's
// softmax overlaps another's wgmma. prefill_attention_v3p_kernel (version
// 4, "v3p") overlaps inside a warpgroup instead: Q K^T of tile j+1 and P V of
// tile j run while tile j's softmax does, which needs two S tiles in
// registers (one block per multiprocessor) and four K/V stages.
// Same chunked-prefill contract as v1/v2: queries at start..start+T-1 against
// cache positions 0..start+T-1.
//
// The wgmma instructions exist only for sm_90a. Built for anything else
// (the compute_90 PTX fallback, tools/cuda_compile_check.sh) the kernel
// bodies are empty, and the launcher never selects them:
// prefill_attention_v3_usable() needs SPX_CUDA_SM90A (native/cuda.cmake) and
// a compute capability 9.0 device.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/kernels/common.cuh"
#include "cuda/kernels/prefill_attention_v2.cuh"  // exp2_sfu

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SPX_PREFILL3_DEVICE 1
#endif

namespace spx::cuda {

constexpr int kPrefill3Rows = 128;  // query rows per block (64 per warpgroup)
constexpr int kPrefill3Keys = 64;   // keys per K/V tile
constexpr int kPrefill3Threads = 256;
constexpr int kPrefill3D = 128;
constexpr uint32_t kPrefill3QBytes = kPrefill3Rows * kPrefill3D * 2;    // 32 KB
constexpr uint32_t kPrefill3TileBytes = kPrefill3Keys * kPrefill3D * 2;  // 16 KB, K or V
// Q + the K/V stages, plus 1 KB so the base can be rounded up to 1 KB.
template <int Stages>
constexpr size_t prefill3_smem_bytes() {
  return kPrefill3QBytes + size_t(Stages) * 2 * kPrefill3TileBytes + 1024;
}

// Byte offset of 16-byte chunk c (0..15) of row r in a swizzled [rows x 128]
// bf16 tile stored as two [rows x 64] column halves.
__device__ __forceinline__ uint32_t sw128_offset(int r, int c, int rows) {
  return uint32_t((c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

// wgmma shared-memory matrix descriptor, 128-byte swizzle: start address,
// leading and stride byte offsets, all in 16-byte units (PTX ISA, "Matrix
// Descriptor Format"). K-major operands: SBO = 1 KB between 8-row atoms, LBO
// unused (1). MN-major (V): LBO = bytes between 64-column halves, SBO = 1 KB
// between 8-key atoms.
__device__ __forceinline__ uint64_t wgmma_desc_sw128(uint32_t smem_addr, uint32_t lbo,
                                                     uint32_t sbo) {
  return uint64_t((smem_addr & 0x3FFFF) >> 4) | (uint64_t((lbo >> 4) & 0x3FFF) << 16) |
         (uint64_t((sbo >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}

#ifdef SPX_PREFILL3_DEVICE
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most N committed wgmma groups of this warpgroup are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving reads or writes of an accumulator across
// the asynchronous wgmma that owns it.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
// Shared memory written by the generic proxy (cp.async) becomes visible to
// wgmma (the async proxy) only after this fence in each writing thread.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// D[64x64] (+)= A[64x16] B[16x64], A and B K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                                    int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7,"
      "%8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23,"
      "%24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64x128] += A[64x16] B[16x128], A in registers (the m16n8k16 A layout per
// warp), B MN-major (transposed) in shared memory.
__device__ __forceinline__ void wgmma_m64n128k16_rs_tb(float (&d)[64], const uint32_t (&a)[4],
                                                       uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7,"
      "%8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23,"
      "%24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39,"
      "%40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55,"
      "%56, %57, %58, %59, %60, %61, %62, %63"
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

// Where this block's work and shared memory are; the same for both kernels.
struct Prefill3Block {
  uint32_t q_addr;     // shared address of Q, 1 KB aligned; K/V stages follow
  unsigned char* smem;  // generic pointer to q_addr
  const bf16* kg;      // this head's K and V rows in the cache
  const bf16* vg;
  size_t q_stride;     // elements between tokens in q and out
  int h, q0, tid, wg, g, t;
  int kv_end;          // keys 0..kv_end-1 are read
  int pos_lo;          // position of this warpgroup's first query row
  int row_lo;          // this thread's first row within its warpgroup's 64
  uint32_t qw_addr;    // this warpgroup's 64 rows of Q (within each half)
};

__device__ __forceinline__ Prefill3Block prefill3_block(unsigned char* smem_raw,
                                                        const bf16* k_cache, const bf16* v_cache,
                                                        int start, int tokens, int q_heads,
                                                        int kv_heads, int capacity) {
  Prefill3Block b;
  const uint32_t raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  b.q_addr = (raw_addr + 1023u) & ~1023u;  // swizzle atoms need 1 KB alignment
  b.smem = smem_raw + (b.q_addr - raw_addr);
  b.h = blockIdx.y;
  b.q0 = (gridDim.x - 1 - blockIdx.x) * kPrefill3Rows;  // longest rows first
  b.tid = threadIdx.x;
  b.wg = b.tid / 128;
  const int lane = b.tid % 32;
  b.g = lane / 4;
  b.t = lane % 4;
  b.q_stride = static_cast<size_t>(q_heads) * kPrefill3D;
  b.kv_end = start + min(b.q0 + kPrefill3Rows, tokens);
  const size_t kv_base =
      static_cast<size_t>(b.h / (q_heads / kv_heads)) * capacity * kPrefill3D;
  b.kg = k_cache + kv_base;
  b.vg = v_cache + kv_base;
  b.pos_lo = start + b.q0 + b.wg * 64;
  b.row_lo = 16 * ((b.tid / 32) % 4) + b.g;
  b.qw_addr = b.q_addr + b.wg * 64 * 128;
  return b;
}

__device__ __forceinline__ uint32_t prefill3_k_addr(const Prefill3Block& b, int stage) {
  return b.q_addr + kPrefill3QBytes + stage * 2 * kPrefill3TileBytes;
}
__device__ __forceinline__ uint32_t prefill3_v_addr(const Prefill3Block& b, int stage) {
  return prefill3_k_addr(b, stage) + kPrefill3TileBytes;
}

// cp.async of this block's Q rows; thread tid moves 16-byte chunk tid % 16 of
// rows tid / 16 + 16 i. Rows past the chunk are zero-filled. The caller commits.
__device__ __forceinline__ void prefill3_load_q(const Prefill3Block& b, const bf16* q,
                                                int tokens) {
  const int crow = b.tid / 16, cchunk = b.tid % 16;
#pragma unroll
  for (int i = 0; i < kPrefill3Rows / 16; ++i) {
    const int r = crow + 16 * i;
    const bool ok = b.q0 + r < tokens;
    cp_async_16(b.smem + sw128_offset(r, cchunk, kPrefill3Rows),
                q + static_cast<size_t>(ok ? b.q0 + r : 0) * b.q_stride + b.h * kPrefill3D +
                    cchunk * 8,
                ok ? 16 : 0);
  }
}

// cp.async of the K and V tile at keys j0.. into a stage; keys past kv_end
// are zero-filled (and masked). The caller commits.
__device__ __forceinline__ void prefill3_load_kv(const Prefill3Block& b, int stage, int j0) {
  const int crow = b.tid / 16, cchunk = b.tid % 16;
  unsigned char* ks = b.smem + (prefill3_k_addr(b, stage) - b.q_addr);
  unsigned char* vs = ks + kPrefill3TileBytes;
#pragma unroll
  for (int i = 0; i < kPrefill3Keys / 16; ++i) {
    const int r = crow + 16 * i;
    const bool ok = j0 + r < b.kv_end;
    const size_t src = static_cast<size_t>(ok ? j0 + r : 0) * kPrefill3D + cchunk * 8;
    const uint32_t dst = sw128_offset(r, cchunk, kPrefill3Keys);
    cp_async_16(ks + dst, b.kg + src, ok ? 16 : 0);
    cp_async_16(vs + dst, b.vg + src, ok ? 16 : 0);
  }
}

// Issues S = Q K^T for this warpgroup's 64 rows against the K tile at kb.
// The caller fences, commits and waits.
__device__ __forceinline__ void prefill3_issue_qk(float (&s)[32], const Prefill3Block& b,
                                                  uint32_t kb) {
#pragma unroll
  for (int kk = 0; kk < kPrefill3D / 16; ++kk) {
    // k-step kk: column half kk / 4, 32-byte step (kk % 4) inside the 128-byte row
    const uint32_t koff = (kk & 3) * 32;
    const uint64_t da =
        wgmma_desc_sw128(b.qw_addr + (kk >> 2) * (kPrefill3Rows * 128) + koff, 16, 1024);
    const uint64_t db = wgmma_desc_sw128(kb + (kk >> 2) * (kPrefill3Keys * 128) + koff, 16, 1024);
    wgmma_m64n64k16_ss(s, da, db, kk > 0);
  }
}

// Issues O += P V against the V tile at vb. The caller fences, commits and waits.
__device__ __forceinline__ void prefill3_issue_pv(float (&o)[64], const uint32_t (&p)[4][4],
                                                  uint32_t vb) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    // keys 16 kk..16 kk+15 = two 8-key atoms from 2 KB * kk; the two
    // 64-column halves of V lie kPrefill3TileBytes / 2 apart.
    const uint64_t db = wgmma_desc_sw128(vb + kk * 2048, kPrefill3Keys * 128, 1024);
    wgmma_m64n128k16_rs_tb(o, p[kk], db);
  }
}

// Running softmax state of this thread's two rows (lo and lo + 8): max in
// raw score units, per-thread partial sums (the quad reduces at the end).
struct Prefill3Rows2 {
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;
};

// One S tile at keys j0.. through the online softmax, in place: s becomes
// exp2 of the scaled scores minus the new max; returns in a_lo / a_hi the
// factors by which O's rows must shrink.
__device__ __forceinline__ void prefill3_softmax(float (&s)[32], Prefill3Rows2& st,
                                                 const Prefill3Block& b, int j0,
                                                 float scale_log2, float& a_lo, float& a_hi) {
  // Only a tile reaching past the warpgroup's first position can hide a key
  // from one of its rows (keys past kv_end are past every valid row too).
  if (j0 + kPrefill3Keys - 1 > b.pos_lo) {
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = j0 + n * 8 + 2 * b.t + (e & 1);
        const int qp = b.pos_lo + b.row_lo + (e >> 1) * 8;
        if (key > qp) s[4 * n + e] = -INFINITY;
      }
  }
  float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
  for (int n = 0; n < 8; ++n) {
    mx_lo = fmaxf(mx_lo, fmaxf(s[4 * n], s[4 * n + 1]));
    mx_hi = fmaxf(mx_hi, fmaxf(s[4 * n + 2], s[4 * n + 3]));
  }
#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {  // a row lives in one quad of lanes
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, x));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, x));
  }
  const float mn_lo = fmaxf(st.m_lo, mx_lo), mn_hi = fmaxf(st.m_hi, mx_hi);
  // A row with nothing visible yet keeps m = -inf; 0 as its reference makes
  // exp2 give 0 rather than NaN.
  const float ref_lo = mn_lo == -INFINITY ? 0.f : mn_lo * scale_log2;
  const float ref_hi = mn_hi == -INFINITY ? 0.f : mn_hi * scale_log2;
  a_lo = exp2_sfu(st.m_lo * scale_log2 - ref_lo);
  a_hi = exp2_sfu(st.m_hi * scale_log2 - ref_hi);
  st.m_lo = mn_lo;
  st.m_hi = mn_hi;
  float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
  for (int n = 0; n < 8; ++n) {
    s[4 * n] = exp2_sfu(fmaf(s[4 * n], scale_log2, -ref_lo));
    s[4 * n + 1] = exp2_sfu(fmaf(s[4 * n + 1], scale_log2, -ref_lo));
    s[4 * n + 2] = exp2_sfu(fmaf(s[4 * n + 2], scale_log2, -ref_hi));
    s[4 * n + 3] = exp2_sfu(fmaf(s[4 * n + 3], scale_log2, -ref_hi));
    sum_lo += s[4 * n] + s[4 * n + 1];
    sum_hi += s[4 * n + 2] + s[4 * n + 3];
  }
  st.l_lo = st.l_lo * a_lo + sum_lo;
  st.l_hi = st.l_hi * a_hi + sum_hi;
}

// O's rows shrink by the softmax factors; P (exp2 values) is packed as the
// A fragments of P V: the accumulator layout of n-tiles 2kk and 2kk+1 is the
// A register layout of k-step kk.
__device__ __forceinline__ void prefill3_rescale_pack(float (&o)[64], const float (&s)[32],
                                                      float a_lo, float a_hi,
                                                      uint32_t (&p)[4][4]) {
#pragma unroll
  for (int n = 0; n < 16; ++n) {
    o[4 * n] *= a_lo;
    o[4 * n + 1] *= a_lo;
    o[4 * n + 2] *= a_hi;
    o[4 * n + 3] *= a_hi;
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    p[kk][0] = pack_bf16x2(s[8 * kk], s[8 * kk + 1]);
    p[kk][1] = pack_bf16x2(s[8 * kk + 2], s[8 * kk + 3]);
    p[kk][2] = pack_bf16x2(s[8 * kk + 4], s[8 * kk + 5]);
    p[kk][3] = pack_bf16x2(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

// Divides O by the row sums and writes this thread's rows that are in the chunk.
__device__ __forceinline__ void prefill3_store(bf16* out, const float (&o)[64], Prefill3Rows2 st,
                                               const Prefill3Block& b, int tokens) {
#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {
    st.l_lo += __shfl_xor_sync(0xffffffffu, st.l_lo, x);
    st.l_hi += __shfl_xor_sync(0xffffffffu, st.l_hi, x);
  }
  const float inv_lo = st.l_lo > 0.f ? 1.f / st.l_lo : 0.f;
  const float inv_hi = st.l_hi > 0.f ? 1.f / st.l_hi : 0.f;
  const int r_lo = b.q0 + b.wg * 64 + b.row_lo, r_hi = r_lo + 8;
#pragma unroll
  for (int n = 0; n < 16; ++n) {
    const int col = b.h * kPrefill3D + n * 8 + 2 * b.t;
    if (r_lo < tokens)
      *reinterpret_cast<__nv_bfloat162*>(out + r_lo * b.q_stride + col) =
          __floats2bfloat162_rn(o[4 * n] * inv_lo, o[4 * n + 1] * inv_lo);
    if (r_hi < tokens)
      *reinterpret_cast<__nv_bfloat162*>(out + r_hi * b.q_stride + col) =
          __floats2bfloat162_rn(o[4 * n + 2] * inv_hi, o[4 * n + 3] * inv_hi);
  }
}
#endif  // SPX_PREFILL3_DEVICE

#define SPX_PREFILL3_PARAMS                                                                \
  bf16 *out,             /* [tokens, q_heads, 128] */                                      \
      const bf16 *q,     /* [tokens, q_heads, 128] */                                      \
      const bf16 *k_cache, /* [kv_heads, capacity, 128] */                                 \
      const bf16 *v_cache, /* [kv_heads, capacity, 128] */                                 \
      int start, int tokens, int q_heads, int kv_heads, int capacity, float scale_log2

// Version 3: two K/V stages, each wgmma batch waited at once, two blocks per
// multiprocessor.
__global__ void __launch_bounds__(kPrefill3Threads, 2)
    prefill_attention_v3_kernel(SPX_PREFILL3_PARAMS) {
#ifdef SPX_PREFILL3_DEVICE
  extern __shared__ __align__(128) unsigned char prefill3_smem[];
  const Prefill3Block b = prefill3_block(prefill3_smem, k_cache, v_cache, start, tokens, q_heads,
                                         kv_heads, capacity);
  // Q and the first K/V tile travel in one cp.async group.
  prefill3_load_q(b, q, tokens);
  prefill3_load_kv(b, 0, 0);
  cp_async_commit();

  float o[64];  // O [64 x 128] of this warpgroup: o[4n + e], n-tile n of 8 columns
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.f;
  float s[32];  // S [64 x 64]: s[4n + e]; e 0,1 row lo, e 2,3 row hi (lo + 8)
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.f;
  Prefill3Rows2 st;
  const int pos_hi = b.pos_lo + 63;
  const int n_tiles = (b.kv_end + kPrefill3Keys - 1) / kPrefill3Keys;
  for (int j = 0; j < n_tiles; ++j) {
    const int j0 = j * kPrefill3Keys;
    cp_async_wait<0>();        // tile j (and Q) landed for this thread's copies
    fence_proxy_async_smem();  // ... and is visible to wgmma
    __syncthreads();           // ... for everyone's; and both warpgroups left tile j-1
    if (j + 1 < n_tiles) {
      prefill3_load_kv(b, (j + 1) & 1, j0 + kPrefill3Keys);  // into tile j-1's buffer
      cp_async_commit();
    }
    if (j0 > pos_hi) continue;  // wholly above this warpgroup's diagonal (uniform)

    fence_regs(s);
    wgmma_fence();
    prefill3_issue_qk(s, b, prefill3_k_addr(b, j & 1));
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(s);

    float a_lo, a_hi;
    prefill3_softmax(s, st, b, j0, scale_log2, a_lo, a_hi);
    uint32_t p[4][4];
    prefill3_rescale_pack(o, s, a_lo, a_hi, p);

    fence_regs(o);
    wgmma_fence();
    prefill3_issue_pv(o, p, prefill3_v_addr(b, j & 1));
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(o);
  }
  prefill3_store(out, o, st, b, tokens);
#endif  // SPX_PREFILL3_DEVICE
}

// Version 4 ("v3p"): inside each warpgroup, Q K^T of tile j+1 is issued
// before tile j's softmax and runs beside it, and P V of tile j runs on
// through the next iteration's barrier, Q K^T issue and softmax; O is
// rescaled only once the previous P V has completed (the idea of
// FlashAttention-3's intra-warpgroup overlap). Tile j+1's
// K and tile j-1's V (its P V may still run) are read while tile j+2 loads,
// so four stages: the stage refilled in iteration j last served tile j-2,
// whose P V every warpgroup waited for before the barrier of iteration j.
constexpr int kPrefill3pStages = 4;

__global__ void __launch_bounds__(kPrefill3Threads, 1)
    prefill_attention_v3p_kernel(SPX_PREFILL3_PARAMS) {
#ifdef SPX_PREFILL3_DEVICE
  extern __shared__ __align__(128) unsigned char prefill3_smem[];
  const Prefill3Block b = prefill3_block(prefill3_smem, k_cache, v_cache, start, tokens, q_heads,
                                         kv_heads, capacity);
  const int n_tiles = (b.kv_end + kPrefill3Keys - 1) / kPrefill3Keys;
  prefill3_load_q(b, q, tokens);
  prefill3_load_kv(b, 0, 0);
  cp_async_commit();  // group: Q and tile 0
  if (n_tiles > 1) prefill3_load_kv(b, 1, kPrefill3Keys);
  cp_async_commit();  // group: tile 1 (empty when there is none)
  cp_async_wait<1>();
  fence_proxy_async_smem();
  __syncthreads();

  float o[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.f;
  float s[32], sn[32];  // S of tile j and of tile j+1
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = sn[i] = 0.f;
  Prefill3Rows2 st;
  uint32_t p[4][4];

  // S of tile 0: key 0 is visible to every row.
  fence_regs(s);
  wgmma_fence();
  prefill3_issue_qk(s, b, prefill3_k_addr(b, 0));
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(s);

  // One iteration per K/V tile. Unlike version 3 a warpgroup does not skip
  // the (at most two) tiles wholly above its diagonal, where the mask zeroes
  // P: with the waits fixed at compile time ptxas keeps the wgmma
  // asynchronous (data-dependent waits make it serialise them, warning
  // C7514). The last tile has no next Q K^T, hence the template flag.
  auto step = [&](int j, auto has_next) {
    constexpr bool kNext = decltype(has_next)::value;
    const int j0 = j * kPrefill3Keys;
    cp_async_wait<0>();        // tile j+1 landed for this thread's copies
    fence_proxy_async_smem();  // ... and is visible to wgmma
    __syncthreads();           // ... for everyone's; and tile j-2's P V is done everywhere
    if (j + 2 < n_tiles) {
      prefill3_load_kv(b, (j + 2) % kPrefill3pStages, j0 + 2 * kPrefill3Keys);
      cp_async_commit();
    }
    if constexpr (kNext) {
      fence_regs(sn);
      wgmma_fence();
      prefill3_issue_qk(sn, b, prefill3_k_addr(b, (j + 1) % kPrefill3pStages));
      wgmma_commit();
    }
    float a_lo, a_hi;
    prefill3_softmax(s, st, b, j0, scale_log2, a_lo, a_hi);
    // P V of tile j-1 must finish before O is rescaled and p rewritten; tile
    // j+1's Q K^T, issued later, is waited too (usually done by now). Waiting
    // for the older group alone (wait_group 1) makes ptxas serialise every
    // wgmma (C7514): it cannot tell the groups apart across the loop.
    wgmma_wait<0>();
    fence_regs(o);
    if constexpr (kNext) fence_regs(sn);
    prefill3_rescale_pack(o, s, a_lo, a_hi, p);
    fence_regs(o);
    wgmma_fence();
    prefill3_issue_pv(o, p, prefill3_v_addr(b, j % kPrefill3pStages));
    wgmma_commit();  // runs on through the next tile's barrier, Q K^T and softmax
    if constexpr (kNext) {
#pragma unroll
      for (int i = 0; i < 32; ++i) s[i] = sn[i];
    }
  };
  for (int j = 0; j + 1 < n_tiles; ++j) step(j, std::true_type{});
  step(n_tiles - 1, std::false_type{});
  wgmma_wait<0>();
  fence_regs(o);
  prefill3_store(out, o, st, b, tokens);
#endif  // SPX_PREFILL3_DEVICE
}

#undef SPX_PREFILL3_PARAMS

// True when this build carries the sm_90a kernels and the current device runs
// them (compute capability 9.0); checked once per process.
inline bool prefill_attention_v3_usable() {
#ifdef SPX_CUDA_SM90A
  static const bool usable = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
      return false;
    return major == 9 && minor == 0;
  }();
  return usable;
#else
  return false;
#endif
}

// pipelined: false = version 3, true = version 4 ("v3p").
inline cudaError_t prefill_attention_v3_launch(bool pipelined, bf16* out, const bf16* q,
                                               const bf16* k_cache, const bf16* v_cache,
                                               int start, int tokens, int q_heads, int kv_heads,
                                               int capacity, float scale_log2,
                                               cudaStream_t stream) {
  auto kernel = pipelined ? prefill_attention_v3p_kernel : prefill_attention_v3_kernel;
  const size_t smem =
      pipelined ? prefill3_smem_bytes<kPrefill3pStages>() : prefill3_smem_bytes<2>();
  static bool configured[2] = {false, false};  // raising the limit is a host call: once each
  if (!configured[pipelined]) {
    const cudaError_t e = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
    configured[pipelined] = true;
  }
  const dim3 grid((tokens + kPrefill3Rows - 1) / kPrefill3Rows, q_heads);
  kernel<<<grid, kPrefill3Threads, smem, stream>>>(out, q, k_cache, v_cache, start, tokens,
                                                   q_heads, kv_heads, capacity, scale_log2);
  return cudaGetLastError();
}

}  // namespace spx::cuda
