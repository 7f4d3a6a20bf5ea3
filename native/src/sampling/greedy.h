// Greedy tokens of many logits rows at once (issue 6): the CPU backend's
// Backend::argmax_rows and the reference the CUDA kernel is tested against.
// Each row is cut into pieces that run in parallel (util/thread_pool.h), so
// one 128k-wide row does not wait on one core; the pieces' winners combine
// so that the result is exactly argmax()'s (sampler.h):
//   - the first index of the largest value (-0 and +0 are equal);
//   - NaN never wins; a row whose element 0 is NaN gives 0 (argmax() starts
//     from element 0 and nothing compares greater than NaN).
#pragma once

#include <cstdint>

namespace spx {

// ids[r] = argmax(logits + r * vocab, vocab) for r in [0, rows).
void argmax_rows(const float* logits,  // [rows, vocab]
                 int64_t rows, int vocab,
                 int32_t* ids);  // [rows]

}  // namespace spx
