#include "kernels/cpu/norm.h"

#include <algorithm>
#include <cmath>

#include "util/thread_pool.h"

namespace spx {

void rmsnorm_forward(float* y, const float* x, const float* w, int64_t rows, int64_t d, float eps) {
  parallel_for(rows, std::max<int64_t>(1, 8192 / d), [&](int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(d) + eps));
    for (int64_t i = 0; i < d; ++i) yr[i] = w[i] * (xr[i] * inv);
  }
  });
}

}  // namespace spx
