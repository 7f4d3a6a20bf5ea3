// The checkpoint file format: round trip (the retrieval head's state included:
// its own layers' K/V, scoring K, aux row), incremental segments, version 1
// files still read, version 3's bf16 rows (raw, widened, from f32 files), and every way a file can be wrong (version, truncation,
// checksum, identity, geometry, gaps) rejected with a message naming it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <fstream>
#include <random>

#include "checkpoint/crc32c.h"
#include "checkpoint/kv_checkpoint.h"

namespace spx {
namespace {

constexpr uint64_t kIdentity = 0x1234abcd5678ef01ull;

// A request's caches as the KV store lays them out, filled with seeded noise.
struct FakeCaches {
  CheckpointGeometry g;
  int capacity;
  std::vector<std::vector<float>> k, v, hk, hv;
  std::vector<float> rk, aux;  // aux: [cap, rk_aux], row t = the head's input at position t
  std::vector<int32_t> tokens;

  FakeCaches(CheckpointGeometry geo, int cap, uint32_t seed) : g(geo), capacity(cap) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1, 1);
    auto fill = [&](std::vector<float>& x, size_t n) {
      x.resize(n);
      for (float& f : x) f = u(rng);
    };
    for (int l = 0; l < g.layers; ++l) {
      k.emplace_back();
      v.emplace_back();
      fill(k.back(), static_cast<size_t>(g.kv_heads) * cap * g.head_dim);
      fill(v.back(), static_cast<size_t>(g.kv_heads) * cap * g.head_dim);
    }
    for (int l = 0; l < g.rk_layers; ++l) {
      hk.emplace_back();
      hv.emplace_back();
      fill(hk.back(), static_cast<size_t>(g.rk_heads) * cap * g.rk_dim);
      fill(hv.back(), static_cast<size_t>(g.rk_heads) * cap * g.rk_dim);
    }
    fill(rk, static_cast<size_t>(g.rk_heads) * cap * g.rk_dim);
    fill(aux, static_cast<size_t>(g.rk_aux) * cap);
    for (int i = 0; i < cap; ++i) tokens.push_back(static_cast<int32_t>(rng() % 1000));
  }

  SegmentSource segment(int from, int to) const {
    SegmentSource s;
    s.from = from;
    s.to = to;
    s.tokens = tokens.data() + from;
    s.next_token = 7 + to;
    s.generated = to / 2;
    s.draws = static_cast<uint64_t>(to) * 3;
    for (int l = 0; l < g.layers; ++l) {
      s.k.push_back(CacheRows{k[static_cast<size_t>(l)].data(), capacity});
      s.v.push_back(CacheRows{v[static_cast<size_t>(l)].data(), capacity});
    }
    for (int l = 0; l < g.rk_layers; ++l) {
      s.head_k.push_back(CacheRows{hk[static_cast<size_t>(l)].data(), capacity});
      s.head_v.push_back(CacheRows{hv[static_cast<size_t>(l)].data(), capacity});
    }
    s.retrieval_k = CacheRows{rk.data(), capacity};
    s.aux = aux.data() + static_cast<size_t>(to - 1) * g.rk_aux;
    return s;
  }
};

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/spx-ckpt-" + name + "-" + std::to_string(::getpid());
}

void write_file(const std::string& path, const FakeCaches& c, const std::vector<int>& cuts,
                uint64_t identity = kIdentity, uint32_t version = kCheckpointVersion) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  CheckpointHeader h;
  h.identity = identity;
  h.geometry = c.g;
  h.seed = 42;
  h.prompt_tokens = cuts.front();
  h.version = version;
  ASSERT_TRUE(write_checkpoint_header(fd, h).ok);
  ::close(fd);
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    // Each append reopens the file, as the writer thread does per checkpoint.
    fd = ::open(path.c_str(), O_WRONLY | O_APPEND);
    ASSERT_GE(fd, 0);
    uint64_t bytes = 0;
    Status st = append_checkpoint_segment(fd, c.g, c.segment(cuts[i], cuts[i + 1]), &bytes);
    ASSERT_TRUE(st.ok) << st.message;
    EXPECT_EQ(bytes, kSegmentHeaderBytes + c.g.segment_payload(cuts[i + 1] - cuts[i]));
    ::close(fd);
  }
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << bytes;
}

// 3 layers, 2 KV heads, head_dim 8; a retrieval head of 1 KV head x 4 with 2 own layers and a 3-float aux row.
const CheckpointGeometry kGeo{3, 2, 8, 1, 4, 2, 3};
const CheckpointGeometry kGeoV1{3, 2, 8, 1, 4};  // version 1: the scoring K only

// positions [0, tokens) of a [heads, capacity, dim] cache equal the source's.
void expect_rows(const std::vector<float>& got, int cap, const std::vector<float>& want, int want_cap, int heads,
                 int dim, int tokens, const std::string& what) {
  for (int h = 0; h < heads; ++h)
    for (int t = 0; t < tokens; ++t)
      for (int d = 0; d < dim; ++d)
        ASSERT_EQ(got[(static_cast<size_t>(h) * cap + t) * dim + d], want[(static_cast<size_t>(h) * want_cap + t) * dim + d])
            << what << " head " << h << " token " << t;
}

void expect_restores(const std::string& path, const FakeCaches& c, int tokens) {
  CheckpointReader r;
  Status st = r.open(path, kIdentity, c.g);
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_EQ(r.tokens(), tokens);
  EXPECT_EQ(r.token_ids(), std::vector<int32_t>(c.tokens.begin(), c.tokens.begin() + tokens));
  EXPECT_EQ(r.next_token(), 7 + tokens);
  EXPECT_EQ(r.generated(), tokens / 2);
  EXPECT_EQ(r.draws(), static_cast<uint64_t>(tokens) * 3);
  EXPECT_EQ(r.header().seed, 42u);
  const int cap = tokens + 5;  // the restoring engine's capacity differs from the writer's
  const int hd = c.g.head_dim;
  for (int l = 0; l < c.g.layers; ++l) {
    std::vector<float> k(static_cast<size_t>(c.g.kv_heads) * cap * hd, -9.f), v = k;
    r.copy_k(l, k.data(), cap);
    r.copy_v(l, v.data(), cap);
    for (int h = 0; h < c.g.kv_heads; ++h)
      for (int t = 0; t < tokens; ++t)
        for (int d = 0; d < hd; ++d) {
          const size_t src = (static_cast<size_t>(h) * c.capacity + t) * hd + d;
          const size_t dst = (static_cast<size_t>(h) * cap + t) * hd + d;
          ASSERT_EQ(k[dst], c.k[static_cast<size_t>(l)][src]) << "K layer " << l << " head " << h << " token " << t;
          ASSERT_EQ(v[dst], c.v[static_cast<size_t>(l)][src]) << "V layer " << l;
        }
    EXPECT_EQ(k[static_cast<size_t>(tokens) * hd], -9.f) << "rows past the checkpoint untouched";
  }
  std::vector<float> rk(static_cast<size_t>(c.g.rk_heads) * cap * c.g.rk_dim);
  r.copy_retrieval_k(rk.data(), cap);
  expect_rows(rk, cap, c.rk, c.capacity, c.g.rk_heads, c.g.rk_dim, tokens, "scoring K");
  for (int l = 0; l < c.g.rk_layers; ++l) {
    std::vector<float> hk(rk.size()), hv(rk.size());
    r.copy_head(2 * l, hk.data(), cap);
    r.copy_head(2 * l + 1, hv.data(), cap);
    expect_rows(hk, cap, c.hk[static_cast<size_t>(l)], c.capacity, c.g.rk_heads, c.g.rk_dim, tokens, "head K");
    expect_rows(hv, cap, c.hv[static_cast<size_t>(l)], c.capacity, c.g.rk_heads, c.g.rk_dim, tokens, "head V");
  }
  if (c.g.rk_aux > 0) {
    ASSERT_NE(r.aux(), nullptr);
    for (int i = 0; i < c.g.rk_aux; ++i)
      EXPECT_EQ(r.aux()[i], c.aux[static_cast<size_t>(tokens - 1) * c.g.rk_aux + i]) << "aux of the last position";
  } else {
    EXPECT_EQ(r.aux(), nullptr);
  }
}

TEST(Crc32c, KnownAnswer) {
  EXPECT_EQ(crc32c(0, "123456789", 9), 0xE3069283u);
  // Continuing over pieces equals one pass.
  EXPECT_EQ(crc32c(crc32c(0, "12345", 5), "6789", 4), 0xE3069283u);
}

TEST(CheckpointFormat, RoundTripOneSegment) {
  FakeCaches c(kGeo, 40, 1);
  const std::string path = temp_path("one");
  write_file(path, c, {0, 33});
  expect_restores(path, c, 33);
  std::remove(path.c_str());
}

TEST(CheckpointFormat, IncrementalSegmentsAppendOnlyNewTokens) {
  FakeCaches c(kGeo, 64, 2);
  const std::string path = temp_path("incr");
  write_file(path, c, {0, 20});
  const size_t first = slurp(path).size();
  write_file(path, c, {0, 20, 21, 37, 50});
  const size_t all = slurp(path).size();
  // Appends cost only their own tokens, not a rewrite.
  EXPECT_EQ(all - first, 3 * kSegmentHeaderBytes + kGeo.segment_payload(1) + kGeo.segment_payload(16) +
                             kGeo.segment_payload(13));
  expect_restores(path, c, 50);
  std::remove(path.c_str());
}

TEST(CheckpointFormat, Version1StillReads) {
  FakeCaches c(kGeoV1, 30, 5);
  const std::string path = temp_path("v1");
  write_file(path, c, {0, 11, 25}, kIdentity, 1);
  EXPECT_EQ(slurp(path).size(), kCheckpointHeaderBytesV1 + 2 * kSegmentHeaderBytes + kGeoV1.segment_payload(25));
  expect_restores(path, c, 25);
  CheckpointReader r;
  ASSERT_TRUE(r.open(path, kIdentity, kGeoV1).ok);
  EXPECT_EQ(r.header().version, 1u);
  std::remove(path.c_str());
}

TEST(CheckpointFormat, Version1HasNoHeadLayers) {
  const std::string path = temp_path("v1bad");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  CheckpointHeader h;
  h.geometry = kGeo;
  h.version = 1;
  Status st = write_checkpoint_header(fd, h);
  ::close(fd);
  EXPECT_FALSE(st.ok);
  std::remove(path.c_str());
}

// inspectCheckpoint and requests without a budget expect no head: its state is skipped.
TEST(CheckpointFormat, ReaderWithoutHeadIgnoresIt) {
  FakeCaches c(kGeo, 16, 6);
  const std::string path = temp_path("skiphead");
  write_file(path, c, {0, 9, 14});
  CheckpointReader r;
  Status st = r.open(path, kIdentity, CheckpointGeometry{3, 2, 8, 0, 0});
  ASSERT_TRUE(st.ok) << st.message;
  EXPECT_EQ(r.tokens(), 14);
  std::vector<float> k(static_cast<size_t>(2) * 16 * 8);
  r.copy_k(2, k.data(), 16);
  expect_rows(k, 16, c.k[2], 16, 2, 8, 14, "K layer 2");
  // One that expects another head refuses it.
  CheckpointGeometry other = kGeo;
  other.rk_aux = 0;
  EXPECT_FALSE(r.open(path, kIdentity, other).ok);
  std::remove(path.c_str());
}

TEST(CheckpointFormat, WithoutRetrievalHead) {
  CheckpointGeometry g{2, 1, 4, 0, 0};
  FakeCaches c(g, 10, 3);
  const std::string path = temp_path("norh");
  write_file(path, c, {0, 4, 9});
  CheckpointReader r;
  Status st = r.open(path, kIdentity, g);
  ASSERT_TRUE(st.ok) << st.message;
  EXPECT_EQ(r.tokens(), 9);
  std::remove(path.c_str());
}

// Rewrites the file and expects the reader to refuse it with `reason`.
void expect_file_rejected(const std::string& path, const std::string& bytes, const std::string& reason,
                          uint64_t identity, const CheckpointGeometry& g) {
  spit(path, bytes);
  CheckpointReader r;
  Status st = r.open(path, identity, g);
  EXPECT_FALSE(st.ok);
  EXPECT_NE(st.message.find(reason), std::string::npos) << st.message;
}

TEST(CheckpointFormat, Version2StillReads) {
  FakeCaches c(kGeo, 30, 8);
  const std::string path = temp_path("v2");
  write_file(path, c, {0, 11, 25}, kIdentity, 2);
  expect_restores(path, c, 25);
  CheckpointReader r;
  ASSERT_TRUE(r.open(path, kIdentity, kGeo).ok);
  EXPECT_EQ(r.header().version, 2u);
  EXPECT_EQ(r.kv_dtype(), DType::F32);
  std::remove(path.c_str());
}

TEST(CheckpointFormat, OldVersionsStoreF32Only) {
  const std::string path = temp_path("v2bf16");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  CheckpointHeader h;
  h.geometry = kGeo;
  h.version = 2;
  h.kv_dtype = DType::BF16;
  EXPECT_FALSE(write_checkpoint_header(fd, h).ok);
  ::close(fd);
  std::remove(path.c_str());
}

TEST(CheckpointFormat, ConvertKv) {
  // bf16 -> f32 is exact; f32 -> bf16 rounds to nearest, ties to even.
  const float in[] = {1.0f, -2.5f, 1.00390625f /* 1 + 2^-8: a tie, stays 1 */, 1.01171875f /* tie, up to even */,
                      1.0f + 3.0f / 512, 0.f};
  uint16_t b[6];
  convert_kv(in, DType::F32, b, DType::BF16, 6);
  EXPECT_EQ(b[0], 0x3F80);
  EXPECT_EQ(b[1], 0xC020);
  EXPECT_EQ(b[2], 0x3F80);
  EXPECT_EQ(b[3], 0x3F82);
  EXPECT_EQ(b[4], 0x3F81);  // 0.75 of a step: up
  EXPECT_EQ(b[5], 0x0000);
  float back[6];
  convert_kv(b, DType::BF16, back, DType::F32, 6);
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], -2.5f);
  EXPECT_EQ(back[3], 1.015625f);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  uint16_t bn;
  convert_kv(&nan, DType::F32, &bn, DType::BF16, 1);
  float nb;
  convert_kv(&bn, DType::BF16, &nb, DType::F32, 1);
  EXPECT_TRUE(std::isnan(nb));
}

// The CUDA backend's caches: bf16 rows, written and read back as they are.
struct Bf16Caches {
  FakeCaches f;
  std::vector<std::vector<uint16_t>> k, v;
  explicit Bf16Caches(const CheckpointGeometry& g, int cap, uint32_t seed) : f(g, cap, seed) {
    for (int l = 0; l < g.layers; ++l) {
      k.emplace_back(f.k[static_cast<size_t>(l)].size());
      v.emplace_back(f.v[static_cast<size_t>(l)].size());
      convert_kv(f.k[static_cast<size_t>(l)].data(), DType::F32, k.back().data(), DType::BF16, k.back().size());
      convert_kv(f.v[static_cast<size_t>(l)].data(), DType::F32, v.back().data(), DType::BF16, v.back().size());
      // The f32 view of the same values, what a reader widening them must give.
      convert_kv(k.back().data(), DType::BF16, f.k[static_cast<size_t>(l)].data(), DType::F32, k.back().size());
      convert_kv(v.back().data(), DType::BF16, f.v[static_cast<size_t>(l)].data(), DType::F32, v.back().size());
    }
  }
  void write(const std::string& path, const std::vector<int>& cuts) const {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    CheckpointHeader h;
    h.identity = kIdentity;
    h.geometry = f.g;
    h.seed = 42;
    h.prompt_tokens = cuts.front();
    h.kv_dtype = DType::BF16;
    ASSERT_TRUE(write_checkpoint_header(fd, h).ok);
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      SegmentSource s = f.segment(cuts[i], cuts[i + 1]);
      for (int l = 0; l < f.g.layers; ++l) {
        s.k[static_cast<size_t>(l)].data = k[static_cast<size_t>(l)].data();
        s.v[static_cast<size_t>(l)].data = v[static_cast<size_t>(l)].data();
      }
      uint64_t bytes = 0;
      Status st = append_checkpoint_segment(fd, f.g, s, &bytes, DType::BF16);
      ASSERT_TRUE(st.ok) << st.message;
      EXPECT_EQ(bytes, kSegmentHeaderBytes + f.g.segment_payload(cuts[i + 1] - cuts[i], 2));
    }
    ::close(fd);
  }
};

TEST(CheckpointFormat, Bf16RoundTrip) {
  Bf16Caches c(kGeo, 40, 9);
  const std::string path = temp_path("bf16");
  c.write(path, {0, 17, 18, 33});
  EXPECT_EQ(slurp(path).size(), kCheckpointHeaderBytes + 3 * kSegmentHeaderBytes + kGeo.segment_payload(17, 2) +
                                    kGeo.segment_payload(1, 2) + kGeo.segment_payload(15, 2));
  // Widened to f32 (a CPU cache): exactly the bf16 values; the head's blocks and aux as written.
  expect_restores(path, c.f, 33);
  CheckpointReader r;
  ASSERT_TRUE(r.open(path, kIdentity, kGeo).ok);
  EXPECT_EQ(r.header().version, 3u);
  EXPECT_EQ(r.kv_dtype(), DType::BF16);
  // The raw rows (a bf16 cache): the same bytes, piece by piece.
  const int hd = kGeo.head_dim;
  for (int block = 0; block < 2 * kGeo.layers; ++block) {
    const std::vector<uint16_t>& want = (block % 2 == 0 ? c.k : c.v)[static_cast<size_t>(block / 2)];
    std::vector<uint16_t> got(want.size(), 0xFFFF);
    int pieces = 0;
    r.for_each_rows(block, [&](int h, int from, int n, const void* src) {
      ++pieces;
      std::memcpy(got.data() + (static_cast<size_t>(h) * 40 + from) * hd, src, static_cast<size_t>(n) * hd * 2);
    });
    EXPECT_EQ(pieces, 3 * kGeo.kv_heads);
    for (int h = 0; h < kGeo.kv_heads; ++h)
      for (int t = 0; t < 33 * hd; ++t)
        ASSERT_EQ(got[static_cast<size_t>(h) * 40 * hd + t], want[static_cast<size_t>(h) * 40 * hd + t]) << "block " << block;
  }
  std::remove(path.c_str());
}

TEST(CheckpointFormat, F32FileIntoBf16Rows) {
  // An old (f32) file restored into a bf16 cache: rounded as the CUDA upload rounds.
  FakeCaches c(kGeo, 20, 10);
  const std::string path = temp_path("f32tobf16");
  write_file(path, c, {0, 20}, kIdentity, 2);
  CheckpointReader r;
  ASSERT_TRUE(r.open(path, kIdentity, kGeo).ok);
  r.for_each_rows(3, [&](int h, int from, int n, const void* src) {
    std::vector<uint16_t> got(static_cast<size_t>(n) * 8), want(got.size());
    convert_kv(src, r.kv_dtype(), got.data(), DType::BF16, got.size());
    convert_kv(c.v[1].data() + (static_cast<size_t>(h) * 20 + from) * 8, DType::F32, want.data(), DType::BF16,
               want.size());
    EXPECT_EQ(got, want);
  });
  std::remove(path.c_str());
}

class Bf16Corruption : public ::testing::Test {
 protected:
  void SetUp() override {
    path = temp_path("badbf16");
    caches.write(path, {0, 12, 20});
    good = slurp(path);
  }
  void TearDown() override { std::remove(path.c_str()); }
  void expect_rejected(const std::string& bytes, const std::string& reason) {
    expect_file_rejected(path, bytes, reason, kIdentity, kGeo);
  }
  Bf16Caches caches{kGeo, 24, 11};
  std::string path, good;
};

TEST_F(Bf16Corruption, PayloadBitFlip) {
  std::string b = good;
  b[kCheckpointHeaderBytes + kSegmentHeaderBytes + 12 * 4 + 100] ^= 0x10;  // inside layer 0's K rows
  expect_rejected(b, "checksum mismatch (payload corrupted)");
}

TEST_F(Bf16Corruption, Truncated) { expect_rejected(good.substr(0, good.size() - 3), "truncated"); }

TEST_F(Bf16Corruption, ReadAsF32IsAPayloadSizeMismatch) {
  // The dtype field says f32 (header CRC fixed up): the segments no longer fit.
  std::string b = good;
  b[64] = 0;
  const uint32_t crc = crc32c(0, b.data(), kCheckpointHeaderBytes - 4);
  std::memcpy(&b[kCheckpointHeaderBytes - 4], &crc, 4);
  expect_rejected(b, "payload size does not match");
}

TEST_F(Bf16Corruption, UnknownDtype) {
  std::string b = good;
  b[64] = 7;
  const uint32_t crc = crc32c(0, b.data(), kCheckpointHeaderBytes - 4);
  std::memcpy(&b[kCheckpointHeaderBytes - 4], &crc, 4);
  expect_rejected(b, "dtype code 7 is unknown");
}

TEST(Crc32c, CombineAndParallel) {
  std::mt19937 rng(3);
  std::vector<uint8_t> buf((80u << 20) + 13);
  for (size_t i = 0; i < buf.size(); i += 4096) buf[i] = static_cast<uint8_t>(rng());
  for (size_t i = 0; i < 1000; ++i) buf[rng() % buf.size()] = static_cast<uint8_t>(rng());
  const uint32_t whole = crc32c(0, buf.data(), buf.size());
  for (size_t cut : {size_t{0}, size_t{1}, size_t{7}, size_t{4096}, buf.size() / 3, buf.size()})
    EXPECT_EQ(crc32c_combine(crc32c(0, buf.data(), cut), crc32c(0, buf.data() + cut, buf.size() - cut),
                             buf.size() - cut),
              whole)
        << "cut at " << cut;
  EXPECT_EQ(crc32c_parallel(buf.data(), buf.size(), 2), whole);
  EXPECT_EQ(crc32c_parallel(buf.data(), buf.size(), 3), whole);
  EXPECT_EQ(crc32c_parallel(buf.data(), 1000, 4), crc32c(0, buf.data(), 1000));
  buf[buf.size() - 1] ^= 1;
  EXPECT_NE(crc32c_parallel(buf.data(), buf.size(), 2), whole);
}

class Corruption : public ::testing::Test {
 protected:
  void SetUp() override {
    path = temp_path("bad");
    write_file(path, caches, {0, 12, 20});
    good = slurp(path);
  }
  void TearDown() override { std::remove(path.c_str()); }
  void expect_rejected(const std::string& bytes, const std::string& reason,
                       uint64_t identity = kIdentity, CheckpointGeometry g = kGeo) {
    expect_file_rejected(path, bytes, reason, identity, g);
  }
  FakeCaches caches{kGeo, 24, 4};
  std::string path, good;
};

TEST_F(Corruption, Missing) {
  std::remove(path.c_str());
  CheckpointReader r;
  Status st = r.open(path, kIdentity, kGeo);
  EXPECT_FALSE(st.ok);
  EXPECT_NE(st.message.find("missing"), std::string::npos) << st.message;
}

TEST_F(Corruption, NotACheckpoint) { expect_rejected(std::string(100, 'x'), "bad magic"); }

TEST_F(Corruption, WrongVersion) {
  std::string b = good;
  b[8] = 4;  // version field; the header CRC is checked after the version
  expect_rejected(b, "unsupported checkpoint version 4");
}

TEST_F(Corruption, HeaderChecksum) {
  std::string b = good;
  b[50] ^= 1;  // inside the seed
  expect_rejected(b, "header checksum");
}

TEST_F(Corruption, ModelHashMismatch) { expect_rejected(good, "model hash mismatch", kIdentity + 1); }

TEST_F(Corruption, GeometryMismatch) {
  CheckpointGeometry g = kGeo;
  g.layers = 4;
  expect_rejected(good, "geometry mismatch", kIdentity, g);
}

TEST_F(Corruption, TruncatedHeader) { expect_rejected(good.substr(0, 30), "truncated"); }

TEST_F(Corruption, TruncatedSegmentHeader) {
  expect_rejected(good.substr(0, kCheckpointHeaderBytes + 10), "truncated");
}

TEST_F(Corruption, TruncatedPayload) { expect_rejected(good.substr(0, good.size() - 1), "truncated"); }

TEST_F(Corruption, PayloadBitFlip) {
  std::string b = good;
  b[b.size() - 5] ^= 0x10;  // last KV float of the second segment
  expect_rejected(b, "segment 1 checksum mismatch");
}

TEST_F(Corruption, SegmentHeaderBitFlip) {
  std::string b = good;
  b[kCheckpointHeaderBytes + 8] ^= 1;  // first segment's `to`
  expect_rejected(b, "segment 0 header checksum");
}

TEST_F(Corruption, NoSegments) { expect_rejected(good.substr(0, kCheckpointHeaderBytes), "no segments"); }

TEST_F(Corruption, Gap) {
  // Drop the first segment: the second starts at 12, not 0.
  const size_t first = kSegmentHeaderBytes + kGeo.segment_payload(12);
  expect_rejected(good.substr(0, kCheckpointHeaderBytes) + good.substr(kCheckpointHeaderBytes + first),
                  "expected to start at 0");
}

}  // namespace
}  // namespace spx
