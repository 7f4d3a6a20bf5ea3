// Prefill attention alone: the 64-row kernel (v1), the 128-row kernel (v2)
// and, on an sm_90a build on an H100/H200 with head dim 128, the wgmma
// kernels (v3, and with SPX_PREFILL_KERNEL=v3p its pipelined variant v3p) on
// one request of T tokens, Llama-3.1-8B's attention shape by default
// (32 query heads, 8 KV heads, head dim 128), random bf16 Q/K/V on the GPU.
//   one-shot: the whole prompt in one launch;
//   chunked:  chunks of --chunk tokens against the growing cache, as
//             dense_bench's prefill runs it.
// TFLOP/s counts the causal work only: 4 * T^2 / 2 * q_heads * head_dim.
// Also prints the largest |v2 - v1|, |v3 - v2| and |v3p - v2| over the
// output, a sanity check that the kernels agree on the timed inputs (the
// tests check each against a double-precision reference).
//
//   prefill_bench --tokens 2048,16384,32768 --chunk 8192 [--heads 32,8,128]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "bench_model.cuh"
#include "cuda/ops.h"

namespace {

using spx::cuda::bf16;

#define TRY(x)                                                                         \
  do {                                                                                 \
    const cudaError_t e_ = (x);                                                        \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "prefill_bench: %s: %s\n", #x, cudaGetErrorString(e_));     \
      return 1;                                                                        \
    }                                                                                  \
  } while (0)

float max_abs_diff(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
  auto f = [](uint16_t x) {
    const uint32_t u = uint32_t(x) << 16;
    float r;
    std::memcpy(&r, &u, 4);
    return r;
  };
  float m = 0.f;
  for (size_t i = 0; i < a.size(); ++i) {
    const float d = std::fabs(f(a[i]) - f(b[i]));
    if (!(d <= m)) m = d;  // NaN sticks
  }
  return m;
}

int run(int argc, char** argv) {
  std::vector<int> tokens = {2048, 16384, 32768}, heads = {32, 8, 128};
  int chunk = 8192;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--tokens") tokens = spx::bench::parse_list(v);
    else if (k == "--chunk") chunk = std::atoi(v.c_str());
    else if (k == "--heads") heads = spx::bench::parse_list(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (heads.size() != 3 || tokens.empty() || chunk <= 0) {
    std::fprintf(stderr, "prefill_bench: --heads q,kv,dim and a non-empty --tokens needed\n");
    return 2;
  }
  const int hq = heads[0], hk = heads[1], d = heads[2];
  const int max_t = *std::max_element(tokens.begin(), tokens.end());
  const size_t q_elems = size_t(max_t) * hq * d, kv_elems = size_t(hk) * max_t * d;
  bf16 *q, *k, *v, *out1, *out2, *out3, *out4;
  TRY(cudaMalloc(&q, q_elems * sizeof(bf16)));
  TRY(cudaMalloc(&out1, q_elems * sizeof(bf16)));
  TRY(cudaMalloc(&out2, q_elems * sizeof(bf16)));
  TRY(cudaMalloc(&out3, q_elems * sizeof(bf16)));
  TRY(cudaMalloc(&out4, q_elems * sizeof(bf16)));
  TRY(cudaMalloc(&k, kv_elems * sizeof(bf16)));
  TRY(cudaMalloc(&v, kv_elems * sizeof(bf16)));
  TRY(spx::cuda::fill_random_forward(q, q_elems, 1, 2.f, 0));
  TRY(spx::cuda::fill_random_forward(k, kv_elems, 2, 1.f, 0));
  TRY(spx::cuda::fill_random_forward(v, kv_elems, 3, 1.f, 0));
  cudaEvent_t e0, e1;
  TRY(cudaEventCreate(&e0));
  TRY(cudaEventCreate(&e1));
  const float scale = 1.f / std::sqrt(float(d));
  // v3 only where it really runs (otherwise the launcher would time v2 twice).
  std::vector<int> kernels = {1, 2};
  {
    int dev = 0, major = 0, minor = 0;
    TRY(cudaGetDevice(&dev));
    TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    TRY(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
#ifdef SPX_CUDA_SM90A
    if (d == 128 && major == 9 && minor == 0) {
      kernels.push_back(3);
      // v3p, the pipelined variant, not yet run on a GPU: only on request.
      const char* env = std::getenv("SPX_PREFILL_KERNEL");
      if (env && std::strcmp(env, "v3p") == 0) kernels.push_back(4);
    }
#endif
  }

  std::printf("prefill attention, %d q heads, %d kv heads, d %d\n", hq, hk, d);
  std::printf("%-9s %7s %7s %10s %8s\n", "mode", "T", "kernel", "ms", "TFLOP/s");
  for (int T : tokens) {
    // The cache holds exactly T positions: capacity T, K/V [hk, T, d].
    const double flops = 4.0 * double(T) * T / 2 * hq * d;
    for (int mode = 0; mode < 2; ++mode) {
      const int step = mode == 0 ? T : std::min(chunk, T);
      if (mode == 1 && step == T) continue;  // chunked == one-shot at this size
      double ms[5] = {0, 0, 0, 0, 0};
      for (int kernel : kernels) {
        bf16* out = kernel == 1 ? out1 : kernel == 2 ? out2 : kernel == 3 ? out3 : out4;
        auto once = [&]() -> cudaError_t {
          for (int s = 0; s < T; s += step) {
            const cudaError_t e = spx::cuda::prefill_attention_forward(
                out + size_t(s) * hq * d, q + size_t(s) * hq * d, k, v, s,
                std::min(step, T - s), hq, hk, d, T, scale, 0, kernel);
            if (e != cudaSuccess) return e;
          }
          return cudaSuccess;
        };
        TRY(once());  // warm-up (and the output compared below)
        TRY(cudaDeviceSynchronize());
        const int reps = std::max(3, int(4e9 / (double(T) * T)));
        TRY(cudaEventRecord(e0, 0));
        for (int r = 0; r < reps; ++r) TRY(once());
        TRY(cudaEventRecord(e1, 0));
        TRY(cudaEventSynchronize(e1));
        float total = 0.f;
        TRY(cudaEventElapsedTime(&total, e0, e1));
        ms[kernel] = total / reps;
        std::printf("%-9s %7d %7s %10.3f %8.1f\n", mode == 0 ? "one-shot" : "chunked", T,
                    kernel == 1 ? "v1" : kernel == 2 ? "v2" : kernel == 3 ? "v3" : "v3p", ms[kernel], flops / (ms[kernel] * 1e-3) / 1e12);
        std::fflush(stdout);
      }
      std::vector<uint16_t> a(size_t(T) * hq * d), b(a.size());
      TRY(cudaMemcpy(a.data(), out1, a.size() * 2, cudaMemcpyDeviceToHost));
      TRY(cudaMemcpy(b.data(), out2, b.size() * 2, cudaMemcpyDeviceToHost));
      std::printf("%-9s %7d speedup v2/v1 %.2fx, max |v2 - v1| %.3g\n",
                  mode == 0 ? "one-shot" : "chunked", T, ms[1] / ms[2], max_abs_diff(a, b));
      if (ms[3] > 0) {
        TRY(cudaMemcpy(a.data(), out3, a.size() * 2, cudaMemcpyDeviceToHost));
        std::printf("%-9s %7d speedup v3/v2 %.2fx, max |v3 - v2| %.3g\n",
                    mode == 0 ? "one-shot" : "chunked", T, ms[2] / ms[3], max_abs_diff(a, b));
      }
      if (ms[4] > 0) {
        TRY(cudaMemcpy(a.data(), out4, a.size() * 2, cudaMemcpyDeviceToHost));
        std::printf("%-9s %7d speedup v3p/v2 %.2fx, max |v3p - v2| %.3g\n",
                    mode == 0 ? "one-shot" : "chunked", T, ms[2] / ms[4], max_abs_diff(a, b));
      }
    }
  }
  cudaFree(q);
  cudaFree(k);
  cudaFree(v);
  cudaFree(out1);
  cudaFree(out2);
  cudaFree(out3);
  cudaFree(out4);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return run(argc, argv); }
