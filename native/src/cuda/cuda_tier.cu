#include "cuda/cuda_tier.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "cuda/check.h"
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
    for (cudaEvent_t e : {ready_, start_, reached_})
      if (e) cudaEventDestroy(e);
    if (tier_) cudaStreamDestroy(tier_);
  }

  Status init(Backend* backend) {
    compute_ = backend_stream(backend);
    device_ = backend_device(backend);
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

 private:
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
