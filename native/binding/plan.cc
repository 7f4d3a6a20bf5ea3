// plan(input) -> thresholds and placements of the SpeContext memory planner
// (native/src/planner). Pure arithmetic: synchronous, no engine handle.
#include <cmath>

#include "binding.h"
#include "planner/memory_plan.h"

namespace spx_binding {
namespace {

double PlanNumber(Napi::Env env, const Napi::Object& js, const char* key, double fallback,
                  bool required) {
  Napi::Value v = js.Get(key);
  if (v.IsUndefined() || v.IsNull()) {
    if (required) Throw(env, std::string("plan: ") + key + " is required", kInvalidRequest);
    return fallback;
  }
  if (!v.IsNumber() || !std::isfinite(v.As<Napi::Number>().DoubleValue())) {
    Throw(env, std::string("plan: ") + key + " must be a finite number", kInvalidRequest);
  }
  return v.As<Napi::Number>().DoubleValue();
}

}  // namespace

Napi::Value Plan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) Throw(env, "plan(input) needs an object", kInvalidRequest);
  Napi::Object js = info[0].As<Napi::Object>();
  spx::planner::PlanInput in;
  in.model.layers = static_cast<int>(PlanNumber(env, js, "layers", 0, true));
  in.model.kv_heads = static_cast<int>(PlanNumber(env, js, "kvHeads", 0, true));
  in.model.head_dim = static_cast<int>(PlanNumber(env, js, "headDim", 0, true));
  in.model.alpha = PlanNumber(env, js, "alpha", 0, true);
  in.model.target_weight_bytes = static_cast<int64_t>(PlanNumber(env, js, "targetWeightBytes", 0, true));
  in.model.dlm_weight_bytes = static_cast<int64_t>(PlanNumber(env, js, "dlmWeightBytes", 0, false));
  in.model.kv_elem_bytes = static_cast<int>(PlanNumber(env, js, "kvElemBytes", 2, false));
  in.requests = static_cast<int>(PlanNumber(env, js, "requests", 0, true));
  in.budget = static_cast<int>(PlanNumber(env, js, "budget", 0, true));
  in.gpu_bytes = static_cast<int64_t>(PlanNumber(env, js, "gpuBytes", 0, true));
  in.measured_overhead_bytes = static_cast<int64_t>(PlanNumber(env, js, "measuredOverheadBytes", -1, false));

  spx::planner::Plan plan;
  std::string error;
  if (!spx::planner::make_plan(in, &plan, &error)) Throw(env, "plan: " + error, kInvalidRequest);

  Napi::Object out = Napi::Object::New(env);
  out.Set("fixedBytes", static_cast<double>(plan.fixed_bytes));
  out.Set("kvTokenBytes", static_cast<double>(plan.kv_token_bytes));
  Napi::Array thresholds = Napi::Array::New(env, plan.thresholds.size());
  for (size_t i = 0; i < plan.thresholds.size(); ++i) {
    thresholds.Set(static_cast<uint32_t>(i), static_cast<double>(plan.thresholds[i]));
  }
  out.Set("thresholds", thresholds);

  Napi::Array placements = Napi::Array::New(env);
  Napi::Value lengths = js.Get("lengths");
  if (lengths.IsArray()) {
    Napi::Array arr = lengths.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Value v = arr.Get(i);
      if (!v.IsNumber() || v.As<Napi::Number>().DoubleValue() < 0) {
        Throw(env, "plan: lengths must be non-negative numbers", kInvalidRequest);
      }
      const int64_t s = static_cast<int64_t>(v.As<Napi::Number>().DoubleValue());
      spx::planner::Placement p = spx::planner::place(in, plan, s);
      Napi::Object o = Napi::Object::New(env);
      o.Set("length", static_cast<double>(s));
      o.Set("hostLayers", p.host_layers);
      o.Set("fits", p.fits);
      o.Set("bytes", static_cast<double>(p.bytes));
      Napi::Array host = Napi::Array::New(env);
      uint32_t k = 0;
      for (size_t l = 0; l < p.on_host.size(); ++l) {
        if (p.on_host[l]) host.Set(k++, static_cast<double>(l));
      }
      o.Set("hostLayerIds", host);
      placements.Set(i, o);
    }
  }
  out.Set("placements", placements);
  return out;
}

}  // namespace spx_binding
