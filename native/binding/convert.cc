// JS values -> plain spx structs (on the JS thread, before any work starts)
// and spx results -> JS objects. Type errors here are the second line of
// validation; engine/index.ts validates first with friendlier messages.
#include <cmath>
#include <limits>

#include "binding.h"

namespace spx_binding {
namespace {

bool Has(const Napi::Object& js, const char* key) {
  return js.Has(key) && !js.Get(key).IsUndefined() && !js.Get(key).IsNull();
}

double Number(Napi::Env env, const Napi::Object& js, const char* key) {
  Napi::Value v = js.Get(key);
  if (!v.IsNumber()) Throw(env, std::string(key) + " must be a number", kInvalidRequest);
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) Throw(env, std::string(key) + " must be finite", kInvalidRequest);
  return d;
}

int Int(Napi::Env env, const Napi::Object& js, const char* key) {
  double d = Number(env, js, key);
  if (d != std::floor(d) || d < std::numeric_limits<int>::min() ||
      d > std::numeric_limits<int>::max()) {
    Throw(env, std::string(key) + " must be an integer", kInvalidRequest);
  }
  return static_cast<int>(d);
}

std::string String(Napi::Env env, const Napi::Object& js, const char* key) {
  Napi::Value v = js.Get(key);
  if (!v.IsString()) Throw(env, std::string(key) + " must be a string", kInvalidRequest);
  return v.As<Napi::String>().Utf8Value();
}

// Token ids must be integers representable as int32; range against the vocab
// is the engine's check (it knows the vocab size).
std::vector<int32_t> Ids(Napi::Env env, const Napi::Object& js, const char* key) {
  Napi::Value v = js.Get(key);
  std::vector<int32_t> ids;
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
    Napi::Int32Array arr = v.As<Napi::Int32Array>();
    ids.assign(arr.Data(), arr.Data() + arr.ElementLength());
    return ids;
  }
  if (!v.IsArray()) Throw(env, std::string(key) + " must be an array of token ids", kInvalidRequest);
  Napi::Array arr = v.As<Napi::Array>();
  ids.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value e = arr.Get(i);
    double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : NAN;
    if (!std::isfinite(d) || d != std::floor(d) || d < std::numeric_limits<int32_t>::min() ||
        d > std::numeric_limits<int32_t>::max()) {
      Throw(env, std::string(key) + "[" + std::to_string(i) + "] is not an integer token id",
            kInvalidRequest);
    }
    ids.push_back(static_cast<int32_t>(d));
  }
  return ids;
}

}  // namespace

spx::EngineOptions ToEngineOptions(Napi::Env env, const Napi::Object& js) {
  spx::EngineOptions o;
  o.model_dir = String(env, js, "modelDir");
  if (Has(js, "device")) o.device = String(env, js, "device");
  if (Has(js, "threads")) o.threads = Int(env, js, "threads");
  if (Has(js, "maxBatch")) o.max_batch = Int(env, js, "maxBatch");
  if (Has(js, "maxContext")) o.max_context = Int(env, js, "maxContext");
  if (Has(js, "prefillChunk")) o.prefill_chunk = Int(env, js, "prefillChunk");
  if (Has(js, "dlmDir")) o.dlm_dir = String(env, js, "dlmDir");
  if (Has(js, "dlmLayers")) o.dlm_layers = Int(env, js, "dlmLayers");
  if (Has(js, "fallbackMass")) o.fallback_mass = static_cast<float>(Number(env, js, "fallbackMass"));
  return o;
}

spx::GenerateRequest ToGenerateRequest(Napi::Env env, const Napi::Object& js) {
  spx::GenerateRequest r;
  r.prompt = Ids(env, js, "prompt");
  if (Has(js, "maxNewTokens")) r.max_new_tokens = Int(env, js, "maxNewTokens");
  if (Has(js, "temperature")) r.sampling.temperature = static_cast<float>(Number(env, js, "temperature"));
  if (Has(js, "topK")) r.sampling.top_k = Int(env, js, "topK");
  if (Has(js, "topP")) r.sampling.top_p = static_cast<float>(Number(env, js, "topP"));
  if (Has(js, "seed")) {
    double seed = Number(env, js, "seed");
    if (seed < 0 || seed != std::floor(seed) || seed > 9007199254740991.0) {
      Throw(env, "seed must be a non-negative integer", kInvalidRequest);
    }
    r.sampling.seed = static_cast<uint64_t>(seed);
  }
  if (Has(js, "stopTokenIds")) r.stop_token_ids = Ids(env, js, "stopTokenIds");
  if (Has(js, "budget")) r.budget = Int(env, js, "budget");
  if (Has(js, "checkpoint")) {
    if (!js.Get("checkpoint").IsObject()) Throw(env, "checkpoint must be an object", kInvalidRequest);
    Napi::Object c = js.Get("checkpoint").As<Napi::Object>();
    r.checkpoint.path = String(env, c, "path");
    if (Has(c, "everyTokens")) r.checkpoint.every_tokens = Int(env, c, "everyTokens");
    if (Has(c, "everyMs")) r.checkpoint.every_ms = Int(env, c, "everyMs");
    if (Has(c, "restore")) r.checkpoint.restore = c.Get("restore").ToBoolean().Value();
    if (Has(c, "resumedGenerated")) r.checkpoint.resumed_generated = Int(env, c, "resumedGenerated");
  }
  return r;
}

Napi::Object FromRequestStats(Napi::Env env, const spx::RequestStats& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("promptTokens", s.prompt_tokens);
  o.Set("generatedTokens", s.generated_tokens);
  o.Set("prefillMs", s.prefill_ms);
  o.Set("decodeMs", s.decode_ms);
  o.Set("prefillTokensPerS", s.prefill_tokens_per_s);
  o.Set("decodeTokensPerS", s.decode_tokens_per_s);
  o.Set("finishReason", s.finish_reason);
  o.Set("restoredTokens", s.restored_tokens);
  if (!s.restore_error.empty()) o.Set("restoreError", s.restore_error);
  o.Set("checkpoints", s.checkpoints);
  return o;
}

Napi::Object FromEngineStats(Napi::Env env, const spx::EngineStats& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("activeRequests", s.active_requests);
  o.Set("queuedRequests", s.queued_requests);
  o.Set("completedRequests", static_cast<double>(s.completed_requests));
  o.Set("cancelledRequests", static_cast<double>(s.cancelled_requests));
  o.Set("kvBytesInUse", static_cast<double>(s.kv_bytes_in_use));
  o.Set("prefillTokens", static_cast<double>(s.prefill_tokens));
  o.Set("decodeTokens", static_cast<double>(s.decode_tokens));
  o.Set("threads", s.threads);
  o.Set("device", s.device);
  o.Set("sparseSteps", static_cast<double>(s.sparse_steps));
  o.Set("fullSteps", static_cast<double>(s.full_steps));
  o.Set("fallbackSteps", static_cast<double>(s.fallback_steps));
  o.Set("hostLayers", s.host_layers);
  o.Set("layerMoves", static_cast<double>(s.layer_moves));
  o.Set("elasticLoads", static_cast<double>(s.elastic_loads));
  o.Set("elasticBytes", static_cast<double>(s.elastic_bytes));
  o.Set("reloadFraction", s.reload_fraction);
  o.Set("plannerMemoryBytes", static_cast<double>(s.planner_memory_bytes));
  o.Set("plannerFixedBytes", static_cast<double>(s.planner_fixed_bytes));
  o.Set("transferMs", s.transfer_ms);
  o.Set("exposedTransferMs", s.exposed_transfer_ms);
  o.Set("graphCaptures", static_cast<double>(s.graph_captures));
  o.Set("graphReplays", static_cast<double>(s.graph_replays));
  o.Set("graphFailures", static_cast<double>(s.graph_failures));
  o.Set("graphCaptureMs", s.graph_capture_ms);
  return o;
}

Napi::Object FromModelInfo(Napi::Env env, const spx::ModelInfo& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("architecture", m.architecture);
  o.Set("vocabSize", m.vocab_size);
  o.Set("hiddenSize", m.hidden_size);
  o.Set("numLayers", m.num_layers);
  o.Set("numHeads", m.num_heads);
  o.Set("numKvHeads", m.num_kv_heads);
  o.Set("headDim", m.head_dim);
  o.Set("maxContext", m.max_context);
  Napi::Array eos = Napi::Array::New(env, m.eos_token_ids.size());
  for (size_t i = 0; i < m.eos_token_ids.size(); ++i) eos.Set(static_cast<uint32_t>(i), m.eos_token_ids[i]);
  o.Set("eosTokenIds", eos);
  return o;
}

}  // namespace spx_binding
