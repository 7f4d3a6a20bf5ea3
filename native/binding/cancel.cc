// cancel(handle, id): the AbortSignal path. Engine::cancel only flags the
// request; the scheduler frees it between steps and the sink reports
// finish_reason "cancelled", so this is safe to call on the JS thread.
#include "binding.h"

namespace spx_binding {

Napi::Value Cancel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) Throw(env, "expected an engine handle", kInternal);
  EngineHandle* handle = info[0].As<Napi::External<EngineHandle>>().Data();
  // Cancelling after close is a no-op: close already cancelled everything.
  if (handle->closed || !handle->engine) return env.Undefined();
  if (info.Length() < 2 || !info[1].IsNumber()) Throw(env, "cancel needs a request id", kInvalidRequest);
  try {
    handle->engine->cancel(static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value()));
  } catch (const std::exception& e) {
    Throw(env, std::string("cancel failed: ") + e.what(), kInternal);
  }
  return env.Undefined();
}

}  // namespace spx_binding
