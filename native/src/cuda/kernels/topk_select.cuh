// Top-B token selection per (request, KV head) row of retrieval scores, by
// radix select over the float bits: no sort of rows up to ~131k tokens.
//
// Each token gets a key that reproduces retrieval::Selector's order: forced
// tokens outrank any probability (the newest token 4, sinks 3, the recent
// window 2 + i/(n+1), computed with the same float operations), others keep
// their score. Keys map to order-preserving uint32; four 8-bit passes narrow
// the B-th largest key (each pass histograms the digits of the rows still
// matching the prefix in shared memory, warp-aggregated where lanes agree),
// and a last pass writes the winners in token order: every key above the
// threshold and the oldest of those equal to it, which is the host's "ties
// to the older token". The output is ascending by construction.
//
// One block per row keeps it simple and fills the GPU at batch x heads >=
// ~132 rows; a single request's 8 rows use 8 multiprocessors (docs/cuda.md).
#pragma once

#include "cuda/kernels/common.cuh"

namespace spx::cuda {

constexpr int kTopkThreads = 1024;
constexpr int kTopkUnroll = 4;  // row loads in flight per thread

// Order-preserving float -> uint32 (larger float, larger key).
__device__ __forceinline__ uint32_t topk_key(float score, int t, int len, int n_sink,
                                             int recent_from) {
  float k = score;
  if (t >= recent_from)
    k = 2.0f + __fdiv_rn(static_cast<float>(t - recent_from),
                         static_cast<float>(len - recent_from + 1));
  if (t < n_sink) k = 3.0f;
  if (recent_from < len && t == len - 1) k = 4.0f;
  const uint32_t u = __float_as_uint(k);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// sc[j] = row[base + j * kTopkThreads + tid] (0 past len): all loads issued
// before any use.
__device__ __forceinline__ void load_row_chunk(float (&sc)[kTopkUnroll], const float* row,
                                               int base, int len) {
#pragma unroll
  for (int j = 0; j < kTopkUnroll; ++j) {
    const int t = base + j * kTopkThreads + static_cast<int>(threadIdx.x);
    sc[j] = t < len ? row[t] : 0.f;
  }
}

// Inclusive scan of x over the lanes of a warp.
__device__ __forceinline__ int warp_inclusive_scan(int x, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  return x;
}

// Static: a header-defined kernel, one copy per translation unit.
static __global__ void __launch_bounds__(kTopkThreads)
    topk_select_forward_kernel(int32_t* selection,      // [batch, kv_heads, budget]
                               int32_t* counts,         // [batch]
                               float* mass,             // [batch, kv_heads] or nullptr
                               const float* scores,     // [batch, kv_heads, stride]
                               const int32_t* lengths,  // [batch]
                               int kv_heads, int64_t stride, int budget, int n_sink_opt,
                               int n_recent_opt) {
  constexpr int kWarps = kTopkThreads / 32;
  __shared__ int hist[256];
  __shared__ int warp_a[kWarps], warp_b[kWarps];
  __shared__ int pick_digit, pick_k, pick_count;
  __shared__ float red[32];

  const int hk = blockIdx.x, b = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t len64 = lengths[b] < stride ? lengths[b] : stride;
  const int len = len64 > 0 ? static_cast<int>(len64) : 0;
  const size_t row_id = static_cast<size_t>(b) * kv_heads + hk;
  int32_t* out = selection + row_id * budget;
  const float* row = scores + row_id * stride;
  if (hk == 0 && tid == 0) counts[b] = min(len, budget);
  if (len <= budget) {  // full attention: every position, in order
    for (int i = tid; i < budget; i += kTopkThreads) out[i] = i < len ? i : -1;
    if (mass != nullptr && tid == 0) mass[row_id] = 1.f;
    return;
  }
  const int n_sink = min(max(n_sink_opt, 0), len);
  const int recent_from = max(len - max(n_recent_opt, 0), 0);

  // Radix passes: invariant, at least k rows match `prefix` under `mask`,
  // and the selection is every row above it plus k of those matching it.
  uint32_t prefix = 0, mask = 0;
  int k = budget;
  float total = 0.f;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kTopkThreads) hist[i] = 0;
    __syncthreads();
    // Loop bounds are block-uniform: the ballots need every lane.
    for (int base = 0; base < len; base += kTopkThreads * kTopkUnroll) {
      float sc[kTopkUnroll];
      load_row_chunk(sc, row, base, len);
#pragma unroll
      for (int j = 0; j < kTopkUnroll; ++j) {
        const int t = base + j * kTopkThreads + tid;
        int digit = 256;  // no bin
        if (t < len) {
          if (shift == 24) total += sc[j];
          const uint32_t u = topk_key(sc[j], t, len, n_sink, recent_from);
          if ((u & mask) == prefix) digit = (u >> shift) & 255;
        }
        // Scores cluster (in the first passes most of a warp shares a bin):
        // the lanes with the first counted lane's digit add once, the rest
        // alone (measured a little faster than __match_any_sync).
        const unsigned counted = __ballot_sync(0xffffffffu, digit < 256);
        if (counted) {
          const int lead = __shfl_sync(0xffffffffu, digit, __ffs(counted) - 1);
          const unsigned same = __ballot_sync(0xffffffffu, digit == lead);
          if (digit == lead) {
            if (lane == __ffs(same) - 1) atomicAdd(&hist[lead], __popc(same));
          } else if (digit < 256) {
            atomicAdd(&hist[digit], 1);
          }
        }
      }
    }
    __syncthreads();
    if (warp == 0) {
      // Lane j owns bins 8j..8j+7; find the bin where the count from the top
      // reaches k.
      int c[8], own = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) own += (c[j] = hist[lane * 8 + j]);
      // Rows in bins of higher lanes: a suffix sum, as a scan over reversed lanes.
      const int rev = warp_inclusive_scan(__shfl_sync(0xffffffffu, own, 31 - lane), lane);
      const int upto = __shfl_sync(0xffffffffu, rev, 31 - lane);  // own + higher lanes
      int above = upto - own;
      if (above < k && k <= upto) {
#pragma unroll
        for (int j = 7; j >= 0; --j) {
          if (above < k && k <= above + c[j]) {
            pick_digit = lane * 8 + j;
            pick_k = k - above;
            pick_count = c[j];
          }
          above += c[j];
        }
      }
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(pick_digit) << shift;
    mask |= 255u << shift;
    const bool whole_bin = pick_count == pick_k;
    k = pick_k;
    if (whole_bin) break;  // every row of the bin is in: no tie to break
  }
  total = block_sum(total, red);

  // Winners in token order. Position of a winner = rows above the threshold
  // before it + min(equal rows before it, k).
  int run_gt = 0, run_eq = 0;
  float picked = 0.f;
  const unsigned lt_mask = (1u << lane) - 1u;
  for (int base = 0; base < len; base += kTopkThreads * kTopkUnroll) {
    float scs[kTopkUnroll];
    load_row_chunk(scs, row, base, len);
#pragma unroll
    for (int j = 0; j < kTopkUnroll; ++j) {  // sub-chunks in token order
      const int t = base + j * kTopkThreads + tid;
      const float sc = scs[j];
      bool gt = false, eq = false;
      if (t < len) {
        const uint32_t mu = topk_key(sc, t, len, n_sink, recent_from) & mask;
        gt = mu > prefix;
        eq = mu == prefix;
      }
      const unsigned bg = __ballot_sync(0xffffffffu, gt), be = __ballot_sync(0xffffffffu, eq);
      if (lane == 0) warp_a[warp] = __popc(bg), warp_b[warp] = __popc(be);
      __syncthreads();
      const int ga = warp_inclusive_scan(warp_a[lane], lane);  // kWarps == 32
      const int gb = warp_inclusive_scan(warp_b[lane], lane);
      const int before_gt = run_gt + (warp ? __shfl_sync(0xffffffffu, ga, warp - 1) : 0) +
                            __popc(bg & lt_mask);
      const int before_eq = run_eq + (warp ? __shfl_sync(0xffffffffu, gb, warp - 1) : 0) +
                            __popc(be & lt_mask);
      if (gt || (eq && before_eq < k)) {
        out[before_gt + min(before_eq, k)] = t;
        picked += sc;
      }
      run_gt += __shfl_sync(0xffffffffu, ga, 31);
      run_eq += __shfl_sync(0xffffffffu, gb, 31);
      __syncthreads();  // warp_a / warp_b are rewritten next chunk
    }
  }
  picked = block_sum(picked, red);
  if (mass != nullptr && tid == 0) mass[row_id] = total > 0.f ? picked / total : 0.f;
}

inline cudaError_t topk_select_launch(int32_t* selection, int32_t* counts, float* mass,
                                      const float* scores, const int32_t* lengths, int batch,
                                      int kv_heads, int64_t stride, int budget, int n_sink,
                                      int n_recent, cudaStream_t stream) {
  static_assert(kTopkThreads == 32 * 32, "the final pass scans one count per warp in a warp");
  topk_select_forward_kernel<<<dim3(kv_heads, batch), kTopkThreads, 0, stream>>>(
      selection, counts, mass, scores, lengths, kv_heads, stride, budget, n_sink, n_recent);
  return cudaGetLastError();
}

}  // namespace spx::cuda
