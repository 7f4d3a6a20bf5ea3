// Free and total memory of a CUDA device, for the memory planner
// (planner/placement_policy.h). A plain C++ header so engine code compiled
// without nvcc can call it; defined in device_memory.cu when the CUDA
// backend is built (SPX_HAVE_CUDA).
#pragma once

#include <cstdint>

#include "engine/engine.h"

namespace spx::cuda {

// cudaMemGetInfo on `device`; an error Status if the runtime fails.
Status device_memory(int device, uint64_t* free_bytes, uint64_t* total_bytes);

}  // namespace spx::cuda
