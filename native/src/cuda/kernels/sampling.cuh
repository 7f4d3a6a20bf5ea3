// Token sampling on the GPU: greedy, temperature, top-k, top-p, seeded.
//
// One block per row. Top-k and top-p thresholds are found by bisection over
// the bits of the value (32 counting / summing passes over the row, which
// stays in L1/L2) instead of sorting the vocabulary. The draw is inverse-CDF
// in token-id order over the kept tokens, with a counter-based uniform of
// (seed, step), so a request's tokens do not depend on its batch.
#pragma once

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

constexpr int kSampleThreads = 1024;

struct SamplingRowDev {  // mirrors SamplingRow in ops.h
  float temperature;
  int top_k;
  float top_p;
  uint64_t seed;
  uint64_t step;
};

__host__ __device__ inline double sample_uniform_impl(uint64_t seed, uint64_t step) {
  return static_cast<double>(splitmix64(seed ^ splitmix64(step + 0x632be59bd9b4e019ull)) >> 11) *
         (1.0 / 9007199254740992.0);
}

// Monotonic map of a float onto uint32 (larger float, larger key).
__device__ __forceinline__ uint32_t float_key(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ int block_count(int x, int* scratch) {
  return __float2int_rn(block_sum(static_cast<float>(x), reinterpret_cast<float*>(scratch)));
}

__global__ void __launch_bounds__(kSampleThreads)
    sample_forward_kernel(int32_t* tokens,               // [rows]
                          const float* logits,           // [rows, vocab]
                          const SamplingRowDev* params,  // [rows]
                          int vocab) {
  __shared__ float scratch[32];
  __shared__ int best_idx[32];
  __shared__ float best_val[32];
  __shared__ float scan_s[kSampleThreads / 32];
  __shared__ int chosen, fallback;
  const int row = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float* x = logits + static_cast<size_t>(row) * vocab;
  const SamplingRowDev p = params[row];

  if (p.temperature <= 0.f || p.top_k == 1) {
    float bv = -INFINITY;
    int bi = vocab;  // NaN logits never win; an all-NaN row yields token 0
    for (int i = tid; i < vocab; i += blockDim.x)
      if (x[i] > bv) bv = x[i], bi = i;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (lane == 0) best_val[warp] = bv, best_idx[warp] = bi;
    __syncthreads();
    if (warp == 0) {
      bv = lane < blockDim.x / 32 ? best_val[lane] : -INFINITY;
      bi = lane < blockDim.x / 32 ? best_idx[lane] : vocab;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
      }
      if (lane == 0) tokens[row] = bi < vocab ? bi : 0;
    }
    return;
  }

  const float inv_t = 1.f / p.temperature;
  float mx = -INFINITY;
  for (int i = tid; i < vocab; i += blockDim.x) mx = fmaxf(mx, x[i]);
  mx = block_max(mx, scratch);

  // Top-k: the largest key whose count of keys >= it is still >= k.
  uint32_t kth = 0;
  if (p.top_k > 0 && p.top_k < vocab) {
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = kth | (1u << bit);
      int c = 0;
      for (int i = tid; i < vocab; i += blockDim.x) c += float_key(x[i]) >= cand;
      if (block_count(c, reinterpret_cast<int*>(scratch)) >= p.top_k) kth = cand;
    }
  }
  auto prob = [&](int i) {
    const float v = x[i];
    return float_key(v) >= kth ? exp2f((v - mx) * inv_t * 1.4426950408889634f) : 0.f;
  };
  float z = 0.f;
  for (int i = tid; i < vocab; i += blockDim.x) z += prob(i);
  z = block_sum(z, scratch);

  // Top-p: the largest probability threshold whose kept mass is still >= p.
  float pmin = 0.f;
  if (p.top_p < 1.f) {
    const float need = p.top_p * z;
    uint32_t th = 0;
    for (int bit = 30; bit >= 0; --bit) {
      const uint32_t cand = th | (1u << bit);
      const float cf = __uint_as_float(cand);
      float m = 0.f;
      for (int i = tid; i < vocab; i += blockDim.x) {
        const float q = prob(i);
        m += q >= cf ? q : 0.f;
      }
      if (block_sum(m, scratch) >= need) th = cand;
    }
    pmin = __uint_as_float(th);
  }
  auto kept = [&](int i) {
    const float q = prob(i);
    return q >= pmin && q > 0.f ? q : 0.f;
  };

  // Inverse CDF in id order: each thread owns a contiguous chunk.
  const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const int lo = min(vocab, tid * chunk), hi = min(vocab, lo + chunk);
  float local = 0.f;
  int last_kept = -1;
  for (int i = lo; i < hi; ++i) {
    const float q = kept(i);
    local += q;
    if (q > 0.f) last_kept = i;
  }
  float incl = local;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) scan_s[warp] = incl;
  if (tid == 0) chosen = fallback = -1;
  __syncthreads();
  if (warp == 0) {
    float w = lane < blockDim.x / 32 ? scan_s[lane] : 0.f;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < blockDim.x / 32) scan_s[lane] = w;  // inclusive warp totals
  }
  __syncthreads();
  const float total = scan_s[blockDim.x / 32 - 1];
  const float before = (warp > 0 ? scan_s[warp - 1] : 0.f) + incl - local;
  const float target = static_cast<float>(sample_uniform_impl(p.seed, p.step)) * total;
  if (local > 0.f && target >= before && target < before + local) {
    float acc = before;
    int pick = last_kept;
    for (int i = lo; i < hi; ++i) {
      acc += kept(i);
      if (kept(i) > 0.f && target < acc) {
        pick = i;
        break;
      }
    }
    atomicMax(&chosen, pick);
  }
  // Rounding can leave target == total: fall back to the last kept token.
  atomicMax(&fallback, last_kept);
  __syncthreads();
  if (tid == 0) tokens[row] = chosen >= 0 ? chosen : (fallback >= 0 ? fallback : 0);
}

inline cudaError_t sample_launch(int32_t* tokens, const float* logits,
                                 const SamplingRowDev* params, int rows, int vocab,
                                 cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  sample_forward_kernel<<<rows, kSampleThreads, 0, stream>>>(tokens, logits, params, vocab);
  return cudaGetLastError();
}

}  // namespace spx::cuda
