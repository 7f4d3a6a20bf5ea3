// Prefill / decode throughput of the engine on a real checkpoint (not a test).
//
//   engine_bench MODEL_DIR [--context N] [--requests R] [--new M] [--threads T]
//                [--chunk C] [--device cpu|cuda:N] [--graphs 0|1]
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
//                          sets SPX_CUDA_GRAPHS=0: every step eager).
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdlib>
#include <random>
#include <string>

#include "../collect_sink.h"

using namespace spx;

// Process CPU seconds: on a shared machine wall time alone says little.
static double cpu_seconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: engine_bench MODEL_DIR [--context N] [--requests R] [--new M] [--threads T] [--chunk C] [--device D] [--graphs 0|1]\n");
    return 2;
  }
  EngineOptions o;
  o.model_dir = argv[1];
  int context = 512, requests = 1, new_tokens = 32;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--device")) {
      o.device = argv[i + 1];
      continue;
    }
    if (!std::strcmp(argv[i], "--graphs")) {
      setenv("SPX_CUDA_GRAPHS", argv[i + 1], 1);  // read when the model loads
      continue;
    }
    const int v = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--context")) context = v;
    else if (!std::strcmp(argv[i], "--requests")) requests = v;
    else if (!std::strcmp(argv[i], "--new")) new_tokens = v;
    else if (!std::strcmp(argv[i], "--threads")) o.threads = v;
    else if (!std::strcmp(argv[i], "--chunk")) o.prefill_chunk = v;
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
  EngineStats es = engine->stats();
  std::printf(
      "{\"context\":%d,\"requests\":%d,\"new_tokens\":%d,\"threads\":%d,\"load_s\":%.2f,"
      "\"prefill_tokens_per_s\":%.1f,\"decode_tokens_per_s\":%.2f,"
      "\"prefill_tokens_per_s_per_request\":%.1f,\"decode_tokens_per_s_per_request\":%.2f,"
      "\"wall_s\":%.2f,\"cpu_s\":%.2f,\"prefill_tokens\":%llu,\"device\":\"%s\","
      "\"decode_ms_per_step\":%.3f,\"graph_captures\":%llu,\"graph_replays\":%llu,"
      "\"graph_failures\":%llu,\"graph_capture_ms\":%.2f}\n",
      context, requests, new_tokens, es.threads, load_s, prefill_all, decode_all, prefill, decode,
      wall, cpu, static_cast<unsigned long long>(es.prefill_tokens), es.device.c_str(),
      decode_all > 0 ? requests / decode_all * 1e3 : 0.0,
      static_cast<unsigned long long>(es.graph_captures),
      static_cast<unsigned long long>(es.graph_replays),
      static_cast<unsigned long long>(es.graph_failures), es.graph_capture_ms);
  engine->close();
  return 0;
}
