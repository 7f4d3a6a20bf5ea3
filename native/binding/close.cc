// close(handle) -> Promise<void>. Engine::close joins the scheduler thread,
// so it runs on a worker; the handle is marked closed at once on the JS
// thread so no call slips in while the close is in flight. Idempotent: a
// second close resolves immediately.
#include "binding.h"

namespace spx_binding {
namespace {

class CloseWorker : public Napi::AsyncWorker {
 public:
  CloseWorker(Napi::Env env, std::shared_ptr<spx::Engine> engine)
      : Napi::AsyncWorker(env, "spx.close"), engine_(std::move(engine)), deferred_(env) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      engine_->close();
      engine_.reset();
    } catch (const std::exception& e) {
      SetError(std::string("close failed: ") + e.what());
    } catch (...) {
      SetError("close failed: unknown native error");
    }
  }

  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  std::shared_ptr<spx::Engine> engine_;
  Napi::Promise::Deferred deferred_;
};

}  // namespace

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) Throw(env, "expected an engine handle", kInternal);
  EngineHandle* handle = info[0].As<Napi::External<EngineHandle>>().Data();
  if (handle->closed || !handle->engine) {
    auto done = Napi::Promise::Deferred::New(env);
    done.Resolve(env.Undefined());
    return done.Promise();
  }
  handle->closed = true;
  auto* worker = new CloseWorker(env, std::move(handle->engine));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace spx_binding
