// SpeContext's host tier on the CUDA backend (issue 6): a host-resident
// layer's full K/V lives in mapped pinned host memory, and elastic loading
// copies only the newly selected rows into the device slot buffers, reading
// the host over PCIe through the mapped pointer (no CPU gather): prefetches
// with elastic_gather_list_forward on a few persistent blocks of a
// low-priority stream, the step's own token with elastic_gather_forward.
//
// A plain C++ header: retrieval/sparse_decoder.cc (compiled without nvcc)
// drives it when the backend is CUDA; defined in cuda_tier.cu.
//
// Streams: older tokens' rows are prefetched on the tier's own stream as soon
// as the selection is known, and the compute stream waits for them (an
// event) only right before the first host layer's attention, so the copies
// overlap the device-resident layers. The step's own token is written by the
// forward (kv_write through the mapped pointer) and copied to its slot on the
// compute stream, in order.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"

namespace spx::cuda {

// Same layout as SlotCopy (sparse_ops.h).
struct TierCopy {
  int32_t req;    // index into the request list of the call
  int32_t head;   // KV head
  int32_t token;  // position in the host cache
  int32_t slot;   // destination slot < budget
};
struct TierRequest {
  const Tensor* host_k;  // [kv_heads, capacity, hd] in mapped pinned memory
  const Tensor* host_v;
  Tensor* slot_k;        // [kv_heads, budget, hd] on the device
  Tensor* slot_v;
};

// The largest budget the device slot maps take (slot_map_update_forward's
// limit, sparse_ops.h); larger budgets keep their maps on the host.
constexpr int kDeviceSlotMapMaxBudget = 2048;

// One request's step for the device slot maps (CudaTier::update_maps).
struct MapRow {
  uint64_t id = 0;                   // a map opened with open_map
  const int32_t* selection = nullptr;  // the host selection of its HeadSelect job this step
  int length = 0;                    // tokens in its context, this step's own included
  std::vector<TierRequest> layers;   // its host-tier layers' tensors, in layer order; empty: none
};
// Running totals of the device slot maps (kv/slot_map.h's ElasticStats terms).
struct MapCounters {
  uint64_t loads = 0;     // tokens loaded (the step's own included)
  uint64_t rows = 0;      // (request, KV head) updates
  uint64_t slots = 0;     // sum of the budget over updates
  uint64_t bad_rows = 0;  // rows refused (never, from topk_select's selections)
};

struct TierStats {
  uint64_t moved_bytes = 0;     // device caches moved to pinned memory
  uint64_t gather_launches = 0;
  uint64_t prefetch_launches = 0;
  // Prefetch timing (GPU events), over the steps harvested so far:
  double transfer_ms = 0;       // first prefetch queued -> last one done
  double exposed_ms = 0;        // of that, time the compute stream waited for it
  uint64_t measured_steps = 0;
};

class CudaTier {
 public:
  // nullptr (and status ok) when `backend` is not the CUDA backend.
  static std::unique_ptr<CudaTier> make(Backend* backend, Status* status);
  virtual ~CudaTier() = default;

  // Moves a device cache tensor into mapped pinned host memory in place
  // (same shape; t->data becomes the device-visible host pointer, the
  // device allocation is released). Kernels keep working on it over PCIe.
  virtual Status to_host(Tensor* t) = 0;
  virtual bool on_host(const Tensor& t) const = 0;

  // Copies the listed rows (K and V) host -> slots. prefetch: on the tier
  // stream (wait() orders the compute stream after it); else on the compute
  // stream. All requests share kv_heads / head_dim / budget.
  virtual Status load(const std::vector<TierCopy>& copies, const std::vector<TierRequest>& reqs,
                      int kv_heads, int head_dim, int budget, bool prefetch) = 0;
  // The compute stream waits for every prefetch issued so far.
  virtual Status wait() = 0;
  // Adds a finished step's prefetch timing to stats() (never blocks).
  virtual void harvest() = 0;
  virtual const TierStats& stats() const = 0;

  // ---- Device slot maps (session 4): kv/slot_map.h's SlotTable on the GPU.
  // A request's maps are a row of slot_map_update_forward's state (one state
  // per budget, rows reused as requests come and go). Each step the diff runs
  // on the compute stream right after the retrieval head's device selection
  // (the backend's HeadSelect, same stream), so the selection, the load list
  // and the selection -> slot list never visit the host; the older tokens'
  // loads are then prefetched for every host layer on the tier stream, with
  // the list's length read on the device.
  // Empty slots for `id` (a request joining, or restarting its maps).
  virtual Status open_map(uint64_t id, int budget, int64_t capacity, int kv_heads) = 0;
  virtual void close_map(uint64_t id) = 0;
  // Every open map's slots empty (a layer moved to the host tier).
  virtual Status clear_maps() = 0;
  // One step for the step's sparse requests (batch order). Rows of one
  // budget are one launch; their slot lists are one [rows, kv_heads, budget]
  // array in row order.
  virtual Status update_maps(const std::vector<MapRow>& rows, int kv_heads, int head_dim) = 0;
  // id's selection -> slot list of the last update_maps, device
  // [kv_heads, budget]; nullptr when it was not in it.
  virtual const int32_t* slot_list(uint64_t id) const = 0;
  // The step's own token into its slot at host layer j (index into
  // MapRow::layers), on the compute stream, after every prefetch (wait()).
  virtual Status load_fresh(int j) = 0;
  // The counters as of the last update whose copy to the host has landed
  // (false: none yet); wait: block until the last one lands.
  virtual bool map_counters(MapCounters* out, bool wait) = 0;
  // Blocking copy of device bytes (tests read slot lists with it).
  virtual Status read_device(const void* device, size_t bytes, void* host) = 0;

  // ---- The selection on the device (session 4, T5): the backend's
  // HeadSelect either fills the jobs' host selection and mass (one
  // synchronize, the default) or leaves them on the device only, where the
  // device-resident layers' attention and the slot maps read them.
  virtual void set_selection_download(bool on) = 0;
  // The device copy [kv_heads, budget] of the last select()'s job whose host
  // selection pointer was `key` (valid on the compute stream until the next
  // select()); nullptr if none.
  virtual const int32_t* device_selection(const int32_t* key) const = 0;
};

}  // namespace spx::cuda
