// Elastic-gather microbenchmark (issue 6, exposed transfer): GB/s of a GPU
// gather of scattered rows from mapped pinned host memory into device
// memory, the access elastic_gather_list_forward makes, for
//   - how the host memory is backed: cudaHostAlloc (4 KB pages), mmap +
//     MADV_HUGEPAGE + cudaHostRegister (transparent 2 MB pages), mmap with
//     4 KB pages + cudaHostRegister, mmap(MAP_HUGETLB) + cudaHostRegister,
//     cuMemCreate at a host location ("vmm");
//   - the pattern: "heads C" is the host tier's (per request and KV head, 20%
//     of B = 2048 rows of 256 B K and 256 B V out of C tokens, ascending),
//     "kv C" / "token C" the same selection in other host layouts (see
//     heads_rows), "uniform U" draws rows of U bytes uniformly;
//   - the spread (GB of host memory the rows are drawn from);
//   - rows in flight: blocks x threads x unroll x 16-byte vectors per item.
// Each run's rows are checked on the GPU (every 8-byte word holds its own
// host offset). One line per run; --json writes them as JSON lines.
//
//   gather_bench [--pool-gb 8] [--pages huge,cudahostalloc,small,hugetlb,vmm]
//                [--spreads 2,8,0] [--sweep 1] [--json out.jsonl]
// (spread 0: the whole pool)
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/check.h"
#include "cuda/host_memory.h"

namespace spx::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Every 8-byte word of the pool holds its own offset.
__global__ void stamp_kernel(uint64_t* pool, size_t words) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < words;
       i += size_t(gridDim.x) * blockDim.x)
    pool[i] = i * 8;
}

// rows x unit bytes from pool + offs[row] into out (row-major), in items of
// VEC 16-byte vectors; a persistent grid, UNROLL items loaded before stored.
template <int UNROLL, int VEC>
__global__ void gather_kernel(const char* pool, const int64_t* __restrict__ offs, int64_t rows,
                              int item_shift,  // log2(items per row)
                              char* __restrict__ out) {
  const int64_t items = rows << item_shift;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t mask = (int64_t(1) << item_shift) - 1;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; base < items;
       base += step * UNROLL) {
    uint4 v[UNROLL][VEC];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t i = base + u * step;
      if (i < items) {
        const uint4* src = reinterpret_cast<const uint4*>(pool + offs[i >> item_shift] +
                                                          (i & mask) * 16 * VEC);
#pragma unroll
        for (int w = 0; w < VEC; ++w) v[u][w] = src[w];
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t i = base + u * step;
      if (i < items) {
        uint4* dst = reinterpret_cast<uint4*>(out + i * 16 * VEC);
#pragma unroll
        for (int w = 0; w < VEC; ++w) dst[w] = v[u][w];
      }
    }
  }
}

// Counts words of out that do not hold their source offset.
__global__ void check_kernel(const uint64_t* out, const int64_t* offs, int64_t rows, int unit,
                             unsigned long long* bad) {
  const int64_t words = rows * (unit / 8);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < words;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / (unit / 8), w = i % (unit / 8);
    if (out[i] != uint64_t(offs[row] + w * 8)) atomicAdd(bad, 1ull);
  }
}

struct Config {
  int blocks = 16, threads = 512, unroll = 8, vec = 1;
};

using Launch = void (*)(const char*, const int64_t*, int64_t, int, char*, int, int, cudaStream_t);
template <int U, int V>
void launch(const char* pool, const int64_t* offs, int64_t rows, int shift, char* out, int blocks,
            int threads, cudaStream_t s) {
  gather_kernel<U, V><<<blocks, threads, 0, s>>>(pool, offs, rows, shift, out);
}
Launch pick(int unroll, int vec) {
  if (vec == 2) return unroll == 4 ? launch<4, 2> : unroll == 16 ? launch<16, 2> : launch<8, 2>;
  return unroll == 4 ? launch<4, 1> : unroll == 16 ? launch<16, 1> : launch<8, 1>;
}

// The host tier's pattern: per request and KV head, `per` of `capacity`
// tokens (ascending), 8 KV heads, 256-byte K and V rows (d = 128), the
// requests of a spread in order. Layouts of a host layer:
//   split  [R, KV, C, D] K then [R, KV, C, D] V (today's): a 256 B K row and a
//          256 B V row per token, far apart;
//   kv     [R, KV, C, 2, D]: K and V of a token side by side, one 512 B row;
//   token  [R, C, KV, 2, D]: a token's heads side by side (4 KB), one 512 B
//          row per (head, token), the request's rows sorted by address;
//   token-headorder: the same rows in (head, token) order.
enum class Layout { kSplit, kKv, kToken, kTokenHeadOrder };
constexpr int kKvHeads = 8;

std::vector<int64_t> heads_rows(size_t spread, int capacity, int per, Layout layout,
                                std::mt19937_64& rng) {
  const int64_t row = 256, token_bytes = 2 * row * kKvHeads;
  const int64_t request = int64_t(capacity) * token_bytes;
  const int64_t requests = int64_t(spread) / request;
  std::vector<int64_t> rows;
  std::vector<int> tok(capacity);
  for (int i = 0; i < capacity; ++i) tok[i] = i;
  for (int64_t r = 0; r < requests; ++r) {
    const int64_t base = r * request;
    const size_t first = rows.size();
    for (int h = 0; h < kKvHeads; ++h) {
      for (int i = 0; i < per; ++i) std::swap(tok[i], tok[i + rng() % (capacity - i)]);
      std::vector<int> pick(tok.begin(), tok.begin() + per);
      std::sort(pick.begin(), pick.end());
      for (int t : pick) {
        switch (layout) {
          case Layout::kSplit: {
            const int64_t k = base / 2 + (int64_t(h) * capacity + t) * row;  // K half of the layer
            rows.push_back(k);
            rows.push_back(int64_t(spread / 2) + k);
            break;
          }
          case Layout::kKv:
            rows.push_back(base + (int64_t(h) * capacity + t) * 2 * row);
            break;
          case Layout::kToken:
          case Layout::kTokenHeadOrder:
            rows.push_back(base + int64_t(t) * token_bytes + h * 2 * row);
            break;
        }
      }
    }
    if (layout == Layout::kToken) std::sort(rows.begin() + first, rows.end());
  }
  return rows;
}

std::vector<int64_t> uniform_rows(size_t spread, int unit, size_t bytes, std::mt19937_64& rng) {
  const int64_t slots = int64_t(spread / unit);
  std::vector<int64_t> rows(bytes / unit);
  for (auto& r : rows) r = int64_t(rng() % slots) * unit;
  return rows;
}

// Host memory from the driver's virtual memory API (cuMemCreate at
// CU_MEM_LOCATION_TYPE_HOST, mapped at the recommended granularity), which
// may map it for the GPU with pages larger than cudaHostRegister's. The
// driver calls go through cudaGetDriverEntryPointByVersion (no -lcuda).
template <typename F>
Status driver_fn(const char* name, F* f) {
  cudaDriverEntryPointQueryResult q{};
  void* p = nullptr;
  SPX_CUDA_TRY(cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &q));
  if (!p || q != cudaDriverEntryPointSuccess) return Status::Error(std::string("no driver ") + name);
  *f = reinterpret_cast<F>(p);
  return Status::Ok();
}

Status alloc_vmm_host(size_t bytes, cuda::MappedHost* out) {
  using Granularity = CUresult (*)(size_t*, const CUmemAllocationProp*, CUmemAllocationGranularity_flags);
  using Create = CUresult (*)(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*,
                              unsigned long long);
  using Reserve = CUresult (*)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long);
  using Map = CUresult (*)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
  using Access = CUresult (*)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t);
  using Unmap = CUresult (*)(CUdeviceptr, size_t);
  using Release = CUresult (*)(CUmemGenericAllocationHandle);
  using Free = CUresult (*)(CUdeviceptr, size_t);
  Granularity granularity;
  Create create;
  Reserve reserve;
  Map map;
  Access access;
  Unmap unmap;
  Release release;
  Free vfree;
  SPX_STATUS_TRY(driver_fn("cuMemGetAllocationGranularity", &granularity));
  SPX_STATUS_TRY(driver_fn("cuMemCreate", &create));
  SPX_STATUS_TRY(driver_fn("cuMemAddressReserve", &reserve));
  SPX_STATUS_TRY(driver_fn("cuMemMap", &map));
  SPX_STATUS_TRY(driver_fn("cuMemSetAccess", &access));
  SPX_STATUS_TRY(driver_fn("cuMemUnmap", &unmap));
  SPX_STATUS_TRY(driver_fn("cuMemRelease", &release));
  SPX_STATUS_TRY(driver_fn("cuMemAddressFree", &vfree));
  SPX_CUDA_TRY(cudaFree(nullptr));  // a current context
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_HOST;
  prop.location.id = 0;
  size_t g = 0;
  if (granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) != CUDA_SUCCESS || g == 0)
    return Status::Error("cuMemGetAllocationGranularity(host) failed");
  const size_t n = (bytes + g - 1) / g * g;
  CUmemGenericAllocationHandle h{};
  CUresult r = create(&h, n, &prop, 0);
  if (r != CUDA_SUCCESS) return Status::Error("cuMemCreate(host) failed, CUresult " + std::to_string(r));
  CUdeviceptr va = 0;
  r = reserve(&va, n, g, 0, 0);
  if (r == CUDA_SUCCESS) r = map(va, n, 0, h, 0);
  CUmemAccessDesc a{};
  a.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  a.location.id = 0;
  a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  if (r == CUDA_SUCCESS) r = access(va, n, &a, 1);
  if (r != CUDA_SUCCESS) {
    release(h);
    return Status::Error("mapping the host allocation failed, CUresult " + std::to_string(r));
  }
  // CPU access too, where the driver offers it.
  CUmemAccessDesc ha = a;
  ha.location.type = CU_MEM_LOCATION_TYPE_HOST;
  const bool cpu = access(va, n, &ha, 1) == CUDA_SUCCESS;
  out->host = cpu ? reinterpret_cast<void*>(va) : nullptr;
  out->device = reinterpret_cast<void*>(va);
  out->bytes = n;
  out->huge_bytes = 0;
  out->how = "cuMemCreate(host), granularity " + std::to_string(g) + (cpu ? ", CPU access" : ", no CPU access");
  out->owner = std::shared_ptr<void>(out->device, [=](void*) {
    unmap(va, n);
    vfree(va, n);
    release(h);
  });
  return Status::Ok();
}

struct Bench {
  cuda::MappedHost pool;
  std::string pages;
  cudaStream_t s = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  int64_t* d_offs = nullptr;
  char* d_out = nullptr;
  unsigned long long* d_bad = nullptr;
  size_t cap_rows = 0, cap_out = 0;
  std::ofstream json;
};

Status run_one(Bench& b, const std::string& pattern, size_t spread, int unit,
               const std::vector<int64_t>& rows, const Config& c) {
  if (rows.empty()) return Status::Ok();
  const size_t bytes = rows.size() * size_t(unit);
  if (rows.size() > b.cap_rows || bytes > b.cap_out)
    return Status::Error("gather larger than the benchmark's buffers");
  SPX_CUDA_TRY(cudaMemcpy(b.d_offs, rows.data(), rows.size() * 8, cudaMemcpyHostToDevice));
  int shift = 0;
  while ((16 * c.vec) << shift < unit) ++shift;
  if ((16 * c.vec) << shift != unit) return Status::Error("unit must be 16 * vec * 2^k");
  const Launch f = pick(c.unroll, c.vec);
  const char* pool = static_cast<const char*>(b.pool.device);
  f(pool, b.d_offs, int64_t(rows.size()), shift, b.d_out, c.blocks, c.threads, b.s);  // warm
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
    // A launch the configuration cannot make (registers): reported, skipped.
    std::printf("%-13s %-12s %dx%d u%d v%d: launch failed (%s)\n", b.pages.c_str(), pattern.c_str(),
                c.blocks, c.threads, c.unroll, c.vec, cudaGetErrorString(e));
    return Status::Ok();
  }
  SPX_CUDA_TRY(cudaMemsetAsync(b.d_bad, 0, 8, b.s));
  check_kernel<<<264, 512, 0, b.s>>>(reinterpret_cast<const uint64_t*>(b.d_out), b.d_offs,
                                     int64_t(rows.size()), unit, b.d_bad);
  SPX_CUDA_TRY(cudaGetLastError());
  unsigned long long bad = 0;
  SPX_CUDA_TRY(cudaMemcpyAsync(&bad, b.d_bad, 8, cudaMemcpyDeviceToHost, b.s));
  SPX_CUDA_TRY(cudaStreamSynchronize(b.s));
  constexpr int kReps = 3;
  float best = 1e30f, sum = 0;
  for (int r = 0; r < kReps; ++r) {
    SPX_CUDA_TRY(cudaEventRecord(b.e0, b.s));
    f(pool, b.d_offs, int64_t(rows.size()), shift, b.d_out, c.blocks, c.threads, b.s);
    SPX_CUDA_TRY(cudaEventRecord(b.e1, b.s));
    SPX_CUDA_TRY(cudaEventSynchronize(b.e1));
    float ms = 0;
    SPX_CUDA_TRY(cudaEventElapsedTime(&ms, b.e0, b.e1));
    best = std::min(best, ms);
    sum += ms;
  }
  const double gbps = bytes / (best / 1e3) / 1e9;
  std::printf("%-13s %-12s spread %5.1f GB unit %4d B  %4dx%-4d u%-2d v%d  %8.1f MB %8.3f ms "
              "%6.1f GB/s  mean %6.1f  bad %llu\n",
              b.pages.c_str(), pattern.c_str(), spread / 1e9, unit, c.blocks, c.threads, c.unroll,
              c.vec, bytes / 1e6, best, gbps, bytes / (sum / kReps / 1e3) / 1e9, bad);
  std::fflush(stdout);
  if (b.json) {
    b.json << "{\"pages\": \"" << b.pages << "\", \"pattern\": \"" << pattern
           << "\", \"spread_gb\": " << spread / 1e9 << ", \"unit\": " << unit
           << ", \"blocks\": " << c.blocks << ", \"threads\": " << c.threads
           << ", \"unroll\": " << c.unroll << ", \"vec\": " << c.vec << ", \"mb\": " << bytes / 1e6
           << ", \"ms\": " << best << ", \"gbps\": " << gbps << ", \"bad\": " << bad << "}\n";
    b.json.flush();
  }
  if (bad) return Status::Error("gathered rows differ from their source");
  return Status::Ok();
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) v.push_back(x);
  return v;
}

Status run_pages(Bench& b, cuda::HostPages pages, bool vmm, size_t pool_bytes,
                 const std::vector<double>& spreads_gb, bool sweep) {
  b.pages = cuda::host_pages_name(pages);
  auto t0 = Clock::now();
  Status st = vmm ? alloc_vmm_host(pool_bytes, &b.pool)
                  : cuda::alloc_mapped_host(pool_bytes, pages, &b.pool);
  if (vmm) b.pages = "vmm";
  const double alloc_s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!st.ok) {
    std::printf("%-13s allocation failed: %s\n", b.pages.c_str(), st.message.c_str());
    return Status::Ok();  // reported; the other kinds still run
  }
  std::printf("%-13s %.1f GB in %.2f s (%s; %.1f GB on transparent huge pages)\n", b.pages.c_str(),
              b.pool.bytes / 1e9, alloc_s, b.pool.how.c_str(),
              b.pool.huge_bytes == size_t(-1) ? -1.0 : b.pool.huge_bytes / 1e9);
  stamp_kernel<<<1024, 512, 0, b.s>>>(static_cast<uint64_t*>(b.pool.device), b.pool.bytes / 8);
  SPX_CUDA_TRY(cudaGetLastError());
  SPX_CUDA_TRY(cudaStreamSynchronize(b.s));
  // The copy engine from the same memory, for scale.
  const size_t n = std::min<size_t>(b.pool.bytes, size_t(1) << 30);
  SPX_CUDA_TRY(cudaEventRecord(b.e0, b.s));
  SPX_CUDA_TRY(cudaMemcpyAsync(b.d_out, b.pool.device, n, cudaMemcpyDefault, b.s));
  SPX_CUDA_TRY(cudaEventRecord(b.e1, b.s));
  SPX_CUDA_TRY(cudaEventSynchronize(b.e1));
  float ms = 0;
  SPX_CUDA_TRY(cudaEventElapsedTime(&ms, b.e0, b.e1));
  std::printf("%-13s cudaMemcpy H2D 1 GB: %.1f GB/s\n", b.pages.c_str(), n / (ms / 1e3) / 1e9);
  if (b.json)
    b.json << "{\"pages\": \"" << b.pages << "\", \"alloc_s\": " << alloc_s << ", \"pool_gb\": "
           << b.pool.bytes / 1e9 << ", \"huge_gb\": " << double(int64_t(b.pool.huge_bytes)) / 1e9
           << ", \"memcpy_h2d_gbps\": " << n / (ms / 1e3) / 1e9 << ", \"how\": \"" << b.pool.how
           << "\"}\n";

  std::mt19937_64 rng(7);
  const Config base;
  std::vector<size_t> spreads;
  for (double g : spreads_gb) {
    const size_t s = g <= 0 ? b.pool.bytes : std::min(b.pool.bytes, size_t(g * 1e9));
    if (std::find(spreads.begin(), spreads.end(), s) == spreads.end()) spreads.push_back(s);
  }
  for (size_t spread : spreads) {
    for (int cap : {16384, 32768}) {
      SPX_STATUS_TRY(run_one(b, "heads" + std::to_string(cap / 1024) + "k", spread, 256,
                             heads_rows(spread, cap, 410, Layout::kSplit, rng), base));
    }
  }
  const size_t big = spreads.back();
  // Density: the same 410 rows per (request, head) over more or fewer tokens.
  for (int cap : {4096, 8192, 65536})
    SPX_STATUS_TRY(run_one(b, "heads" + std::to_string(cap / 1024) + "k", big, 256,
                           heads_rows(big, cap, 410, Layout::kSplit, rng), base));
  SPX_STATUS_TRY(run_one(b, "heads32k-820", big, 256, heads_rows(big, 32768, 820, Layout::kSplit, rng), base));
  for (int cap : {16384, 32768}) {
    const std::string c = std::to_string(cap / 1024) + "k";
    SPX_STATUS_TRY(run_one(b, "kv" + c, big, 512, heads_rows(big, cap, 410, Layout::kKv, rng), base));
    SPX_STATUS_TRY(run_one(b, "token" + c, big, 512, heads_rows(big, cap, 410, Layout::kToken, rng), base));
    SPX_STATUS_TRY(run_one(b, "token" + c + "-ho", big, 512,
                           heads_rows(big, cap, 410, Layout::kTokenHeadOrder, rng), base));
  }
  for (int unit : {256, 512, 1024, 4096})
    SPX_STATUS_TRY(run_one(b, "uniform", big, unit, uniform_rows(big, unit, size_t(128) << 20, rng), base));
  if (sweep) {
    const auto rows = heads_rows(big, 32768, 410, Layout::kSplit, rng);
    for (int blocks : {4, 8, 16, 32, 132})
      for (int unroll : {4, 8})
        SPX_STATUS_TRY(run_one(b, "heads32k", big, 256, rows, Config{blocks, 512, unroll, 1}));
    for (Config c : {Config{16, 256, 16, 1}, Config{8, 1024, 8, 1}, Config{16, 1024, 4, 1},
                     Config{16, 512, 8, 2}, Config{8, 512, 8, 2}, Config{16, 256, 8, 2}})
      SPX_STATUS_TRY(run_one(b, "heads32k", big, 256, rows, c));
  }
  b.pool = cuda::MappedHost{};  // frees it before the next kind
  return Status::Ok();
}

int run(int argc, char** argv) {
  double pool_gb = 8;
  std::string pages = "huge,cudahostalloc", spreads_arg = "2,8,0", json;
  bool sweep = true;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--pool-gb") pool_gb = std::atof(v.c_str());
    else if (k == "--pages") pages = v;
    else if (k == "--spreads") spreads_arg = v;
    else if (k == "--sweep") sweep = v != "0";
    else if (k == "--json") json = v;
    else {
      std::fprintf(stderr, "gather_bench: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if ((argc - 1) % 2 != 0 || pool_gb <= 0) {
    std::fprintf(stderr, "gather_bench: options take one value each; --pool-gb > 0\n");
    return 2;
  }
  std::vector<double> spreads;
  for (const auto& s : split(spreads_arg)) spreads.push_back(std::atof(s.c_str()));
  if (spreads.empty()) spreads.push_back(0);
  Bench b;
  if (!json.empty()) b.json.open(json);
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "gather_bench: %s\n", st.message.c_str());
    return 1;
  };
  auto setup = [&]() -> Status {
    SPX_CUDA_TRY(cudaStreamCreateWithFlags(&b.s, cudaStreamNonBlocking));
    SPX_CUDA_TRY(cudaEventCreate(&b.e0));
    SPX_CUDA_TRY(cudaEventCreate(&b.e1));
    b.cap_rows = size_t(8) << 20;  // 8M rows (a 28 GB heads pattern has 3.7M)
    b.cap_out = size_t(2) << 30;
    SPX_CUDA_TRY(cudaMalloc(&b.d_offs, b.cap_rows * 8));
    SPX_CUDA_TRY(cudaMalloc(&b.d_out, b.cap_out));
    SPX_CUDA_TRY(cudaMalloc(&b.d_bad, 8));
    return Status::Ok();
  };
  Status st = setup();
  if (!st.ok) return fail(st);
  for (const auto& p : split(pages)) {
    cuda::HostPages kind = cuda::HostPages::kCudaHostAlloc;
    const bool vmm = p == "vmm";
    if (vmm) {
    } else if (p == "huge") kind = cuda::HostPages::kHuge;
    else if (p == "hugetlb") kind = cuda::HostPages::kHugeTlb;
    else if (p == "small") kind = cuda::HostPages::kSmall;
    else if (p == "cudahostalloc") kind = cuda::HostPages::kCudaHostAlloc;
    else return fail(Status::Error("unknown --pages kind " + p));
    st = run_pages(b, kind, vmm, size_t(pool_gb * 1e9), spreads, sweep);
    if (!st.ok) return fail(st);
  }
  return 0;
}

}  // namespace
}  // namespace spx::bench

int main(int argc, char** argv) { return spx::bench::run(argc, argv); }
