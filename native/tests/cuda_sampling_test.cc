// GPU tests of sampling: greedy equals the host argmax; top-k / top-p draws
// equal the host's inverse-CDF pick for the same uniform (up to float
// rounding right at a bucket edge), and always fall inside the kept set.
#include <gtest/gtest.h>

#ifndef SPX_HAVE_CUDA
TEST(CudaSampling, Skipped) { GTEST_SKIP() << "built without CUDA (nvcc not found)"; }
#else
#include <algorithm>
#include <numeric>

#include "cuda_test_util.h"

namespace spx::cuda::test {
namespace {

std::vector<float> random_logits(int rows, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.f, 3.f);
  std::vector<float> v(size_t(rows) * vocab);
  for (auto& x : v) x = n(rng);
  return v;
}

TEST(CudaSampling, GreedyIsArgmax) {
  SPX_REQUIRE_GPU();
  for (int vocab : {17, 4099, 151936}) {
    const int rows = 5;
    auto logits = random_logits(rows, vocab, vocab);
    logits[size_t(2) * vocab + vocab - 1] = 100.f;  // max at the last id
    logits[size_t(3) * vocab + 3] = 50.f;           // a tie: the lower id wins
    logits[size_t(3) * vocab + 9 % vocab] = 50.f;
    std::vector<SamplingRow> params(rows, SamplingRow{0.f, 0, 1.f, 1, 0});
    params[4].temperature = 0.7f;
    params[4].top_k = 1;  // top-k 1 is greedy too
    DeviceBuffer<float> dl(logits.size());
    DeviceBuffer<SamplingRow> dp(rows);
    DeviceBuffer<int32_t> dt(rows);
    CUDA_OK(dl.upload(logits));
    CUDA_OK(dp.upload(params));
    CUDA_OK(sample_forward(dt.ptr, dl.ptr, dp.ptr, rows, vocab, 0));
    CUDA_OK(cudaDeviceSynchronize());
    const auto got = dt.download();
    for (int r = 0; r < rows; ++r) {
      const float* x = &logits[size_t(r) * vocab];
      const int want = int(std::max_element(x, x + vocab) - x);
      EXPECT_EQ(got[r], want) << "vocab " << vocab << " row " << r;
    }
  }
}

// The host version of the GPU's rule: keep top-k by logit, then the
// smallest-probability threshold whose kept mass reaches top_p, then pick
// by inverse CDF in id order. Returns the pick and whether the uniform sat
// within rounding of a bucket edge (then either neighbour is acceptable).
std::pair<int, bool> host_sample(const float* x, int vocab, const SamplingRow& p,
                                 std::vector<char>* kept_out) {
  std::vector<double> prob(vocab);
  const double mx = *std::max_element(x, x + vocab);
  float kth = -INFINITY;
  if (p.top_k > 0 && p.top_k < vocab) {
    std::vector<float> s(x, x + vocab);
    std::nth_element(s.begin(), s.begin() + (p.top_k - 1), s.end(), std::greater<float>());
    kth = s[p.top_k - 1];
  }
  for (int i = 0; i < vocab; ++i)
    prob[i] = x[i] >= kth ? std::exp((x[i] - mx) / p.temperature) : 0.0;
  const double z = std::accumulate(prob.begin(), prob.end(), 0.0);
  double pmin = 0;
  if (p.top_p < 1.f) {
    std::vector<double> sorted(prob);
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    double acc = 0;
    for (double q : sorted) {
      acc += q;
      pmin = q;
      if (acc >= p.top_p * z) break;
    }
  }
  std::vector<char> kept(vocab);
  double total = 0;
  for (int i = 0; i < vocab; ++i) {
    kept[i] = prob[i] > 0 && prob[i] >= pmin;
    if (kept[i]) total += prob[i];
  }
  const double target = sample_uniform(p.seed, p.step) * total;
  double acc = 0;
  int pick = -1;
  bool edge = false;
  for (int i = 0; i < vocab; ++i) {
    if (!kept[i]) continue;
    if (std::fabs(acc - target) < 1e-4 * total) edge = true;
    acc += prob[i];
    if (pick < 0 && target < acc) pick = i;
    if (pick == i && std::fabs(acc - target) < 1e-4 * total) edge = true;
  }
  if (kept_out) *kept_out = kept;
  return {pick, edge};
}

TEST(CudaSampling, TopKTopPMatchHost) {
  SPX_REQUIRE_GPU();
  for (int vocab : {97, 4099, 128256}) {
    const int rows = 48;
    const auto logits = random_logits(rows, vocab, 1000 + vocab);
    std::vector<SamplingRow> params(rows);
    for (int r = 0; r < rows; ++r) {
      SamplingRow p{};
      p.temperature = r % 3 == 0 ? 0.6f : 1.0f;
      p.top_k = r % 4 == 0 ? 0 : (r % 4 == 1 ? 5 : 50);
      p.top_p = r % 2 == 0 ? 0.9f : 1.0f;
      p.seed = 42 + r / 8;
      p.step = r;
      params[r] = p;
    }
    DeviceBuffer<float> dl(logits.size());
    DeviceBuffer<SamplingRow> dp(rows);
    DeviceBuffer<int32_t> dt(rows);
    CUDA_OK(dl.upload(logits));
    CUDA_OK(dp.upload(params));
    CUDA_OK(dt.poison());
    CUDA_OK(sample_forward(dt.ptr, dl.ptr, dp.ptr, rows, vocab, 0));
    CUDA_OK(cudaDeviceSynchronize());
    const auto got = dt.download();
    int exact = 0;
    for (int r = 0; r < rows; ++r) {
      std::vector<char> kept;
      const auto [want, edge] = host_sample(&logits[size_t(r) * vocab], vocab, params[r], &kept);
      ASSERT_TRUE(got[r] >= 0 && got[r] < vocab) << "row " << r << " token " << got[r];
      EXPECT_TRUE(kept[got[r]]) << "vocab " << vocab << " row " << r << " picked a dropped token";
      if (!edge) {
        EXPECT_EQ(got[r], want) << "vocab " << vocab << " row " << r;
      }
      exact += got[r] == want;
    }
    EXPECT_GE(exact, rows - 2) << "vocab " << vocab;
  }
}

TEST(CudaSampling, SameSeedSameToken) {
  SPX_REQUIRE_GPU();
  const int vocab = 4099, rows = 4;
  // Four identical rows with one seed and step give one token; a new step
  // gives a fresh draw.
  const auto one = random_logits(1, vocab, 5);
  std::vector<float> logits;
  for (int r = 0; r < rows; ++r) logits.insert(logits.end(), one.begin(), one.end());
  std::vector<SamplingRow> params(rows, SamplingRow{1.f, 0, 1.f, 7, 3});
  DeviceBuffer<float> dl(logits.size());
  DeviceBuffer<SamplingRow> dp(rows);
  DeviceBuffer<int32_t> dt(rows);
  CUDA_OK(dl.upload(logits));
  CUDA_OK(dp.upload(params));
  CUDA_OK(sample_forward(dt.ptr, dl.ptr, dp.ptr, rows, vocab, 0));
  CUDA_OK(cudaDeviceSynchronize());
  const auto got = dt.download();
  for (int r = 1; r < rows; ++r) EXPECT_EQ(got[r], got[0]);
}

}  // namespace
}  // namespace spx::cuda::test
#endif  // SPX_HAVE_CUDA
