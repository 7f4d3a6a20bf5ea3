// submit(handle, request, onEvent) -> request id.
//
// The request is converted to a plain spx::GenerateRequest on the JS thread;
// Engine::submit only validates and enqueues, so it is cheap enough to call
// here and lets validation errors throw synchronously with the engine's
// message. Tokens, the final stats or an error then reach JS through a
// ThreadSafeFunction: the engine thread never touches JS values.
#include <atomic>

#include "binding.h"

namespace spx_binding {
namespace {

struct Event {
  enum Kind { kToken, kDone, kError, kCheckpoint } kind;
  int32_t token = 0;
  spx::RequestStats stats;
  std::string message;
  spx::CheckpointEvent checkpoint;
};

void Dispatch(Napi::Env env, Napi::Function callback, const Event& event) {
  switch (event.kind) {
    case Event::kToken:
      callback.Call({Napi::String::New(env, "token"), Napi::Number::New(env, event.token)});
      break;
    case Event::kDone:
      callback.Call({Napi::String::New(env, "done"), FromRequestStats(env, event.stats)});
      break;
    case Event::kCheckpoint:
      callback.Call({Napi::String::New(env, "checkpoint"), FromCheckpointEvent(env, event.checkpoint)});
      break;
    case Event::kError:
      callback.Call({Napi::String::New(env, "error"),
                     MakeError(env, event.message, kGeneration).Value()});
      break;
  }
}

void DeliverEvent(Napi::Env env, Napi::Function callback, void* /*context*/, Event* event) {
  std::unique_ptr<Event> owned(event);
  if (env == nullptr || callback.IsEmpty()) return;  // environment shutting down
  // engine/index.ts never lets the callback throw; should it anyway, the
  // error must not escape into Node-API (that would be an uncaught exception).
  try {
    Dispatch(env, callback, *owned);
  } catch (const Napi::Error&) {
  }
}

using EventQueue = Napi::TypedThreadSafeFunction<void, Event, DeliverEvent>;

// Called on the engine thread; never blocks (the queue is unbounded) and
// releases the thread-safe function after the one final event.
class ThreadSafeSink : public spx::RequestSink {
 public:
  explicit ThreadSafeSink(EventQueue queue) : queue_(std::move(queue)) {}

  ~ThreadSafeSink() override {
    // An engine that drops a request without a final event must not leave
    // the JS promise pending forever.
    Finish(new Event{Event::kError, 0, {}, "request dropped by the engine without a result"});
  }

  void on_token(int32_t token) override {
    if (finished_.load()) return;
    Post(new Event{Event::kToken, token, {}, {}});
  }
  void on_checkpoint(const spx::CheckpointEvent& e) override {
    if (finished_.load()) return;
    Event* event = new Event{Event::kCheckpoint, 0, {}, {}};
    event->checkpoint = e;
    Post(event);
  }
  void on_done(const spx::RequestStats& stats) override {
    Finish(new Event{Event::kDone, 0, stats, {}});
  }
  void on_error(const std::string& message) override {
    Finish(new Event{Event::kError, 0, {}, message});
  }

  // Submission failed: no event will ever be sent.
  void Abandon() {
    if (!finished_.exchange(true)) queue_.Release();
  }

 private:
  void Post(Event* event) {
    if (queue_.NonBlockingCall(event) != napi_ok) delete event;
  }
  void Finish(Event* event) {
    if (finished_.exchange(true)) {
      delete event;
      return;
    }
    Post(event);
    queue_.Release();
  }

  EventQueue queue_;
  std::atomic<bool> finished_{false};
};

}  // namespace

Napi::Value Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EngineHandle& handle = HandleArg(info, 0);
  if (info.Length() < 3 || !info[1].IsObject() || !info[2].IsFunction()) {
    Throw(env, "submit(handle, request, onEvent) needs a request object and a callback",
          kInvalidRequest);
  }
  spx::GenerateRequest request = ToGenerateRequest(env, info[1].As<Napi::Object>());

  auto sink = std::make_shared<ThreadSafeSink>(
      EventQueue::New(env, info[2].As<Napi::Function>(), "spx.generate", 0, 1));
  spx::Status status;
  uint64_t id = 0;
  try {
    id = handle.engine->submit(std::move(request), sink, &status);
  } catch (const std::exception& e) {
    status = spx::Status::Error(std::string("submit failed: ") + e.what());
  } catch (...) {
    status = spx::Status::Error("submit failed: unknown native error");
  }
  if (!status.ok || id == 0) {
    sink->Abandon();
    Throw(env, status.message.empty() ? "request rejected" : status.message, kInvalidRequest);
  }
  return Napi::Number::New(env, static_cast<double>(id));
}

}  // namespace spx_binding
