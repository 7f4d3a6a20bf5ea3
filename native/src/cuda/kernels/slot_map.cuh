// The elastic-loading slot-map diff on the device (paper section 2), so the
// selection never visits the host: kv/slot_map.cc's SlotMap::update for every
// (request, KV head) row at once, one block per row, with the same decisions:
//   - selected tokens already in a slot stay there (their slot is marked used
//     this step);
//   - the others (pending, in selection order) take the slots not used this
//     step, empty first, then least recently used, ties to the lower slot:
//     the i-th pending token takes the i-th such slot, as the host pairs them.
// So slot assignments, loads and resident tokens equal the host's exactly.
// The victim order comes from one block radix sort of (last use, slot) keys,
// only over the bits the row's step count needs.
//
// The selection rows must be ascending (topk_select_forward's contract); then
// the newest token, when selected and missing, is the last pending one, and
// goes to `fresh` (its K/V only exist once this step's layer has written it).
#pragma once

#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include "cuda/kernels/common.cuh"
#include "cuda/sparse_ops.h"

namespace spx::cuda {

constexpr int kSlotMapThreads = 256;

template <int ITEMS>  // budget <= kSlotMapThreads * ITEMS (ITEMS <= 8: static shared memory)
__global__ void __launch_bounds__(kSlotMapThreads)
    slot_map_update_kernel(SlotCopy* copies,          // [batch * kv_heads * budget]
                           int32_t* n_copies,         // [1], added to
                           SlotCopy* fresh,           // [batch * kv_heads] or null
                           int32_t* slot_sel,         // [batch, kv_heads, budget]
                           SlotMapCounters* counters,  // or null
                           SlotMapState st,
                           const int32_t* selection,  // [batch, kv_heads, budget]
                           const int32_t* counts,     // [batch]
                           const int32_t* lengths,    // [batch] or null (no fresh split)
                           const int32_t* request_of,  // [batch] or null (identity)
                           int kv_heads, int budget) {
  using Scan = cub::BlockScan<int, kSlotMapThreads>;
  using Sort = cub::BlockRadixSort<unsigned long long, kSlotMapThreads, ITEMS>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Sort::TempStorage sort;
  } tmp;
  __shared__ int32_t victim[kSlotMapThreads * ITEMS];
  __shared__ int32_t base_s;

  const int b = blockIdx.x / kv_heads, g = blockIdx.x % kv_heads;
  const int req = request_of ? request_of[b] : b;
  const int64_t srow = static_cast<int64_t>(req) * kv_heads + g;
  const int64_t orow = static_cast<int64_t>(blockIdx.x);
  int32_t* slot_token = st.slot_token + srow * budget;
  int32_t* slot_used = st.slot_used + srow * budget;
  int32_t* token_slot = st.token_slot + srow * st.token_capacity;
  const int32_t* sel = selection + orow * budget;
  int32_t* out = slot_sel + orow * budget;
  const int n = counts[b];
  const int tid = threadIdx.x;

  // Validate before changing anything (a bad row changes nothing, as on the host).
  bool bad = n < 0 || n > budget;
  int32_t tok[ITEMS];
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    const int i = tid * ITEMS + j;
    tok[j] = -1;
    if (!bad && i < n) {
      tok[j] = sel[i];
      bad |= tok[j] < 0 || tok[j] >= st.token_capacity || (i > 0 && tok[j] <= sel[i - 1]);
    }
  }
  if (__syncthreads_or(bad)) {
    for (int i = tid; i < budget; i += kSlotMapThreads) out[i] = i < n ? 0 : -1;
    if (fresh && tid == 0) fresh[orow] = SlotCopy{req, g, -1, -1};
    if (counters && tid == 0) atomicAdd(&counters->bad_rows, 1ull);
    return;
  }
  const int32_t stamp = st.stamp[srow] + 1;

  // Residents keep their slot; the rest are pending.
  int32_t slot[ITEMS];
  int pend[ITEMS], rank[ITEMS];
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    slot[j] = tok[j] >= 0 ? token_slot[tok[j]] : -1;
    pend[j] = tok[j] >= 0 && slot[j] < 0;
    if (tok[j] >= 0 && slot[j] >= 0) slot_used[slot[j]] = stamp;
  }
  int k = 0;
  Scan(tmp.scan).ExclusiveSum(pend, rank, k);
  __syncthreads();  // slot_used marks visible; scan storage free for the sort

  if (k > 0) {
    // Victim order: (last use + 1, slot), slots used this step last.
    const int slot_bits = budget > 1 ? 32 - __clz(budget - 1) : 1;
    const int end_bit = slot_bits + (32 - __clz(stamp)) + 1;
    unsigned long long key[ITEMS];
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      const int s = tid * ITEMS + j;
      key[j] = ~0ull;
      if (s < budget) {
        const int32_t used = slot_used[s];
        if (used != stamp)
          key[j] = (static_cast<unsigned long long>(used + 1) << slot_bits) |
                   static_cast<unsigned long long>(s);
      }
    }
    Sort(tmp.sort).Sort(key, 0, end_bit);
    const unsigned long long mask = (1ull << slot_bits) - 1;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      const int r = tid * ITEMS + j;
      if (r < k) victim[r] = static_cast<int32_t>(key[j] & mask);
    }
    // The newest token, when pending, is the last pending one (rows ascend).
    const int32_t newest = lengths ? lengths[b] - 1 : -1;
    const bool fresh_pending = fresh && n > 0 && sel[n - 1] == newest &&
                               token_slot[newest] < 0;
    if (tid == 0) base_s = atomicAdd(n_copies, k - (fresh_pending ? 1 : 0));
    if (fresh && tid == 0 && !fresh_pending) fresh[orow] = SlotCopy{req, g, -1, -1};
    __syncthreads();
    const int base = base_s;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      if (!pend[j]) continue;
      const int32_t s = victim[rank[j]];
      const int32_t old = slot_token[s];
      // `old` is not selected now (its slot was free), so no other thread
      // touches token_slot[old].
      if (old >= 0) token_slot[old] = -1;
      slot_token[s] = tok[j];
      slot_used[s] = stamp;
      token_slot[tok[j]] = s;
      slot[j] = s;
      const SlotCopy c{req, g, tok[j], s};
      if (fresh_pending && rank[j] == k - 1)
        fresh[orow] = c;
      else
        copies[base + rank[j]] = c;
    }
  } else if (fresh && tid == 0) {
    fresh[orow] = SlotCopy{req, g, -1, -1};
  }
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    const int i = tid * ITEMS + j;
    if (i < budget) out[i] = i < n ? slot[j] : -1;
  }
  if (tid == 0) {
    st.stamp[srow] = stamp;
    if (counters) {
      atomicAdd(&counters->loads, static_cast<unsigned long long>(k));
      atomicAdd(&counters->rows, 1ull);
      atomicAdd(&counters->slots, static_cast<unsigned long long>(budget));
    }
  }
}

template <int ITEMS>
inline cudaError_t slot_map_update_launch(SlotCopy* copies, int32_t* n_copies, SlotCopy* fresh,
                                          int32_t* slot_sel, SlotMapCounters* counters,
                                          const SlotMapState& st, const int32_t* selection,
                                          const int32_t* counts, const int32_t* lengths,
                                          const int32_t* request_of, int batch, int kv_heads,
                                          int budget, cudaStream_t stream) {
  slot_map_update_kernel<ITEMS><<<batch * kv_heads, kSlotMapThreads, 0, stream>>>(
      copies, n_copies, fresh, slot_sel, counters, st, selection, counts, lengths, request_of,
      kv_heads, budget);
  return cudaGetLastError();
}

}  // namespace spx::cuda
