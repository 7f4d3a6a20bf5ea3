#include "checkpoint/crc32c.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace spx {

namespace {
// Reflected polynomial 0x82F63B78, one byte at a time: the portable fallback.
const std::array<uint32_t, 256>& table() {
  static const std::array<uint32_t, 256> t = [] {
    std::array<uint32_t, 256> out{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
      out[i] = c;
    }
    return out;
  }();
  return t;
}
}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
#if defined(__SSE4_2__)
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c64 = _mm_crc32_u64(c64, w);
    p += 8;
    n -= 8;
  }
  c = static_cast<uint32_t>(c64);
  while (n > 0) {
    c = _mm_crc32_u8(c, *p++);
    --n;
  }
#else
  const auto& t = table();
  while (n > 0) {
    c = t[(c ^ *p++) & 0xFFu] ^ (c >> 8);
    --n;
  }
#endif
  (void)table;
  return ~c;
}

namespace {
uint32_t gf2_times(const uint32_t* mat, uint32_t vec) {
  uint32_t sum = 0;
  for (; vec != 0; vec >>= 1, ++mat)
    if (vec & 1u) sum ^= *mat;
  return sum;
}
void gf2_square(uint32_t* square, const uint32_t* mat) {
  for (int n = 0; n < 32; ++n) square[n] = gf2_times(mat, mat[n]);
}
}  // namespace

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  if (len_b == 0) return crc_a;
  uint32_t even[32], odd[32];
  // odd: the operator that appends one zero bit.
  odd[0] = 0x82F63B78u;
  uint32_t row = 1;
  for (int n = 1; n < 32; ++n, row <<= 1) odd[n] = row;
  gf2_square(even, odd);  // two zero bits
  gf2_square(odd, even);  // four
  // Apply len_b zero bytes to crc_a, squaring the operator per bit of len_b.
  do {
    gf2_square(even, odd);
    if (len_b & 1u) crc_a = gf2_times(even, crc_a);
    len_b >>= 1;
    if (len_b == 0) break;
    gf2_square(odd, even);
    if (len_b & 1u) crc_a = gf2_times(odd, crc_a);
    len_b >>= 1;
  } while (len_b != 0);
  return crc_a ^ crc_b;
}

uint32_t crc32c_parallel(const void* data, size_t n, int threads) {
  constexpr size_t kMinPiece = 32u << 20;  // below this a thread costs more than it saves
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const size_t pieces = std::min<size_t>(static_cast<size_t>(std::min(threads, 32)), n / kMinPiece);
  if (pieces <= 1) return crc32c(0, data, n);
  const uint8_t* p = static_cast<const uint8_t*>(data);
  const size_t step = (n + pieces - 1) / pieces;
  std::vector<uint32_t> crcs(pieces);
  std::vector<std::thread> pool;
  for (size_t i = 1; i < pieces; ++i)
    pool.emplace_back([&, i] {
      const size_t a = i * step, b = std::min(n, a + step);
      crcs[i] = crc32c(0, p + a, b - a);
    });
  crcs[0] = crc32c(0, p, step);
  for (std::thread& t : pool) t.join();
  uint32_t crc = crcs[0];
  for (size_t i = 1; i < pieces; ++i) {
    const size_t a = i * step, b = std::min(n, a + step);
    crc = crc32c_combine(crc, crcs[i], b - a);
  }
  return crc;
}

}  // namespace spx
