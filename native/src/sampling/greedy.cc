#include "sampling/greedy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "util/thread_pool.h"

namespace spx {

namespace {

// A piece's winner: its largest non-NaN value and the first index holding it;
// index < 0 when every element of the piece is NaN.
struct Best {
  float value = 0;
  int32_t index = -1;
};

constexpr int kPiece = 16384;  // elements per parallel piece

Best piece_best(const float* x, int begin, int end) {
  Best b;
  for (int i = begin; i < end; ++i) {
    if (std::isnan(x[i])) continue;
    if (b.index < 0 || x[i] > b.value) {
      b.value = x[i];
      b.index = i;
    }
  }
  return b;
}

}  // namespace

void argmax_rows(const float* logits, int64_t rows, int vocab, int32_t* ids) {
  if (rows <= 0) return;
  if (vocab <= 0) {
    std::fill(ids, ids + rows, 0);
    return;
  }
  const int64_t pieces = (vocab + kPiece - 1) / kPiece;
  std::vector<Best> best(static_cast<size_t>(rows * pieces));
  parallel_for(rows * pieces, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t r = j / pieces, p = j % pieces;
      const int lo = static_cast<int>(p * kPiece), hi = std::min(vocab, lo + kPiece);
      best[static_cast<size_t>(j)] = piece_best(logits + r * vocab, lo, hi);
    }
  });
  for (int64_t r = 0; r < rows; ++r) {
    // argmax() keeps element 0 when it is NaN: nothing is greater.
    if (std::isnan(logits[r * vocab])) {
      ids[r] = 0;
      continue;
    }
    // Pieces in index order, strictly greater only: ties stay with the first.
    Best b;
    for (int64_t p = 0; p < pieces; ++p) {
      const Best& c = best[static_cast<size_t>(r * pieces + p)];
      if (c.index >= 0 && (b.index < 0 || c.value > b.value)) b = c;
    }
    ids[r] = b.index < 0 ? 0 : b.index;
  }
}

}  // namespace spx
