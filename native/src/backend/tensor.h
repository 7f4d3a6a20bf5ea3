// A typed, shaped view of backend memory (host memory for the CPU backend,
// device memory for CUDA). Row views share the allocation through `owner`.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace spx {

enum class DType { F32, BF16 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::shared_ptr<void> owner;  // keeps the allocation alive

  bool empty() const { return data == nullptr; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return shape.empty() ? 0 : n;
  }
  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
  int64_t row_elems() const { return shape.empty() || shape[0] == 0 ? 0 : numel() / shape[0]; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }

  // Rows [begin, begin + count) along dimension 0.
  Tensor rows(int64_t begin, int64_t count) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + static_cast<size_t>(begin * row_elems()) * dtype_size(dtype);
    t.shape[0] = count;
    return t;
  }
  // Same memory, another shape with the same element count.
  Tensor reshaped(std::vector<int64_t> s) const {
    Tensor t = *this;
    t.shape = std::move(s);
    return t;
  }
  float* f32() const { return static_cast<float*>(data); }
};

}  // namespace spx
