// The whole model on the CUDA backend (bf16) against the CPU backend (f32)
// and Hugging Face's logits on the tiny fixtures: prompt logits at every
// position, then KV-cached greedy decode; then the engine itself on
// "cuda:0" against the engine on "cpu" (same greedy tokens), and a batch of
// requests against each request alone.
#include <gtest/gtest.h>

#ifndef SPX_HAVE_CUDA
TEST(CudaModel, Skipped) { GTEST_SKIP() << "built without CUDA (nvcc not found)"; }
#else
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "backend/registry.h"
#include "engine/engine.h"
#include "kv/kv_store.h"
#include "model/transformer.h"
#include "test_util.h"

namespace spx {
namespace {

using testing::fixture;

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// bf16 weights and activations against f32 (fixtures) or differently
// ordered bf16 (transformers) references: max |diff| / max |ref| measured
// 1.6e-2 .. 3.1e-2 on these random models (first H200 run).
constexpr double kLogitTol = 4e-2;

int argmax(const float* x, size_t n) {
  return static_cast<int>(std::max_element(x, x + n) - x);
}

// Prompt logits (all positions, or those listed in prompt_logits_positions)
// and teacher-forced greedy decode against reference.json in `dir`.
void check_against_reference(const std::string& dir, const std::string& name) {
  Json ref = testing::load_json(dir + "/reference.json");
  Status st;
  auto gpu = make_backend("cuda:0", 0, &st);
  ASSERT_TRUE(st.ok) << st.message;
  std::unique_ptr<Transformer> model;
  st = Transformer::load(dir, gpu.get(), &model);
  ASSERT_TRUE(st.ok) << st.message;
  const ModelConfig& c = model->config();
  const size_t V = static_cast<size_t>(c.vocab_size);
  const std::vector<int32_t> prompt = testing::ints(*ref.find("prompt_ids"));
  const std::vector<int32_t> gen = testing::ints(*ref.find("generated_ids"));
  const Json& prompt_logits = *ref.find("prompt_logits");
  const Json& decode_logits = *ref.find("decode_logits");
  std::vector<int32_t> positions;
  if (const Json* p = ref.find("prompt_logits_positions")) positions = testing::ints(*p);
  else
    for (size_t t = 0; t < prompt.size(); ++t) positions.push_back(static_cast<int32_t>(t));
  ASSERT_EQ(prompt_logits.items().size(), positions.size());

  KvStore kv(gpu.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  KvSequence* seq = nullptr;
  ASSERT_TRUE(kv.allocate(1, static_cast<int>(prompt.size() + gen.size()), &seq).ok);
  ForwardBatch batch;
  batch.tokens = prompt;
  batch.chunks.push_back(ForwardChunk{seq, 0, static_cast<int>(prompt.size()), LogitsMode::All});
  std::vector<float> logits;
  st = model->forward(batch, &logits);
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_EQ(logits.size(), prompt.size() * V);
  double worst = 0;
  for (size_t i = 0; i < positions.size(); ++i) {
    const size_t t = static_cast<size_t>(positions[i]);
    const std::vector<float> want = testing::floats(prompt_logits.items()[i]);
    const double e = testing::relative_error(logits.data() + t * V, want.data(), V);
    worst = std::max(worst, e);
    EXPECT_LT(e, kLogitTol) << name << " prompt position " << t;
  }
  int agree = 0;
  for (size_t i = 0; i < gen.size(); ++i) {
    std::vector<float> row;
    if (i == 0) {
      row.assign(logits.end() - static_cast<long>(V), logits.end());
    } else {
      ForwardBatch step;
      step.tokens = {gen[i - 1]};  // teacher-forced on HF's greedy tokens
      step.chunks.push_back(ForwardChunk{seq, seq->n_tokens, 1, LogitsMode::Last});
      st = model->forward(step, &row);
      ASSERT_TRUE(st.ok) << st.message;
    }
    const std::vector<float> want = testing::floats(decode_logits.items()[i]);
    const double e = testing::relative_error(row.data(), want.data(), V);
    worst = std::max(worst, e);
    EXPECT_LT(e, kLogitTol) << name << " decode step " << i;
    // The greedy token must match wherever the reference's top-2 margin is
    // wider than the bf16 logits tolerance; closer calls are near-ties that
    // bf16 rounding may flip.
    std::vector<float> sorted(want);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    double scale = 0;
    for (float x : want) scale = std::max(scale, std::fabs(static_cast<double>(x)));
    const bool clear = sorted[0] - sorted[1] > kLogitTol * scale;
    const bool same = argmax(row.data(), V) == gen[i];
    agree += same;
    if (clear) {
      EXPECT_TRUE(same) << name << " decode step " << i << ": clear-margin greedy token differs";
    }
  }
  std::printf("%s: worst logits error vs transformers %.2e, greedy agreement %d/%zu\n",
              name.c_str(), worst, agree, gen.size());
}

class CudaTinyModel : public ::testing::TestWithParam<const char*> {};

TEST_P(CudaTinyModel, LogitsMatchTransformers) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA GPU on this machine; run tools/gpu_test.sh";
  check_against_reference(fixture(GetParam()), GetParam());
}

// Larger random checkpoints made on the GPU machine by
// tools/make_random_weights.py --reference (head_dim 128, GQA, llama3 rope);
// tools/gpu_test.sh sets SPX_CUDA_MODEL_DIRS to a comma-separated list.
TEST(CudaModel, RandomCheckpointsMatchTransformers) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA GPU on this machine; run tools/gpu_test.sh";
  const char* dirs = std::getenv("SPX_CUDA_MODEL_DIRS");
  if (dirs == nullptr || *dirs == '\0') GTEST_SKIP() << "SPX_CUDA_MODEL_DIRS not set";
  std::string all = dirs;
  size_t begin = 0;
  while (begin <= all.size()) {
    const size_t end = std::min(all.find(',', begin), all.size());
    const std::string dir = all.substr(begin, end - begin);
    if (!dir.empty()) check_against_reference(dir, dir);
    begin = end + 1;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaTinyModel,
                         ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-qwen3"));

// Collects one request's tokens.
struct Collect : RequestSink {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  bool done = false;
  std::string error;
  void on_token(int32_t t) override {
    std::lock_guard<std::mutex> l(mu);
    tokens.push_back(t);
  }
  void on_done(const RequestStats&) override {
    std::lock_guard<std::mutex> l(mu);
    done = true;
    cv.notify_all();
  }
  void on_error(const std::string& m) override {
    std::lock_guard<std::mutex> l(mu);
    error = m;
    done = true;
    cv.notify_all();
  }
  bool wait() {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, std::chrono::seconds(60), [&] { return done; });
  }
};

std::vector<std::vector<int32_t>> generate(const std::string& device, const std::string& dir,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           int n_new, bool together) {
  EngineOptions o;
  o.model_dir = dir;
  o.device = device;
  o.max_batch = 8;
  Status st;
  auto engine = Engine::open(o, &st);
  EXPECT_TRUE(st.ok) << device << ": " << st.message;
  std::vector<std::vector<int32_t>> out;
  if (!engine) return out;
  std::vector<std::shared_ptr<Collect>> sinks;
  for (const auto& p : prompts) {
    GenerateRequest r;
    r.prompt = p;
    r.max_new_tokens = n_new;
    auto sink = std::make_shared<Collect>();
    engine->submit(r, sink, &st);
    EXPECT_TRUE(st.ok) << st.message;
    sinks.push_back(sink);
    if (!together) {
      EXPECT_TRUE(sink->wait());
    }
  }
  for (auto& s : sinks) {
    EXPECT_TRUE(s->wait());
    EXPECT_EQ(s->error, "");
    out.push_back(s->tokens);
  }
  engine->close();
  return out;
}

TEST(CudaEngine, GreedyTokensMatchCpuAndBatchedEqualsAlone) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA GPU on this machine; run tools/gpu_test.sh";
  const std::string dir = fixture("tiny-llama");
  const std::vector<std::vector<int32_t>> prompts = {
      {72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100},
      {84, 104, 101, 32, 119, 104, 97, 108, 101},
      {1, 2, 3},
      {65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81}};
  const int n_new = 32;
  const auto cpu = generate("cpu", dir, prompts, n_new, false);
  const auto gpu_alone = generate("cuda:0", dir, prompts, n_new, false);
  const auto gpu_batched = generate("cuda:0", dir, prompts, n_new, true);
  ASSERT_EQ(cpu.size(), prompts.size());
  ASSERT_EQ(gpu_alone.size(), prompts.size());
  ASSERT_EQ(gpu_batched.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    // bf16 on the GPU against f32 on the CPU: random tiny models hit
    // near-ties after a while (the first H200 run diverged after 9 to 22
    // tokens), so the first 8 must agree and the rest is reported.
    const size_t n = std::min(cpu[i].size(), gpu_alone[i].size());
    size_t common = 0;
    while (common < n && cpu[i][common] == gpu_alone[i][common]) ++common;
    std::printf("prompt %zu: cuda:0 and cpu agree on the first %zu of %zu greedy tokens\n", i,
                common, n);
    EXPECT_GE(common, 8u) << "prompt " << i << ": cuda:0 vs cpu";
    // Same backend, same kernels: batching must not change a request's tokens.
    EXPECT_EQ(gpu_batched[i], gpu_alone[i]) << "prompt " << i << ": batched vs alone";
  }
}

TEST(CudaEngine, BadDeviceIsAClearError) {
  EngineOptions o;
  o.model_dir = fixture("tiny-llama");
  o.device = "cuda:99";
  Status st;
  auto engine = Engine::open(o, &st);
  EXPECT_EQ(engine, nullptr);
  EXPECT_FALSE(st.ok);
  EXPECT_NE(st.message.find("cuda:99"), std::string::npos) << st.message;
}

}  // namespace
}  // namespace spx
#endif  // SPX_HAVE_CUDA
