// The model shapes the CUDA benchmark runs (gpt-fast style config table).
// Values from the models' Hugging Face config.json files.
#pragma once

#include <string>
#include <vector>

#include "cuda/rope_freq.h"

namespace spx::bench {

struct ModelShape {
  std::string name;
  int hidden, inter, layers, heads, kv_heads, head_dim, vocab;
  double rope_theta;
  cuda::RopeScaling rope;
  bool qk_norm;
  float eps;
};

inline std::vector<ModelShape> model_shapes() {
  return {
      {"llama-3.1-8b", 4096, 14336, 32, 32, 8, 128, 128256, 500000.0,
       cuda::RopeScaling{"llama3", 8.0, 1.0, 4.0, 8192}, false, 1e-5f},
      {"qwen3-8b", 4096, 12288, 36, 32, 8, 128, 151936, 1000000.0, cuda::RopeScaling{}, true,
       1e-6f},
      // Small shape for the sanitizer run and smoke tests.
      {"tiny-128", 512, 1024, 2, 4, 2, 128, 1000, 10000.0, cuda::RopeScaling{}, true, 1e-6f},
  };
}

}  // namespace spx::bench
