// Mapped pinned host memory for the host tier (the GPU reads it directly).
//
// cudaHostAlloc backs a buffer with 4 KB pages, so a GPU gather of scattered
// 256-byte rows over gigabytes of it misses the GPU's address translation
// on nearly every row. Here the memory comes from mmap, 2 MB aligned and
// advised MADV_HUGEPAGE (transparent huge pages), touched by a few threads
// and then registered with cudaHostRegister(Mapped | Portable); where that
// fails, cudaHostAlloc(Mapped | Portable) is used and `how` says why.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "engine/engine.h"

namespace spx::cuda {

enum class HostPages {
  kHuge,        // mmap + MADV_HUGEPAGE + cudaHostRegister (fallback: cudaHostAlloc)
  kHugeTlb,     // mmap(MAP_HUGETLB) + cudaHostRegister (needs reserved huge pages)
  kSmall,       // mmap + MADV_NOHUGEPAGE + cudaHostRegister (4 KB pages; for comparison)
  kCudaHostAlloc,
};

struct MappedHost {
  void* host = nullptr;    // the CPU's pointer
  void* device = nullptr;  // the GPU's pointer to the same bytes
  size_t bytes = 0;        // usable bytes (>= the request)
  size_t huge_bytes = 0;   // of them, backed by transparent huge pages (kHuge; -1: unknown)
  std::string how;         // what backs it, and why a fallback was taken
  // Frees the memory (cudaHostUnregister + munmap, or cudaFreeHost).
  std::shared_ptr<void> owner;
};

// Allocates `bytes` of mapped pinned host memory, contents undefined (zero
// for fresh pages). kHuge falls back to cudaHostAlloc with the reason in
// `how`; kHugeTlb and kSmall fail instead, so a benchmark sees what it asked
// for. Never aborts.
Status alloc_mapped_host(size_t bytes, HostPages pages, MappedHost* out);

const char* host_pages_name(HostPages pages);

}  // namespace spx::cuda
