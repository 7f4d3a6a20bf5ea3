// CPU reference rotary position embedding, "rotate half" layout as in Hugging
// Face Llama/Qwen: element i pairs with i + hd/2.
//
// rope_inv_freq() builds the per-pair frequencies once per model (with the
// llama3 long-context scaling when configured), rope_tables() the cos/sin rows
// for one step's positions; both follow HF's float32 arithmetic so logits match
// the reference closely.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace spx {

std::vector<float> rope_inv_freq(const RopeConfig& rope, int head_dim);
// cos, sin: [n, hd/2] for positions[n].
void rope_tables(const std::vector<float>& inv_freq, const int32_t* positions, int64_t n, float* cos,
                 float* sin);
// x: [n, heads, hd] rotated in place; cos, sin: [n, hd/2].
void rope_forward(float* x, const float* cos, const float* sin, int64_t n, int64_t heads,
                  int64_t hd);

}  // namespace spx
