#include "cuda/cuda_tier.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

#include "cuda/check.h"
#include "cuda/cuda_head_select.h"
#include "cuda/host_memory.h"
#include "cuda/sparse_ops.h"
#include "cuda/stage_ring.h"

namespace spx::cuda {

// Defined in cuda_backend.cu: the CUDA backend's compute stream and device
// (nullptr / -1 when `backend` is another backend).
cudaStream_t backend_stream(Backend* backend);
int backend_device(Backend* backend);

namespace {

// Persistent grid of the prefetch gathers: 16 blocks keep PCIe full on the
// H200 (51 GB/s; 8 give 48) while leaving the other multiprocessors to the
// compute stream (docs/cuda.md, "SpeContext kernels").
constexpr int kPrefetchBlocks = 16;
constexpr size_t kHugeFrom = size_t(2) << 20;

class Tier final : public CudaTier {
 public:
  ~Tier() override {
    if (tier_) cudaStreamSynchronize(tier_);
    if (compute_) cudaStreamSynchronize(compute_);
    for (cudaEvent_t e : {ready_, start_, reached_, mapped_, counted_})
      if (e) cudaEventDestroy(e);
    if (tier_) cudaStreamDestroy(tier_);
    for (auto& [b, p] : pools_) cudaFree(p.mem);
    cudaFree(arena_);
    cudaFree(d_counters_);
    cudaFreeHost(h_counters_);
  }

  void set_selection_download(bool on) override {
    if (head_) head_->set_download(on);
  }
  const int32_t* device_selection(const int32_t* key) const override {
    return head_ ? head_->device_selection(key, nullptr) : nullptr;
  }

  Status init(Backend* backend) {
    compute_ = backend_stream(backend);
    device_ = backend_device(backend);
    head_ = dynamic_cast<DeviceHeadSelect*>(backend->head_select());
    SPX_CUDA_TRY(cudaSetDevice(device_));
    // Lowest priority: a freed SM goes to the layer computation first.
    int least = 0, greatest = 0;
    SPX_CUDA_TRY(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    SPX_CUDA_TRY(cudaStreamCreateWithPriority(&tier_, cudaStreamNonBlocking, least));
    // Timed events: the prefetch's span, and when the compute stream reached
    // the point where it needs the rows (exposed time = ready - reached).
    SPX_CUDA_TRY(cudaEventCreate(&ready_));
    SPX_CUDA_TRY(cudaEventCreate(&start_));
    SPX_CUDA_TRY(cudaEventCreate(&reached_));
    SPX_CUDA_TRY(cudaEventCreateWithFlags(&mapped_, cudaEventDisableTiming));
    SPX_CUDA_TRY(cudaEventCreateWithFlags(&counted_, cudaEventDisableTiming));
    SPX_CUDA_TRY(cudaMalloc(&d_counters_, sizeof(SlotMapCounters)));
    SPX_CUDA_TRY(cudaMemset(d_counters_, 0, sizeof(SlotMapCounters)));
    SPX_CUDA_TRY(cudaMallocHost(&h_counters_, sizeof(SlotMapCounters)));
    std::memset(h_counters_, 0, sizeof(SlotMapCounters));
    return Status::Ok();
  }

  Status to_host(Tensor* t) override {
    if (on_host(*t)) return Status::Ok();
    SPX_CUDA_TRY(cudaSetDevice(device_));
    const size_t bytes = std::max<size_t>(16, static_cast<size_t>(t->numel()) * sizeof(bf16));
    // Huge pages for a cache of 2 MB and more: the prefetch gathers rows
    // scattered over it (docs/cuda.md, "Elastic loading without the host
    // round trip"); smaller ones would waste most of a 2 MB page.
    const HostPages pages = bytes >= kHugeFrom ? HostPages::kHuge : HostPages::kCudaHostAlloc;
    MappedHost m;
    const Status st = alloc_mapped_host(bytes, pages, &m);
    if (!st.ok) return Status::Error("host tier: " + st.message);
    if (pages == HostPages::kHuge && m.how.rfind("cudaHostAlloc", 0) == 0 && !warned_) {
      std::fprintf(stderr, "spx: host tier on 4 KB pages: %s\n", m.how.c_str());
      warned_ = true;
    }
    void* h = m.host;
    std::shared_ptr<void> owner = m.owner;
    // The compute stream may still be writing the cache.
    SPX_CUDA_TRY(cudaMemcpyAsync(h, t->data, static_cast<size_t>(t->numel()) * sizeof(bf16),
                                 cudaMemcpyDeviceToHost, compute_));
    SPX_CUDA_TRY(cudaStreamSynchronize(compute_));
    t->data = m.device;
    t->owner = owner;  // the device allocation goes with the old owner
    stats_.moved_bytes += bytes;
    return Status::Ok();
  }

  bool on_host(const Tensor& t) const override {
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, t.data) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return a.type == cudaMemoryTypeHost;
  }

  Status load(const std::vector<TierCopy>& copies, const std::vector<TierRequest>& reqs,
              int kv_heads, int head_dim, int budget, bool prefetch) override {
    if (copies.empty()) return Status::Ok();
    SPX_CUDA_TRY(cudaSetDevice(device_));
    cudaStream_t s = prefetch ? tier_ : compute_;
    StageRing& ring = prefetch ? tier_ring_ : compute_ring_;
    if (prefetch && !pending_) {
      harvest();  // the previous step's figures, before the events are reused
      SPX_CUDA_TRY(cudaEventRecord(start_, tier_));
    }
    host_.resize(reqs.size());
    slots_.resize(reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
      host_[i] = HostKv{static_cast<const bf16*>(reqs[i].host_k->data),
                        static_cast<const bf16*>(reqs[i].host_v->data), reqs[i].host_k->dim(1)};
      slots_[i] = SlotKv{static_cast<bf16*>(reqs[i].slot_k->data),
                         static_cast<bf16*>(reqs[i].slot_v->data)};
    }
    static_assert(sizeof(TierCopy) == sizeof(SlotCopy), "TierCopy mirrors SlotCopy");
    void *d_copies = nullptr, *d_host = nullptr, *d_slots = nullptr, *d_n = nullptr;
    SPX_STATUS_TRY(ring.stage(copies.data(), copies.size() * sizeof(TierCopy), s, &d_copies));
    SPX_STATUS_TRY(ring.stage(host_.data(), host_.size() * sizeof(HostKv), s, &d_host));
    SPX_STATUS_TRY(ring.stage(slots_.data(), slots_.size() * sizeof(SlotKv), s, &d_slots));
    if (prefetch) {
      // Beside the compute stream: a few persistent blocks, not a grid sized
      // to the list (whose short blocks take SMs at every kernel boundary).
      const int32_t n = static_cast<int32_t>(copies.size());
      SPX_STATUS_TRY(ring.stage(&n, sizeof(n), s, &d_n));
      SPX_CUDA_TRY(elastic_gather_list_forward(
          static_cast<const SlotCopy*>(d_copies), static_cast<const int32_t*>(d_n),
          static_cast<const HostKv*>(d_host), static_cast<const SlotKv*>(d_slots), kv_heads,
          head_dim, budget, kPrefetchBlocks, s));
    } else {
      SPX_CUDA_TRY(elastic_gather_forward(static_cast<const SlotCopy*>(d_copies),
                                          static_cast<int>(copies.size()),
                                          static_cast<const HostKv*>(d_host),
                                          static_cast<const SlotKv*>(d_slots), kv_heads, head_dim,
                                          budget, s));
    }
    if (prefetch) {
      SPX_CUDA_TRY(cudaEventRecord(ready_, tier_));
      pending_ = true;
      ++stats_.prefetch_launches;
    }
    ++stats_.gather_launches;
    return Status::Ok();
  }

  Status wait() override {
    if (!pending_) return Status::Ok();
    SPX_CUDA_TRY(cudaEventRecord(reached_, compute_));
    SPX_CUDA_TRY(cudaStreamWaitEvent(compute_, ready_, 0));
    pending_ = false;
    measured_ = true;
    return Status::Ok();
  }

  void harvest() override {
    if (!measured_ || pending_) return;
    // Never blocks: a measurement whose events are not done yet waits for
    // the next call (the forward's end synchronises them anyway).
    if (cudaEventQuery(ready_) != cudaSuccess || cudaEventQuery(reached_) != cudaSuccess) {
      cudaGetLastError();
      return;
    }
    float span = 0, late = 0;
    if (cudaEventElapsedTime(&span, start_, ready_) == cudaSuccess &&
        cudaEventElapsedTime(&late, reached_, ready_) == cudaSuccess) {
      stats_.transfer_ms += span;
      stats_.exposed_ms += std::max(0.0f, late);
      ++stats_.measured_steps;
    }
    cudaGetLastError();
    measured_ = false;
  }

  const TierStats& stats() const override { return stats_; }

  // ---- Device slot maps
  Status open_map(uint64_t id, int budget, int64_t capacity, int kv_heads) override {
    if (budget <= 0 || budget > kDeviceSlotMapMaxBudget || capacity <= 0 || kv_heads <= 0)
      return Status::Error("device slot maps: budget " + std::to_string(budget) + " (at most " +
                           std::to_string(kDeviceSlotMapMaxBudget) + "), capacity " +
                           std::to_string(capacity));
    SPX_CUDA_TRY(cudaSetDevice(device_));
    close_map(id);
    Pool& p = pools_[budget];
    if (p.kv_heads != 0 && p.kv_heads != kv_heads)
      return Status::Error("device slot maps: KV heads changed");
    p.kv_heads = kv_heads;
    int row = static_cast<int>(std::find(p.used.begin(), p.used.end(), 0) - p.used.begin());
    if (row == p.rows || capacity > p.tcap)
      SPX_STATUS_TRY(grow(&p, budget, row == p.rows ? std::max(4, 2 * p.rows) : p.rows,
                          std::max(p.tcap, capacity)));
    p.used[static_cast<size_t>(row)] = 1;
    maps_[id] = MapAt{budget, row};
    SPX_CUDA_TRY(slot_map_reset(p.st, row, 1, kv_heads, budget, compute_));
    return Status::Ok();
  }

  void close_map(uint64_t id) override {
    auto it = maps_.find(id);
    if (it == maps_.end()) return;
    pools_[it->second.budget].used[static_cast<size_t>(it->second.row)] = 0;
    maps_.erase(it);
    lists_.erase(id);
  }

  Status clear_maps() override {
    SPX_CUDA_TRY(cudaSetDevice(device_));
    for (auto& [budget, p] : pools_)
      SPX_CUDA_TRY(slot_map_reset(p.st, 0, p.rows, p.kv_heads, budget, compute_));
    return Status::Ok();
  }

  Status update_maps(const std::vector<MapRow>& rows, int kv_heads, int head_dim) override {
    lists_.clear();
    groups_.clear();
    if (rows.empty()) return Status::Ok();
    if (!head_) return Status::Error("device slot maps: the backend has no device selection");
    SPX_CUDA_TRY(cudaSetDevice(device_));
    // A prefetch nobody waited for (a failed step) still reads the old list.
    SPX_STATUS_TRY(wait());
    // Rows by budget (one launch each), batch order kept inside.
    std::map<int, std::vector<int>> by_budget;
    for (size_t i = 0; i < rows.size(); ++i) {
      auto it = maps_.find(rows[i].id);
      if (it == maps_.end()) return Status::Error("device slot maps: request not open");
      by_budget[it->second.budget].push_back(static_cast<int>(i));
    }
    // The step's device arrays, group after group: copies, their count,
    // fresh loads, slot lists, packed selections (256-byte aligned).
    size_t bytes = 0;
    for (auto& [budget, idx] : by_budget) {
      const size_t n = idx.size(), cells = n * kv_heads * budget;
      bytes += align(cells * sizeof(SlotCopy)) + align(sizeof(int32_t)) +
               align(n * kv_heads * sizeof(SlotCopy)) + 2 * align(cells * sizeof(int32_t));
    }
    SPX_STATUS_TRY(ensure_arena(bytes));
    char* at = static_cast<char*>(arena_);
    auto take = [&](size_t b) {
      char* p = at;
      at += align(b);
      return p;
    };
    size_t max_layers = 0;
    for (const MapRow& r : rows) max_layers = std::max(max_layers, r.layers.size());
    for (auto& [budget, idx] : by_budget) {
      const Pool& pool = pools_[budget];
      const int n = static_cast<int>(idx.size());
      const size_t cells = static_cast<size_t>(n) * kv_heads * budget;
      Group g;
      g.budget = budget;
      g.n = n;
      g.copies = reinterpret_cast<SlotCopy*>(take(cells * sizeof(SlotCopy)));
      g.n_copies = reinterpret_cast<int32_t*>(take(sizeof(int32_t)));
      g.fresh = reinterpret_cast<SlotCopy*>(take(static_cast<size_t>(n) * kv_heads * sizeof(SlotCopy)));
      g.slot_sel = reinterpret_cast<int32_t*>(take(cells * sizeof(int32_t)));
      int32_t* pack = reinterpret_cast<int32_t*>(take(cells * sizeof(int32_t)));
      // The selections where HeadSelect left them when they are one array
      // in row order (the usual case), else packed device to device.
      desc_.assign(3 * static_cast<size_t>(n), 0);
      const int32_t* first = nullptr;
      bool in_place = true;
      std::vector<const int32_t*> src(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        const MapRow& r = rows[static_cast<size_t>(idx[static_cast<size_t>(i)])];
        src[static_cast<size_t>(i)] = head_->device_selection(r.selection, nullptr);
        if (!src[static_cast<size_t>(i)])
          return Status::Error("device slot maps: no device selection for request " +
                               std::to_string(r.id));
        if (i == 0) first = src[0];
        in_place &= src[static_cast<size_t>(i)] == first + static_cast<size_t>(i) * kv_heads * budget;
        desc_[static_cast<size_t>(i)] = maps_[r.id].row;          // request_of
        desc_[static_cast<size_t>(n + i)] = budget;               // counts: T > B
        desc_[static_cast<size_t>(2 * n + i)] = r.length;         // lengths
      }
      const int32_t* sel = first;
      if (!in_place) {
        const size_t row_bytes = static_cast<size_t>(kv_heads) * budget * sizeof(int32_t);
        for (int i = 0; i < n; ++i)
          SPX_CUDA_TRY(cudaMemcpyAsync(pack + static_cast<size_t>(i) * kv_heads * budget,
                                       src[static_cast<size_t>(i)], row_bytes,
                                       cudaMemcpyDeviceToDevice, compute_));
        sel = pack;
      }
      void* d_desc = nullptr;
      SPX_STATUS_TRY(compute_ring_.stage(desc_.data(), desc_.size() * sizeof(int32_t), compute_,
                                         &d_desc));
      const int32_t* d_req = static_cast<const int32_t*>(d_desc);
      SPX_CUDA_TRY(cudaMemsetAsync(g.n_copies, 0, sizeof(int32_t), compute_));
      SPX_CUDA_TRY(slot_map_update_forward(g.copies, g.n_copies, g.fresh, g.slot_sel,
                                           static_cast<SlotMapCounters*>(d_counters_), pool.st,
                                           sel, d_req + n, d_req + 2 * n, d_req, n, kv_heads,
                                           budget, compute_));
      // Per host layer, the gathers' request tables, indexed by state row
      // (rows of requests not in this step: capacity 0, never read).
      g.host.assign(max_layers, std::vector<HostKv>(static_cast<size_t>(pool.rows), HostKv{nullptr, nullptr, 0}));
      g.slots.assign(max_layers, std::vector<SlotKv>(static_cast<size_t>(pool.rows), SlotKv{nullptr, nullptr}));
      for (int i = 0; i < n; ++i) {
        const MapRow& r = rows[static_cast<size_t>(idx[static_cast<size_t>(i)])];
        const size_t row = static_cast<size_t>(maps_[r.id].row);
        for (size_t j = 0; j < r.layers.size(); ++j) {
          const TierRequest& t = r.layers[j];
          g.host[j][row] = HostKv{static_cast<const bf16*>(t.host_k->data),
                                  static_cast<const bf16*>(t.host_v->data), t.host_k->dim(1)};
          g.slots[j][row] = SlotKv{static_cast<bf16*>(t.slot_k->data), static_cast<bf16*>(t.slot_v->data)};
        }
        lists_[r.id] = g.slot_sel + static_cast<size_t>(i) * kv_heads * budget;
      }
      groups_.push_back(std::move(g));
    }
    // The counters travel back with the step, harvested later (never a sync for stats).
    SPX_CUDA_TRY(cudaMemcpyAsync(h_counters_, d_counters_, sizeof(SlotMapCounters),
                                 cudaMemcpyDeviceToHost, compute_));
    SPX_CUDA_TRY(cudaEventRecord(counted_, compute_));
    counted_once_ = true;
    head_dim_ = head_dim;
    kv_heads_ = kv_heads;
    if (max_layers == 0) return Status::Ok();
    // Prefetch: the tier stream starts once the lists exist.
    SPX_CUDA_TRY(cudaEventRecord(mapped_, compute_));
    SPX_CUDA_TRY(cudaStreamWaitEvent(tier_, mapped_, 0));
    if (!pending_) {
      harvest();  // the previous step's figures, before the events are reused
      SPX_CUDA_TRY(cudaEventRecord(start_, tier_));
    }
    for (const Group& g : groups_) {
      for (size_t j = 0; j < max_layers; ++j) {
        void *d_host = nullptr, *d_slots = nullptr;
        SPX_STATUS_TRY(tier_ring_.stage(g.host[j].data(), g.host[j].size() * sizeof(HostKv), tier_, &d_host));
        SPX_STATUS_TRY(tier_ring_.stage(g.slots[j].data(), g.slots[j].size() * sizeof(SlotKv), tier_, &d_slots));
        SPX_CUDA_TRY(elastic_gather_list_forward(g.copies, g.n_copies, static_cast<const HostKv*>(d_host),
                                                 static_cast<const SlotKv*>(d_slots), kv_heads,
                                                 head_dim, g.budget, kPrefetchBlocks, tier_));
        ++stats_.gather_launches;
      }
    }
    SPX_CUDA_TRY(cudaEventRecord(ready_, tier_));
    pending_ = true;
    ++stats_.prefetch_launches;
    return Status::Ok();
  }

  const int32_t* slot_list(uint64_t id) const override {
    auto it = lists_.find(id);
    return it == lists_.end() ? nullptr : it->second;
  }

  Status load_fresh(int j) override {
    SPX_STATUS_TRY(wait());
    SPX_CUDA_TRY(cudaSetDevice(device_));
    for (const Group& g : groups_) {
      if (j < 0 || static_cast<size_t>(j) >= g.host.size()) continue;
      void *d_host = nullptr, *d_slots = nullptr;
      SPX_STATUS_TRY(compute_ring_.stage(g.host[j].data(), g.host[j].size() * sizeof(HostKv), compute_, &d_host));
      SPX_STATUS_TRY(compute_ring_.stage(g.slots[j].data(), g.slots[j].size() * sizeof(SlotKv), compute_, &d_slots));
      // Entries without a fresh load carry token -1 and are skipped.
      SPX_CUDA_TRY(elastic_gather_forward(g.fresh, g.n * kv_heads_, static_cast<const HostKv*>(d_host),
                                          static_cast<const SlotKv*>(d_slots), kv_heads_, head_dim_,
                                          g.budget, compute_));
      ++stats_.gather_launches;
    }
    return Status::Ok();
  }

  bool map_counters(MapCounters* out, bool wait) override {
    if (!counted_once_) return false;
    const cudaError_t e = wait ? cudaEventSynchronize(counted_) : cudaEventQuery(counted_);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    const auto* c = static_cast<const SlotMapCounters*>(h_counters_);
    *out = MapCounters{c->loads, c->rows, c->slots, c->bad_rows};
    return true;
  }

  Status read_device(const void* device, size_t bytes, void* host) override {
    SPX_CUDA_TRY(cudaSetDevice(device_));
    SPX_CUDA_TRY(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, compute_));
    SPX_CUDA_TRY(cudaStreamSynchronize(compute_));
    return Status::Ok();
  }

 private:
  static size_t align(size_t n) { return (n + 255) / 256 * 256; }

  // One slot-map state per budget: rows reused by joining requests.
  struct Pool {
    int kv_heads = 0, rows = 0;
    int64_t tcap = 0;  // token positions a row holds
    void* mem = nullptr;
    SlotMapState st{};
    std::vector<char> used;  // [rows]
  };
  struct MapAt {
    int budget, row;
  };
  // One budget's launch this step.
  struct Group {
    int budget = 0, n = 0;
    SlotCopy* copies = nullptr;   // [n * kv_heads * budget], device
    int32_t* n_copies = nullptr;  // [1], device
    SlotCopy* fresh = nullptr;    // [n * kv_heads], device
    int32_t* slot_sel = nullptr;  // [n, kv_heads, budget], device
    std::vector<std::vector<HostKv>> host;  // [host layers][pool rows]
    std::vector<std::vector<SlotKv>> slots;
  };

  // New state of `rows` rows over `tcap` positions, the old rows copied.
  Status grow(Pool* p, int budget, int rows, int64_t tcap) {
    const size_t bytes = slot_map_state_bytes(rows, p->kv_heads, budget, tcap);
    void* mem = nullptr;
    const cudaError_t e = cudaMalloc(&mem, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return Status::Error("device slot maps: out of GPU memory for " + std::to_string(bytes) +
                           " bytes (" + cudaGetErrorString(e) + ")");
    }
    const size_t R = static_cast<size_t>(rows) * p->kv_heads;
    auto* base = static_cast<int32_t*>(mem);
    SlotMapState st{base, base + R * budget, base + 2 * R * budget,
                    base + 2 * R * budget + R * static_cast<size_t>(tcap), tcap};
    SPX_CUDA_TRY(cudaMemsetAsync(mem, 0xff, bytes, compute_));
    if (p->mem) {
      const size_t old = static_cast<size_t>(p->rows) * p->kv_heads;
      SPX_CUDA_TRY(cudaMemcpyAsync(st.slot_token, p->st.slot_token, old * budget * 4,
                                   cudaMemcpyDeviceToDevice, compute_));
      SPX_CUDA_TRY(cudaMemcpyAsync(st.slot_used, p->st.slot_used, old * budget * 4,
                                   cudaMemcpyDeviceToDevice, compute_));
      SPX_CUDA_TRY(cudaMemcpyAsync(st.stamp, p->st.stamp, old * 4, cudaMemcpyDeviceToDevice, compute_));
      SPX_CUDA_TRY(cudaMemcpy2DAsync(st.token_slot, static_cast<size_t>(tcap) * 4, p->st.token_slot,
                                     static_cast<size_t>(p->tcap) * 4,
                                     static_cast<size_t>(p->tcap) * 4, old,
                                     cudaMemcpyDeviceToDevice, compute_));
      SPX_CUDA_TRY(cudaStreamSynchronize(compute_));
      cudaFree(p->mem);
    }
    p->mem = mem;
    p->st = st;
    p->rows = rows;
    p->tcap = tcap;
    p->used.resize(static_cast<size_t>(rows), 0);
    return Status::Ok();
  }

  Status ensure_arena(size_t bytes) {
    if (bytes <= arena_bytes_) return Status::Ok();
    // Both streams may still read the old arena (attention, gathers).
    SPX_CUDA_TRY(cudaStreamSynchronize(compute_));
    SPX_CUDA_TRY(cudaStreamSynchronize(tier_));
    cudaFree(arena_);
    arena_ = nullptr;
    arena_bytes_ = 0;
    const size_t want = std::max(bytes, size_t(1) << 20);
    const cudaError_t e = cudaMalloc(&arena_, want);
    if (e != cudaSuccess) {
      cudaGetLastError();
      arena_ = nullptr;
      return Status::Error("device slot maps: out of GPU memory for " + std::to_string(want) +
                           " bytes of step lists (" + cudaGetErrorString(e) + ")");
    }
    arena_bytes_ = want;
    return Status::Ok();
  }

  cudaStream_t compute_ = nullptr;
  cudaStream_t tier_ = nullptr;
  cudaEvent_t ready_ = nullptr;    // last prefetch of the step done
  cudaEvent_t start_ = nullptr;    // first prefetch of the step queued
  cudaEvent_t reached_ = nullptr;  // the compute stream needs the rows
  bool pending_ = false;           // prefetches queued, not yet waited for
  bool measured_ = false;          // a waited-for step not yet harvested
  bool warned_ = false;            // the huge-page fallback was logged
  int device_ = 0;
  StageRing tier_ring_, compute_ring_;
  std::vector<HostKv> host_;
  std::vector<SlotKv> slots_;
  TierStats stats_;
  // Device slot maps.
  DeviceHeadSelect* head_ = nullptr;  // the backend's: its selections are the maps' input
  std::map<int, Pool> pools_;         // budget -> state
  std::map<uint64_t, MapAt> maps_;    // request -> its row
  std::vector<Group> groups_;         // the last update's launches
  std::map<uint64_t, const int32_t*> lists_;  // request -> its slot list, last update
  std::vector<int32_t> desc_;         // request_of, counts, lengths of one launch
  void* arena_ = nullptr;
  size_t arena_bytes_ = 0;
  void* d_counters_ = nullptr;        // SlotMapCounters, running totals
  void* h_counters_ = nullptr;        // pinned copy, landed when counted_ completes
  cudaEvent_t mapped_ = nullptr;      // the step's lists are written
  cudaEvent_t counted_ = nullptr;     // the counters' copy landed
  bool counted_once_ = false;
  int kv_heads_ = 0, head_dim_ = 0;
};

}  // namespace

std::unique_ptr<CudaTier> CudaTier::make(Backend* backend, Status* status) {
  *status = Status::Ok();
  if (backend_stream(backend) == nullptr) return nullptr;
  auto t = std::make_unique<Tier>();
  *status = t->init(backend);
  if (!status->ok) return nullptr;
  return t;
}

}  // namespace spx::cuda
