#include "checkpoint/kv_checkpoint.h"

#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "checkpoint/crc32c.h"

namespace spx {

namespace {

constexpr char kMagic[8] = {'S', 'P', 'X', 'K', 'V', 'C', 'K', '1'};
constexpr uint32_t kSegmentMagic = 0x4D474553;  // "SEGM"

template <typename T>
void put(uint8_t* p, size_t off, T v) {
  std::memcpy(p + off, &v, sizeof(T));
}
template <typename T>
T get(const uint8_t* p, size_t off) {
  T v;
  std::memcpy(&v, p + off, sizeof(T));
  return v;
}

// Writes every piece, retrying short writes (writev may stop anywhere).
Status write_all(int fd, std::vector<iovec> iov) {
  size_t i = 0;
  while (i < iov.size()) {
    const int n = static_cast<int>(std::min<size_t>(iov.size() - i, 512));
    const ssize_t w = ::writev(fd, &iov[i], n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::Error(std::string("checkpoint write failed: ") + std::strerror(errno));
    }
    size_t left = static_cast<size_t>(w);
    while (i < iov.size() && left >= iov[i].iov_len) left -= iov[i++].iov_len;
    if (left > 0) {
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + left;
      iov[i].iov_len -= left;
    }
  }
  return Status::Ok();
}

std::string pos(size_t off) { return " at byte " + std::to_string(off); }

// The header's KV dtype codes (version 3).
constexpr uint32_t kDtypeF32 = 0, kDtypeBf16 = 1;

float bf16_to_f32(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu) != 0) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN stays NaN
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace

uint64_t CheckpointGeometry::segment_payload(int n, size_t kv_elem) const {
  const uint64_t rows = static_cast<uint64_t>(n);
  uint64_t b = rows * 4 + 2ull * layers * kv_heads * rows * head_dim * kv_elem;
  if (rk_heads > 0)
    b += (2ull * rk_layers + 1) * static_cast<uint64_t>(rk_heads) * rows * rk_dim * 4 +
         static_cast<uint64_t>(rk_aux) * 4;
  return b;
}

void convert_kv(const void* src, DType from, void* dst, DType to, size_t n) {
  if (from == to) {
    std::memcpy(dst, src, n * dtype_size(from));
  } else if (from == DType::BF16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    float* d = static_cast<float*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
  } else {
    const float* s = static_cast<const float*>(src);
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(s[i]);
  }
}

Status write_checkpoint_header(int fd, const CheckpointHeader& h) {
  const CheckpointGeometry& g = h.geometry;
  const bool v1 = h.version == 1;
  if (h.version < 1 || h.version > kCheckpointVersion)
    return Status::Error("cannot write checkpoint version " + std::to_string(h.version));
  if (h.version < 3 && h.kv_dtype != DType::F32)
    return Status::Error("checkpoint versions 1 and 2 store f32 KV only");
  if (v1 && (g.rk_layers != 0 || g.rk_aux != 0))
    return Status::Error("checkpoint version 1 has no retrieval-head layers or aux rows");
  const size_t size = v1 ? kCheckpointHeaderBytesV1 : kCheckpointHeaderBytes;
  uint8_t b[kCheckpointHeaderBytes] = {};
  std::memcpy(b, kMagic, 8);
  put<uint32_t>(b, 8, h.version);
  put<uint32_t>(b, 12, static_cast<uint32_t>(size));
  put<uint64_t>(b, 16, h.identity);
  put<int32_t>(b, 24, g.layers);
  put<int32_t>(b, 28, g.kv_heads);
  put<int32_t>(b, 32, g.head_dim);
  put<int32_t>(b, 36, g.rk_heads);
  put<int32_t>(b, 40, g.rk_dim);
  put<int32_t>(b, 44, h.prompt_tokens);
  put<uint64_t>(b, 48, h.seed);
  if (!v1) {
    put<int32_t>(b, 56, g.rk_layers);
    put<int32_t>(b, 60, g.rk_aux);
  }
  if (h.version >= 3) put<uint32_t>(b, 64, h.kv_dtype == DType::BF16 ? kDtypeBf16 : kDtypeF32);
  put<uint32_t>(b, size - 4, crc32c(0, b, size - 4));
  return write_all(fd, {iovec{b, size}});
}

Status append_checkpoint_segment(int fd, const CheckpointGeometry& g, const SegmentSource& s,
                                 uint64_t* bytes, DType kv_dtype) {
  const int n = s.to - s.from;
  if (n <= 0) return Status::Error("checkpoint segment is empty");
  if (static_cast<int>(s.k.size()) != g.layers || static_cast<int>(s.v.size()) != g.layers)
    return Status::Error("checkpoint segment has the wrong number of layers");
  // Each head's rows [from, to) are contiguous in a [heads, capacity, dim] cache.
  std::vector<iovec> pieces;
  pieces.push_back(iovec{const_cast<int32_t*>(s.tokens), static_cast<size_t>(n) * 4});
  auto add_cache = [&](const CacheRows& c, int heads, int dim, size_t esize) {
    for (int h = 0; h < heads; ++h) {
      const char* p = static_cast<const char*>(c.data) +
                      (static_cast<size_t>(h) * c.capacity + (s.from - c.first)) * dim * esize;
      pieces.push_back(iovec{const_cast<char*>(p), static_cast<size_t>(n) * dim * esize});
    }
  };
  const size_t kv_elem = dtype_size(kv_dtype);
  for (int l = 0; l < g.layers; ++l) {
    add_cache(s.k[static_cast<size_t>(l)], g.kv_heads, g.head_dim, kv_elem);
    add_cache(s.v[static_cast<size_t>(l)], g.kv_heads, g.head_dim, kv_elem);
  }
  if (g.rk_heads > 0) {
    if (s.retrieval_k.data == nullptr || static_cast<int>(s.head_k.size()) != g.rk_layers ||
        static_cast<int>(s.head_v.size()) != g.rk_layers || (g.rk_aux > 0 && s.aux == nullptr))
      return Status::Error("checkpoint segment lacks the retrieval head's state");
    for (int l = 0; l < g.rk_layers; ++l) {
      add_cache(s.head_k[static_cast<size_t>(l)], g.rk_heads, g.rk_dim, 4);
      add_cache(s.head_v[static_cast<size_t>(l)], g.rk_heads, g.rk_dim, 4);
    }
    add_cache(s.retrieval_k, g.rk_heads, g.rk_dim, 4);
    if (g.rk_aux > 0) pieces.push_back(iovec{const_cast<float*>(s.aux), static_cast<size_t>(g.rk_aux) * 4});
  }
  uint32_t crc = 0;
  uint64_t payload = 0;
  for (const iovec& v : pieces) {
    crc = crc32c(crc, v.iov_base, v.iov_len);
    payload += v.iov_len;
  }
  uint8_t hb[kSegmentHeaderBytes] = {};
  put<uint32_t>(hb, 0, kSegmentMagic);
  put<int32_t>(hb, 4, s.from);
  put<int32_t>(hb, 8, s.to);
  put<int32_t>(hb, 12, s.next_token);
  put<int32_t>(hb, 16, s.generated);
  put<uint64_t>(hb, 24, s.draws);
  put<uint64_t>(hb, 32, payload);
  put<uint32_t>(hb, 40, crc);
  put<uint32_t>(hb, 44, crc32c(0, hb, 44));
  pieces.insert(pieces.begin(), iovec{hb, sizeof(hb)});
  if (bytes) *bytes = payload + sizeof(hb);
  return write_all(fd, std::move(pieces));
}

Status CheckpointReader::open(const std::string& path, uint64_t expected_identity,
                              const CheckpointGeometry& expected) {
  Status st = file_.open(path);
  if (!st.ok) return Status::Error("checkpoint missing or unreadable: " + st.message);
  const uint8_t* b = file_.data();
  const size_t size = file_.size();
  if (size < kCheckpointHeaderBytesV1)
    return Status::Error("checkpoint truncated: " + std::to_string(size) +
                         " bytes, shorter than its header");
  if (std::memcmp(b, kMagic, 8) != 0) return Status::Error("not a checkpoint file (bad magic)");
  const uint32_t version = get<uint32_t>(b, 8);
  if (version < 1 || version > kCheckpointVersion)
    return Status::Error("unsupported checkpoint version " + std::to_string(version) +
                         " (this engine reads versions 1 to " + std::to_string(kCheckpointVersion) + ")");
  const size_t hsize = version == 1 ? kCheckpointHeaderBytesV1 : kCheckpointHeaderBytes;
  if (size < hsize)
    return Status::Error("checkpoint truncated: " + std::to_string(size) +
                         " bytes, shorter than its header");
  if (get<uint32_t>(b, hsize - 4) != crc32c(0, b, hsize - 4))
    return Status::Error("checkpoint header checksum mismatch");
  header_.identity = get<uint64_t>(b, 16);
  CheckpointGeometry& g = header_.geometry;
  g.layers = get<int32_t>(b, 24);
  g.kv_heads = get<int32_t>(b, 28);
  g.head_dim = get<int32_t>(b, 32);
  g.rk_heads = get<int32_t>(b, 36);
  g.rk_dim = get<int32_t>(b, 40);
  header_.prompt_tokens = get<int32_t>(b, 44);
  header_.seed = get<uint64_t>(b, 48);
  header_.version = version;
  if (version != 1) {
    g.rk_layers = get<int32_t>(b, 56);
    g.rk_aux = get<int32_t>(b, 60);
  }
  header_.kv_dtype = DType::F32;
  if (version >= 3) {
    const uint32_t code = get<uint32_t>(b, 64);
    if (code != kDtypeF32 && code != kDtypeBf16)
      return Status::Error("checkpoint KV dtype code " + std::to_string(code) + " is unknown");
    header_.kv_dtype = code == kDtypeBf16 ? DType::BF16 : DType::F32;
  }
  const size_t kv_elem = dtype_size(header_.kv_dtype);
  if (header_.identity != expected_identity)
    return Status::Error("checkpoint model hash mismatch: written for identity " +
                         std::to_string(header_.identity) + ", this engine is " +
                         std::to_string(expected_identity));
  // A reader that expects no retrieval head ignores one in the file.
  if (!g.same_target(expected) || (expected.rk_heads > 0 && !(g == expected)))
    return Status::Error("checkpoint KV geometry mismatch (layers/kv_heads/head_dim/retrieval)");
  if (g.layers < 0 || g.kv_heads < 0 || g.head_dim < 0 || g.rk_heads < 0 || g.rk_dim < 0 || g.rk_layers < 0 ||
      g.rk_aux < 0)
    return Status::Error("checkpoint geometry is negative");

  size_t off = hsize;
  int expect_from = 0;
  while (off < size) {
    const size_t k = segments_.size();
    const std::string which = "segment " + std::to_string(k);
    if (size - off < kSegmentHeaderBytes)
      return Status::Error("checkpoint truncated: " + which + " header cut short" + pos(off));
    const uint8_t* h = b + off;
    if (get<uint32_t>(h, 0) != kSegmentMagic || get<uint32_t>(h, 44) != crc32c(0, h, 44))
      return Status::Error("checkpoint " + which + " header checksum mismatch" + pos(off));
    const int from = get<int32_t>(h, 4), to = get<int32_t>(h, 8);
    if (from != expect_from || to <= from)
      return Status::Error("checkpoint " + which + " covers tokens [" + std::to_string(from) + ", " +
                           std::to_string(to) + "), expected to start at " +
                           std::to_string(expect_from));
    const uint64_t payload = get<uint64_t>(h, 32);
    if (payload != g.segment_payload(to - from, kv_elem))
      return Status::Error("checkpoint " + which + " payload size does not match its geometry");
    if (payload > size - off - kSegmentHeaderBytes)
      return Status::Error("checkpoint truncated: " + which + " needs " + std::to_string(payload) +
                           " payload bytes, " + std::to_string(size - off - kSegmentHeaderBytes) +
                           " remain");
    const uint8_t* p = h + kSegmentHeaderBytes;
    if (crc32c_parallel(p, payload) != get<uint32_t>(h, 40))
      return Status::Error("checkpoint " + which + " checksum mismatch (payload corrupted)");
    const size_t ntok = static_cast<size_t>(to - from);
    const size_t old = token_ids_.size();
    token_ids_.resize(old + ntok);
    std::memcpy(token_ids_.data() + old, p, ntok * 4);
    next_token_ = get<int32_t>(h, 12);
    generated_ = get<int32_t>(h, 16);
    draws_ = get<uint64_t>(h, 24);
    segments_.push_back(Segment{from, to, p});
    expect_from = to;
    off += kSegmentHeaderBytes + payload;
  }
  if (segments_.empty()) return Status::Error("checkpoint has no segments");
  tokens_ = expect_from;
  return Status::Ok();
}

const float* CheckpointReader::aux() const {
  const CheckpointGeometry& g = header_.geometry;
  if (g.rk_heads <= 0 || g.rk_aux <= 0 || segments_.empty()) return nullptr;
  const Segment& s = segments_.back();
  const size_t n = static_cast<size_t>(s.to - s.from);
  const size_t kv_block = static_cast<size_t>(g.kv_heads) * n * g.head_dim * dtype_size(header_.kv_dtype);
  const size_t head_block = static_cast<size_t>(g.rk_heads) * n * g.rk_dim;
  return reinterpret_cast<const float*>(s.payload + n * 4 + 2 * g.layers * kv_block +
                                        (2 * static_cast<size_t>(g.rk_layers) + 1) * head_block * 4);
}

// Where block `block` of segment s starts, and its element size.
const uint8_t* CheckpointReader::block_start(const Segment& s, int block, size_t* esize) const {
  const CheckpointGeometry& g = header_.geometry;
  const size_t n = static_cast<size_t>(s.to - s.from);
  const size_t kv_elem = dtype_size(header_.kv_dtype);
  const size_t kv_block = static_cast<size_t>(g.kv_heads) * n * g.head_dim * kv_elem;
  const size_t head_block = static_cast<size_t>(g.rk_heads) * n * g.rk_dim * 4;
  const bool head = block >= 2 * g.layers;
  *esize = head ? 4 : kv_elem;
  const size_t at = head ? 2 * g.layers * kv_block + static_cast<size_t>(block - 2 * g.layers) * head_block
                         : static_cast<size_t>(block) * kv_block;
  return s.payload + n * 4 + at;
}

void CheckpointReader::for_each_rows(int block, const std::function<void(int, int, int, const void*)>& fn) const {
  const CheckpointGeometry& g = header_.geometry;
  for (const Segment& s : segments_) {
    const int n = s.to - s.from;
    size_t esize = 0;
    const uint8_t* base = block_start(s, block, &esize);
    for (int h = 0; h < g.kv_heads; ++h)
      fn(h, s.from, n, base + static_cast<size_t>(h) * n * g.head_dim * esize);
  }
}

void CheckpointReader::copy(int block, float* dst, int capacity) const {
  const CheckpointGeometry& g = header_.geometry;
  const bool head = block >= 2 * g.layers;
  const int heads = head ? g.rk_heads : g.kv_heads;
  const int dim = head ? g.rk_dim : g.head_dim;
  const DType from = head ? DType::F32 : header_.kv_dtype;
  for (const Segment& s : segments_) {
    const int n = s.to - s.from;
    size_t esize = 0;
    const uint8_t* base = block_start(s, block, &esize);
    for (int h = 0; h < heads; ++h)
      convert_kv(base + static_cast<size_t>(h) * n * dim * esize, from,
                 dst + (static_cast<size_t>(h) * capacity + s.from) * dim, DType::F32, static_cast<size_t>(n) * dim);
  }
}

}  // namespace spx
