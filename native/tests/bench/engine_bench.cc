// Prefill / decode throughput of the engine on a real checkpoint (not a test).
//
//   engine_bench MODEL_DIR [--context N] [--requests R] [--new M] [--threads T]
//                [--chunk C] [--device cpu|cuda:N] [--graphs 0|1]
//                [--budget B] [--dlm-layers k] [--dlm DIR] [--sparse-graphs 0|1]
//
// --budget B makes every request a SpeContext request (GenerateRequest::budget);
// --dlm-layers / --dlm pick its retrieval head (EngineOptions; none: the
// product's recommended head, retrieval/head_choice.h).
//
// Prompts are seeded pseudo-random token ids (speed does not depend on the
// text). Prints one JSON line:
//   prefill_tokens_per_s   all prompt tokens / time until the last request's
//                          first token (the batch's prefill phase);
//   decode_tokens_per_s    tokens generated after every request has its first
//                          token / that window (steady-state batched decode,
//                          all requests in the batch);
//   *_per_request          the engine's own RequestStats, averaged;
//   decode_ms_per_step     requests / decode_tokens_per_s (one batched step);
//   graph_*                CUDA graphs of the dense decode step (--graphs 0
//                          sets SPX_CUDA_GRAPHS=0: every step eager);
//   steady_*               the steps while every request of the batch is
//                          decoding (after the last first token, until the
//                          first request ends): batch-R decode steps only,
//                          also when a small --chunk staggers the prefills;
//   host_argmax_ms_per_step  R greedy argmaxes over random full-vocabulary
//                          rows on this host (what the engine does per step
//                          after downloading the logits), timed here alone;
//   sparse_* ... exposed_transfer_ms  the EngineStats SpeContext counters.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../collect_sink.h"
#include "sampling/sampler.h"

using namespace spx;

// Process CPU seconds: on a shared machine wall time alone says little.
static double cpu_seconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

// Steps while the whole batch decodes: from the last request's first token
// to the first request's last one, counted on the request that started last.
struct SteadyWindow {
  int steps = 0;
  double mean_ms = 0, median_ms = 0;
};

template <typename TimePoint>
static SteadyWindow steady_window(const std::vector<std::vector<TimePoint>>& times) {
  SteadyWindow w;
  const std::vector<TimePoint>* last = nullptr;
  TimePoint end{};
  bool any = false;
  for (const auto& tv : times) {
    if (tv.empty()) return w;  // a request produced nothing: no window
    if (!last || tv.front() > last->front()) last = &tv;
    if (!any || tv.back() < end) end = tv.back();
    any = true;
  }
  if (!last || last->size() < 2) return w;
  auto ms = [](TimePoint a, TimePoint b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  std::vector<double> all;
  for (size_t i = 1; i < last->size(); ++i) all.push_back(ms((*last)[i - 1], (*last)[i]));
  std::vector<double> sorted = all;
  std::sort(sorted.begin(), sorted.end());
  // Tokens of one step reach the sinks microseconds apart: a step of `last`
  // ending within a quarter step after `end` is still the step `end` ended.
  const double slack = std::min(1.0, 0.25 * sorted[sorted.size() / 2]);
  std::vector<double> in;
  for (size_t i = 1; i < last->size(); ++i)
    if (ms(end, (*last)[i]) <= slack) in.push_back(all[i - 1]);
  if (in.empty()) return w;
  w.steps = static_cast<int>(in.size());
  for (double x : in) w.mean_ms += x / in.size();
  std::sort(in.begin(), in.end());
  w.median_ms = in[in.size() / 2];
  return w;
}

// What the engine's host does per step after the logits download: one
// greedy argmax per request over the full vocabulary (f32).
static double host_argmax_ms(int requests, int vocab) {
  std::vector<float> logits(static_cast<size_t>(requests) * vocab);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-10.f, 10.f);
  for (float& x : logits) x = u(rng);
  Sampler s(SamplingParams{});
  int32_t sink = 0;
  const int reps = 20;
  const auto t0 = std::chrono::steady_clock::now();
  for (int k = 0; k < reps; ++k)
    for (int r = 0; r < requests; ++r) sink ^= s.sample(logits.data() + static_cast<size_t>(r) * vocab, vocab);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (sink == -12345) std::fprintf(stderr, " ");  // keep the loop
  return ms / reps;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: engine_bench MODEL_DIR [--context N] [--requests R] [--new M] [--threads T] "
                 "[--chunk C] [--device D] [--graphs 0|1] [--budget B] [--dlm-layers k] [--dlm DIR] "
                 "[--sparse-graphs 0|1]\n");
    return 2;
  }
  EngineOptions o;
  o.model_dir = argv[1];
  int context = 512, requests = 1, new_tokens = 32, budget = 0;
  for (int i = 2; i < argc; i += 2) {
    if (i + 1 >= argc) {
      std::fprintf(stderr, "engine_bench: option %s needs a value\n", argv[i]);
      return 2;
    }
    if (!std::strcmp(argv[i], "--device")) {
      o.device = argv[i + 1];
      continue;
    }
    if (!std::strcmp(argv[i], "--dlm")) {
      o.dlm_dir = argv[i + 1];
      continue;
    }
    if (!std::strcmp(argv[i], "--graphs")) {
      setenv("SPX_CUDA_GRAPHS", argv[i + 1], 1);  // read when the model loads
      continue;
    }
    if (!std::strcmp(argv[i], "--sparse-graphs")) {
      setenv("SPX_SPARSE_GRAPHS", argv[i + 1], 1);  // read when the model loads
      continue;
    }
    const int v = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--context")) context = v;
    else if (!std::strcmp(argv[i], "--requests")) requests = v;
    else if (!std::strcmp(argv[i], "--new")) new_tokens = v;
    else if (!std::strcmp(argv[i], "--threads")) o.threads = v;
    else if (!std::strcmp(argv[i], "--chunk")) o.prefill_chunk = v;
    else if (!std::strcmp(argv[i], "--budget")) budget = v;
    else if (!std::strcmp(argv[i], "--dlm-layers")) o.dlm_layers = v;
    else {
      std::fprintf(stderr, "engine_bench: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (context < 1 || requests < 1 || new_tokens < 1 || budget < 0) {
    std::fprintf(stderr, "engine_bench: --context, --requests and --new must be >= 1, --budget >= 0\n");
    return 2;
  }
  o.max_batch = std::max(o.max_batch, requests);
  Status st;
  auto t0 = std::chrono::steady_clock::now();
  auto engine = Engine::open(o, &st);
  if (!engine) {
    std::fprintf(stderr, "open failed: %s\n", st.message.c_str());
    return 1;
  }
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int vocab = engine->info().vocab_size;
  std::mt19937_64 rng(1234);
  using Clock = std::chrono::steady_clock;
  std::vector<std::shared_ptr<testing::CollectSink>> sinks;
  std::vector<std::vector<Clock::time_point>> times(static_cast<size_t>(requests));
  auto start = Clock::now();
  const double cpu0 = cpu_seconds();
  for (int r = 0; r < requests; ++r) {
    GenerateRequest req;
    for (int i = 0; i < context; ++i) req.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    req.max_new_tokens = new_tokens;
    req.budget = budget;
    sinks.push_back(std::make_shared<testing::CollectSink>());
    auto* tv = &times[static_cast<size_t>(r)];
    sinks.back()->on_each = [tv](int32_t, size_t) { tv->push_back(Clock::now()); };
    engine->submit(req, sinks.back(), &st);
    if (!st.ok) {
      std::fprintf(stderr, "submit failed: %s\n", st.message.c_str());
      return 1;
    }
  }
  double prefill = 0, decode = 0;
  for (auto& s : sinks) {
    s->wait(3600);
    if (!s->error().empty()) {
      std::fprintf(stderr, "request failed: %s\n", s->error().c_str());
      return 1;
    }
    prefill += s->stats().prefill_tokens_per_s / requests;
    decode += s->stats().decode_tokens_per_s / requests;
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double cpu = cpu_seconds() - cpu0;
  Clock::time_point w0 = start, w1 = start;
  for (const auto& tv : times) {
    if (tv.empty()) continue;
    w0 = std::max(w0, tv.front());
    w1 = std::max(w1, tv.back());
  }
  size_t in_window = 0;
  for (const auto& tv : times)
    for (const auto& t : tv) in_window += t > w0;
  const double prefill_all =
      static_cast<double>(context) * requests / std::chrono::duration<double>(w0 - start).count();
  const double window = std::chrono::duration<double>(w1 - w0).count();
  const double decode_all = window > 0 ? in_window / window : 0;
  const SteadyWindow sw = steady_window(times);
  const double argmax_ms = host_argmax_ms(requests, vocab);
  EngineStats es = engine->stats();
  std::printf(
      "{\"context\":%d,\"requests\":%d,\"new_tokens\":%d,\"threads\":%d,\"load_s\":%.2f,"
      "\"prefill_tokens_per_s\":%.1f,\"decode_tokens_per_s\":%.2f,"
      "\"prefill_tokens_per_s_per_request\":%.1f,\"decode_tokens_per_s_per_request\":%.2f,"
      "\"wall_s\":%.2f,\"cpu_s\":%.2f,\"prefill_tokens\":%llu,\"device\":\"%s\","
      "\"decode_ms_per_step\":%.3f,\"graph_captures\":%llu,\"graph_replays\":%llu,"
      "\"graph_failures\":%llu,\"graph_capture_ms\":%.2f,"
      "\"budget\":%d,\"dlm_layers\":%d,\"dlm_dir\":\"%s\",\"prefill_chunk\":%d,"
      "\"steady_steps\":%d,\"steady_ms_per_step\":%.3f,\"steady_median_ms_per_step\":%.3f,"
      "\"steady_tokens_per_s\":%.2f,\"host_argmax_ms_per_step\":%.3f,"
      "\"decode_tokens\":%llu,\"sparse_steps\":%llu,\"full_steps\":%llu,\"fallback_steps\":%llu,"
      "\"host_layers\":%d,\"layer_moves\":%llu,\"elastic_loads\":%llu,\"elastic_bytes\":%llu,"
      "\"reload_fraction\":%.4f,\"planner_memory_bytes\":%lld,\"planner_fixed_bytes\":%lld,"
      "\"transfer_ms\":%.3f,\"exposed_transfer_ms\":%.3f}\n",
      context, requests, new_tokens, es.threads, load_s, prefill_all, decode_all, prefill, decode,
      wall, cpu, static_cast<unsigned long long>(es.prefill_tokens), es.device.c_str(),
      decode_all > 0 ? requests / decode_all * 1e3 : 0.0,
      static_cast<unsigned long long>(es.graph_captures),
      static_cast<unsigned long long>(es.graph_replays),
      static_cast<unsigned long long>(es.graph_failures), es.graph_capture_ms, budget, o.dlm_layers,
      o.dlm_dir.c_str(), o.prefill_chunk, sw.steps, sw.mean_ms, sw.median_ms,
      sw.mean_ms > 0 ? requests * 1e3 / sw.mean_ms : 0.0, argmax_ms,
      static_cast<unsigned long long>(es.decode_tokens),
      static_cast<unsigned long long>(es.sparse_steps), static_cast<unsigned long long>(es.full_steps),
      static_cast<unsigned long long>(es.fallback_steps), es.host_layers,
      static_cast<unsigned long long>(es.layer_moves), static_cast<unsigned long long>(es.elastic_loads),
      static_cast<unsigned long long>(es.elastic_bytes), es.reload_fraction,
      static_cast<long long>(es.planner_memory_bytes), static_cast<long long>(es.planner_fixed_bytes),
      es.transfer_ms, es.exposed_transfer_ms);
  engine->close();
  return 0;
}
