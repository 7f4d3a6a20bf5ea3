// A RequestSink that records what the engine sends and lets a test wait for
// the end of the request (header only, shared by the engine tests).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace spx::testing {

class CollectSink : public RequestSink {
 public:
  std::function<void(int32_t, size_t)> on_each;  // (token, tokens so far), engine thread

  void on_token(int32_t token) override {
    size_t n;
    {
      std::lock_guard<std::mutex> lk(mu_);
      tokens_.push_back(token);
      n = tokens_.size();
    }
    if (on_each) on_each(token, n);
  }
  void on_done(const RequestStats& stats) override {
    std::lock_guard<std::mutex> lk(mu_);
    stats_ = stats;
    ++ends_;
    cv_.notify_all();
  }
  void on_error(const std::string& message) override {
    std::lock_guard<std::mutex> lk(mu_);
    error_ = message;
    ++ends_;
    cv_.notify_all();
  }
  // False on timeout.
  bool wait(int seconds = 60) {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, std::chrono::seconds(seconds), [&] { return ends_ > 0; });
  }
  std::vector<int32_t> tokens() {
    std::lock_guard<std::mutex> lk(mu_);
    return tokens_;
  }
  RequestStats stats() {
    std::lock_guard<std::mutex> lk(mu_);
    return stats_;
  }
  std::string error() {
    std::lock_guard<std::mutex> lk(mu_);
    return error_;
  }
  int ends() {
    std::lock_guard<std::mutex> lk(mu_);
    return ends_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> tokens_;
  RequestStats stats_;
  std::string error_;
  int ends_ = 0;
};

}  // namespace spx::testing
