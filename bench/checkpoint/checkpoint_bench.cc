// Resume from a host-memory checkpoint versus re-prefill, checkpoint stall and
// write cost, and bytes per token, through the Engine API (not a test).
//
//   checkpoint_bench MODEL_DIR [--contexts 4096,8128] [--threads T] [--dir /dev/shm]
//                    [--device cpu|cuda:N] [--single 0|1]
//   checkpoint_bench --make-random-smollm2 OUT_DIR   (SmolLM2-135M shape, seeded
//                                                     random f32 weights: speed only)
//
// Per context: one request prefills the prompt and decodes with a checkpoint
// every 4 tokens (the first right after prefill); the same request runs again
// without checkpoints for the decode baseline. Then the request "resumes" from
// the saved file in a fresh engine (validate the whole file + restore + one
// step) and, for comparison, re-prefills prompt + generated tokens. Prints one
// JSON object.
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "../../native/tests/collect_sink.h"
#include "checkpoint/kv_checkpoint.h"

using namespace spx;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

class Sink : public testing::CollectSink {
 public:
  std::vector<CheckpointEvent> events;
  Clock::time_point submitted, first;
  bool got_first = false;
  void on_token(int32_t t) override {
    if (!got_first) {
      got_first = true;
      first = Clock::now();
    }
    CollectSink::on_token(t);
  }
  void on_checkpoint(const CheckpointEvent& e) override {
    events.push_back(e);
  }
  double ttft_ms() const { return std::chrono::duration<double, std::milli>(first - submitted).count(); }
};

std::string g_device = "cpu";

std::unique_ptr<Engine> open(const std::string& dir, int threads, int ctx) {
  EngineOptions o;
  o.model_dir = dir;
  o.device = g_device;
  o.threads = threads;
  o.max_batch = 2;
  o.max_context = ctx;
  o.prefill_chunk = 512;
  Status st;
  auto e = Engine::open(o, &st);
  if (!e) {
    std::fprintf(stderr, "open: %s\n", st.message.c_str());
    std::exit(1);
  }
  return e;
}

std::shared_ptr<Sink> run(Engine* e, const GenerateRequest& r) {
  auto s = std::make_shared<Sink>();
  s->submitted = Clock::now();
  Status st;
  e->submit(r, s, &st);
  if (!st.ok) {
    std::fprintf(stderr, "submit: %s\n", st.message.c_str());
    std::exit(1);
  }
  s->wait(3600);
  if (!s->error().empty()) {
    std::fprintf(stderr, "request: %s\n", s->error().c_str());
    std::exit(1);
  }
  return s;
}

// ---- random SmolLM2-shaped weights ----

void write_random_smollm2(const std::string& out) {
  const int V = 49152, H = 576, F = 1536, L = 30, NH = 9, KV = 3, D = 64;
  std::filesystem::create_directories(out);
  std::ofstream(out + "/config.json")
      << "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_act\":\"silu\","
         "\"vocab_size\":49152,\"hidden_size\":576,\"intermediate_size\":1536,\"num_hidden_layers\":30,"
         "\"num_attention_heads\":9,\"num_key_value_heads\":3,\"head_dim\":64,"
         "\"max_position_embeddings\":8192,\"rms_norm_eps\":1e-05,\"rope_theta\":100000.0,"
         "\"tie_word_embeddings\":true,\"bos_token_id\":1,\"eos_token_id\":2,\"torch_dtype\":\"float32\"}";
  struct T {
    std::string name;
    std::vector<int64_t> shape;
    bool ones;
  };
  std::vector<T> ts = {{"model.embed_tokens.weight", {V, H}, false}, {"model.norm.weight", {H}, true}};
  for (int l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    ts.push_back({p + "self_attn.q_proj.weight", {NH * D, H}, false});
    ts.push_back({p + "self_attn.k_proj.weight", {KV * D, H}, false});
    ts.push_back({p + "self_attn.v_proj.weight", {KV * D, H}, false});
    ts.push_back({p + "self_attn.o_proj.weight", {H, NH * D}, false});
    ts.push_back({p + "mlp.gate_proj.weight", {F, H}, false});
    ts.push_back({p + "mlp.up_proj.weight", {F, H}, false});
    ts.push_back({p + "mlp.down_proj.weight", {H, F}, false});
    ts.push_back({p + "input_layernorm.weight", {H}, true});
    ts.push_back({p + "post_attention_layernorm.weight", {H}, true});
  }
  std::ostringstream hdr;
  hdr << "{";
  uint64_t off = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    uint64_t n = 1;
    for (int64_t d : ts[i].shape) n *= static_cast<uint64_t>(d);
    hdr << (i ? "," : "") << "\"" << ts[i].name << "\":{\"dtype\":\"F32\",\"shape\":[";
    for (size_t k = 0; k < ts[i].shape.size(); ++k) hdr << (k ? "," : "") << ts[i].shape[k];
    hdr << "],\"data_offsets\":[" << off << "," << off + n * 4 << "]}";
    off += n * 4;
  }
  hdr << "}";
  std::string h = hdr.str();
  while (h.size() % 8) h += ' ';
  std::ofstream f(out + "/model.safetensors", std::ios::binary);
  uint64_t hn = h.size();
  f.write(reinterpret_cast<const char*>(&hn), 8);
  f << h;
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.f, 0.02f);
  for (const T& t : ts) {
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    std::vector<float> v(n);
    for (float& x : v) x = t.ones ? 1.f : nd(rng);
    f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(n * 4));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "--make-random-smollm2") == 0) {
    write_random_smollm2(argv[2]);
    return 0;
  }
  if (argc < 2) {
    std::fprintf(stderr, "usage: checkpoint_bench MODEL_DIR [--contexts a,b] [--threads T] [--dir D]\n");
    return 2;
  }
  std::string model = argv[1], dir = "/dev/shm", contexts = "4096,8128";
  int threads = 0;
  // --single 1: one prefill per context (slow machines): no decode baseline,
  // and the re-prefill time is the first run's own time to first token.
  bool single = false;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--single")) single = std::atoi(argv[i + 1]) != 0;
    if (!std::strcmp(argv[i], "--contexts")) contexts = argv[i + 1];
    else if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
    else if (!std::strcmp(argv[i], "--device")) g_device = argv[i + 1];
  }
  const int kNew = 24, kEvery = 4;
  std::printf("{\"device\":\"%s\",\"model_dir\":\"%s\",\"threads\":%d,\"new_tokens\":%d,\"every_tokens\":%d,\"single\":%s,\"rows\":[",
              g_device.c_str(), model.c_str(), threads, kNew, kEvery, single ? "true" : "false");
  std::stringstream list(contexts);
  std::string item;
  bool firstRow = true;
  while (std::getline(list, item, ',')) {
    const int ctx = std::atoi(item.c_str());
    const int prompt_len = ctx - kNew;
    auto engine = open(model, threads, ctx);
    const int vocab = engine->info().vocab_size;
    std::mt19937 rng(7);
    GenerateRequest req;
    for (int i = 0; i < prompt_len; ++i)
      req.prompt.push_back(static_cast<int32_t>(3 + rng() % static_cast<unsigned>(vocab - 3)));
    req.max_new_tokens = kNew;
    const std::string live = dir + "/spx-bench-live.spxckpt", saved = dir + "/spx-bench-saved.spxckpt";
    GenerateRequest plain = req;
    std::shared_ptr<Sink> base = single ? nullptr : run(engine.get(), plain);
    GenerateRequest ck = req;
    ck.checkpoint.path = live;
    ck.checkpoint.every_tokens = kEvery;
    auto with = run(engine.get(), ck);
    engine->close();  // writes what is queued: the file now holds the last checkpoint
    std::filesystem::copy_file(live, saved, std::filesystem::copy_options::overwrite_existing);

    double stall_max = 0, stall_sum = 0, write_first = 0, write_incr_sum = 0;
    uint64_t incr_bytes = 0;
    int incr = 0;
    for (size_t i = 0; i < with->events.size(); ++i) {
      const CheckpointEvent& e = with->events[i];
      stall_max = std::max(stall_max, e.stall_ms);
      stall_sum += e.stall_ms;
      if (i == 0) write_first = e.write_ms;
      else {
        write_incr_sum += e.write_ms;
        incr_bytes += e.bytes;
        ++incr;
      }
    }
    // Like the activity, rebuild the request from the file itself: a write
    // queued when the request ended may have landed after its last event.
    auto fresh = open(model, threads, ctx);
    const ModelInfo m = fresh->info();
    auto t0 = Clock::now();
    CheckpointReader reader;  // what the activity's inspectCheckpoint does
    Status st = reader.open(saved, fresh->identity(), {m.num_layers, m.num_kv_heads, m.head_dim, 0, 0});
    const double inspect_ms = ms_since(t0);
    if (!st.ok) {
      std::fprintf(stderr, "inspect: %s\n", st.message.c_str());
      return 1;
    }
    std::vector<int32_t> done(reader.token_ids().begin() + prompt_len, reader.token_ids().end());
    done.push_back(reader.next_token());
    GenerateRequest resumed = req;
    resumed.prompt.insert(resumed.prompt.end(), done.begin(), done.end());
    resumed.max_new_tokens = 1;
    GenerateRequest restore = resumed;
    restore.checkpoint.path = saved;
    restore.checkpoint.restore = true;
    restore.checkpoint.resumed_generated = static_cast<int>(done.size());
    auto r = run(fresh.get(), restore);
    const double resume_ms = inspect_ms + r->ttft_ms();
    auto p = single ? r : run(fresh.get(), resumed);
    const double reprefill_ms = single ? with->ttft_ms() : p->ttft_ms();
    const bool same = r->tokens() == p->tokens() &&
                      r->stats().restored_tokens == static_cast<int>(resumed.prompt.size()) - 1;
    if (!r->stats().restore_error.empty()) std::fprintf(stderr, "restore: %s\n", r->stats().restore_error.c_str());
    fresh->close();

    const double decode_ms_base = base ? base->stats().decode_ms / std::max(1, kNew - 1) : 0.0;
    const double decode_ms_ck = with->stats().decode_ms / std::max(1, kNew - 1);
    std::printf(
        "%s{\"context_tokens\":%d,\"resume_tokens\":%d,\"reprefill_ms\":%.1f,\"resume_ms\":%.1f,"
        "\"resume_inspect_ms\":%.1f,\"speedup\":%.1f,\"resume_first_token_equal\":%s,"
        "\"checkpoint_file_bytes\":%llu,\"bytes_per_token\":%.0f,"
        "\"checkpoints\":%zu,\"stall_ms_max\":%.3f,\"stall_ms_mean\":%.3f,"
        "\"first_write_ms\":%.1f,\"incremental_write_ms_mean\":%.2f,\"incremental_bytes_mean\":%.0f,"
        "\"decode_ms_per_token_without\":%.2f,\"decode_ms_per_token_with\":%.2f}",
        firstRow ? "" : ",", ctx, static_cast<int>(resumed.prompt.size()), reprefill_ms, resume_ms,
        inspect_ms, reprefill_ms / resume_ms, same ? "true" : "false",
        static_cast<unsigned long long>(reader.file_bytes()),
        static_cast<double>(reader.file_bytes()) / std::max(1, reader.tokens()), with->events.size(), stall_max,
        stall_sum / std::max<size_t>(1, with->events.size()), write_first,
        incr ? write_incr_sum / incr : 0.0, incr ? static_cast<double>(incr_bytes) / incr : 0.0, decode_ms_base,
        decode_ms_ck);
    std::fflush(stdout);
    firstRow = false;
    std::remove(live.c_str());
    std::remove(saved.c_str());
  }
  std::printf("]}\n");
  return 0;
}
