#include "kernels/cpu/attention.h"

#include <cmath>
#include <vector>

#include "util/thread_pool.h"

namespace spx {

namespace {

typedef float v8 __attribute__((vector_size(32)));

// q . k over hd floats; 8-wide partial sums when hd allows (head dims are
// multiples of 8 in every supported model).
inline float dot(const float* a, const float* b, int64_t hd) {
  if (hd % 8 != 0) {
    float s = 0;
    for (int64_t d = 0; d < hd; ++d) s += a[d] * b[d];
    return s;
  }
  v8 acc = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t d = 0; d < hd; d += 8) {
    v8 x, y;
    __builtin_memcpy(&x, a + d, sizeof(x));
    __builtin_memcpy(&y, b + d, sizeof(y));
    acc += x * y;
  }
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

// One query row against its keys. keys == nullptr means positions 0..last.
void attend_one(float* out, const float* q, const float* k, const float* v, int64_t hd,
                int64_t last, const int32_t* keys, int64_t n_keys, float scale,
                std::vector<float>* scratch) {
  std::vector<float>& s = *scratch;
  int64_t count = keys ? n_keys : last + 1;
  s.resize(static_cast<size_t>(count));
  float mx = -INFINITY;
  int64_t used = 0;
  std::vector<int32_t> idx;
  for (int64_t j = 0; j < count; ++j) {
    int64_t pos = keys ? keys[j] : j;
    if (pos < 0 || pos > last) continue;  // selection may name future tokens for prefill rows
    const float* kr = k + pos * hd;
    const float score = dot(q, kr, hd) * scale;
    s[used] = score;
    if (keys) idx.push_back(static_cast<int32_t>(pos));
    ++used;
    if (score > mx) mx = score;
  }
  for (int64_t d = 0; d < hd; ++d) out[d] = 0;
  if (used == 0) return;
  float sum = 0;
  for (int64_t j = 0; j < used; ++j) {
    s[j] = std::exp(s[j] - mx);
    sum += s[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < used; ++j) {
    const float p = s[j] * inv;
    const float* vr = v + (keys ? idx[j] : j) * hd;
    for (int64_t d = 0; d < hd; ++d) out[d] += p * vr[d];
  }
}

}  // namespace

void attention_batch_forward(float* out, const float* q, const AttentionSeq* seqs, int64_t n_seqs,
                             int64_t heads, int64_t kv_heads, int64_t hd, float scale) {
  const int64_t group = heads / kv_heads;
  // Work items: (sequence, query row, head), flattened; row_start[i] is the
  // first item of sequence i.
  std::vector<int64_t> item_start(static_cast<size_t>(n_seqs) + 1, 0);
  for (int64_t i = 0; i < n_seqs; ++i) item_start[i + 1] = item_start[i] + seqs[i].n_q * heads;
  parallel_for(item_start[n_seqs], 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scratch;
    int64_t sidx = 0;
    for (int64_t i = i0; i < i1; ++i) {
      while (item_start[sidx + 1] <= i) ++sidx;
      const AttentionSeq& s = seqs[sidx];
      const int64_t local = i - item_start[sidx];
      const int64_t t = local / heads, h = local % heads, g = h / group;
      const int64_t row = (s.q_begin + t) * heads + h;
      attend_one(out + row * hd, q + row * hd, s.k_cache + g * s.capacity * hd,
                 s.v_cache + g * s.capacity * hd, hd, s.start_pos + t,
                 s.selection ? s.selection + g * s.budget : nullptr, s.budget, scale, &scratch);
    }
  });
}

void attention_forward(float* out, const float* q, const float* k_cache, const float* v_cache,
                       int64_t n_q, int64_t start_pos, int64_t heads, int64_t kv_heads, int64_t hd,
                       int64_t capacity, float scale, const int32_t* selection, int64_t budget) {
  AttentionSeq s;
  s.k_cache = k_cache;
  s.v_cache = v_cache;
  s.capacity = capacity;
  s.n_q = n_q;
  s.start_pos = start_pos;
  s.selection = selection;
  s.budget = budget;
  attention_batch_forward(out, q, &s, 1, heads, kv_heads, hd, scale);
}

void attention_decode_forward(float* out, const float* q, const float* k_cache,
                              const float* v_cache, int64_t pos, int64_t heads, int64_t kv_heads,
                              int64_t hd, int64_t capacity, float scale, const int32_t* selection,
                              int64_t budget) {
  attention_forward(out, q, k_cache, v_cache, 1, pos, heads, kv_heads, hd, capacity, scale,
                    selection, budget);
}

}  // namespace spx
