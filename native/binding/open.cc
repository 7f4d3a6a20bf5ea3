// open(options) -> Promise<handle>. Loading a model reads and converts
// hundreds of MB, so Engine::open runs on a libuv worker thread.
#include "binding.h"

namespace spx_binding {
namespace {

class OpenWorker : public Napi::AsyncWorker {
 public:
  OpenWorker(Napi::Env env, spx::EngineOptions options)
      : Napi::AsyncWorker(env, "spx.open"), options_(std::move(options)), deferred_(env) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      spx::Status status;
      std::unique_ptr<spx::Engine> engine = spx::Engine::open(options_, &status);
      if (!engine || !status.ok) {
        message_ = status.message.empty() ? "failed to open engine" : status.message;
        return;
      }
      engine_ = std::move(engine);
    } catch (const std::exception& e) {
      message_ = std::string("failed to open engine: ") + e.what();
    } catch (...) {
      message_ = "failed to open engine: unknown native error";
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (!engine_) {
      deferred_.Reject(MakeError(env, message_, kOpenError).Value());
      return;
    }
    deferred_.Resolve(WrapHandle(env, std::shared_ptr<spx::Engine>(std::move(engine_))));
  }

  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  spx::EngineOptions options_;
  Napi::Promise::Deferred deferred_;
  std::unique_ptr<spx::Engine> engine_;
  std::string message_;
};

}  // namespace

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) Throw(env, "open(options) needs an object", kInvalidRequest);
  auto* worker = new OpenWorker(env, ToEngineOptions(env, info[0].As<Napi::Object>()));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace spx_binding
