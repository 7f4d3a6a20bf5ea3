// checkpointNow(handle, id) and inspectCheckpoint(handle, path): the request
// checkpoint operations (native/src/checkpoint, docs/checkpoints.md).
//
// inspectCheckpoint validates a whole file against this engine (version,
// checksums, model identity, geometry) and returns its tokens, so a resuming
// caller can rebuild the request's prompt; it reads the file on the JS thread
// (about 0.1 s per GB from /dev/shm), which the retry path can afford.
#include <cstdio>

#include "binding.h"
#include "checkpoint/kv_checkpoint.h"

namespace spx_binding {

Napi::Object FromCheckpointEvent(Napi::Env env, const spx::CheckpointEvent& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", e.ok);
  if (!e.message.empty()) o.Set("message", e.message);
  o.Set("path", e.path);
  o.Set("tokens", e.tokens);
  o.Set("generated", e.generated);
  o.Set("bytes", static_cast<double>(e.bytes));
  o.Set("fileBytes", static_cast<double>(e.file_bytes));
  o.Set("stallMs", e.stall_ms);
  o.Set("writeMs", e.write_ms);
  return o;
}

Napi::Value CheckpointNow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EngineHandle& handle = HandleArg(info, 0);
  if (info.Length() < 2 || !info[1].IsNumber()) Throw(env, "checkpointNow needs a request id", kInvalidRequest);
  handle.engine->checkpoint_now(static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value()));
  return env.Undefined();
}

Napi::Value InspectCheckpoint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EngineHandle& handle = HandleArg(info, 0);
  if (info.Length() < 2 || !info[1].IsString()) Throw(env, "inspectCheckpoint needs a path", kInvalidRequest);
  const std::string path = info[1].As<Napi::String>().Utf8Value();
  const spx::ModelInfo m = handle.engine->info();
  spx::CheckpointGeometry g{m.num_layers, m.num_kv_heads, m.head_dim, 0, 0};
  spx::CheckpointReader reader;
  spx::Status st;
  try {
    st = reader.open(path, handle.engine->identity(), g);
  } catch (const std::exception& e) {
    st = spx::Status::Error(std::string("cannot read the checkpoint: ") + e.what());
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", st.ok);
  if (!st.ok) {
    o.Set("reason", st.message);
    return o;
  }
  // Every token of the request so far: those fed (with KV) and the next one.
  const std::vector<int32_t>& ids = reader.token_ids();
  Napi::Int32Array tokens = Napi::Int32Array::New(env, ids.size() + 1);
  for (size_t i = 0; i < ids.size(); ++i) tokens[i] = ids[i];
  tokens[ids.size()] = reader.next_token();
  o.Set("tokens", tokens);
  o.Set("kvTokens", reader.tokens());
  o.Set("generated", reader.generated());
  o.Set("promptTokens", reader.header().prompt_tokens);
  o.Set("fileBytes", static_cast<double>(reader.file_bytes()));
  return o;
}

}  // namespace spx_binding
