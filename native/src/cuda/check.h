// Turning CUDA and cuBLAS return codes into spx::Status.
//
// Kernel launchers return cudaError_t (flashinfer style) and never abort;
// the backend and the tools wrap each call in SPX_CUDA_TRY / SPX_CUBLAS_TRY,
// which return a Status naming the file, the line, the call and CUDA's
// message. Nothing here exits the process.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "engine/engine.h"

namespace spx::cuda {

inline Status CudaStatus(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return Status::Ok();
  return Status::Error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" +
                       cudaGetErrorString(err) + ") in " + what + " at " + file + ":" +
                       std::to_string(line));
}

inline Status CublasStatus(cublasStatus_t err, const char* what, const char* file, int line) {
  if (err == CUBLAS_STATUS_SUCCESS) return Status::Ok();
  return Status::Error(std::string("cuBLAS error ") + cublasLtGetStatusName(err) + " (" +
                       cublasLtGetStatusString(err) + ") in " + what + " at " + file + ":" +
                       std::to_string(line));
}

}  // namespace spx::cuda

#define SPX_CUDA_TRY(expr)                                                                \
  do {                                                                                    \
    cudaError_t spx_err_ = (expr);                                                        \
    if (spx_err_ != cudaSuccess) return ::spx::cuda::CudaStatus(spx_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define SPX_CUBLAS_TRY(expr)                                                              \
  do {                                                                                    \
    cublasStatus_t spx_err_ = (expr);                                                     \
    if (spx_err_ != CUBLAS_STATUS_SUCCESS)                                                \
      return ::spx::cuda::CublasStatus(spx_err_, #expr, __FILE__, __LINE__);              \
  } while (0)

#define SPX_STATUS_TRY(expr)               \
  do {                                     \
    ::spx::Status spx_st_ = (expr);        \
    if (!spx_st_.ok) return spx_st_;       \
  } while (0)
