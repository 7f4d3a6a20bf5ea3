// Dense-attention speed of our CUDA kernels on real model shapes.
//
// What it measures (and what it does not): the model's forward built
// directly from native/src/cuda (fused QKV and gate_up GEMMs through
// cuBLASLt, the fused qkv_rope kernel, flash-decoding / tensor-core prefill
// attention, add+RMSNorm, SwiGLU, f32 LM head, greedy sampling on the GPU)
// over seeded random bf16 weights generated on the GPU and a KV cache filled
// with random values. It is not the engine's scheduler path: no tokenizer,
// no host round trip per step (the decode step, sampling and the position
// update are one CUDA graph replayed step after step).
//   prefill: one request of T tokens in chunks of --chunk, tokens/s;
//   decode:  B requests at context C, ms per step = one token per request,
//            against the roofline: bytes one step must read (every weight
//            except the embedding table once, plus all B*C tokens of K and V
//            in every layer) over 4.3 TB/s.
//
//   dense_bench --model llama-3.1-8b --prefill 2048,16384,32768 \
//       --decode 2048,32768 --batch 1,8,32 --json out.json
#include <cuda_runtime.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "bench_model.cuh"

namespace spx::bench {
namespace {

int run(int argc, char** argv) {
  std::string model = "llama-3.1-8b", json;
  std::vector<int> prefill = {2048, 16384, 32768}, decode = {2048, 32768}, batches = {1, 8, 32};
  int steps = 32, chunk = 8192;
  std::vector<std::string> kernels = {"mma"};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") model = v;
    else if (k == "--prefill") prefill = parse_list(v);
    else if (k == "--decode") decode = parse_list(v);
    else if (k == "--batch") batches = parse_list(v);
    else if (k == "--steps") steps = std::atoi(v.c_str());
    else if (k == "--chunk") chunk = std::atoi(v.c_str());
    else if (k == "--json") json = v;
    else if (k == "--kernels") {
      kernels.clear();
      std::stringstream ks(v);
      std::string item;
      while (std::getline(ks, item, ',')) kernels.push_back(item);
    }
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  const ModelShape* shape = find_shape(model);
  if (!shape) {
    std::fprintf(stderr, "unknown model %s\n", model.c_str());
    return 2;
  }
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "dense_bench: %s\n", st.message.c_str());
    return 1;
  };
  int num_sms = 0;
  if (cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess)
    return fail(Status::Error("no CUDA device"));
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  cuda::Gemm gemm;
  Status st = gemm.init();
  if (!st.ok) return fail(st);
  Model m;
  st = make_model(*shape, 1234, &m);
  if (!st.ok) return fail(st);
  std::printf("%s: %.2f GB of weights read per decode step\n", model.c_str(),
              m.step_weight_bytes / 1e9);

  std::vector<Row> rows;
  for (int T : prefill) {
    Row r;
    st = bench_prefill(m, stream, &gemm, T, chunk, &r);
    if (!st.ok) return fail(st);
    std::printf("prefill %6d tokens: %9.1f ms  %9.0f tokens/s\n", T, r.ms, r.tokens_per_s);
    std::fflush(stdout);
    rows.push_back(r);
  }
  for (int ctx : decode)
    for (int B : batches) {
      // Largest batch whose KV fits next to the weights (with 6 GB spare).
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      const double per_req = double(ctx + 128) * kv_bytes_per_token(*shape);
      const int fit = int((double(free_b) - 6e9) / per_req);
      const int use = std::min(B, std::max(fit, 0));
      if (use < 1) continue;
      for (const std::string& kernel : kernels) {
        Row r;
        st = bench_decode(m, stream, &gemm, ctx, use, steps, num_sms, kernel == "simt", &r);
        if (!st.ok) return fail(st);
        r.requested_batch = B;
        if (use < B)
          r.note += "; batch " + std::to_string(B) + " does not fit, ran " + std::to_string(use);
        std::printf("decode %-4s ctx %6d batch %3d: %7.2f ms/step (eager %7.2f)  %8.1f tokens/s  "
                    "roofline %6.2f ms  ratio %.2f\n",
                    kernel.c_str(), ctx, use, r.ms, r.eager_ms, r.tokens_per_s, r.roofline_ms,
                    r.ms / r.roofline_ms);
        std::fflush(stdout);
        rows.push_back(r);
      }
    }

  if (!json.empty()) {
    std::ofstream f(json);
    f << "{\"model\": \"" << model << "\", \"system\": \"specontext-cuda-kernels\", \"rows\": [\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      f << "  {\"phase\": \"" << r.phase << "\", \"kernel\": \"" << r.kernel
        << "\", \"context\": " << r.context
        << ", \"batch\": " << r.batch << ", \"requested_batch\": " << r.requested_batch
        << ", \"ms\": " << r.ms << ", \"tokens_per_s\": " << r.tokens_per_s
        << ", \"eager_ms\": " << r.eager_ms << ", \"bytes_per_step\": " << r.bytes
        << ", \"roofline_ms\": " << r.roofline_ms << ", \"note\": \"" << r.note << "\"}"
        << (i + 1 < rows.size() ? ",\n" : "\n");
    }
    f << "]}\n";
  }
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace
}  // namespace spx::bench

int main(int argc, char** argv) { return spx::bench::run(argc, argv); }
