// RoPE inverse frequencies with the model's scaling folded in, computed once
// on the host (plain C++, shared by the CUDA backend and the tests).
// Follows HF's rope_type "default" and "llama3" (Llama 3.1) definitions.
#pragma once

#include <cmath>
#include <string>
#include <vector>

namespace spx::cuda {

struct RopeScaling {
  std::string type = "default";  // "default" | "llama3" | "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position = 8192;
};

inline std::vector<float> rope_inv_freq(double theta, int head_dim, const RopeScaling& s = {}) {
  const double kPi = 3.14159265358979323846;
  std::vector<float> out(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) {
    // HF computes the base frequencies in float32; do the same.
    float f = 1.0f / std::pow(static_cast<float>(theta), static_cast<float>(2 * i) / head_dim);
    if (s.type == "linear") {
      f = static_cast<float>(f / s.factor);
    } else if (s.type == "llama3") {
      const double low_wavelen = s.original_max_position / s.low_freq_factor;
      const double high_wavelen = s.original_max_position / s.high_freq_factor;
      const double wavelen = 2 * kPi / f;
      if (wavelen > low_wavelen) {
        f = static_cast<float>(f / s.factor);
      } else if (wavelen >= high_wavelen) {
        const double smooth = (s.original_max_position / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / s.factor + smooth * f);
      }
    }
    out[i] = f;
  }
  return out;
}

}  // namespace spx::cuda
