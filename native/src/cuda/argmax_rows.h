// Greedy tokens on the GPU (issue 6; kernels/argmax_rows.cuh): the CUDA
// backend's Backend::argmax_rows. sampling/greedy.h is its CPU reference.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/ops.h"

namespace spx::cuda {

// ids[r] = sampling::argmax of row r, one block per row.
cudaError_t argmax_rows_forward(int32_t* ids,        // [rows], device
                                const bf16* logits,  // [rows, vocab]
                                int rows, int vocab, cudaStream_t stream);

}  // namespace spx::cuda
