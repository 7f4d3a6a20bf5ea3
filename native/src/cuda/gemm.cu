// cuBLASLt GEMM wrapper; see gemm.h.
#include "cuda/gemm.h"

#include "cuda/check.h"

namespace spx::cuda {

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
  }
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

Status Gemm::init(size_t workspace_bytes) {
  SPX_CUBLAS_TRY(cublasLtCreate(&handle_));
  SPX_CUDA_TRY(cudaMalloc(&workspace_, workspace_bytes));
  workspace_bytes_ = workspace_bytes;
  return Status::Ok();
}

Status Gemm::plan(int M, int N, int K, bool out_f32, Plan** out) {
  const auto key = std::make_tuple(M, N, K, out_f32);
  auto it = plans_.find(key);
  if (it != plans_.end()) {
    *out = &it->second;
    return Status::Ok();
  }
  Plan p;
  SPX_CUBLAS_TRY(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  SPX_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  SPX_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  // A = W stored column-major as [K, N] (ld K), used transposed: [N, K].
  SPX_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, K, N, K));
  // B = x stored column-major as [K, M] (ld K).
  SPX_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, K, M, K));
  // C = D = y stored column-major as [N, M] (ld N), i.e. row-major [M, N].
  SPX_CUBLAS_TRY(
      cublasLtMatrixLayoutCreate(&p.c, out_f32 ? CUDA_R_32F : CUDA_R_16BF, N, M, N));
  cublasLtMatmulPreference_t pref;
  SPX_CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                       &workspace_bytes_, sizeof workspace_bytes_);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.c, p.c,
                                                           pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  SPX_CUBLAS_TRY(st);
  if (found == 0)
    return Status::Error("cuBLASLt found no algorithm for GEMM M=" + std::to_string(M) +
                         " N=" + std::to_string(N) + " K=" + std::to_string(K));
  p.algo = result.algo;
  auto [pos, inserted] = plans_.emplace(key, p);
  *out = &pos->second;
  return Status::Ok();
}

Status Gemm::run(void* out, const __nv_bfloat16* x, const __nv_bfloat16* w, int M, int N, int K,
                 bool out_f32, bool accumulate, cudaStream_t stream) {
  if (M <= 0) return Status::Ok();
  Plan* p = nullptr;
  SPX_STATUS_TRY(plan(M, N, K, out_f32, &p));
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  SPX_CUBLAS_TRY(cublasLtMatmul(handle_, p->op, &alpha, w, p->a, x, p->b, &beta, out, p->c, out,
                                p->c, &p->algo, workspace_, workspace_bytes_, stream));
  return Status::Ok();
}

}  // namespace spx::cuda
