// CRC32C (Castagnoli), the checksum of every checkpoint segment. The SSE4.2
// instruction runs at several GB/s, so checksumming a whole 8k-token KV
// snapshot costs tens of milliseconds on the writer thread, not the engine's.
#pragma once

#include <cstddef>
#include <cstdint>

namespace spx {

// Continues a running CRC (start with 0).
uint32_t crc32c(uint32_t crc, const void* data, size_t n);

// The CRC of A followed by B from crc(A), crc(B) and B's length (zlib's
// GF(2) matrix method), so pieces can be checksummed independently.
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

// crc32c(0, data, n), computed in pieces on up to `threads` threads (0: the
// machine's cores) when the buffer is large: one core checksums a few GB/s,
// so a multi-GB checkpoint's validation would otherwise cost seconds.
uint32_t crc32c_parallel(const void* data, size_t n, int threads = 0);

}  // namespace spx
