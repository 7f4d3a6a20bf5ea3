// Shared pieces of the Node-API addon: the opaque engine handle, the
// JS <-> C++ conversions and the exported functions (one file each).
//
// The binding is deliberately thin: JS values become plain spx structs on the
// JS thread, engine work runs on worker or engine threads, and every failure
// crosses back as a JS Error whose `code` names its kind (see engine/errors.ts).
#pragma once

#include <napi.h>

#include <atomic>
#include <memory>
#include <string>

#include "engine/engine.h"

namespace spx_binding {

// Error kinds carried in Error.code; engine/errors.ts maps each to a class.
inline constexpr const char* kOpenError = "SPX_OPEN";
inline constexpr const char* kInvalidRequest = "SPX_INVALID_REQUEST";
inline constexpr const char* kClosed = "SPX_CLOSED";
inline constexpr const char* kGeneration = "SPX_GENERATION";
inline constexpr const char* kInternal = "SPX_INTERNAL";

// What JS holds: an External wrapping this. `closed` flips on the JS thread
// when close() is called, so every later call fails before reaching the
// engine even while the close itself still runs on a worker thread.
struct EngineHandle {
  std::shared_ptr<spx::Engine> engine;
  bool closed = false;
};

Napi::Error MakeError(Napi::Env env, const std::string& message, const char* code);
[[noreturn]] void Throw(Napi::Env env, const std::string& message, const char* code);

// The live engine behind args[index]; throws a JS error if the value is not a
// handle or the engine is closed.
EngineHandle& HandleArg(const Napi::CallbackInfo& info, size_t index);
Napi::Value WrapHandle(Napi::Env env, std::shared_ptr<spx::Engine> engine);

spx::EngineOptions ToEngineOptions(Napi::Env env, const Napi::Object& js);
spx::GenerateRequest ToGenerateRequest(Napi::Env env, const Napi::Object& js);
Napi::Object FromRequestStats(Napi::Env env, const spx::RequestStats& stats);
Napi::Object FromEngineStats(Napi::Env env, const spx::EngineStats& stats);
Napi::Object FromModelInfo(Napi::Env env, const spx::ModelInfo& info);
Napi::Object FromCheckpointEvent(Napi::Env env, const spx::CheckpointEvent& event);  // checkpoint.cc

// Exported functions; each lives in the file named after it.
Napi::Value Open(const Napi::CallbackInfo& info);       // open.cc
Napi::Value Submit(const Napi::CallbackInfo& info);     // generate.cc
Napi::Value Cancel(const Napi::CallbackInfo& info);     // cancel.cc
Napi::Value Close(const Napi::CallbackInfo& info);      // close.cc
Napi::Value Stats(const Napi::CallbackInfo& info);      // inspect.cc
Napi::Value Info(const Napi::CallbackInfo& info);       // inspect.cc
Napi::Value Backends(const Napi::CallbackInfo& info);   // inspect.cc
Napi::Value Plan(const Napi::CallbackInfo& info);       // plan.cc (SpeContext memory planner)
Napi::Value EvalFidelity(const Napi::CallbackInfo& info);  // fidelity.cc (sparse vs full)
Napi::Value CheckpointNow(const Napi::CallbackInfo& info);      // checkpoint.cc
Napi::Value InspectCheckpoint(const Napi::CallbackInfo& info);  // checkpoint.cc

}  // namespace spx_binding
