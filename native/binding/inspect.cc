// Synchronous, cheap queries: engine stats, model info, compiled backends.
#include "binding.h"

namespace spx_binding {

Napi::Value Stats(const Napi::CallbackInfo& info) {
  EngineHandle& handle = HandleArg(info, 0);
  try {
    return FromEngineStats(info.Env(), handle.engine->stats());
  } catch (const std::exception& e) {
    Throw(info.Env(), std::string("stats failed: ") + e.what(), kInternal);
  }
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  EngineHandle& handle = HandleArg(info, 0);
  try {
    return FromModelInfo(info.Env(), handle.engine->info());
  } catch (const std::exception& e) {
    Throw(info.Env(), std::string("info failed: ") + e.what(), kInternal);
  }
}

Napi::Value Backends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array list = Napi::Array::New(env);
  list.Set(0u, "cpu");
#ifdef SPX_HAVE_CUDA  // set by native/cuda.cmake when the CUDA backend is linked
  list.Set(1u, "cuda");
#endif
  return list;
}

}  // namespace spx_binding
