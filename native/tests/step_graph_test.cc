// The transformer's side of the recorded decode step (backend.h, StepGraph)
// without a GPU: a CPU backend whose StepGraph records the step's calls as
// closures and replays them with the replayed step's inputs, the contract the
// CUDA backend keeps (cuda_graph_test checks that one on the GPU). Checks:
// - replayed steps give the eager logits bit for bit while the batch grows,
//   shrinks and changes caches, with one capture per shape;
// - a capture, or the inputs' copy, that fails runs that step eagerly (same
//   logits), is counted, and turns graphs off for the model; nothing aborts.
#include <gtest/gtest.h>

#include <functional>

#include "backend/registry.h"
#include "decode_schedule.h"
#include "test_util.h"

namespace spx {
namespace {

using testing::fixture;
using testing::Trace;

enum class Refuse { Nothing, Capture, Inputs };

class RecordingCpu final : public Backend, public StepGraph {
 public:
  explicit RecordingCpu(Refuse refuse) : cpu_(make_cpu_backend(1)), refuse_(refuse) {}
  std::string name() const override { return "cpu+graph"; }

  Status alloc(const std::vector<int64_t>& s, DType d, Tensor* o) override {
    return recording_ ? refused("alloc") : cpu_->alloc(s, d, o);
  }
  Status upload(const float* h, Tensor* d) override {
    return recording_ ? refused("upload") : cpu_->upload(h, d);
  }
  Status download(const Tensor& s, float* h) override {
    return recording_ ? refused("download") : cpu_->download(s, h);
  }
  // While recording, tensors are kept by value (the forward's views are
  // locals) and per-step values come from the inputs at replay.
  void embedding(const Tensor& t, const int32_t* ids, int n, Tensor* o) override {
    if (!recording_) return cpu_->embedding(t, ids, n, o);
    record([this, t, n, o = *o]() mutable { cpu_->embedding(t, ids_.data(), n, &o); });
  }
  void matmul(const Tensor& x, const Tensor& w, const Tensor* b, Tensor* y) override {
    if (!recording_) return cpu_->matmul(x, w, b, y);
    const bool has_b = b != nullptr;
    record([this, x, w, bias = has_b ? *b : Tensor(), has_b, y = *y]() mutable {
      cpu_->matmul(x, w, has_b ? &bias : nullptr, &y);
    });
  }
  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* y) override {
    if (!recording_) return cpu_->rmsnorm(x, w, eps, y);
    record([this, x, w, eps, y = *y]() mutable { cpu_->rmsnorm(x, w, eps, &y); });
  }
  void add(Tensor* x, const Tensor& y) override {
    if (!recording_) return cpu_->add(x, y);
    record([this, x = *x, y]() mutable { cpu_->add(&x, y); });
  }
  void rope(Tensor* x, const Tensor& c, const Tensor& s) override {
    if (!recording_) return cpu_->rope(x, c, s);
    record([this, x = *x, c, s]() mutable { cpu_->rope(&x, c, s); });
  }
  void swiglu(const Tensor& g, const Tensor& u, Tensor* o) override {
    if (!recording_) return cpu_->swiglu(g, u, o);
    record([this, g, u, o = *o]() mutable { cpu_->swiglu(g, u, &o); });
  }
  void kv_write(const Tensor& k, const Tensor& v, int p, Tensor* kc, Tensor* vc) override {
    if (recording_) return fail("kv_write (a decode step writes through kv_write_rows)");
    cpu_->kv_write(k, v, p, kc, vc);
  }
  void kv_write_rows(const Tensor& k, const Tensor& v, const std::vector<KvRowWrite>& rows) override {
    if (!recording_) return cpu_->kv_write_rows(k, v, rows);
    record([this, k, v, rows = rows]() mutable {
      for (size_t i = 0; i < rows.size(); ++i) rows[i].position = pos_[i];
      cpu_->kv_write_rows(k, v, rows);
    });
  }
  void attention(const Tensor& q, const std::vector<AttentionSegment>& s, float sc, Tensor* o) override {
    if (!recording_) return cpu_->attention(q, s, sc, o);
    for (const AttentionSegment& g : s)
      if (g.n_q != 1 || g.selection != nullptr) return fail("attention that is not dense decode");
    record([this, q, s = s, sc, o = *o]() mutable {
      for (AttentionSegment& g : s) g.start_pos = pos_[static_cast<size_t>(g.q_begin)];
      cpu_->attention(q, s, sc, &o);
    });
  }
  void gather_rows(const Tensor& x, const std::vector<int32_t>& r, Tensor* o) override {
    if (recording_) return fail("gather_rows");
    cpu_->gather_rows(x, r, o);
  }
  StepGraph* step_graph() override { return this; }

  // ---- StepGraph
  Status set_inputs(const DecodeStepInputs& in) override {
    if (refuse_ == Refuse::Inputs) return Status::Error("test: no memory for the step inputs");
    const size_t n = static_cast<size_t>(in.n), t = n * static_cast<size_t>(in.half);
    ids_.assign(in.ids, in.ids + n);
    pos_.assign(in.positions, in.positions + n);
    cos_.assign(in.cos, in.cos + t);
    sin_.assign(in.sin, in.sin + t);
    return Status::Ok();
  }
  bool has(const std::vector<uint64_t>& key) const override { return !ops_.empty() && key == key_; }
  Status begin_capture() override {
    ops_.clear();
    key_.clear();
    why_.clear();
    recording_ = true;
    return Status::Ok();
  }
  Status end_capture(const std::vector<uint64_t>& key) override {
    recording_ = false;
    if (refuse_ == Refuse::Capture) fail("test: this backend refuses every capture");
    if (!why_.empty()) {
      ops_.clear();
      return Status::Error(why_);
    }
    key_ = key;
    return Status::Ok();
  }
  Status replay() override {
    for (auto& op : ops_) op();
    return Status::Ok();
  }
  void rope_tables(Tensor* cos, Tensor* sin) override {
    record([this, c = *cos, s = *sin]() mutable {
      cpu_->upload(cos_.data(), &c);
      cpu_->upload(sin_.data(), &s);
    });
  }

 private:
  void record(std::function<void()> op) { ops_.push_back(std::move(op)); }
  void fail(const std::string& why) {
    if (why_.empty()) why_ = why + " while recording";
  }
  Status refused(const std::string& what) {
    fail(what);
    return Status::Error(what + " while recording a decode step");
  }

  std::unique_ptr<Backend> cpu_;
  Refuse refuse_;
  bool recording_ = false;
  std::string why_;
  std::vector<std::function<void()>> ops_;
  std::vector<uint64_t> key_;
  std::vector<int32_t> ids_, pos_;
  std::vector<float> cos_, sin_;
};

Trace run_schedule(const std::string& dir, bool graphs, Refuse refuse, bool* graphs_after) {
  Trace t;
  RecordingCpu be(refuse);
  testing::Schedule s(&be, dir, graphs, 40);
  s.run(&t);
  if (graphs_after && s.model()) *graphs_after = s.model()->step_graphs();
  return t;
}

TEST(StepGraph, ReplayedStepsEqualEagerBitForBit) {
  for (const char* name : {"tiny-llama", "tiny-qwen2", "tiny-qwen3"}) {
    SCOPED_TRACE(name);
    const Trace eager = run_schedule(fixture(name), false, Refuse::Nothing, nullptr);
    const Trace graph = run_schedule(fixture(name), true, Refuse::Nothing, nullptr);
    ASSERT_NO_FATAL_FAILURE(testing::expect_same_logits(eager, graph));
    testing::expect_schedule_counts(eager, graph);
  }
}

TEST(StepGraph, FailuresRunTheStepEagerlyAndTurnGraphsOff) {
  const std::string dir = fixture("tiny-llama");
  const Trace eager = run_schedule(dir, false, Refuse::Nothing, nullptr);
  for (Refuse refuse : {Refuse::Capture, Refuse::Inputs}) {
    SCOPED_TRACE(refuse == Refuse::Capture ? "capture refused" : "inputs refused");
    bool graphs_after = true;
    const Trace failed = run_schedule(dir, true, refuse, &graphs_after);
    ASSERT_NO_FATAL_FAILURE(testing::expect_same_logits(eager, failed));
    EXPECT_EQ(failed.stats.failures, 1u);
    EXPECT_EQ(failed.stats.captures, 0u);
    EXPECT_EQ(failed.stats.replays, 0u);
    EXPECT_FALSE(graphs_after);
  }
}

}  // namespace
}  // namespace spx
