#include "kernels/cpu/rope.h"

#include <cmath>

#include "util/thread_pool.h"

namespace spx {

std::vector<float> rope_inv_freq(const RopeConfig& rope, int head_dim) {
  const int half = head_dim / 2;
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float p = std::pow(static_cast<float>(rope.theta), expo);
    inv[i] = 1.0f / p;
  }
  if (rope.type == "llama3") {
    const double low_wavelen = rope.original_max_position / rope.low_freq_factor;
    const double high_wavelen = rope.original_max_position / rope.high_freq_factor;
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < half; ++i) {
      const double wavelen = 2 * pi / inv[i];
      if (wavelen > low_wavelen) {
        inv[i] = static_cast<float>(inv[i] / rope.factor);
      } else if (wavelen >= high_wavelen) {
        // Medium frequencies blend the scaled and unscaled frequency.
        const double smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) /
                              (rope.high_freq_factor - rope.low_freq_factor);
        inv[i] = static_cast<float>((1 - smooth) * inv[i] / rope.factor + smooth * inv[i]);
      }
    }
  }
  return inv;
}

void rope_tables(const std::vector<float>& inv_freq, const int32_t* positions, int64_t n, float* cos,
                 float* sin) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(positions[t]) * inv_freq[i];
      cos[t * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin[t * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

void rope_forward(float* x, const float* cos, const float* sin, int64_t n, int64_t heads,
                  int64_t hd) {
  const int64_t half = hd / 2;
  parallel_for(n, 16, [&](int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * hd;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i];
        const float b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
  });
}

}  // namespace spx
