// The opaque engine handle JS holds, and the error helpers every export uses.
#include "binding.h"

namespace spx_binding {

Napi::Error MakeError(Napi::Env env, const std::string& message, const char* code) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  return error;
}

void Throw(Napi::Env env, const std::string& message, const char* code) {
  throw MakeError(env, message, code);
}

EngineHandle& HandleArg(const Napi::CallbackInfo& info, size_t index) {
  Napi::Env env = info.Env();
  if (info.Length() <= index || !info[index].IsExternal()) {
    Throw(env, "expected an engine handle", kInternal);
  }
  EngineHandle* handle = info[index].As<Napi::External<EngineHandle>>().Data();
  if (handle == nullptr || handle->closed || !handle->engine) {
    Throw(env, "engine is closed", kClosed);
  }
  return *handle;
}

Napi::Value WrapHandle(Napi::Env env, std::shared_ptr<spx::Engine> engine) {
  auto* handle = new EngineHandle{std::move(engine), false};
  // A handle collected without close() still releases its engine; close()
  // joins the scheduler thread, which is quick once nothing is queued.
  return Napi::External<EngineHandle>::New(env, handle, [](Napi::Env, EngineHandle* h) {
    if (h->engine && !h->closed) h->engine->close();
    delete h;
  });
}

}  // namespace spx_binding
