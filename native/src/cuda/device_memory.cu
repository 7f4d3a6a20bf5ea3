#include "cuda/device_memory.h"

#include <cuda_runtime.h>

#include "cuda/check.h"

namespace spx::cuda {

Status device_memory(int device, uint64_t* free_bytes, uint64_t* total_bytes) {
  SPX_CUDA_TRY(cudaSetDevice(device));
  size_t f = 0, t = 0;
  SPX_CUDA_TRY(cudaMemGetInfo(&f, &t));
  *free_bytes = f;
  *total_bytes = t;
  return Status::Ok();
}

}  // namespace spx::cuda
