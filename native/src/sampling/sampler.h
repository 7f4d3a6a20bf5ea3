// Token sampling from one row of logits: greedy, or temperature with optional
// top-k / top-p. Each request owns a Sampler seeded from its seed, so the same
// seed gives the same tokens however requests are batched.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "engine/engine.h"

namespace spx {

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : p_(params), rng_(params.seed) {}
  int32_t sample(const float* logits, int vocab);
  // The generator's position, for checkpoints: draws so far, and skipping
  // ahead to a position after a restore.
  uint64_t draws() const { return draws_; }
  void skip(uint64_t n) {
    rng_.discard(n);
    draws_ += n;
  }

 private:
  double uniform();  // [0, 1), from the request's own generator
  SamplingParams p_;
  std::mt19937_64 rng_;
  uint64_t draws_ = 0;
  std::vector<std::pair<float, int32_t>> cand_;
};

int32_t argmax(const float* logits, int vocab);

}  // namespace spx
