#include "cuda/host_memory.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "cuda/check.h"

namespace spx::cuda {

namespace {

constexpr size_t kHugePage = size_t(2) << 20;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Faults every page in with several threads: the kernel zeroes each page on
// first touch, and doing that on one thread (inside cudaHostRegister) is
// what makes pinning tens of GB slow.
void touch(char* p, size_t bytes) {
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t n = std::min<size_t>({hw, 16, std::max<size_t>(1, bytes / kHugePage)});
  const size_t per = round_up((bytes + n - 1) / n, 4096);
  std::vector<std::thread> ts;
  for (size_t t = 0; t < n; ++t) {
    ts.emplace_back([=] {
      const size_t a = t * per, b = std::min(bytes, a + per);
      for (size_t i = a; i < b; i += 4096) reinterpret_cast<volatile char*>(p)[i] = 0;
    });
  }
  for (auto& th : ts) th.join();
}

// Bytes of [p, p + bytes) that /proc/self/smaps reports as AnonHugePages
// (whole overlapping mappings are counted; -1 if smaps cannot be read).
size_t anon_huge_bytes(const void* p, size_t bytes) {
  std::ifstream f("/proc/self/smaps");
  if (!f) return size_t(-1);
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p), hi = lo + bytes;
  bool inside = false;
  size_t kb = 0;
  std::string line;
  while (std::getline(f, line)) {
    unsigned long long a = 0, b = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx ", &a, &b) == 2 && line.find(':') > line.find('-')) {
      inside = a < hi && b > lo;
      continue;
    }
    if (inside && line.rfind("AnonHugePages:", 0) == 0) {
      kb += std::strtoull(line.c_str() + 14, nullptr, 10);
    }
  }
  return kb * 1024;
}

Status register_mapping(char* base, size_t map_bytes, char* p, size_t bytes, MappedHost* out) {
  // A child process (Node spawns some) must not share the pinned pages
  // copy-on-write (best effort).
  madvise(p, bytes, MADV_DONTFORK);
  const cudaError_t e = cudaHostRegister(p, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable);
  if (e != cudaSuccess) {
    cudaGetLastError();
    munmap(base, map_bytes);
    return Status::Error(std::string("cudaHostRegister of ") + std::to_string(bytes) +
                         " bytes failed (" + cudaGetErrorString(e) + ")");
  }
  void* d = nullptr;
  const cudaError_t e2 = cudaHostGetDevicePointer(&d, p, 0);
  if (e2 != cudaSuccess) {
    cudaGetLastError();
    cudaHostUnregister(p);
    munmap(base, map_bytes);
    return Status::Error(std::string("cudaHostGetDevicePointer failed (") + cudaGetErrorString(e2) + ")");
  }
  out->host = p;
  out->device = d;
  out->bytes = bytes;
  out->owner = std::shared_ptr<void>(p, [base, map_bytes](void* q) {
    cudaHostUnregister(q);
    munmap(base, map_bytes);
  });
  return Status::Ok();
}

Status alloc_registered(size_t bytes, HostPages pages, MappedHost* out) {
  const size_t n = round_up(std::max<size_t>(bytes, 1), kHugePage);
  if (pages == HostPages::kHugeTlb) {
    void* m = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (m == MAP_FAILED) {
      return Status::Error(std::string("mmap(MAP_HUGETLB) of ") + std::to_string(n) +
                           " bytes failed (" + std::strerror(errno) + "; no huge pages reserved?)");
    }
    char* p = static_cast<char*>(m);
    touch(p, n);
    SPX_STATUS_TRY(register_mapping(p, n, p, n, out));
    out->huge_bytes = n;
    out->how = "mmap(MAP_HUGETLB) + cudaHostRegister";
    return Status::Ok();
  }
  // One huge page extra, so the usable range can start on a 2 MB boundary
  // (a transparent huge page must be aligned).
  const size_t map_bytes = n + kHugePage;
  void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    return Status::Error(std::string("mmap of ") + std::to_string(map_bytes) + " bytes failed (" +
                         std::strerror(errno) + ")");
  }
  char* base = static_cast<char*>(m);
  char* p = reinterpret_cast<char*>(round_up(reinterpret_cast<uintptr_t>(base), kHugePage));
  const int advice = pages == HostPages::kHuge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE;
  if (madvise(p, n, advice) != 0) {
    const std::string why = std::strerror(errno);
    munmap(base, map_bytes);
    return Status::Error("madvise(" + std::string(host_pages_name(pages)) + ") failed (" + why + ")");
  }
  touch(p, n);
  SPX_STATUS_TRY(register_mapping(base, map_bytes, p, n, out));
  out->huge_bytes = anon_huge_bytes(p, n);
  out->how = std::string("mmap + ") + (pages == HostPages::kHuge ? "MADV_HUGEPAGE" : "MADV_NOHUGEPAGE") +
             " + cudaHostRegister";
  return Status::Ok();
}

Status alloc_cuda_host(size_t bytes, MappedHost* out) {
  void* h = nullptr;
  const size_t n = std::max<size_t>(bytes, 1);
  const cudaError_t e = cudaHostAlloc(&h, n, cudaHostAllocMapped | cudaHostAllocPortable);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return Status::Error("cannot allocate " + std::to_string(n) + " bytes of pinned host memory (" +
                         cudaGetErrorString(e) + ")");
  }
  std::shared_ptr<void> owner(h, [](void* q) { cudaFreeHost(q); });
  void* d = nullptr;
  SPX_CUDA_TRY(cudaHostGetDevicePointer(&d, h, 0));
  out->host = h;
  out->device = d;
  out->bytes = n;
  out->huge_bytes = 0;
  out->how = "cudaHostAlloc";
  out->owner = std::move(owner);
  return Status::Ok();
}

}  // namespace

const char* host_pages_name(HostPages pages) {
  switch (pages) {
    case HostPages::kHuge: return "huge";
    case HostPages::kHugeTlb: return "hugetlb";
    case HostPages::kSmall: return "small";
    case HostPages::kCudaHostAlloc: return "cudahostalloc";
  }
  return "?";
}

Status alloc_mapped_host(size_t bytes, HostPages pages, MappedHost* out) {
  *out = MappedHost{};
  if (pages == HostPages::kCudaHostAlloc) return alloc_cuda_host(bytes, out);
  Status st = alloc_registered(bytes, pages, out);
  if (st.ok || pages != HostPages::kHuge) return st;
  // The fallback keeps the host tier working (4 KB pages, slower gathers).
  *out = MappedHost{};
  SPX_STATUS_TRY(alloc_cuda_host(bytes, out));
  out->how = "cudaHostAlloc (huge pages not used: " + st.message + ")";
  return Status::Ok();
}

}  // namespace spx::cuda
