// CPU reference GEMM for the model's linear layers: y = x * w^T (+ bias).
// Weights are [out_features, in_features] as stored by Hugging Face, so each
// output is a dot product of two contiguous rows. Register tiles of 4 x-rows by
// 4 w-rows let one pass over the weights serve the whole batch (decode reads
// each weight once per step). Each output element is accumulated in the same
// order whatever the batch size, so batched and single-request runs agree
// bit for bit.
#pragma once

#include <cstdint>

namespace spx {

// y: [n, m], x: [n, k], w: [m, k], bias: [m] or nullptr.
void matmul_forward(float* y, const float* x, const float* w, const float* bias, int64_t n,
                    int64_t k, int64_t m);

}  // namespace spx
