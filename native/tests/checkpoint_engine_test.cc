// Checkpoints through the Engine API: a request checkpointed mid-generation,
// "killed" (cancelled, its engine closed), then restored into a fresh engine,
// continues with exactly the tokens of an uninterrupted run - greedy and
// seeded sampling, alone and inside a running batch. A corrupt, foreign or
// missing checkpoint falls back to prefill with the same tokens.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "checkpoint/kv_checkpoint.h"
#include "collect_sink.h"
#include "test_util.h"

namespace spx {
namespace {

using testing::CollectSink;
using testing::fixture;

class CkptSink : public CollectSink {
 public:
  std::function<void(const CheckpointEvent&)> on_ckpt;
  void on_checkpoint(const CheckpointEvent& e) override {
    {
      std::lock_guard<std::mutex> lk(m_);
      events_.push_back(e);
    }
    if (on_ckpt) on_ckpt(e);
  }
  std::vector<CheckpointEvent> events() {
    std::lock_guard<std::mutex> lk(m_);
    return events_;
  }

 private:
  std::mutex m_;
  std::vector<CheckpointEvent> events_;
};

std::string smollm2_dir() {
  if (const char* env = std::getenv("SPX_SMOLLM2_DIR")) return env;
  return std::string(SPX_FIXTURES_DIR) + "/../../models/smollm2-135m-instruct";
}

std::unique_ptr<Engine> open_engine(const std::string& dir, int max_batch = 4, const std::string& dlm_dir = "",
                                   int dlm_layers = 0) {
  EngineOptions o;
  o.model_dir = dir;
  o.dlm_dir = dlm_dir;
  o.dlm_layers = dlm_layers;
  o.threads = 2;
  o.max_batch = max_batch;
  Status st;
  auto e = Engine::open(o, &st);
  EXPECT_TRUE(st.ok) << st.message;
  return e;
}

std::string temp(const std::string& name) {
  return ::testing::TempDir() + "/spx-ckpt-engine-" + name + "-" + std::to_string(::getpid());
}

std::vector<int32_t> run(Engine* e, const GenerateRequest& r, RequestStats* stats = nullptr) {
  auto sink = std::make_shared<CkptSink>();
  Status st;
  e->submit(r, sink, &st);
  EXPECT_TRUE(st.ok) << st.message;
  EXPECT_TRUE(sink->wait(120));
  EXPECT_EQ(sink->error(), "");
  if (stats) *stats = sink->stats();
  return sink->tokens();
}

// Runs `r` with checkpoints every `every` tokens; when a checkpoint with at
// least `kill_after` generated tokens lands, copies the file aside (what
// survives the process) and cancels the request. Returns the tokens it had
// generated at that checkpoint.
//
// A tiny model decodes its whole request in ~100 ms, and on a loaded 2-core
// machine (ctest -j 2 beside the SmolLM2 suites) the writer thread can be
// starved that long, so no checkpoint past `kill_after` would land before the
// end. Past `kill_after` tokens each token therefore sleeps 25 ms on the
// engine thread, which gives the writer time. (A wait on the event itself
// would deadlock: the engine thread is the one that delivers it.)
std::vector<int32_t> run_until_killed(Engine* e, GenerateRequest r, const std::string& path,
                                      const std::string& saved, int every, int kill_after,
                                      CheckpointEvent* at) {
  r.checkpoint.path = path;
  r.checkpoint.every_tokens = every;
  auto sink = std::make_shared<CkptSink>();
  std::atomic<bool> killed{false};
  uint64_t id = 0;
  sink->on_ckpt = [&](const CheckpointEvent& ev) {
    if (killed || !ev.ok || ev.generated < kill_after) return;
    killed = true;
    *at = ev;
    std::filesystem::copy_file(path, saved, std::filesystem::copy_options::overwrite_existing);
    e->cancel(id);
  };
  sink->on_each = [&](int32_t, size_t n) {
    if (!killed && n >= static_cast<size_t>(kill_after))
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
  };
  Status st;
  id = e->submit(r, sink, &st);
  EXPECT_TRUE(st.ok) << st.message;
  EXPECT_TRUE(sink->wait(120));
  EXPECT_TRUE(killed.load()) << "no checkpoint reached " << kill_after << " tokens";
  std::vector<int32_t> got = sink->tokens();
  got.resize(static_cast<size_t>(at->generated));
  return got;
}

GenerateRequest resumed(const GenerateRequest& original, const std::vector<int32_t>& done,
                        const std::string& path) {
  GenerateRequest r = original;
  r.prompt.insert(r.prompt.end(), done.begin(), done.end());
  r.max_new_tokens = original.max_new_tokens - static_cast<int>(done.size());
  r.checkpoint.path = path;
  r.checkpoint.restore = true;
  r.checkpoint.resumed_generated = static_cast<int>(done.size());
  return r;
}

GenerateRequest tiny_request() {
  Json ref = testing::load_json(fixture("tiny-llama") + "/reference.json");
  GenerateRequest r;
  r.prompt = testing::ints(*ref.find("prompt_ids"));
  // Long enough that checkpoints land before the end even when the writer
  // thread is starved on a busy machine.
  r.max_new_tokens = 160;
  return r;
}

void expect_resume_matches(const std::string& dir, GenerateRequest req, int every, int kill_after) {
  auto engine = open_engine(dir);
  ASSERT_TRUE(engine);
  const std::vector<int32_t> full = run(engine.get(), req);
  ASSERT_EQ(full.size(), static_cast<size_t>(req.max_new_tokens));

  const std::string path = temp("live"), saved = temp("saved");
  CheckpointEvent at;
  std::vector<int32_t> done = run_until_killed(engine.get(), req, path, saved, every, kill_after, &at);
  engine->close();
  ASSERT_EQ(done, std::vector<int32_t>(full.begin(), full.begin() + static_cast<long>(done.size())));
  EXPECT_EQ(at.tokens, static_cast<int>(req.prompt.size() + done.size()) - 1);
  EXPECT_GT(at.bytes, 0u);

  // A new engine, as in a new worker process.
  auto fresh = open_engine(dir);
  ASSERT_TRUE(fresh);
  RequestStats stats;
  std::vector<int32_t> rest = run(fresh.get(), resumed(req, done, saved), &stats);
  EXPECT_EQ(stats.restore_error, "");
  EXPECT_EQ(stats.restored_tokens, at.tokens);
  done.insert(done.end(), rest.begin(), rest.end());
  EXPECT_EQ(done, full);
  std::remove(path.c_str());
  std::remove(saved.c_str());
}

TEST(CheckpointEngine, GreedyResumeEqualsUninterrupted) {
  expect_resume_matches(fixture("tiny-llama"), tiny_request(), 8, 17);
}

TEST(CheckpointEngine, SampledResumeEqualsUninterruptedWithTheSameSeed) {
  GenerateRequest r = tiny_request();
  r.sampling.temperature = 0.9f;
  r.sampling.top_k = 20;
  r.sampling.seed = 1234;
  expect_resume_matches(fixture("tiny-qwen2"), r, 5, 11);
}

// Sparse requests: the retrieval head's state (its own layers' K/V below the
// scoring layer and its scoring K) travels in the checkpoint (format version
// 2), so the resumed selection, and with it the output, equals the
// uninterrupted sparse run's.
void expect_sparse_resume_matches(const std::string& model, GenerateRequest req, const std::string& dlm_dir,
                                  int dlm_layers, int kill_after, bool also_headless = true) {
  auto engine = open_engine(model, 4, dlm_dir, dlm_layers);
  ASSERT_TRUE(engine);
  const std::vector<int32_t> full = run(engine.get(), req);
  ASSERT_EQ(full.size(), static_cast<size_t>(req.max_new_tokens));
  const std::string path = temp("sparse"), saved = temp("sparse-saved");
  CheckpointEvent at;
  std::vector<int32_t> done = run_until_killed(engine.get(), req, path, saved, 8, kill_after, &at);
  ASSERT_GT(engine->stats().sparse_steps, 0u);
  engine->close();
  ASSERT_EQ(done, std::vector<int32_t>(full.begin(), full.begin() + static_cast<long>(done.size())));
  std::printf("sparse checkpoint: %d tokens, file %llu bytes (%.0f per token), last write %llu bytes, stall %.3f ms\n",
              at.tokens, static_cast<unsigned long long>(at.file_bytes),
              static_cast<double>(at.file_bytes) / at.tokens, static_cast<unsigned long long>(at.bytes), at.stall_ms);

  auto fresh = open_engine(model, 4, dlm_dir, dlm_layers);
  ASSERT_TRUE(fresh);
  RequestStats stats;
  std::vector<int32_t> rest = run(fresh.get(), resumed(req, done, saved), &stats);
  EXPECT_EQ(stats.restore_error, "");
  EXPECT_EQ(stats.restored_tokens, at.tokens);
  EXPECT_GT(fresh->stats().sparse_steps, 0u);
  done.insert(done.end(), rest.begin(), rest.end());
  EXPECT_EQ(done, full);
  if (!also_headless) {
    for (const std::string& p : {path, saved}) std::remove(p.c_str());
    return;
  }

  // A checkpoint without the head's state (a request without a budget wrote
  // it) is refused by a sparse request, which recomputes to the same tokens.
  GenerateRequest dense = req;
  dense.budget = 0;
  const std::string dense_path = temp("dense"), dense_saved = temp("dense-saved");
  CheckpointEvent dense_at;
  std::vector<int32_t> dense_done =
      run_until_killed(fresh.get(), dense, dense_path, dense_saved, 8, 9, &dense_at);
  std::vector<int32_t> again = run(fresh.get(), resumed(req, dense_done, dense_saved), &stats);
  EXPECT_NE(stats.restore_error.find("geometry mismatch"), std::string::npos) << stats.restore_error;
  EXPECT_EQ(stats.restored_tokens, 0);
  for (const std::string& p : {path, saved, dense_path, dense_saved}) std::remove(p.c_str());
}

GenerateRequest tiny_sparse_request() {
  GenerateRequest r = tiny_request();
  r.budget = 24;  // below the context from the 13th generated token on
  return r;
}

TEST(CheckpointEngine, SparseResumeEqualsUninterruptedSelfDerivedHead) {
  expect_sparse_resume_matches(fixture("tiny-llama"), tiny_sparse_request(), "", 2, 33);
}

TEST(CheckpointEngine, SparseResumeEqualsUninterruptedSeparateDlm) {
  expect_sparse_resume_matches(fixture("tiny-llama"), tiny_sparse_request(), fixture("tiny-llama-bf16-sharded"), 0,
                               33);
}

// An EAGLE-3 head: its K cache and the target's aux row of the last position.
TEST(CheckpointEngine, SparseResumeEqualsUninterruptedEagle3Head) {
  expect_sparse_resume_matches(fixture("tiny-eagle3/target"), tiny_sparse_request(), fixture("tiny-eagle3/draft"), 0,
                               33);
}

TEST(CheckpointEngine, RestoreJoinsARunningBatch) {
  auto engine = open_engine(fixture("tiny-qwen3"));
  ASSERT_TRUE(engine);
  GenerateRequest req = tiny_request();
  const std::vector<int32_t> full = run(engine.get(), req);
  const std::string path = temp("batch"), saved = temp("batch-saved");
  CheckpointEvent at;
  std::vector<int32_t> done = run_until_killed(engine.get(), req, path, saved, 4, 9, &at);
  // Another request keeps decoding while the restored one joins.
  GenerateRequest other = tiny_request();
  other.max_new_tokens = 200;
  auto other_sink = std::make_shared<CkptSink>();
  Status st;
  engine->submit(other, other_sink, &st);
  ASSERT_TRUE(st.ok);
  RequestStats stats;
  std::vector<int32_t> rest = run(engine.get(), resumed(req, done, saved), &stats);
  ASSERT_TRUE(other_sink->wait());
  EXPECT_EQ(stats.restored_tokens, at.tokens);
  done.insert(done.end(), rest.begin(), rest.end());
  EXPECT_EQ(done, full);
  std::remove(path.c_str());
  std::remove(saved.c_str());
}

// Bad files: the request still completes with the same tokens, by prefill,
// and says why the checkpoint was not used.
void expect_fallback(const std::string& model_for_file, const std::string& corrupt_how,
                     const std::string& reason) {
  auto engine = open_engine(fixture("tiny-llama"));
  ASSERT_TRUE(engine);
  GenerateRequest req = tiny_request();
  const std::vector<int32_t> full = run(engine.get(), req);
  const std::string path = temp("fb"), saved = temp("fb-saved");
  CheckpointEvent at;
  std::vector<int32_t> done;
  if (model_for_file == "tiny-llama") {
    done = run_until_killed(engine.get(), req, path, saved, 8, 9, &at);
  } else {
    auto other = open_engine(fixture(model_for_file));
    done = run_until_killed(other.get(), req, path, saved, 8, 9, &at);
  }
  if (corrupt_how == "flip") {
    std::fstream f(saved, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x7f');
  } else if (corrupt_how == "truncate") {
    std::filesystem::resize_file(saved, std::filesystem::file_size(saved) - 100);
  } else if (corrupt_how == "version") {
    std::fstream f(saved, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.put('\x09');
  } else if (corrupt_how == "delete") {
    std::remove(saved.c_str());
  }
  RequestStats stats;
  GenerateRequest again = resumed(req, done, saved);
  std::vector<int32_t> rest = run(engine.get(), again, &stats);
  EXPECT_NE(stats.restore_error.find(reason), std::string::npos) << stats.restore_error;
  EXPECT_EQ(stats.restored_tokens, 0);
  // The fallback is exactly a plain prefill of the same prompt. It is not
  // compared with `full`: prefilling sampled tokens and decoding them are
  // different float paths, and the tiny random models have near-tied logits
  // that flip between them (seen in CI at a kill point past 16 tokens).
  again.checkpoint = CheckpointSpec{};
  EXPECT_EQ(rest, run(engine.get(), again));
  if (model_for_file == "tiny-llama") {
    EXPECT_EQ(done, std::vector<int32_t>(full.begin(), full.begin() + static_cast<long>(done.size())));
  }
  std::remove(path.c_str());
  std::remove(saved.c_str());
}

TEST(CheckpointEngine, CorruptPayloadFallsBackToPrefill) { expect_fallback("tiny-llama", "flip", "checksum"); }
TEST(CheckpointEngine, TruncatedFallsBackToPrefill) { expect_fallback("tiny-llama", "truncate", "truncated"); }
TEST(CheckpointEngine, WrongVersionFallsBackToPrefill) { expect_fallback("tiny-llama", "version", "version 9"); }
TEST(CheckpointEngine, MissingFallsBackToPrefill) { expect_fallback("tiny-llama", "delete", "missing"); }
TEST(CheckpointEngine, OtherModelsCheckpointIsRejected) {
  // Same geometry, other weights (bf16 shards): the identity differs.
  expect_fallback("tiny-llama-bf16-sharded", "", "model hash mismatch");
}

// Rewrites a checkpoint as one version-3 segment with bf16 KV rows (what
// the CUDA backend writes), so a CPU engine can restore it.
void rewrite_as_bf16(const std::string& from, const std::string& to, uint64_t identity, const CheckpointGeometry& g) {
  CheckpointReader r;
  Status st = r.open(from, identity, g);
  ASSERT_TRUE(st.ok) << st.message;
  const int n = r.tokens();
  const size_t elems = static_cast<size_t>(g.kv_heads) * n * g.head_dim;
  std::vector<std::vector<uint16_t>> rows;
  SegmentSource s;
  s.from = 0;
  s.to = n;
  s.tokens = r.token_ids().data();
  s.next_token = r.next_token();
  s.generated = r.generated();
  s.draws = r.draws();
  std::vector<float> f(elems);
  for (int block = 0; block < 2 * g.layers; ++block) {
    if (block % 2 == 0) r.copy_k(block / 2, f.data(), n);
    else r.copy_v(block / 2, f.data(), n);
    rows.emplace_back(elems);
    convert_kv(f.data(), DType::F32, rows.back().data(), DType::BF16, elems);
  }
  for (int l = 0; l < g.layers; ++l) {
    s.k.push_back(CacheRows{rows[static_cast<size_t>(2 * l)].data(), n});
    s.v.push_back(CacheRows{rows[static_cast<size_t>(2 * l + 1)].data(), n});
  }
  CheckpointHeader h = r.header();
  h.version = kCheckpointVersion;
  h.kv_dtype = DType::BF16;
  const int fd = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  st = write_checkpoint_header(fd, h);
  uint64_t bytes = 0;
  if (st.ok) st = append_checkpoint_segment(fd, g, s, &bytes, DType::BF16);
  ::close(fd);
  ASSERT_TRUE(st.ok) << st.message;
}

// A bf16 file (from a GPU worker) restores into the CPU backend's f32 cache,
// widened exactly; the restored request's next checkpoint starts the file
// again in f32 rather than appending f32 rows to a bf16 file.
TEST(CheckpointEngine, Bf16FileRestoresIntoTheCpuCache) {
  const GenerateRequest req = tiny_request();
  auto engine = open_engine(fixture("tiny-llama"));
  ASSERT_TRUE(engine);
  const ModelInfo m = engine->info();
  const CheckpointGeometry g{m.num_layers, m.num_kv_heads, m.head_dim, 0, 0};
  const std::string path = temp("b16live"), saved = temp("b16saved"), b16 = temp("b16");
  CheckpointEvent at;
  std::vector<int32_t> done = run_until_killed(engine.get(), req, path, saved, 8, 17, &at);
  rewrite_as_bf16(saved, b16, engine->identity(), g);

  GenerateRequest again = resumed(req, done, b16);
  again.checkpoint.every_tokens = 4;
  RequestStats stats;
  std::vector<int32_t> rest = run(engine.get(), again, &stats);
  EXPECT_EQ(stats.restore_error, "");
  EXPECT_EQ(stats.restored_tokens, at.tokens);
  EXPECT_EQ(rest.size(), static_cast<size_t>(again.max_new_tokens));
  const uint64_t identity = engine->identity();
  engine->close();  // the writer has finished the file

  CheckpointReader f32_file, after;
  ASSERT_TRUE(f32_file.open(saved, identity, g).ok);
  Status st = after.open(b16, identity, g);
  ASSERT_TRUE(st.ok) << st.message;
  EXPECT_EQ(after.kv_dtype(), DType::F32);
  EXPECT_GT(after.tokens(), at.tokens);
  // Its first rows are the restored cache's: the f32 values rounded to bf16 and widened back.
  const int n = at.tokens;
  const size_t elems = static_cast<size_t>(g.kv_heads) * n * g.head_dim;
  const int cap = after.tokens();  // copy_k fills every position the file holds
  const size_t row = static_cast<size_t>(n) * g.head_dim;
  std::vector<float> orig(elems), got(static_cast<size_t>(g.kv_heads) * cap * g.head_dim), want(elems);
  std::vector<uint16_t> b(elems);
  int rounded = 0;
  for (int l = 0; l < g.layers; ++l) {
    f32_file.copy_k(l, orig.data(), n);
    convert_kv(orig.data(), DType::F32, b.data(), DType::BF16, elems);
    convert_kv(b.data(), DType::BF16, want.data(), DType::F32, elems);
    after.copy_k(l, got.data(), cap);
    for (int h = 0; h < g.kv_heads; ++h)
      ASSERT_TRUE(std::equal(want.begin() + h * row, want.begin() + (h + 1) * row,
                             got.begin() + static_cast<size_t>(h) * cap * g.head_dim))
          << "K layer " << l << " head " << h;
    for (size_t i = 0; i < elems; ++i) rounded += orig[i] != want[i];
  }
  EXPECT_GT(rounded, 0) << "bf16 rounding changed nothing: the test would not notice a missing conversion";
  for (const std::string& p : {path, saved, b16}) std::remove(p.c_str());
}

TEST(CheckpointEngine, CheckpointNowWritesTheCurrentState) {
  auto engine = open_engine(fixture("tiny-llama"));
  ASSERT_TRUE(engine);
  GenerateRequest req = tiny_request();
  req.max_new_tokens = 200;
  req.checkpoint.path = temp("now");  // no cadence: only on demand
  auto sink = std::make_shared<CkptSink>();
  uint64_t id = 0;
  std::atomic<int> asked{0};
  sink->on_each = [&](int32_t, size_t n) {
    if (n == 20 && asked++ == 0) engine->checkpoint_now(id);
  };
  Status st;
  id = engine->submit(req, sink, &st);
  ASSERT_TRUE(st.ok);
  ASSERT_TRUE(sink->wait());
  auto events = sink->events();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_TRUE(events[0].ok) << events[0].message;
  EXPECT_GE(events[0].generated, 20);
  EXPECT_EQ(sink->stats().checkpoints, 1);
  std::remove(req.checkpoint.path.c_str());
}

TEST(CheckpointEngine, RejectsBadSpecs) {
  auto engine = open_engine(fixture("tiny-llama"));
  ASSERT_TRUE(engine);
  GenerateRequest r = tiny_request();
  r.checkpoint.restore = true;  // without a path
  Status st;
  EXPECT_EQ(engine->submit(r, std::make_shared<CkptSink>(), &st), 0u);
  EXPECT_NE(st.message.find("needs a path"), std::string::npos) << st.message;
  r = tiny_request();
  r.checkpoint.every_tokens = -1;
  engine->submit(r, std::make_shared<CkptSink>(), &st);
  EXPECT_FALSE(st.ok);
}

TEST(CheckpointEngine, SmolLM2GreedyResumeEqualsUninterrupted) {
  struct stat sb;
  if (stat((smollm2_dir() + "/model.safetensors").c_str(), &sb) != 0) GTEST_SKIP() << "no SmolLM2";
  GenerateRequest r;
  // "The capital of France is" style prompt as ids is tokenizer work; any
  // in-vocabulary ids exercise the same KV path.
  for (int i = 0; i < 300; ++i) r.prompt.push_back(1000 + (i * 37) % 20000);
  r.max_new_tokens = 40;
  expect_resume_matches(smollm2_dir(), r, 8, 13);
}

// The recommended head (7 of 30 layers): its 6 lower layers' K/V and the
// scoring K travel with the target's KV.
TEST(CheckpointEngine, SmolLM2SparseResumeEqualsUninterrupted) {
  struct stat sb;
  if (stat((smollm2_dir() + "/model.safetensors").c_str(), &sb) != 0) GTEST_SKIP() << "no SmolLM2";
  GenerateRequest r;
  for (int i = 0; i < 300; ++i) r.prompt.push_back(1000 + (i * 37) % 20000);
  r.max_new_tokens = 40;
  r.budget = 128;
  expect_sparse_resume_matches(smollm2_dir(), r, "", 0, 13, false);
}

}  // namespace
}  // namespace spx
