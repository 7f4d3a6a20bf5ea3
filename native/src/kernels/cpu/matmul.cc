#include "kernels/cpu/matmul.h"

#include <algorithm>

#include "util/thread_pool.h"

namespace spx {

namespace {

typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
  v8 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

inline float hsum(v8 v) {
  // Fixed pairwise order: part of the bitwise batch invariance.
  float a = (v[0] + v[4]) + (v[2] + v[6]);
  float b = (v[1] + v[5]) + (v[3] + v[7]);
  return a + b;
}

// R x-rows against C w-rows. Every (r, c) pair computes exactly the same
// sequence of operations as it would in a 1x1 tile.
template <int R, int C>
inline void tile(float* y, const float* x, const float* w, const float* bias, int64_t k,
                 int64_t m, int64_t i0, int64_t j0) {
  v8 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = v8{0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t k8 = k & ~int64_t(7);
  for (int64_t p = 0; p < k8; p += 8) {
    v8 wv[C];
    for (int c = 0; c < C; ++c) wv[c] = load8(w + (j0 + c) * k + p);
    for (int r = 0; r < R; ++r) {
      v8 xv = load8(x + (i0 + r) * k + p);
      for (int c = 0; c < C; ++c) acc[r][c] += xv * wv[c];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float s = hsum(acc[r][c]);
      const float* xr = x + (i0 + r) * k;
      const float* wr = w + (j0 + c) * k;
      for (int64_t p = k8; p < k; ++p) s += xr[p] * wr[p];
      if (bias) s += bias[j0 + c];
      y[(i0 + r) * m + j0 + c] = s;
    }
  }
}

template <int C>
inline void column_block(float* y, const float* x, const float* w, const float* bias, int64_t n,
                         int64_t k, int64_t m, int64_t j0) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) tile<4, C>(y, x, w, bias, k, m, i, j0);
  switch (n - i) {
    case 3: tile<3, C>(y, x, w, bias, k, m, i, j0); break;
    case 2: tile<2, C>(y, x, w, bias, k, m, i, j0); break;
    case 1: tile<1, C>(y, x, w, bias, k, m, i, j0); break;
    default: break;
  }
}

}  // namespace

void matmul_forward(float* y, const float* x, const float* w, const float* bias, int64_t n,
                    int64_t k, int64_t m) {
  const int64_t blocks = (m + 3) / 4;
  // Row blocks of x keep a slab of activations hot in cache during prefill;
  // for decode (small n) there is a single slab.
  const int64_t slab = 64;
  for (int64_t i0 = 0; i0 < n; i0 += slab) {
    const int64_t rows = std::min(slab, n - i0);
    const float* xs = x + i0 * k;
    float* ys = y + i0 * m;
    parallel_for(blocks, 8, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t j0 = b * 4;
        switch (std::min<int64_t>(4, m - j0)) {
          case 4: column_block<4>(ys, xs, w, bias, rows, k, m, j0); break;
          case 3: column_block<3>(ys, xs, w, bias, rows, k, m, j0); break;
          case 2: column_block<2>(ys, xs, w, bias, rows, k, m, j0); break;
          default: column_block<1>(ys, xs, w, bias, rows, k, m, j0); break;
        }
      }
    });
  }
}

}  // namespace spx
