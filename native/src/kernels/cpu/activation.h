// CPU reference SwiGLU for the gated MLP: out = silu(gate) * up.
#pragma once

#include <cstdint>

namespace spx {

// out, gate, up: [n] (flattened); out may alias gate.
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n);

}  // namespace spx
