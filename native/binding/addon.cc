// The Node-API addon's entry: registers the exports and nothing else.
// The whole surface is declared for TypeScript in engine/native.ts.
#include "binding.h"

namespace spx_binding {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("submit", Napi::Function::New(env, Submit, "submit"));
  exports.Set("cancel", Napi::Function::New(env, Cancel, "cancel"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("stats", Napi::Function::New(env, Stats, "stats"));
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("backends", Napi::Function::New(env, Backends, "backends"));
  exports.Set("plan", Napi::Function::New(env, Plan, "plan"));
  exports.Set("evalFidelity", Napi::Function::New(env, EvalFidelity, "evalFidelity"));
  exports.Set("checkpointNow", Napi::Function::New(env, CheckpointNow, "checkpointNow"));
  exports.Set("inspectCheckpoint", Napi::Function::New(env, InspectCheckpoint, "inspectCheckpoint"));
  return exports;
}

}  // namespace spx_binding

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  return spx_binding::Init(env, exports);
}

NODE_API_MODULE(specontext_native, InitAddon)
