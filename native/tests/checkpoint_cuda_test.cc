// The CUDA backend's raw checkpoint transfers (write_bytes through the pinned
// staging pair, read_bytes on its side stream from another thread): bytes
// land and come back unchanged at any offset, across staging chunks, and a
// read after fence_reads() sees a kernel's writes queued before the fence.
// Skipped without a GPU (and empty without CUDA).
#include <gtest/gtest.h>

#ifdef SPX_HAVE_CUDA
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "backend/registry.h"

namespace spx {
namespace {

std::unique_ptr<Backend> gpu() {
  Status st;
  auto be = make_backend("cuda:0", 1, &st);
  return st.ok ? std::move(be) : nullptr;
}

TEST(CheckpointCuda, RawBytesRoundTrip) {
  auto be = gpu();
  if (!be) GTEST_SKIP() << "no CUDA GPU here";
  Tensor t;
  const int64_t rows = 3, cols = 7'000'001;  // 42 MB of bf16: three 16 MB staging chunks
  ASSERT_TRUE(be->alloc({rows, cols}, DType::F32, &t).ok);
  ASSERT_EQ(t.dtype, DType::BF16);
  std::vector<uint16_t> want(static_cast<size_t>(rows * cols));
  std::mt19937 rng(5);
  for (uint16_t& x : want) x = static_cast<uint16_t>(rng() & 0x7F7F);  // finite values
  // Three uneven pieces, the middle one at an odd element offset.
  const size_t total = want.size() * 2, a = 2 * 1'234'567, b = 2 * 12'345'679;
  const char* src = reinterpret_cast<const char*>(want.data());
  ASSERT_TRUE(be->write_bytes(src + a, a, b - a, &t).ok);
  ASSERT_TRUE(be->write_bytes(src, 0, a, &t).ok);
  ASSERT_TRUE(be->write_bytes(src + b, b, total - b, &t).ok);
  ASSERT_TRUE(be->finish_writes().ok);
  // The f32 path sees the same values, widened.
  std::vector<float> f(want.size());
  ASSERT_TRUE(be->download(t, f.data()).ok);
  for (size_t i = 0; i < want.size(); i += 99991) {
    uint32_t u = static_cast<uint32_t>(want[i]) << 16;
    float w;
    std::memcpy(&w, &u, 4);
    ASSERT_EQ(f[i], w) << "element " << i;
  }
  // read_bytes from another thread, as the checkpoint writer calls it.
  be->fence_reads();
  std::vector<uint16_t> got(want.size(), 0xFFFF);
  Status rs;
  std::thread reader([&] {
    rs = be->read_bytes(t, 2 * 100, total - 2 * 100, got.data() + 100);
    if (rs.ok) rs = be->read_bytes(t, 0, 2 * 100, got.data());
  });
  reader.join();
  ASSERT_TRUE(rs.ok) << rs.message;
  EXPECT_TRUE(got == want);
  EXPECT_FALSE(be->read_bytes(t, total - 2, 4, got.data()).ok) << "past the end";
  EXPECT_FALSE(be->write_bytes(got.data(), total - 2, 4, &t).ok) << "past the end";
}

TEST(CheckpointCuda, ReadAfterFenceSeesEarlierUploads) {
  auto be = gpu();
  if (!be) GTEST_SKIP() << "no CUDA GPU here";
  Tensor t;
  ASSERT_TRUE(be->alloc({4, 1024}, DType::F32, &t).ok);
  std::vector<float> v(4096);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 251);
  ASSERT_TRUE(be->upload(v.data(), &t).ok);
  Tensor x;
  ASSERT_TRUE(be->alloc({4, 1024}, DType::F32, &x).ok);
  ASSERT_TRUE(be->upload(v.data(), &x).ok);
  be->add(&t, x);  // queued on the compute stream: t = 2 v
  be->fence_reads();
  std::vector<uint16_t> got(4096);
  Status rs;
  std::thread reader([&] { rs = be->read_bytes(t, 0, got.size() * 2, got.data()); });
  reader.join();
  ASSERT_TRUE(rs.ok) << rs.message;
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t u = static_cast<uint32_t>(got[i]) << 16;
    float w;
    std::memcpy(&w, &u, 4);
    ASSERT_EQ(w, 2 * v[i]) << "element " << i;  // small integers are exact in bf16
  }
}

}  // namespace
}  // namespace spx
#endif
