#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "util/thread_pool.h"

namespace spx {

namespace {

typedef float v8 __attribute__((vector_size(32)));

// Keys per split. Splits are at fixed key positions, so a query's result does
// not depend on how it was batched or chunked (batched == alone, bitwise).
constexpr int64_t kSplit = 256;
// Query tokens per work item in prefill: with the GQA group they share each
// K/V row load.
constexpr int64_t kTokenBlock = 4;

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

typedef int32_t v8i __attribute__((vector_size(32)));

// exp() of 8 floats: range reduction to r in [-ln2/2, ln2/2], a degree-6
// Taylor polynomial (relative error ~2e-7, below f32 rounding of the sums it
// feeds), and 2^n through the exponent bits. -inf maps to exactly 0 so masked
// keys contribute nothing. libm's scalar expf was a third of prefill time.
inline v8 exp8(v8 x) {
  const v8 masked = x;
  x = x < -87.0f ? v8{} - 87.0f : x;
  // Round to nearest through the 1.5 * 2^23 trick (no vector floor in GCC).
  const v8 t = x * 1.44269504088896341f;
  const v8 n = (t + 12582912.0f) - 12582912.0f;
  const v8 r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  v8 p = r * (1.0f / 720) + (1.0f / 120);
  p = p * r + (1.0f / 24);
  p = p * r + (1.0f / 6);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8 scale;
  __builtin_memcpy(&scale, &e, sizeof(scale));
  v8 y = p * scale;
  return masked == -INFINITY ? v8{} : y;
}

// o[hd] += p * v[hd] over the keys, with o kept in registers when the head
// dim is a small multiple of 8.
template <int D8>
inline void weighted_sum(float* out, const float* probs, const int32_t* keypos, int64_t nk,
                         const float* vh) {
  v8 acc[D8];
  for (int d = 0; d < D8; ++d) acc[d] = v8{};
  for (int64_t j = 0; j < nk; ++j) {
    const float p = probs[j];
    if (p == 0.0f) continue;
    const float* vr = vh + static_cast<int64_t>(keypos[j]) * (D8 * 8);
    for (int d = 0; d < D8; ++d) {
      v8 v;
      __builtin_memcpy(&v, vr + d * 8, sizeof(v));
      acc[d] += p * v;
    }
  }
  __builtin_memcpy(out, acc, sizeof(acc));
}

inline void weighted_sum_any(float* out, const float* probs, const int32_t* keypos, int64_t nk,
                             const float* vh, int64_t hd) {
  switch (hd) {
    case 16: return weighted_sum<2>(out, probs, keypos, nk, vh);
    case 32: return weighted_sum<4>(out, probs, keypos, nk, vh);
    case 64: return weighted_sum<8>(out, probs, keypos, nk, vh);
    case 128: return weighted_sum<16>(out, probs, keypos, nk, vh);
    default: break;
  }
  std::fill(out, out + hd, 0.0f);
  for (int64_t j = 0; j < nk; ++j) {
    const float p = probs[j];
    if (p == 0.0f) continue;
    const float* vr = vh + static_cast<int64_t>(keypos[j]) * hd;
    for (int64_t d = 0; d < hd; ++d) out[d] += p * vr[d];
  }
}

// Four dot products of q with k0..k3 sharing the q loads; each equals dot(q, ki, hd).
inline void dot4(const float* q, const float* k0, const float* k1, const float* k2,
                 const float* k3, int64_t hd, float* out) {
  if (hd % 8 != 0) {
    out[0] = dot(q, k0, hd);
    out[1] = dot(q, k1, hd);
    out[2] = dot(q, k2, hd);
    out[3] = dot(q, k3, hd);
    return;
  }
  v8 a0 = {0, 0, 0, 0, 0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0;
  for (int64_t d = 0; d < hd; d += 8) {
    v8 x, y0, y1, y2, y3;
    __builtin_memcpy(&x, q + d, sizeof(x));
    __builtin_memcpy(&y0, k0 + d, sizeof(x));
    __builtin_memcpy(&y1, k1 + d, sizeof(x));
    __builtin_memcpy(&y2, k2 + d, sizeof(x));
    __builtin_memcpy(&y3, k3 + d, sizeof(x));
    a0 += x * y0;
    a1 += x * y1;
    a2 += x * y2;
    a3 += x * y3;
  }
  auto hsum = [](v8 a) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
  };
  out[0] = hsum(a0);
  out[1] = hsum(a1);
  out[2] = hsum(a2);
  out[3] = hsum(a3);
}

// Partial softmax state of one query over one split: max, sum of exp, and the
// unnormalised weighted sum of V rows [hd].
struct Partial {
  float m;
  float l;
};

// One work item: the queries of (sequence, KV head, token block) against one
// split of their keys. Writes partials [n_queries] and o [n_queries, hd].
struct ItemCtx {
  const AttentionSeq* s;
  int64_t g;         // KV head
  int64_t t0, nt;    // query tokens [t0, t0 + nt) of the sequence
  int64_t split;     // key split index
};

}  // namespace

void attention_batch_forward(float* out, const float* q, const AttentionSeq* seqs, int64_t n_seqs,
                             int64_t heads, int64_t kv_heads, int64_t hd, float scale) {
  const int64_t group = heads / kv_heads;
  // Enumerate (seq, kv head, token block) blocks and their key splits.
  struct Block {
    int64_t seq, g, t0, nt, n_splits, part_offset;  // part_offset: first Partial index
  };
  std::vector<Block> blocks;
  std::vector<ItemCtx> items;
  int64_t n_parts = 0;
  for (int64_t si = 0; si < n_seqs; ++si) {
    const AttentionSeq& s = seqs[si];
    for (int64_t t0 = 0; t0 < s.n_q; t0 += kTokenBlock) {
      const int64_t nt = std::min(kTokenBlock, s.n_q - t0);
      // Keys this block may touch: positions or selection entries.
      const int64_t n_keys = s.selection ? s.budget : s.start_pos + t0 + nt;
      const int64_t n_splits = std::max<int64_t>(1, (n_keys + kSplit - 1) / kSplit);
      for (int64_t g = 0; g < kv_heads; ++g) {
        blocks.push_back(Block{si, g, t0, nt, n_splits, n_parts});
        for (int64_t sp = 0; sp < n_splits; ++sp) items.push_back(ItemCtx{&s, g, t0, nt, sp});
        n_parts += n_splits * nt * group;
      }
    }
  }
  // Per (block, split, query): Partial and o[hd]. Query order within a block:
  // token-major, then head within the group.
  std::vector<Partial> parts(static_cast<size_t>(n_parts));
  std::vector<float> outs(static_cast<size_t>(n_parts * hd));
  std::vector<int64_t> item_part(items.size());
  {
    size_t it = 0;
    for (const Block& b : blocks)
      for (int64_t sp = 0; sp < b.n_splits; ++sp)
        item_part[it++] = b.part_offset + sp * b.nt * group;
  }

  parallel_for(static_cast<int64_t>(items.size()), 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scores;
    std::vector<int32_t> keypos;
    for (int64_t ii = i0; ii < i1; ++ii) {
      const ItemCtx& it = items[static_cast<size_t>(ii)];
      const AttentionSeq& s = *it.s;
      const int64_t nq = it.nt * group;
      const float* kh = s.k_cache + it.g * s.capacity * hd;
      const float* vh = s.v_cache + it.g * s.capacity * hd;
      // Key positions of this split.
      const int64_t last_pos = s.start_pos + it.t0 + it.nt - 1;
      keypos.clear();
      const int64_t k_begin = it.split * kSplit;
      if (s.selection) {
        const int32_t* sel = s.selection + it.g * s.budget;
        const int64_t k_end = std::min(s.budget, k_begin + kSplit);
        for (int64_t j = k_begin; j < k_end; ++j)
          if (sel[j] >= 0 && sel[j] <= last_pos) keypos.push_back(sel[j]);
      } else {
        const int64_t k_end = std::min(last_pos + 1, k_begin + kSplit);
        for (int64_t j = k_begin; j < k_end; ++j) keypos.push_back(static_cast<int32_t>(j));
      }
      const int64_t nk = static_cast<int64_t>(keypos.size());
      // Rows padded to 8 with -inf so every score goes through exp8 the same way.
      const int64_t stride = std::max<int64_t>(8, (nk + 7) & ~int64_t(7));
      scores.assign(static_cast<size_t>(nq * stride), -INFINITY);
      Partial* part = parts.data() + item_part[static_cast<size_t>(ii)];
      float* o = outs.data() + item_part[static_cast<size_t>(ii)] * hd;
      // Scores, four keys at a time per query (the block's K rows stay in cache).
      for (int64_t t = 0; t < it.nt; ++t) {
        const int64_t pos = s.start_pos + it.t0 + t;
        for (int64_t h = 0; h < group; ++h) {
          const float* qr = q + ((s.q_begin + it.t0 + t) * heads + it.g * group + h) * hd;
          float* sr = scores.data() + (t * group + h) * stride;
          int64_t j = 0;
          for (; j + 4 <= nk; j += 4) {
            float d4[4];
            dot4(qr, kh + static_cast<int64_t>(keypos[j]) * hd,
                 kh + static_cast<int64_t>(keypos[j + 1]) * hd,
                 kh + static_cast<int64_t>(keypos[j + 2]) * hd,
                 kh + static_cast<int64_t>(keypos[j + 3]) * hd, hd, d4);
            for (int u = 0; u < 4; ++u)
              if (keypos[j + u] <= pos) sr[j + u] = d4[u] * scale;  // causal
          }
          for (; j < nk; ++j)
            if (keypos[j] <= pos) sr[j] = dot(qr, kh + static_cast<int64_t>(keypos[j]) * hd, hd) * scale;
        }
      }
      for (int64_t qi = 0; qi < nq; ++qi) {
        float* sr = scores.data() + qi * stride;
        float m = -INFINITY;
        for (int64_t j = 0; j < nk; ++j) m = std::max(m, sr[j]);
        float l = 0;
        if (m != -INFINITY) {
          for (int64_t j = 0; j < stride; j += 8) {
            v8 x;
            __builtin_memcpy(&x, sr + j, sizeof(x));
            x = exp8(x - m);
            __builtin_memcpy(sr + j, &x, sizeof(x));
          }
          for (int64_t j = 0; j < nk; ++j) l += sr[j];
        }
        part[qi] = Partial{m, l};
        // Weighted V; the block's V rows stay in cache across its queries.
        weighted_sum_any(o + qi * hd, sr, keypos.data(), nk, vh, hd);
      }
    }
  });

  // Combine the splits of each query (in split order, so the result is fixed).
  parallel_for(static_cast<int64_t>(blocks.size()), 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const Block& b = blocks[static_cast<size_t>(bi)];
      const AttentionSeq& s = seqs[b.seq];
      const int64_t nq = b.nt * group;
      for (int64_t qi = 0; qi < nq; ++qi) {
        const int64_t t = qi / group, head = b.g * group + qi % group;
        float* dst = out + ((s.q_begin + b.t0 + t) * heads + head) * hd;
        float M = -INFINITY;
        for (int64_t sp = 0; sp < b.n_splits; ++sp) {
          const Partial& p = parts[static_cast<size_t>(b.part_offset + sp * nq + qi)];
          if (p.l > 0) M = std::max(M, p.m);
        }
        std::fill(dst, dst + hd, 0.0f);
        if (M == -INFINITY) continue;  // no visible key (empty selection)
        float L = 0;
        for (int64_t sp = 0; sp < b.n_splits; ++sp) {
          const int64_t idx = b.part_offset + sp * nq + qi;
          const Partial& p = parts[static_cast<size_t>(idx)];
          if (!(p.l > 0)) continue;
          const float w = std::exp(p.m - M);
          L += p.l * w;
          const float* o = outs.data() + idx * hd;
          for (int64_t d = 0; d < hd; ++d) dst[d] += w * o[d];
        }
        const float inv = 1.0f / L;
        for (int64_t d = 0; d < hd; ++d) dst[d] *= inv;
      }
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
