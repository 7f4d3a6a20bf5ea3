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
      scores.assign(static_cast<size_t>(nq * std::max<int64_t>(nk, 1)), -INFINITY);
      Partial* part = parts.data() + item_part[static_cast<size_t>(ii)];
      float* o = outs.data() + item_part[static_cast<size_t>(ii)] * hd;
      std::fill(o, o + nq * hd, 0.0f);
      // Scores: each K row is loaded once for all queries of the block.
      for (int64_t j = 0; j < nk; ++j) {
        const float* kr = kh + static_cast<int64_t>(keypos[j]) * hd;
        for (int64_t t = 0; t < it.nt; ++t) {
          if (keypos[j] > s.start_pos + it.t0 + t) continue;  // causal
          for (int64_t h = 0; h < group; ++h) {
            const int64_t head = it.g * group + h;
            const float* qr = q + ((s.q_begin + it.t0 + t) * heads + head) * hd;
            scores[(t * group + h) * nk + j] = dot(qr, kr, hd) * scale;
          }
        }
      }
      for (int64_t qi = 0; qi < nq; ++qi) {
        float* sr = scores.data() + qi * nk;
        float m = -INFINITY;
        for (int64_t j = 0; j < nk; ++j) m = std::max(m, sr[j]);
        float l = 0;
        if (m != -INFINITY) {
          for (int64_t j = 0; j < nk; ++j) {
            sr[j] = sr[j] == -INFINITY ? 0.0f : std::exp(sr[j] - m);
            l += sr[j];
          }
        }
        part[qi] = Partial{m, l};
      }
      // Weighted V: each V row is loaded once for all queries.
      for (int64_t j = 0; j < nk; ++j) {
        const float* vr = vh + static_cast<int64_t>(keypos[j]) * hd;
        for (int64_t qi = 0; qi < nq; ++qi) {
          const float p = scores[qi * nk + j];
          if (p == 0.0f) continue;
          float* oq = o + qi * hd;
          for (int64_t d = 0; d < hd; ++d) oq[d] += p * vr[d];
        }
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
