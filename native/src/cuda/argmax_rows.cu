// Launcher of the greedy-token kernel; see argmax_rows.h.
#include "cuda/argmax_rows.h"

#include "cuda/kernels/argmax_rows.cuh"

namespace spx::cuda {

cudaError_t argmax_rows_forward(int32_t* ids, const bf16* logits, int rows, int vocab,
                                cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (vocab <= 0) return cudaErrorInvalidValue;
  argmax_rows_forward_kernel<<<rows, kArgmaxThreads, 0, stream>>>(ids, logits, vocab);
  return cudaGetLastError();
}

}  // namespace spx::cuda
