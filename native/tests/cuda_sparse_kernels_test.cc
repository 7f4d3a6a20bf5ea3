// GPU tests of the SpeContext kernels (sparse_ops.h), each against its CPU
// reference on random inputs of odd sizes:
//   - retrieval scores: double-precision softmax per query head + group
//     mean / max, T = 17 .. 33000, groups 1 / 4 / 8, head dims 64 / 128;
//   - top-B select: exactly retrieval::Selector's selection (same scores,
//     ties included), B = 16 / 256 / 2048, rows up to 131072 tokens; and the
//     whole GPU pipeline (scores + select) against Selector on GQA groups;
//   - sparse flash-decoding: double-precision attention over the selected
//     rows; with every position selected, bit-equal to decode_attention;
//   - elastic gather: SlotTable's loads copied from a real mapped pinned host
//     buffer, slots checked byte for byte.
// A last test prints (does not assert) timings on the shapes.
#include <gtest/gtest.h>

#ifndef SPX_HAVE_CUDA
TEST(CudaSparseKernels, Skipped) { GTEST_SKIP() << "built without CUDA (nvcc not found)"; }
#else
#include <algorithm>
#include <iterator>
#include <numeric>

#include "cuda/sparse_ops.h"
#include "cuda_test_util.h"
#include "kv/slot_map.h"
#include "retrieval/select.h"

namespace spx::cuda::test {
namespace {

// Per-request K (and V) caches [kv_heads, capacity, d] in one device buffer,
// with the DecodeSeq table the kernels take.
struct Caches {
  int batch, kv_heads, capacity, d;
  std::vector<float> k, v;  // [batch, kv_heads, capacity, d]
  Bf16Buffer dk, dv;
  DeviceBuffer<DecodeSeq> dseq;
  Caches(int batch_, int kv_heads_, int capacity_, int d_, uint32_t seed)
      : batch(batch_), kv_heads(kv_heads_), capacity(capacity_), d(d_),
        k(random_bf16_values(size_t(batch_) * kv_heads_ * capacity_ * d_, seed)),
        v(random_bf16_values(k.size(), seed + 1)), dk(k.size()), dv(v.size()), dseq(batch_) {}
  cudaError_t upload() {
    cudaError_t e = dk.upload(to_bf16(k));
    if (e == cudaSuccess) e = dv.upload(to_bf16(v));
    std::vector<DecodeSeq> seqs(batch);
    const size_t per = size_t(kv_heads) * capacity * d;
    for (int b = 0; b < batch; ++b)
      seqs[b] = DecodeSeq{dk.bf() + b * per, dv.bf() + b * per, capacity};
    return e == cudaSuccess ? dseq.upload(seqs) : e;
  }
  const float* krow(int b, int h, int t) const {
    return &k[((size_t(b) * kv_heads + h) * capacity + t) * d];
  }
  const float* vrow(int b, int h, int t) const {
    return &v[((size_t(b) * kv_heads + h) * capacity + t) * d];
  }
};

double dot(const float* a, const float* b, int d) {
  double s = 0;
  for (int i = 0; i < d; ++i) s += double(a[i]) * b[i];
  return s;
}

// Logits q.k * scale of one request's query heads: [q_heads, len].
std::vector<double> ref_logits(const Caches& c, const std::vector<float>& q, int b, int q_heads,
                               int len, double scale) {
  const int group = q_heads / c.kv_heads;
  std::vector<double> out(size_t(q_heads) * len);
  for (int h = 0; h < q_heads; ++h)
    for (int t = 0; t < len; ++t)
      out[size_t(h) * len + t] =
          dot(&q[(size_t(b) * q_heads + h) * c.d], c.krow(b, h / group, t), c.d) * scale;
  return out;
}

// Group scores [kv_heads, len] from logits [q_heads, len], in double.
std::vector<double> ref_scores(const std::vector<double>& logits, int q_heads, int kv_heads,
                               int len, bool reduce_max) {
  const int group = q_heads / kv_heads;
  std::vector<double> p(logits.size()), out(size_t(kv_heads) * len, 0.0);
  for (int h = 0; h < q_heads; ++h) {
    const double* x = &logits[size_t(h) * len];
    const double mx = *std::max_element(x, x + len);
    double z = 0;
    for (int t = 0; t < len; ++t) z += (p[size_t(h) * len + t] = std::exp(x[t] - mx));
    for (int t = 0; t < len; ++t) p[size_t(h) * len + t] /= z;
  }
  for (int h = 0; h < q_heads; ++h)
    for (int t = 0; t < len; ++t) {
      double& o = out[size_t(h / group) * len + t];
      const double v = p[size_t(h) * len + t];
      o = reduce_max ? std::max(o, v) : o + v / group;
    }
  return out;
}

struct ScoreRun {
  std::vector<float> scores;  // [batch, kv_heads, stride] from the GPU
  int64_t stride;
};

// retrieval_scores_forward on the given caches; lengths <= capacity.
void gpu_scores(Caches& c, const Bf16Buffer& dq, const std::vector<int32_t>& lengths,
                int q_heads, float scale, bool reduce_max, ScoreRun* run) {
  const int batch = c.batch;
  run->stride = *std::max_element(lengths.begin(), lengths.end()) + 5;
  DeviceBuffer<float> scores(size_t(batch) * c.kv_heads * run->stride);
  DeviceBuffer<float> logits(size_t(batch) * q_heads * run->stride);
  DeviceBuffer<int32_t> dlen(batch);
  ASSERT_EQ(dlen.upload(lengths), cudaSuccess);
  ASSERT_EQ(scores.poison(), cudaSuccess);
  ASSERT_EQ(retrieval_scores_forward(scores.ptr, logits.ptr, dq.bf(), c.dseq.ptr, dlen.ptr, batch,
                                     q_heads, c.kv_heads, c.d, scale, reduce_max, run->stride, 0),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  run->scores = scores.download();
}

void run_scores_case(int q_heads, int kv_heads, int d, std::vector<int32_t> lengths) {
  const int batch = int(lengths.size());
  const int capacity = *std::max_element(lengths.begin(), lengths.end()) + 3;
  Caches c(batch, kv_heads, capacity, d, 11 + d + batch);
  ASSERT_EQ(c.upload(), cudaSuccess);
  const auto q = random_bf16_values(size_t(batch) * q_heads * d, 5 + batch, 2.f);
  Bf16Buffer dq(q.size());
  ASSERT_EQ(dq.upload(to_bf16(q)), cudaSuccess);
  const double scale = 1.0 / std::sqrt(double(d));
  for (bool reduce_max : {false, true}) {
    ScoreRun run;
    gpu_scores(c, dq, lengths, q_heads, float(scale), reduce_max, &run);
    for (int b = 0; b < batch; ++b) {
      const int len = lengths[b];
      const auto ref =
          ref_scores(ref_logits(c, q, b, q_heads, len, scale), q_heads, kv_heads, len, reduce_max);
      std::vector<float> got;
      for (int h = 0; h < kv_heads; ++h) {
        const float* row = &run.scores[(size_t(b) * kv_heads + h) * run.stride];
        got.insert(got.end(), row, row + len);
      }
      const std::string name = std::string(reduce_max ? "max" : "mean") + " scores hq" +
                               std::to_string(q_heads) + " hk" + std::to_string(kv_heads) +
                               " d" + std::to_string(d) + " T" + std::to_string(len);
      // Probabilities of ~1/T: relative error, with a floor far below 1/T.
      EXPECT_EQ(count_mismatches(name, got, ref, 1e-8, 2e-3), 0u);
    }
  }
}

TEST(CudaSparseKernels, RetrievalScoresMatchReference) {
  SPX_REQUIRE_GPU();
  run_scores_case(8, 8, 64, {17, 97});               // MHA
  run_scores_case(16, 4, 128, {4099, 17, 33000});    // group of 4
  run_scores_case(16, 2, 128, {97, 4099});           // group of 8
  run_scores_case(32, 8, 64, {33000});               // group of 4, d 64
}

// Random logits [batch, heads, stride]; `levels` > 0 rounds them to
// 1/levels steps so that many scores tie exactly.
std::vector<float> random_logits(size_t n, uint32_t seed, int levels) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::vector<float> x(n);
  for (auto& v : x) v = levels > 0 ? std::round(nd(rng) * levels) / levels : nd(rng);
  return x;
}

struct SelectCase {
  std::vector<int32_t> lengths;
  int kv_heads, budget, n_sink, n_recent, levels;
};

// topk_select_forward on the exact scores Selector computes (groups of one:
// its score is softmax_row of the logits row), compared entry by entry.
void run_select_exact(const SelectCase& sc, uint32_t seed) {
  const int batch = int(sc.lengths.size()), H = sc.kv_heads, B = sc.budget;
  const int64_t stride = *std::max_element(sc.lengths.begin(), sc.lengths.end()) + 3;
  const auto logits = random_logits(size_t(batch) * H * stride, seed, sc.levels);
  std::vector<float> scores(logits.size(), 0.f);
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < H; ++h) {
      const size_t off = (size_t(b) * H + h) * stride;
      retrieval::softmax_row(&logits[off], sc.lengths[b], &scores[off]);
    }
  retrieval::SelectOptions opt;
  opt.budget = B;
  opt.n_sink = sc.n_sink;
  opt.n_recent = sc.n_recent;
  retrieval::Selector selector;
  std::vector<int32_t> want(size_t(batch) * H * B);
  std::vector<retrieval::SelectResult> results;
  std::vector<int> lens(sc.lengths.begin(), sc.lengths.end());
  selector.select_batch(logits.data(), batch, H, H, lens.data(), stride, opt, nullptr,
                        want.data(), &results);

  DeviceBuffer<float> dscores(scores.size()), dmass(size_t(batch) * H);
  DeviceBuffer<int32_t> dsel(want.size()), dcounts(batch), dlen(batch);
  ASSERT_EQ(dscores.upload(scores), cudaSuccess);
  ASSERT_EQ(dlen.upload(sc.lengths), cudaSuccess);
  ASSERT_EQ(dsel.poison(), cudaSuccess);
  ASSERT_EQ(topk_select_forward(dsel.ptr, dcounts.ptr, dmass.ptr, dscores.ptr, dlen.ptr, batch, H,
                                stride, B, sc.n_sink, sc.n_recent, 0),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto got = dsel.download();
  const auto counts = dcounts.download();
  const auto mass = dmass.download();
  for (int b = 0; b < batch; ++b) {
    const std::string name = "select T" + std::to_string(sc.lengths[b]) + " B" +
                             std::to_string(B) + " sink" + std::to_string(sc.n_sink) +
                             " recent" + std::to_string(sc.n_recent) + " levels" +
                             std::to_string(sc.levels);
    EXPECT_EQ(counts[b], results[b].count) << name;
    int bad = 0;
    for (size_t i = size_t(b) * H * B; i < size_t(b + 1) * H * B; ++i)
      if (got[i] != want[i] && bad++ < 5)
        std::printf("%s: entry %zu got %d want %d\n", name.c_str(), i, got[i], want[i]);
    EXPECT_EQ(bad, 0) << name;
    float lo = 1.f;
    double mean = 0;
    for (int h = 0; h < H; ++h) {
      lo = std::min(lo, mass[size_t(b) * H + h]);
      mean += mass[size_t(b) * H + h] / H;
    }
    EXPECT_NEAR(lo, results[b].min_mass, 1e-4) << name;
    EXPECT_NEAR(mean, results[b].mean_mass, 1e-4) << name;
  }
}

TEST(CudaSparseKernels, TopkSelectEqualsSelector) {
  SPX_REQUIRE_GPU();
  const std::vector<int32_t> lengths = {17, 4099, 97, 33000, 2048, 2049};
  uint32_t seed = 1;
  for (int B : {16, 256, 2048}) {
    run_select_exact({lengths, 8, B, 4, 16, 0}, seed++);   // the engine's defaults
    run_select_exact({lengths, 3, B, 0, 0, 0}, seed++);    // nothing forced (newest not either)
    run_select_exact({lengths, 8, B, 4, 16, 2}, seed++);   // many exact ties: older wins
  }
  run_select_exact({lengths, 2, 16, 10, 20, 0}, seed++);   // forced rows exceed the budget
  run_select_exact({lengths, 2, 16, 0, 1, 0}, seed++);     // only the newest forced
  run_select_exact({lengths, 2, 16, 20, 0, 1}, seed++);    // sinks over budget, ties
  run_select_exact({{131072, 9000}, 8, 2048, 4, 16, 0}, seed++);  // the longest rows
}

// The whole GPU path (scores, then select) against Selector on host logits,
// with GQA groups. The two sides' scores differ by float rounding, so near
// ties may swap: the sets may differ in a few entries whose scores are
// equal within the tolerance, and carry the same mass.
void run_pipeline_case(int q_heads, int kv_heads, int d, std::vector<int32_t> lengths, int B) {
  const int batch = int(lengths.size());
  const int capacity = *std::max_element(lengths.begin(), lengths.end()) + 3;
  Caches c(batch, kv_heads, capacity, d, 40 + d + B);
  ASSERT_EQ(c.upload(), cudaSuccess);
  const auto q = random_bf16_values(size_t(batch) * q_heads * d, 41 + B, 2.f);
  Bf16Buffer dq(q.size());
  ASSERT_EQ(dq.upload(to_bf16(q)), cudaSuccess);
  const double scale = 1.0 / std::sqrt(double(d));
  ScoreRun run;
  gpu_scores(c, dq, lengths, q_heads, float(scale), false, &run);
  DeviceBuffer<float> dscores(run.scores.size());
  DeviceBuffer<int32_t> dsel(size_t(batch) * kv_heads * B), dcounts(batch), dlen(batch);
  ASSERT_EQ(dscores.upload(run.scores), cudaSuccess);
  ASSERT_EQ(dlen.upload(lengths), cudaSuccess);
  ASSERT_EQ(topk_select_forward(dsel.ptr, dcounts.ptr, nullptr, dscores.ptr, dlen.ptr, batch,
                                kv_heads, run.stride, B, 4, 16, 0),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto got = dsel.download();
  retrieval::SelectOptions opt;
  opt.budget = B;
  retrieval::Selector selector;
  for (int b = 0; b < batch; ++b) {
    const int len = lengths[b];
    const auto logits_d = ref_logits(c, q, b, q_heads, len, scale);
    const std::vector<float> logits(logits_d.begin(), logits_d.end());
    std::vector<int32_t> want(size_t(kv_heads) * B);
    selector.select(logits.data(), q_heads, kv_heads, len, len, opt, want.data());
    const auto ref = ref_scores(logits_d, q_heads, kv_heads, len, false);
    for (int h = 0; h < kv_heads; ++h) {
      const int32_t* g = &got[(size_t(b) * kv_heads + h) * B];
      const int32_t* w = &want[size_t(h) * B];
      std::vector<int32_t> only_gpu, only_cpu;
      std::set_difference(g, g + std::min(len, B), w, w + std::min(len, B),
                          std::back_inserter(only_gpu));
      std::set_difference(w, w + std::min(len, B), g, g + std::min(len, B),
                          std::back_inserter(only_cpu));
      double m_gpu = 0, m_cpu = 0;
      for (int i = 0; i < std::min(len, B); ++i) {
        m_gpu += ref[size_t(h) * len + g[i]];
        m_cpu += ref[size_t(h) * len + w[i]];
      }
      const std::string name = "pipeline hq" + std::to_string(q_heads) + " hk" +
                               std::to_string(kv_heads) + " T" + std::to_string(len) + " B" +
                               std::to_string(B) + " head" + std::to_string(h);
      EXPECT_TRUE(std::is_sorted(g, g + std::min(len, B))) << name;
      EXPECT_LE(only_gpu.size(), size_t(2 + B / 100)) << name;
      EXPECT_EQ(only_gpu.size(), only_cpu.size()) << name;
      EXPECT_NEAR(m_gpu, m_cpu, 1e-5 + 1e-4 * m_cpu) << name;
    }
  }
}

TEST(CudaSparseKernels, ScoresThenSelectAgreeWithSelector) {
  SPX_REQUIRE_GPU();
  run_pipeline_case(16, 4, 128, {4099, 17, 33000}, 256);
  run_pipeline_case(16, 2, 64, {97, 4099}, 16);
  run_pipeline_case(32, 4, 128, {33000}, 2048);  // group of 8
}

// Selections: per (request, head), min(L, budget) distinct random positions
// in ascending order; -1 after.
std::vector<int32_t> random_selection(const std::vector<int32_t>& lengths, int kv_heads,
                                      int budget, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> sel(lengths.size() * kv_heads * budget, -1);
  std::vector<int32_t> pool;
  for (size_t b = 0; b < lengths.size(); ++b)
    for (int h = 0; h < kv_heads; ++h) {
      const int len = lengths[b], n = std::min(len, budget);
      pool.resize(len);
      std::iota(pool.begin(), pool.end(), 0);
      for (int i = 0; i < n; ++i) std::swap(pool[i], pool[i + rng() % (len - i)]);
      std::sort(pool.begin(), pool.begin() + n);
      std::copy(pool.begin(), pool.begin() + n, &sel[(b * kv_heads + h) * budget]);
    }
  return sel;
}

struct Workspace {
  DeviceBuffer<char> buf;
  DecodeAttentionWorkspace ws;
  Workspace(int batch, int q_heads, int d, int max_splits)
      : buf(decode_attention_workspace_bytes(batch, q_heads, d, max_splits)) {
    ws = {reinterpret_cast<float*>(buf.ptr),
          reinterpret_cast<float*>(buf.ptr) + size_t(batch) * q_heads * max_splits * d,
          max_splits};
  }
};

void run_sparse_case(int q_heads, int kv_heads, int d, std::vector<int32_t> lengths, int budget,
                     int split) {
  const int batch = int(lengths.size());
  const int capacity = *std::max_element(lengths.begin(), lengths.end()) + 3;
  Caches c(batch, kv_heads, capacity, d, 70 + d + budget);
  ASSERT_EQ(c.upload(), cudaSuccess);
  const auto q = random_bf16_values(size_t(batch) * q_heads * d, 71 + batch, 2.f);
  const auto sel = random_selection(lengths, kv_heads, budget, 72 + budget);
  std::vector<int32_t> counts(batch);
  for (int b = 0; b < batch; ++b) counts[b] = std::min(lengths[b], budget);
  Bf16Buffer dq(q.size()), dout(q.size());
  DeviceBuffer<int32_t> dsel(sel.size()), dcounts(batch);
  ASSERT_EQ(dq.upload(to_bf16(q)), cudaSuccess);
  ASSERT_EQ(dsel.upload(sel), cudaSuccess);
  ASSERT_EQ(dcounts.upload(counts), cudaSuccess);
  ASSERT_EQ(dout.poison(), cudaSuccess);
  Workspace w(batch, q_heads, d, (budget + split - 1) / split);
  const double scale = 1.0 / std::sqrt(double(d));
  ASSERT_EQ(sparse_decode_attention_forward(dout.bf(), dq.bf(), c.dseq.ptr, dsel.ptr, dcounts.ptr,
                                            batch, q_heads, kv_heads, d, budget, float(scale),
                                            split, w.ws, 0),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto got = dout.download_f();
  const int group = q_heads / kv_heads;
  for (int b = 0; b < batch; ++b) {
    std::vector<double> ref(size_t(q_heads) * d);
    for (int h = 0; h < q_heads; ++h) {
      const int hk = h / group;
      const int32_t* rows = &sel[(size_t(b) * kv_heads + hk) * budget];
      const float* qh = &q[(size_t(b) * q_heads + h) * d];
      std::vector<double> s(counts[b]);
      double mx = -1e300, z = 0;
      for (int i = 0; i < counts[b]; ++i)
        mx = std::max(mx, s[i] = dot(qh, c.krow(b, hk, rows[i]), d) * scale);
      for (auto& x : s) z += (x = std::exp(x - mx));
      for (int i = 0; i < counts[b]; ++i) {
        const float* vr = c.vrow(b, hk, rows[i]);
        for (int j = 0; j < d; ++j) ref[size_t(h) * d + j] += s[i] / z * vr[j];
      }
    }
    std::vector<float> g(got.begin() + size_t(b) * q_heads * d,
                         got.begin() + size_t(b + 1) * q_heads * d);
    const std::string name = "sparse hq" + std::to_string(q_heads) + " hk" +
                             std::to_string(kv_heads) + " d" + std::to_string(d) + " T" +
                             std::to_string(lengths[b]) + " B" + std::to_string(budget) +
                             " split" + std::to_string(split);
    EXPECT_EQ(count_mismatches(name, g, ref, 1e-2, 2e-2), 0u);
    EXPECT_LT(rel_l2(g, ref), 1e-2) << name;
  }
}

TEST(CudaSparseKernels, SparseAttentionMatchesReference) {
  SPX_REQUIRE_GPU();
  run_sparse_case(32, 8, 128, {17, 4099, 97, 2048}, 256, 64);  // group of 4
  run_sparse_case(16, 4, 64, {4099, 17}, 2048, 512);            // d 64, ragged last split
  run_sparse_case(16, 2, 128, {33000, 97}, 2048, 96);           // group of 8
  run_sparse_case(8, 8, 64, {97, 4099}, 16, 16);                // MHA, tiny budget
  run_sparse_case(12, 2, 16, {300, 5}, 64, 32);                 // tiny fixture shape
}

// Selecting every position in order is dense attention: same kernel, same
// splits, so the outputs are equal to the bit.
TEST(CudaSparseKernels, SparseWithAllPositionsEqualsDense) {
  SPX_REQUIRE_GPU();
  struct Shape { int q_heads, kv_heads, d, split; };
  for (const Shape s : {Shape{32, 8, 128, 128}, Shape{9, 3, 64, 160}, Shape{16, 2, 128, 4128}}) {
    const std::vector<int32_t> lengths = {17, 4099, 1, 97};
    const int batch = 4, budget = 4100, capacity = 4102;
    Caches c(batch, s.kv_heads, capacity, s.d, 90 + s.d);
    ASSERT_EQ(c.upload(), cudaSuccess);
    const auto q = random_bf16_values(size_t(batch) * s.q_heads * s.d, 91, 2.f);
    std::vector<int32_t> sel(size_t(batch) * s.kv_heads * budget, -1);
    for (int b = 0; b < batch; ++b)
      for (int h = 0; h < s.kv_heads; ++h)
        std::iota(&sel[(size_t(b) * s.kv_heads + h) * budget],
                  &sel[(size_t(b) * s.kv_heads + h) * budget] + lengths[b], 0);
    Bf16Buffer dq(q.size()), dense(q.size()), sparse(q.size());
    DeviceBuffer<int32_t> dsel(sel.size()), dlen(batch);
    ASSERT_EQ(dq.upload(to_bf16(q)), cudaSuccess);
    ASSERT_EQ(dsel.upload(sel), cudaSuccess);
    ASSERT_EQ(dlen.upload(lengths), cudaSuccess);
    // Different fillers, so that outputs left unwritten cannot compare equal.
    ASSERT_EQ(cudaMemset(dense.ptr, 0, dense.n * 2), cudaSuccess);
    ASSERT_EQ(sparse.poison(), cudaSuccess);
    Workspace w(batch, s.q_heads, s.d, (budget + s.split - 1) / s.split);
    const float scale = 1.f / std::sqrt(float(s.d));
    ASSERT_EQ(decode_attention_forward(dense.bf(), dq.bf(), c.dseq.ptr, dlen.ptr, batch,
                                       s.q_heads, s.kv_heads, s.d, scale, s.split, w.ws, 0),
              cudaSuccess);
    ASSERT_EQ(sparse_decode_attention_forward(sparse.bf(), dq.bf(), c.dseq.ptr, dsel.ptr,
                                              dlen.ptr, batch, s.q_heads, s.kv_heads, s.d,
                                              budget, scale, s.split, w.ws, 0),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(dense.download(), sparse.download()) << "hq" << s.q_heads << " d" << s.d;
  }
}

// A host-tier layer in mapped pinned memory: [requests, kv_heads, capacity, d].
struct HostTier {
  int requests, kv_heads, capacity, d;
  uint16_t* k = nullptr;
  uint16_t* v = nullptr;
  HostTier(int r, int h, int cap, int d_) : requests(r), kv_heads(h), capacity(cap), d(d_) {
    const size_t bytes = size_t(r) * h * cap * d_ * 2;
    if (cudaHostAlloc(&k, bytes, cudaHostAllocMapped) != cudaSuccess) k = nullptr;
    if (cudaHostAlloc(&v, bytes, cudaHostAllocMapped) != cudaSuccess) v = nullptr;
  }
  ~HostTier() {
    cudaFreeHost(k);
    cudaFreeHost(v);
  }
  size_t row(int r, int h, int t) const { return ((size_t(r) * kv_heads + h) * capacity + t) * d; }
  // The device's view of the mapped buffers, one entry per request.
  std::vector<HostKv> views() const {
    void *dk = nullptr, *dv = nullptr;
    cudaHostGetDevicePointer(&dk, k, 0);
    cudaHostGetDevicePointer(&dv, v, 0);
    std::vector<HostKv> out(requests);
    for (int r = 0; r < requests; ++r)
      out[r] = HostKv{static_cast<const bf16*>(dk) + row(r, 0, 0),
                      static_cast<const bf16*>(dv) + row(r, 0, 0), capacity};
    return out;
  }
};

// Device slot buffers [requests][kv_heads, budget, d] for K and V.
struct SlotTier {
  Bf16Buffer k, v;
  DeviceBuffer<SlotKv> table;
  SlotTier(int requests, int kv_heads, int budget, int d)
      : k(size_t(requests) * kv_heads * budget * d), v(k.n), table(requests) {
    std::vector<SlotKv> t(requests);
    const size_t per = size_t(kv_heads) * budget * d;
    for (int r = 0; r < requests; ++r) t[r] = SlotKv{k.bf() + r * per, v.bf() + r * per};
    table.upload(t);
  }
};

void run_gather_case(int d, int budget, int capacity, int steps) {
  const int R = 3, H = 8;
  HostTier host(R, H, capacity, d);
  ASSERT_NE(host.k, nullptr);
  ASSERT_NE(host.v, nullptr);
  std::mt19937 rng(500 + d);
  const size_t n = size_t(R) * H * capacity * d;
  for (size_t i = 0; i < n; ++i) host.k[i] = uint16_t(rng()), host.v[i] = uint16_t(rng());
  DeviceBuffer<HostKv> dhost(R);
  ASSERT_EQ(dhost.upload(host.views()), cudaSuccess);
  SlotTier slots(R, H, budget, d);
  ASSERT_EQ(slots.k.poison(), cudaSuccess);
  ASSERT_EQ(slots.v.poison(), cudaSuccess);

  SlotTable table;
  table.configure(H, int64_t(d) * 4);
  for (int r = 0; r < R; ++r) table.open_request(r, budget);
  // Selections drift as in decode: each step keeps ~80% of the last one.
  std::vector<std::vector<int32_t>> sel(R * H);
  std::vector<int32_t> slot_of(size_t(H) * budget);
  for (int step = 0; step < steps; ++step) {
    std::vector<SlotCopy> copies;
    std::vector<std::vector<int32_t>> slot_now(R);
    for (int r = 0; r < R; ++r) {
      std::vector<int32_t> flat;
      for (int h = 0; h < H; ++h) {
        auto& s = sel[r * H + h];
        std::vector<char> in(capacity, 0);
        std::vector<int32_t> next;
        for (int32_t t : s)
          if (rng() % 5 != 0) next.push_back(t), in[t] = 1;
        while (int(next.size()) < budget) {
          const int32_t t = int32_t(rng() % capacity);
          if (!in[t]) next.push_back(t), in[t] = 1;
        }
        std::sort(next.begin(), next.end());
        s = next;
        flat.insert(flat.end(), s.begin(), s.end());
      }
      std::vector<std::vector<SlotLoad>> loads;
      ASSERT_TRUE(table.update(r, flat.data(), budget, &loads, slot_of.data()));
      slot_now[r] = slot_of;
      for (int h = 0; h < H; ++h)
        for (const SlotLoad& l : loads[h]) copies.push_back(SlotCopy{r, h, l.token, l.slot});
    }
    // Bad entries must be skipped, not crash or scribble.
    copies.push_back(SlotCopy{0, 0, capacity, 0});
    copies.push_back(SlotCopy{0, H, 0, 0});
    copies.push_back(SlotCopy{0, 0, 0, budget});
    DeviceBuffer<SlotCopy> dcopies(copies.size());
    ASSERT_EQ(dcopies.upload(copies), cudaSuccess);
    ASSERT_EQ(elastic_gather_forward(dcopies.ptr, int(copies.size()), dhost.ptr, slots.table.ptr,
                                     H, d, budget, 0),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto gk = slots.k.download(), gv = slots.v.download();
    int bad = 0;
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < budget; ++i) {
          const int32_t tok = sel[r * H + h][i], slot = slot_now[r][size_t(h) * budget + i];
          const size_t dev = ((size_t(r) * H + h) * budget + slot) * d;
          if (std::memcmp(&gk[dev], host.k + host.row(r, h, tok), d * 2) ||
              std::memcmp(&gv[dev], host.v + host.row(r, h, tok), d * 2))
            if (bad++ < 5)
              std::printf("gather d%d step %d: req %d head %d token %d slot %d differs\n", d,
                          step, r, h, tok, slot);
        }
    EXPECT_EQ(bad, 0) << "d" << d << " step " << step << " loads " << copies.size() - 3;
  }
}

TEST(CudaSparseKernels, ElasticGatherFromMappedHostMemory) {
  SPX_REQUIRE_GPU();
  run_gather_case(128, 256, 4099, 4);
  run_gather_case(64, 2048, 33000, 3);
  run_gather_case(16, 16, 97, 3);
}

// ---- Timings (printed, not asserted) ----------------------------------

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    cudaEventCreate(&a);
    cudaEventCreate(&b);
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  template <typename F>
  float ms(int reps, F&& f) {  // mean over reps after one warm-up
    f();
    cudaEventRecord(a);
    for (int i = 0; i < reps; ++i) f();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    return t / reps;
  }
};

TEST(CudaSparseKernels, Timings) {
  SPX_REQUIRE_GPU();
  const int batch = 32, H = 8, Hq = 32, d = 128, T = 34816, B = 2048;
  Timer timer;
  std::printf("TIMING shape: batch %d, q_heads %d, kv_heads %d, d %d, T %d, B %d\n", batch, Hq,
              H, d, T, B);
  // Caches on the device only (filled there): K and V [batch, H, T, d].
  const size_t per = size_t(H) * T * d;
  Bf16Buffer dk(batch * per), dv(batch * per), dq(size_t(batch) * Hq * d), dout(dq.n);
  ASSERT_NE(dk.ptr, nullptr);
  ASSERT_NE(dv.ptr, nullptr);
  ASSERT_EQ(fill_random_forward(dk.bf(), dk.n, 1, 1.f, 0), cudaSuccess);
  ASSERT_EQ(fill_random_forward(dv.bf(), dv.n, 2, 1.f, 0), cudaSuccess);
  ASSERT_EQ(fill_random_forward(dq.bf(), dq.n, 3, 2.f, 0), cudaSuccess);
  std::vector<DecodeSeq> seqs(batch);
  for (int b = 0; b < batch; ++b) seqs[b] = DecodeSeq{dk.bf() + b * per, dv.bf() + b * per, T};
  DeviceBuffer<DecodeSeq> dseq(batch);
  DeviceBuffer<int32_t> dlen(batch), dsel(size_t(batch) * H * B), dcounts(batch);
  ASSERT_EQ(dseq.upload(seqs), cudaSuccess);
  ASSERT_EQ(dlen.upload(std::vector<int32_t>(batch, T)), cudaSuccess);
  DeviceBuffer<float> scores(size_t(batch) * H * T), logits(size_t(batch) * Hq * T),
      mass(size_t(batch) * H);

  const float scale = 1.f / std::sqrt(float(d));
  const float t_scores = timer.ms(10, [&] {
    retrieval_scores_forward(scores.ptr, logits.ptr, dq.bf(), dseq.ptr, dlen.ptr, batch, Hq, H, d,
                             scale, false, T, 0);
  });
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::printf("TIMING retrieval_scores %dx%dx%d: %.1f us (K read %.0f GB/s)\n", batch, H, T,
              t_scores * 1e3, batch * per * 2 / (t_scores * 1e6));
  const float t_topk = timer.ms(20, [&] {
    topk_select_forward(dsel.ptr, dcounts.ptr, mass.ptr, scores.ptr, dlen.ptr, batch, H, T, B, 4,
                        16, 0);
  });
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::printf("TIMING topk_select %dx%dx%d -> %d: %.1f us\n", batch, H, T, B, t_topk * 1e3);

  // Sparse attention over the selection just made, against dense over all T.
  const int split_sparse = decode_attention_split_tokens(batch, H, B, 132);
  const int split_dense = decode_attention_split_tokens(batch, H, T, 132);
  Workspace ws_sparse(batch, Hq, d, (B + split_sparse - 1) / split_sparse);
  Workspace ws_dense(batch, Hq, d, (T + split_dense - 1) / split_dense);
  const float t_sparse = timer.ms(20, [&] {
    sparse_decode_attention_forward(dout.bf(), dq.bf(), dseq.ptr, dsel.ptr, dcounts.ptr, batch,
                                    Hq, H, d, B, scale, split_sparse, ws_sparse.ws, 0);
  });
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const float t_dense = timer.ms(10, [&] {
    decode_attention_forward(dout.bf(), dq.bf(), dseq.ptr, dlen.ptr, batch, Hq, H, d, scale,
                             split_dense, ws_dense.ws, 0);
  });
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const double sparse_bytes = double(batch) * H * B * d * 2 * 2;
  const double dense_bytes = double(batch) * per * 2 * 2;
  std::printf("TIMING sparse_decode_attention B %d (split %d): %.1f us, %.0f GB/s of gathered K/V\n",
              B, split_sparse, t_sparse * 1e3, sparse_bytes / (t_sparse * 1e6));
  std::printf("TIMING dense decode_attention T %d (split %d): %.1f us, %.0f GB/s\n", T,
              split_dense, t_dense * 1e3, dense_bytes / (t_dense * 1e6));
  for (int split : {128, 256, 512, 1024, 2048}) {
    Workspace w(batch, Hq, d, (B + split - 1) / split);
    const float t = timer.ms(20, [&] {
      sparse_decode_attention_forward(dout.bf(), dq.bf(), dseq.ptr, dsel.ptr, dcounts.ptr, batch,
                                      Hq, H, d, B, scale, split, w.ws, 0);
    });
    std::printf("TIMING sparse_decode_attention B %d split %d: %.1f us, %.0f GB/s\n", B, split,
                t * 1e3, sparse_bytes / (t * 1e6));
  }
  // Batch 1 (one request, 8 KV heads): the split decides the parallelism.
  for (int split : {64, 128, 256, decode_attention_split_tokens(1, H, B, 132)}) {
    Workspace w(1, Hq, d, (B + split - 1) / split);
    const float t = timer.ms(20, [&] {
      sparse_decode_attention_forward(dout.bf(), dq.bf(), dseq.ptr, dsel.ptr, dcounts.ptr, 1, Hq,
                                      H, d, B, scale, split, w.ws, 0);
    });
    std::printf("TIMING sparse_decode_attention batch 1 B %d split %d: %.1f us, %.0f GB/s\n", B,
                split, t * 1e3, sparse_bytes / batch / (t * 1e6));
  }

  {  // One request at the longest context: the per-row kernels' worst case.
    const int Tl = 131072;
    const DecodeSeq one{dk.bf(), dv.bf(), Tl};  // reuses the first requests' memory
    DeviceBuffer<DecodeSeq> dseq1(1);
    DeviceBuffer<int32_t> dlen1(1);
    ASSERT_EQ(dseq1.upload({one}), cudaSuccess);
    ASSERT_EQ(dlen1.upload({Tl}), cudaSuccess);
    const float ts = timer.ms(10, [&] {
      retrieval_scores_forward(scores.ptr, logits.ptr, dq.bf(), dseq1.ptr, dlen1.ptr, 1, Hq, H, d,
                               scale, false, Tl, 0);
    });
    const float tk = timer.ms(10, [&] {
      topk_select_forward(dsel.ptr, dcounts.ptr, mass.ptr, scores.ptr, dlen1.ptr, 1, H, Tl, B, 4,
                          16, 0);
    });
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    std::printf("TIMING batch 1 x %d heads x %d: retrieval_scores %.1f us, topk_select %.1f us\n",
                H, Tl, ts * 1e3, tk * 1e3);
  }
  // Elastic gather over PCIe: 8 requests x 8 heads, a full load of B slots
  // and a 20% (elastic) load, from mapped pinned memory.
  const int R = 8, cap = 8192;
  HostTier host(R, H, cap, d);
  ASSERT_NE(host.k, nullptr);
  ASSERT_NE(host.v, nullptr);
  std::memset(host.k, 0x3c, size_t(R) * H * cap * d * 2);
  std::memset(host.v, 0x3c, size_t(R) * H * cap * d * 2);
  DeviceBuffer<HostKv> dhost(R);
  ASSERT_EQ(dhost.upload(host.views()), cudaSuccess);
  SlotTier slots(R, H, B, d);
  for (int share : {100, 20}) {
    std::vector<SlotCopy> copies;
    std::mt19937 rng(share);
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < B * share / 100; ++i)
          copies.push_back(SlotCopy{r, h, int32_t(rng() % cap), i});
    DeviceBuffer<SlotCopy> dcopies(copies.size());
    ASSERT_EQ(dcopies.upload(copies), cudaSuccess);
    const float t = timer.ms(10, [&] {
      elastic_gather_forward(dcopies.ptr, int(copies.size()), dhost.ptr, slots.table.ptr, H, d, B,
                             0);
    });
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const double bytes = double(copies.size()) * d * 2 * 2;
    std::printf("TIMING elastic_gather %zu rows (%d%% of B, %.1f MB): %.1f us, %.1f GB/s over PCIe\n",
                copies.size(), share, bytes / 1e6, t * 1e3, bytes / (t * 1e6));
  }
}

}  // namespace
}  // namespace spx::cuda::test
#endif  // SPX_HAVE_CUDA
