// CPU reference RMSNorm: y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w.
// Used for the layer norms and, with rows = tokens * heads, for Qwen3's
// per-head q/k norms.
#pragma once

#include <cstdint>

namespace spx {

// y, x: [rows, d]; w: [d]. y may alias x.
void rmsnorm_forward(float* y, const float* x, const float* w, int64_t rows, int64_t d, float eps);

}  // namespace spx
