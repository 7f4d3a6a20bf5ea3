// GPU tests of the device slot-map diff (slot_map_update_forward) against
// the host's kv/slot_map SlotMap, and of the persistent gather that reads its
// list length on the device (elastic_gather_list_forward):
//   - random ascending selection sequences (drifting as in decode, and fully
//     random), budgets 1 .. 2048, odd request / head counts, a request map:
//     every step the slot of each selected token, the loads (and which of
//     them is the newest token's), every slot's resident token and the
//     counters equal the host's;
//   - a bad row (not ascending, out of range, count > budget) changes nothing;
//   - diff + list gather from real mapped pinned memory: every slot holds its
//     token's K/V row byte for byte.
// A last test prints (does not assert) timings: the diff at the bench's
// shape, and the list gather's bandwidth by grid size against the old grid.
#include <gtest/gtest.h>

#ifndef SPX_HAVE_CUDA
TEST(CudaSlotMap, Skipped) { GTEST_SKIP() << "built without CUDA (nvcc not found)"; }
#else
#include <algorithm>
#include <set>
#include <tuple>

#include "cuda/sparse_ops.h"
#include "cuda_test_util.h"
#include "kv/slot_map.h"

namespace spx::cuda::test {
namespace {

// Device state for `requests` rows of slot maps.
struct DeviceMaps {
  int requests, kv_heads, budget;
  int64_t tcap;
  DeviceBuffer<int32_t> slot_token, slot_used, token_slot, stamp;
  DeviceBuffer<SlotMapCounters> counters;
  DeviceMaps(int r, int h, int b, int64_t cap)
      : requests(r), kv_heads(h), budget(b), tcap(cap), slot_token(size_t(r) * h * b),
        slot_used(slot_token.n), token_slot(size_t(r) * h * cap), stamp(size_t(r) * h),
        counters(1) {}
  SlotMapState state() const {
    return SlotMapState{slot_token.ptr, slot_used.ptr, token_slot.ptr, stamp.ptr, tcap};
  }
  cudaError_t reset() {
    cudaError_t e = slot_map_reset(state(), 0, requests, kv_heads, budget, 0);
    if (e == cudaSuccess) e = cudaMemset(counters.ptr, 0, sizeof(SlotMapCounters));
    return e;
  }
};

// Next ascending selection of n tokens below `length`, keeping about `keep`
// of `prev`, always holding the newest token when `newest` is set.
std::vector<int32_t> next_selection(const std::vector<int32_t>& prev, int n, int length,
                                    double keep, bool newest, std::mt19937& rng) {
  std::set<int32_t> s;
  if (newest && n > 0) s.insert(length - 1);
  std::uniform_real_distribution<double> u(0, 1);
  for (int32_t t : prev)
    if (int(s.size()) < n && t < length && u(rng) < keep) s.insert(t);
  while (int(s.size()) < n) s.insert(int32_t(rng() % uint32_t(length)));
  return std::vector<int32_t>(s.begin(), s.end());
}

struct Case {
  int batch, kv_heads, budget, capacity, steps;
  double keep;
  bool map_requests;  // batch rows -> state requests other than the identity
};

void run_case(const Case& c) {
  SCOPED_TRACE(testing::Message() << "batch " << c.batch << " heads " << c.kv_heads << " B "
                                  << c.budget << " cap " << c.capacity << " keep " << c.keep);
  const int H = c.kv_heads, B = c.budget;
  const int requests = c.map_requests ? c.batch + 2 : c.batch;
  std::vector<int32_t> request_of(c.batch);
  for (int b = 0; b < c.batch; ++b) request_of[b] = c.map_requests ? (b * 3 + 1) % requests : b;
  if (c.map_requests) {  // must stay a permutation into distinct requests
    std::set<int32_t> u(request_of.begin(), request_of.end());
    ASSERT_EQ(int(u.size()), c.batch);
  }
  DeviceMaps dm(requests, H, B, c.capacity);
  ASSERT_EQ(dm.reset(), cudaSuccess);
  std::vector<std::vector<SlotMap>> host(requests, std::vector<SlotMap>(H, SlotMap(B)));
  DeviceBuffer<int32_t> dsel(size_t(c.batch) * H * B), dcounts(c.batch), dlen(c.batch),
      dreq(c.batch), dslot(size_t(c.batch) * H * B), dn(1);
  DeviceBuffer<SlotCopy> dcopies(size_t(c.batch) * H * B), dfresh(size_t(c.batch) * H);
  ASSERT_EQ(dreq.upload(request_of), cudaSuccess);
  std::mt19937 rng(c.batch * 1000 + B * 7 + H);
  std::vector<std::vector<int32_t>> prev(size_t(c.batch) * H);
  unsigned long long host_loads = 0;
  for (int step = 0; step < c.steps; ++step) {
    const int length = std::max(1, c.capacity - c.steps + step + 1);
    std::vector<int32_t> sel(size_t(c.batch) * H * B, -1), counts(c.batch), lens(c.batch, length);
    for (int b = 0; b < c.batch; ++b) {
      // Counts vary across requests and steps (short contexts, n < B).
      counts[b] = std::min(length, b % 3 == 2 ? std::max(1, B - int(rng() % (B / 2 + 1))) : B);
      for (int g = 0; g < H; ++g) {
        auto& p = prev[size_t(b) * H + g];
        p = next_selection(p, counts[b], length, c.keep, (step + b) % 4 != 3, rng);
        std::copy(p.begin(), p.end(), sel.begin() + (size_t(b) * H + g) * B);
      }
    }
    ASSERT_EQ(dsel.upload(sel), cudaSuccess);
    ASSERT_EQ(dcounts.upload(counts), cudaSuccess);
    ASSERT_EQ(dlen.upload(lens), cudaSuccess);
    ASSERT_EQ(cudaMemset(dn.ptr, 0, 4), cudaSuccess);
    ASSERT_EQ(dslot.poison(), cudaSuccess);
    ASSERT_EQ(slot_map_update_forward(dcopies.ptr, dn.ptr, dfresh.ptr, dslot.ptr, dm.counters.ptr,
                                      dm.state(), dsel.ptr, dcounts.ptr, dlen.ptr,
                                      c.map_requests ? dreq.ptr : nullptr, c.batch, H, B, 0),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

    // The host's answer, row by row.
    std::set<std::tuple<int, int, int, int>> want_loads, want_fresh;
    std::vector<int32_t> want_slot(size_t(c.batch) * H * B, -1);
    for (int b = 0; b < c.batch; ++b)
      for (int g = 0; g < H; ++g) {
        std::vector<SlotLoad> loads;
        const int got = host[request_of[b]][g].update(&sel[(size_t(b) * H + g) * B], counts[b],
                                                      &loads, &want_slot[(size_t(b) * H + g) * B]);
        ASSERT_GE(got, 0);
        host_loads += got;
        for (const SlotLoad& l : loads)
          (l.token == length - 1 ? want_fresh : want_loads)
              .insert({request_of[b], g, l.token, l.slot});
      }
    const auto n = dn.download()[0];
    const auto copies = dcopies.download();
    std::set<std::tuple<int, int, int, int>> got_loads, got_fresh;
    for (int i = 0; i < n; ++i)
      got_loads.insert({copies[i].req, copies[i].head, copies[i].token, copies[i].slot});
    EXPECT_EQ(n, int(want_loads.size())) << "step " << step;
    EXPECT_TRUE(got_loads == want_loads) << "step " << step;
    for (const SlotCopy& f : dfresh.download())
      if (f.token >= 0) got_fresh.insert({f.req, f.head, f.token, f.slot});
    EXPECT_TRUE(got_fresh == want_fresh) << "step " << step;
    const auto slots = dslot.download();
    int bad = 0;
    for (size_t i = 0; i < slots.size(); ++i)
      if (slots[i] != want_slot[i] && bad++ < 5)
        std::printf("step %d: slot_sel[%zu] = %d, host %d\n", step, i, slots[i], want_slot[i]);
    EXPECT_EQ(bad, 0) << "step " << step;
    const auto resident = dm.slot_token.download();
    bad = 0;
    for (int r = 0; r < requests; ++r)
      for (int g = 0; g < H; ++g)
        for (int s = 0; s < B; ++s)
          bad += resident[(size_t(r) * H + g) * B + s] != host[r][g].token_in(s);
    EXPECT_EQ(bad, 0) << "resident tokens differ, step " << step;
    if (::testing::Test::HasFailure()) return;
  }
  const SlotMapCounters k = dm.counters.download()[0];
  EXPECT_EQ(k.loads, host_loads);
  EXPECT_EQ(k.rows, (unsigned long long)(c.steps) * c.batch * H);
  EXPECT_EQ(k.slots, k.rows * B);
  EXPECT_EQ(k.bad_rows, 0u);
}

TEST(CudaSlotMap, DiffEqualsHostSlotMap) {
  SPX_REQUIRE_GPU();
  run_case({3, 8, 16, 97, 12, 0.8, false});
  run_case({5, 3, 97, 400, 10, 0.5, true});
  run_case({2, 2, 1, 17, 6, 0.5, false});
  run_case({4, 8, 256, 4099, 8, 0.8, false});
  run_case({3, 8, 256, 300, 8, 0.0, true});  // nothing kept on purpose: random refills
  run_case({2, 8, 2048, 33000, 5, 0.8, false});
  run_case({2, 4, 2048, 2100, 5, 0.95, true});  // dense corner: length close to B
}

TEST(CudaSlotMap, BadRowChangesNothing) {
  SPX_REQUIRE_GPU();
  const int H = 2, B = 8, cap = 64;
  DeviceMaps dm(1, H, B, cap);
  ASSERT_EQ(dm.reset(), cudaSuccess);
  DeviceBuffer<int32_t> dsel(H * B), dcounts(1), dslot(H * B), dn(1);
  DeviceBuffer<SlotCopy> dcopies(H * B);
  auto step = [&](std::vector<int32_t> sel, int count) {
    EXPECT_EQ(dsel.upload(sel), cudaSuccess);
    EXPECT_EQ(dcounts.upload({count}), cudaSuccess);
    EXPECT_EQ(cudaMemset(dn.ptr, 0, 4), cudaSuccess);
    EXPECT_EQ(slot_map_update_forward(dcopies.ptr, dn.ptr, nullptr, dslot.ptr, dm.counters.ptr,
                                      dm.state(), dsel.ptr, dcounts.ptr, nullptr, nullptr, 1, H, B,
                                      0),
              cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  };
  step({0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17}, 8);
  // Head 1 not ascending; head 0 out of range; count past the budget.
  step({20, 21, 22, 23, 24, 25, 26, 27, 30, 31, 33, 32, 34, 35, 36, 37}, 8);
  step({20, 21, 22, 23, 24, 25, 26, 64, 30, 31, 32, 33, 34, 35, 36, 37}, 8);
  step({20, 21, 22, 23, 24, 25, 26, 27, 30, 31, 32, 33, 34, 35, 36, 37}, 9);
  const SlotMapCounters k = dm.counters.download()[0];
  EXPECT_EQ(k.bad_rows, 4u);  // one, one, two rows
  EXPECT_EQ(k.loads, 32u);     // 16, then the good row of each of the next two calls
  const auto tok1 = dm.slot_token.download(), ts1 = dm.token_slot.download(),
             st1 = dm.stamp.download();
  // The second call's head 0 and the third's head 1 were good rows: the host
  // replays just those.
  SlotMap ref0(B), ref1(B);
  std::vector<int32_t> a{0, 1, 2, 3, 4, 5, 6, 7}, b{10, 11, 12, 13, 14, 15, 16, 17};
  ref0.update(a.data(), 8, nullptr, nullptr);
  ref1.update(b.data(), 8, nullptr, nullptr);
  std::vector<int32_t> a2{20, 21, 22, 23, 24, 25, 26, 27}, b2{30, 31, 32, 33, 34, 35, 36, 37};
  ref0.update(a2.data(), 8, nullptr, nullptr);  // second call, head 0
  ref1.update(b2.data(), 8, nullptr, nullptr);  // third call, head 1
  for (int s = 0; s < B; ++s) {
    EXPECT_EQ(tok1[s], ref0.token_in(s)) << "head 0 slot " << s;
    EXPECT_EQ(tok1[B + s], ref1.token_in(s)) << "head 1 slot " << s;
  }
  EXPECT_EQ(st1[0], 2);
  EXPECT_EQ(st1[1], 2);
  for (int t = 0; t < cap; ++t) {
    EXPECT_EQ(ts1[t], ref0.slot_of(t)) << "head 0 token " << t;
    EXPECT_EQ(ts1[cap + t], ref1.slot_of(t)) << "head 1 token " << t;
  }
}

// Mapped pinned K/V [requests, kv_heads, capacity, d] and device slots.
struct Tiers {
  int R, H, cap, d, B;
  uint16_t *hk = nullptr, *hv = nullptr;
  Bf16Buffer sk, sv;
  DeviceBuffer<HostKv> host;
  DeviceBuffer<SlotKv> slots;
  Tiers(int r, int h, int c, int d_, int b)
      : R(r), H(h), cap(c), d(d_), B(b), sk(size_t(r) * h * b * d_), sv(sk.n), host(r), slots(r) {
    const size_t bytes = size_t(R) * H * cap * d * 2;
    if (cudaHostAlloc(&hk, bytes, cudaHostAllocMapped) != cudaSuccess) hk = nullptr;
    if (cudaHostAlloc(&hv, bytes, cudaHostAllocMapped) != cudaSuccess) hv = nullptr;
    if (!hk || !hv) return;
    void *dk = nullptr, *dv = nullptr;
    cudaHostGetDevicePointer(&dk, hk, 0);
    cudaHostGetDevicePointer(&dv, hv, 0);
    std::vector<HostKv> ht(R);
    std::vector<SlotKv> st(R);
    for (int i = 0; i < R; ++i) {
      ht[i] = HostKv{static_cast<const bf16*>(dk) + size_t(i) * H * cap * d,
                     static_cast<const bf16*>(dv) + size_t(i) * H * cap * d, cap};
      st[i] = SlotKv{sk.bf() + size_t(i) * H * B * d, sv.bf() + size_t(i) * H * B * d};
    }
    host.upload(ht);
    slots.upload(st);
  }
  ~Tiers() {
    cudaFreeHost(hk);
    cudaFreeHost(hv);
  }
  const uint16_t* krow(int r, int h, int t) const { return hk + ((size_t(r) * H + h) * cap + t) * d; }
  const uint16_t* vrow(int r, int h, int t) const { return hv + ((size_t(r) * H + h) * cap + t) * d; }
};

void run_gather_case(int d, int budget, int capacity, int steps, int blocks) {
  SCOPED_TRACE(testing::Message() << "d " << d << " B " << budget << " blocks " << blocks);
  const int R = 3, H = 8;
  Tiers t(R, H, capacity, d, budget);
  ASSERT_NE(t.hk, nullptr);
  ASSERT_NE(t.hv, nullptr);
  std::mt19937 rng(900 + d + blocks);
  for (size_t i = 0; i < size_t(R) * H * capacity * d; ++i)
    t.hk[i] = uint16_t(rng()), t.hv[i] = uint16_t(rng());
  ASSERT_EQ(t.sk.poison(), cudaSuccess);
  ASSERT_EQ(t.sv.poison(), cudaSuccess);
  DeviceMaps dm(R, H, budget, capacity);
  ASSERT_EQ(dm.reset(), cudaSuccess);
  DeviceBuffer<int32_t> dsel(size_t(R) * H * budget), dcounts(R), dlen(R), dslot(dsel.n), dn(1);
  DeviceBuffer<SlotCopy> dcopies(dsel.n), dfresh(size_t(R) * H);
  std::vector<std::vector<int32_t>> prev(size_t(R) * H);
  for (int step = 0; step < steps; ++step) {
    const int length = capacity - steps + step + 1;
    std::vector<int32_t> sel(dsel.n, -1), counts(R, std::min(budget, length)), lens(R, length);
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < H; ++g) {
        auto& p = prev[size_t(r) * H + g];
        p = next_selection(p, counts[r], length, 0.8, true, rng);
        std::copy(p.begin(), p.end(), sel.begin() + (size_t(r) * H + g) * budget);
      }
    ASSERT_EQ(dsel.upload(sel), cudaSuccess);
    ASSERT_EQ(dcounts.upload(counts), cudaSuccess);
    ASSERT_EQ(dlen.upload(lens), cudaSuccess);
    ASSERT_EQ(cudaMemset(dn.ptr, 0, 4), cudaSuccess);
    ASSERT_EQ(slot_map_update_forward(dcopies.ptr, dn.ptr, dfresh.ptr, dslot.ptr, nullptr,
                                      dm.state(), dsel.ptr, dcounts.ptr, dlen.ptr, nullptr, R, H,
                                      budget, 0),
              cudaSuccess);
    ASSERT_EQ(elastic_gather_list_forward(dcopies.ptr, dn.ptr, t.host.ptr, t.slots.ptr, H, d,
                                          budget, blocks, 0),
              cudaSuccess);
    // The fresh list: fixed length, entries without a load skipped.
    ASSERT_EQ(elastic_gather_forward(dfresh.ptr, R * H, t.host.ptr, t.slots.ptr, H, d, budget, 0),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto gk = t.sk.download(), gv = t.sv.download();
    const auto slots = dslot.download();
    int bad = 0;
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < H; ++g)
        for (int i = 0; i < counts[r]; ++i) {
          const size_t at = (size_t(r) * H + g) * budget + i;
          const int32_t tok = sel[at], slot = slots[at];
          if (slot < 0 || slot >= budget) {
            ++bad;
            continue;
          }
          const size_t dev = ((size_t(r) * H + g) * budget + slot) * d;
          if (std::memcmp(&gk[dev], t.krow(r, g, tok), d * 2) ||
              std::memcmp(&gv[dev], t.vrow(r, g, tok), d * 2))
            if (bad++ < 5)
              std::printf("step %d: req %d head %d token %d slot %d differs\n", step, r, g, tok,
                          slot);
        }
    EXPECT_EQ(bad, 0) << "step " << step;
  }
}

TEST(CudaSlotMap, DiffThenListGatherFillsSlots) {
  SPX_REQUIRE_GPU();
  run_gather_case(128, 256, 4099, 4, 4);
  run_gather_case(128, 2048, 9000, 3, 1);
  run_gather_case(64, 97, 300, 4, 16);
  run_gather_case(16, 16, 97, 3, 2);
}

// ---- Timings (printed, not asserted) ----------------------------------------

TEST(CudaSlotMap, Timings) {
  SPX_REQUIRE_GPU();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  auto time = [&](int reps, auto&& f) {
    f();
    cudaEventRecord(a);
    for (int i = 0; i < reps; ++i) f();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return ms / reps;
  };
  // The diff at the bench's host-tier shape: 61 requests x 8 heads, B 2048,
  // a drift of 20% per step (selections made beforehand).
  {
    const int R = 61, H = 8, B = 2048, cap = 18500, steps = 8;
    DeviceMaps dm(R, H, B, cap);
    ASSERT_EQ(dm.reset(), cudaSuccess);
    std::mt19937 rng(7);
    std::vector<std::vector<int32_t>> prev(size_t(R) * H);
    std::vector<int32_t> all(size_t(steps) * R * H * B);
    for (int s = 0; s < steps; ++s)
      for (size_t row = 0; row < prev.size(); ++row) {
        prev[row] = next_selection(prev[row], B, cap - steps + s + 1, 0.8, true, rng);
        std::copy(prev[row].begin(), prev[row].end(), all.begin() + (size_t(s) * prev.size() + row) * B);
      }
    DeviceBuffer<int32_t> dall(all.size()), dcounts(R), dlen(R), dslot(size_t(R) * H * B), dn(1);
    DeviceBuffer<SlotCopy> dcopies(size_t(R) * H * B), dfresh(size_t(R) * H);
    ASSERT_EQ(dall.upload(all), cudaSuccess);
    ASSERT_EQ(dcounts.upload(std::vector<int32_t>(R, B)), cudaSuccess);
    ASSERT_EQ(dlen.upload(std::vector<int32_t>(R, cap)), cudaSuccess);
    for (int s = 0; s < steps; ++s) {
      cudaMemsetAsync(dn.ptr, 0, 4);
      cudaEventRecord(a);
      slot_map_update_forward(dcopies.ptr, dn.ptr, dfresh.ptr, dslot.ptr, dm.counters.ptr,
                              dm.state(), dall.ptr + size_t(s) * R * H * B, dcounts.ptr, dlen.ptr,
                              nullptr, R, H, B, 0);
      cudaEventRecord(b);
      cudaEventSynchronize(b);
      float ms = 0;
      cudaEventElapsedTime(&ms, a, b);
      if (s == 0 || s == steps - 1)
        std::printf("TIMING slot_map_update %d rows x B %d, step %d: %.1f us, %d loads\n", R * H,
                    B, s, ms * 1e3, dn.download()[0]);
    }
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  }
  // The list gather by grid size against the grid sized to the list, for a
  // 20% load of 33 requests x 8 heads x 2048 slots (the drift run's size).
  {
    const int R = 33, H = 8, B = 2048, d = 128, cap = 4096;
    Tiers t(R, H, cap, d, B);
    ASSERT_NE(t.hk, nullptr);
    ASSERT_NE(t.hv, nullptr);
    std::memset(t.hk, 0x3c, size_t(R) * H * cap * d * 2);
    std::memset(t.hv, 0x3c, size_t(R) * H * cap * d * 2);
    std::vector<SlotCopy> copies;
    std::mt19937 rng(3);
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < H; ++g)
        for (int i = 0; i < B / 5; ++i) copies.push_back(SlotCopy{r, g, int32_t(rng() % cap), i});
    DeviceBuffer<SlotCopy> dcopies(copies.size());
    DeviceBuffer<int32_t> dn(1);
    ASSERT_EQ(dcopies.upload(copies), cudaSuccess);
    ASSERT_EQ(dn.upload({int32_t(copies.size())}), cudaSuccess);
    const double bytes = double(copies.size()) * d * 2 * 2;
    const float t_old = time(10, [&] {
      elastic_gather_forward(dcopies.ptr, int(copies.size()), t.host.ptr, t.slots.ptr, H, d, B, 0);
    });
    std::printf("TIMING gather grid-sized %zu rows (%.1f MB): %.1f us, %.1f GB/s\n", copies.size(),
                bytes / 1e6, t_old * 1e3, bytes / (t_old * 1e6));
    for (int blocks : {1, 2, 4, 8, 16, 32, 132}) {
      const float ms = time(10, [&] {
        elastic_gather_list_forward(dcopies.ptr, dn.ptr, t.host.ptr, t.slots.ptr, H, d, B, blocks,
                                    0);
      });
      std::printf("TIMING gather list %d blocks: %.1f us, %.1f GB/s\n", blocks, ms * 1e3,
                  bytes / (ms * 1e6));
    }
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}

}  // namespace
}  // namespace spx::cuda::test
#endif  // SPX_HAVE_CUDA
