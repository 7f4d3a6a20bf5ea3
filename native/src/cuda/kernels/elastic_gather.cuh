// Elastic loading (paper section 2): copies the (token -> slot) rows the
// slot-map diff lists from a host-tier layer's full K/V in mapped pinned host
// memory into the device slot buffers. The GPU reads host memory directly
// over PCIe, so no CPU gather and no staging copy: a warp covers one row's K
// and V at d = 128 (32 lanes x 16 bytes; smaller heads pack several rows per
// warp), and each thread issues several loads before its stores so enough
// reads are in flight to keep PCIe busy.
#pragma once

#include "cuda/kernels/common.cuh"
#include "cuda/sparse_ops.h"

namespace spx::cuda {

constexpr int kGatherThreads = 256;
constexpr int kGatherUnroll = 4;  // 16-byte loads in flight per thread

// The persistent variant (list length on the device): fewer, fuller blocks,
// with more loads in flight per thread, so 2-8 blocks can fill PCIe.
constexpr int kGatherListThreads = 512;
constexpr int kGatherListUnroll = 8;

// n_device non-null: the list's length is *n_device (n ignored).
template <int D, int THREADS, int UNROLL>
__global__ void __launch_bounds__(THREADS)
    elastic_gather_forward_kernel(const SlotCopy* copies,  // [n]
                                  int n, const int32_t* n_device,
                                  const HostKv* host,      // [requests]
                                  const SlotKv* slots,     // [requests]
                                  int kv_heads, int budget) {
  constexpr int kChunks = D / 8;       // 16-byte chunks per K (or V) row
  constexpr int kPer = 2 * kChunks;    // K then V
  if (n_device) n = *n_device;
  const int64_t items = static_cast<int64_t>(n) * kPer;
  const int64_t step = static_cast<int64_t>(gridDim.x) * THREADS;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x;
       base < items; base += step * UNROLL) {
    Bf16x8 v[UNROLL];
    Bf16x8* dst[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      dst[u] = nullptr;
      const int64_t i = base + u * step;
      if (i >= items) continue;
      const SlotCopy c = copies[i / kPer];
      const int part = static_cast<int>(i % kPer);
      // Bad entries are skipped rather than read or written out of bounds
      // (the request index is the caller's: it sized host and slots).
      if (c.req < 0 || c.head < 0 || c.head >= kv_heads || c.slot < 0 || c.slot >= budget)
        continue;
      const HostKv h = host[c.req];
      if (c.token < 0 || c.token >= h.capacity) continue;
      const bool is_v = part >= kChunks;
      const int col = (part % kChunks) * 8;
      const bf16* src = (is_v ? h.v : h.k) + (c.head * h.capacity + c.token) * D + col;
      bf16* d = (is_v ? slots[c.req].v : slots[c.req].k) +
                (static_cast<int64_t>(c.head) * budget + c.slot) * D + col;
      v[u] = *reinterpret_cast<const Bf16x8*>(src);
      dst[u] = reinterpret_cast<Bf16x8*>(d);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (dst[u] != nullptr) *dst[u] = v[u];
  }
}

template <int D>
inline cudaError_t elastic_gather_launch(const SlotCopy* copies, int n, const HostKv* host,
                                         const SlotKv* slots, int kv_heads, int budget,
                                         cudaStream_t stream) {
  const int64_t items = static_cast<int64_t>(n) * 2 * (D / 8);
  int64_t blocks = (items + int64_t(kGatherThreads) * kGatherUnroll - 1) /
                   (int64_t(kGatherThreads) * kGatherUnroll);
  if (blocks > 65535) blocks = 65535;
  elastic_gather_forward_kernel<D, kGatherThreads, kGatherUnroll>
      <<<static_cast<unsigned>(blocks), kGatherThreads, 0, stream>>>(copies, n, nullptr, host,
                                                                     slots, kv_heads, budget);
  return cudaGetLastError();
}

template <int D>
inline cudaError_t elastic_gather_list_launch(const SlotCopy* copies, const int32_t* n_device,
                                              const HostKv* host, const SlotKv* slots,
                                              int kv_heads, int budget, int blocks,
                                              cudaStream_t stream) {
  elastic_gather_forward_kernel<D, kGatherListThreads, kGatherListUnroll>
      <<<static_cast<unsigned>(blocks), kGatherListThreads, 0, stream>>>(
          copies, 0, n_device, host, slots, kv_heads, budget);
  return cudaGetLastError();
}

}  // namespace spx::cuda
