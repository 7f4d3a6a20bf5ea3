#include "kernels/cpu/activation.h"

#include <cmath>

#include "util/thread_pool.h"

namespace spx {

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  parallel_for(n, 16384, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float g = gate[i];
      out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  });
}

}  // namespace spx
