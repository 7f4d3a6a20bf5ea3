// evalFidelity(input) -> Promise<report>: SpeContext's sparse-vs-full
// fidelity evaluation (native/src/retrieval/fidelity.h). Loads its own model
// copy and runs for minutes, so it runs on a libuv worker thread.
#include <cmath>

#include "binding.h"
#include "retrieval/fidelity.h"

namespace spx_binding {
namespace {

int FidelityInt(Napi::Env env, const Napi::Object& js, const char* key, int fallback) {
  Napi::Value v = js.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 2e9)
    Throw(env, std::string("evalFidelity: ") + key + " must be an integer", kInvalidRequest);
  return static_cast<int>(d);
}

class FidelityWorker : public Napi::AsyncWorker {
 public:
  FidelityWorker(Napi::Env env, spx::retrieval::FidelityRequest req)
      : Napi::AsyncWorker(env, "spx.evalFidelity"), req_(std::move(req)), deferred_(env) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      spx::Status st = spx::retrieval::eval_fidelity(req_, &report_);
      if (!st.ok) message_ = st.message;
    } catch (const std::exception& e) {
      message_ = std::string("fidelity evaluation failed: ") + e.what();
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (!message_.empty()) {
      deferred_.Reject(MakeError(env, message_, kInvalidRequest).Value());
      return;
    }
    const auto& r = report_;
    Napi::Object o = Napi::Object::New(env);
    o.Set("head", r.head_kind);
    o.Set("scoringLayer", r.scoring_layer);
    o.Set("headParams", static_cast<double>(r.head_params));
    o.Set("headSourceParams", static_cast<double>(r.head_model_params));
    o.Set("targetParams", static_cast<double>(r.target_params));
    o.Set("context", r.context);
    o.Set("steps", r.steps);
    o.Set("pplFull", r.ppl_full);
    o.Set("seconds", r.seconds);
    o.Set("fallbackMass", r.fallback_mass);
    Napi::Array budgets = Napi::Array::New(env, r.budgets.size());
    for (size_t i = 0; i < r.budgets.size(); ++i) {
      const auto& b = r.budgets[i];
      Napi::Object x = Napi::Object::New(env);
      x.Set("budget", b.budget);
      x.Set("fullAttention", b.full_attention);
      x.Set("recallMean", b.recall_mean);
      x.Set("recallStd", b.recall_std);
      x.Set("recallMin", b.recall_min);
      x.Set("recallP10", b.recall_p10);
      x.Set("top1Agreement", b.top1_agreement);
      x.Set("pplSparse", b.ppl_sparse);
      x.Set("pplRatio", b.ppl_ratio);
      x.Set("reloadFraction", b.reload_fraction);
      x.Set("fallbackRate", b.fallback_rate);
      x.Set("headMassMean", b.head_mass_mean);
      Napi::Array layers = Napi::Array::New(env, b.recall_per_layer.size());
      for (size_t l = 0; l < b.recall_per_layer.size(); ++l)
        layers.Set(static_cast<uint32_t>(l), b.recall_per_layer[l]);
      x.Set("recallPerLayer", layers);
      budgets.Set(static_cast<uint32_t>(i), x);
    }
    o.Set("budgets", budgets);
    deferred_.Resolve(o);
  }

  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  spx::retrieval::FidelityRequest req_;
  spx::retrieval::FidelityReport report_;
  Napi::Promise::Deferred deferred_;
  std::string message_;
};

}  // namespace

Napi::Value EvalFidelity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject())
    Throw(env, "evalFidelity(input) needs an object", kInvalidRequest);
  Napi::Object js = info[0].As<Napi::Object>();
  spx::retrieval::FidelityRequest req;
  Napi::Value dir = js.Get("modelDir");
  if (!dir.IsString()) Throw(env, "evalFidelity: modelDir must be a string", kInvalidRequest);
  req.model_dir = dir.As<Napi::String>().Utf8Value();
  if (js.Get("device").IsString()) req.device = js.Get("device").As<Napi::String>().Utf8Value();
  if (js.Get("dlmDir").IsString()) req.head.dlm_dir = js.Get("dlmDir").As<Napi::String>().Utf8Value();
  req.threads = FidelityInt(env, js, "threads", 0);
  req.head.dlm_layers = FidelityInt(env, js, "dlmLayers", 0);
  req.head.oracle_layer = FidelityInt(env, js, "oracleLayer", -1);
  req.head.pool = FidelityInt(env, js, "pool", 0);
  auto& o = req.options;
  o.context = FidelityInt(env, js, "context", 0);
  o.steps = FidelityInt(env, js, "steps", 32);
  o.sparse_from = FidelityInt(env, js, "sparseFrom", -1);
  o.select.n_sink = FidelityInt(env, js, "nSink", o.select.n_sink);
  o.select.n_recent = FidelityInt(env, js, "nRecent", o.select.n_recent);
  Napi::Value reduce = js.Get("reduce");
  if (reduce.IsString()) {
    const std::string r = reduce.As<Napi::String>().Utf8Value();
    if (r != "max" && r != "mean") Throw(env, "evalFidelity: reduce must be max or mean", kInvalidRequest);
    o.select.reduce = r == "max" ? spx::retrieval::GroupReduce::Max : spx::retrieval::GroupReduce::Mean;
  }
  // Absent: the head's recommendation (eval_fidelity resolves it).
  Napi::Value fm = js.Get("fallbackMass");
  o.select.fallback_mass = fm.IsNumber() ? fm.As<Napi::Number>().FloatValue() : -1.0f;
  Napi::Value budgets = js.Get("budgets");
  if (!budgets.IsArray()) Throw(env, "evalFidelity: budgets must be an array", kInvalidRequest);
  Napi::Array arr = budgets.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value v = arr.Get(i);
    if (!v.IsNumber()) Throw(env, "evalFidelity: budgets must be numbers", kInvalidRequest);
    o.budgets.push_back(v.As<Napi::Number>().Int32Value());
  }
  Napi::Value tokens = js.Get("tokens");
  if (!tokens.IsTypedArray() || tokens.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    Throw(env, "evalFidelity: tokens must be an Int32Array", kInvalidRequest);
  Napi::Int32Array t = tokens.As<Napi::Int32Array>();
  req.tokens.assign(t.Data(), t.Data() + t.ElementLength());
  auto* worker = new FidelityWorker(env, std::move(req));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace spx_binding
