// Picks a backend for EngineOptions::device ("cpu" | "cuda:N").
//
// The CUDA backend plugs in at build time: native/cuda.cmake defines
// SPX_HAVE_CUDA on spx_core and compiles a definition of
//   std::unique_ptr<Backend> make_cuda_backend(int device_index, int threads, Status*);
// (a compile-time switch rather than a static registrar, which a static
// library would silently drop).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace spx {

std::unique_ptr<Backend> make_backend(const std::string& device, int threads, Status* status);
// Backends compiled into this build, e.g. {"cpu"} or {"cpu", "cuda"}.
std::vector<std::string> available_backends();

#ifdef SPX_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(int device_index, int threads, Status* status);
#endif

}  // namespace spx
