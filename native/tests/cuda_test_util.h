// Helpers for the GPU tests (native/tests/cuda_*_test.cc): skipping without
// a GPU, device buffers, bf16 on the host, and the llm.c-style comparison
// (atol + |ref| * rtol, print the first mismatches, stop after ten).
#pragma once

#ifdef SPX_HAVE_CUDA
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/ops.h"

#define SPX_REQUIRE_GPU()                                                         \
  do {                                                                            \
    int spx_n_ = 0;                                                               \
    cudaError_t spx_e_ = cudaGetDeviceCount(&spx_n_);                             \
    if (spx_e_ != cudaSuccess || spx_n_ == 0)                                     \
      GTEST_SKIP() << "no CUDA GPU on this machine ("                             \
                   << (spx_e_ == cudaSuccess ? "0 devices" : cudaGetErrorString(spx_e_)) \
                   << "); GPU tests run through tools/gpu_test.sh";               \
  } while (0)

#define CUDA_OK(expr)                                                             \
  do {                                                                            \
    cudaError_t spx_e_ = (expr);                                                  \
    ASSERT_EQ(spx_e_, cudaSuccess) << #expr << ": " << cudaGetErrorString(spx_e_); \
  } while (0)

namespace spx::cuda::test {

inline uint16_t f2bf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);                      // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}
inline float bf2f(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float round_bf(float f) { return bf2f(f2bf(f)); }

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    if (cudaMalloc(&ptr, (count ? count : 1) * sizeof(T)) != cudaSuccess) ptr = nullptr;
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  cudaError_t upload(const std::vector<T>& h) {
    return cudaMemcpy(ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> download() const {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
  // Poison so that unwritten outputs show up as mismatches.
  cudaError_t poison() { return cudaMemset(ptr, 0xff, n * sizeof(T)); }
};

// bf16 storage on the host; the device sees it as __nv_bfloat16.
struct Bf16Buffer : DeviceBuffer<uint16_t> {
  using DeviceBuffer<uint16_t>::DeviceBuffer;
  bf16* bf() const { return reinterpret_cast<bf16*>(ptr); }
  std::vector<float> download_f() const {
    std::vector<float> out;
    for (uint16_t h : download()) out.push_back(bf2f(h));
    return out;
  }
};

// Random values in [-scale, scale], already representable in bf16.
inline std::vector<float> random_bf16_values(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = round_bf(u(rng));
  return v;
}
inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = f2bf(v[i]);
  return out;
}

// Counts elements with |got - ref| > atol + |ref| * rtol (NaN always fails);
// prints the first ten.
inline size_t count_mismatches(const std::string& what, const std::vector<float>& got,
                               const std::vector<double>& ref, double atol, double rtol) {
  size_t bad = 0;
  if (got.size() != ref.size()) {
    std::printf("%s: size %zu vs reference %zu\n", what.c_str(), got.size(), ref.size());
    return ref.size() + 1;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    if (!(d <= atol + std::fabs(ref[i]) * rtol)) {
      if (bad < 10)
        std::printf("%s: mismatch at %zu: got %.6f ref %.6f\n", what.c_str(), i, got[i], ref[i]);
      ++bad;
    }
  }
  if (bad) std::printf("%s: %zu of %zu mismatched\n", what.c_str(), bad, got.size());
  return bad;
}

// Relative L2 error ||got - ref|| / ||ref||.
inline double rel_l2(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = got[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace spx::cuda::test
#endif  // SPX_HAVE_CUDA
