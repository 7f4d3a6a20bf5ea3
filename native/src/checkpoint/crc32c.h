// CRC32C (Castagnoli), the checksum of every checkpoint segment. The SSE4.2
// instruction runs at several GB/s, so checksumming a whole 8k-token KV
// snapshot costs tens of milliseconds on the writer thread, not the engine's.
#pragma once

#include <cstddef>
#include <cstdint>

namespace spx {

// Continues a running CRC (start with 0).
uint32_t crc32c(uint32_t crc, const void* data, size_t n);

}  // namespace spx
