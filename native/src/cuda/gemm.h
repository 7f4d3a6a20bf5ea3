// bf16 GEMMs through cuBLASLt: y[M, N] = x[M, K] * W[N, K]^T, the product
// every projection needs with HF's [out, in] weight layout.
//
// cuBLASLt is column-major; a row-major [M, N] output is the column-major
// [N, M] matrix W * x^T, so W goes in as the transposed A operand. The
// heuristic's choice is cached per shape (it is a host call worth avoiding
// per step, and must not happen during graph capture), with a fixed
// workspace so the plans are graph-safe.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <map>
#include <tuple>

#include "engine/engine.h"

namespace spx::cuda {

class Gemm {
 public:
  Gemm() = default;
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  Status init(size_t workspace_bytes = 64u << 20);
  // out_f32 selects an f32 output (logits); otherwise bf16. accumulate adds
  // into out (beta = 1), used for the residual stream.
  Status run(void* out,                 // [M, N] bf16 or f32
             const __nv_bfloat16* x,    // [M, K]
             const __nv_bfloat16* w,    // [N, K]
             int M, int N, int K, bool out_f32, bool accumulate, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  Status plan(int M, int N, int K, bool out_f32, Plan** out);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<std::tuple<int, int, int, bool>, Plan> plans_;
};

}  // namespace spx::cuda
