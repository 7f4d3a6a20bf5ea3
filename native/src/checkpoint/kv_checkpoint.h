// The checkpoint of a running request: what a new engine needs to continue it
// exactly where the old one stopped, written as one file of segments.
//
// File (little-endian, every offset a multiple of 4):
//   header   80 bytes (versions 2, 3; 64 in version 1): magic "SPXKVCK1",
//            version, model/DLM/options identity, KV geometry, seed, prompt
//            length, retrieval-head geometry, (version 3) the KV dtype;
//            CRC32C of the header itself.
//   segment  48-byte header (KV positions [from, to), the token sampled but
//            not yet fed, tokens generated, sampler draws, payload size,
//            payload CRC32C, header CRC32C), then the payload:
//              tokens   i32 [to - from]        the tokens fed at those positions
//              per layer K [kv_heads, to - from, head_dim], then V alike, in
//                the KV dtype (version 3: the cache's own, bf16 or f32;
//                versions 1 and 2: f32)
//              the retrieval head's state, when rk_heads > 0:
//                per head layer K f32 [rk_heads, to - from, rk_dim], V alike
//                   (rk_layers: a head's own layers below its scoring layer)
//                scoring K f32 [rk_heads, to - from, rk_dim]
//                aux f32 [rk_aux]  the head's input at position to - 1
//                   (EAGLE-3: the target's hidden states it reads next)
//   segment  ... each starts where the previous one ended (incremental: a
//            checkpoint after the first appends only the new positions).
// The last segment's token/sampler fields describe the request as a whole.
//
// KV is stored in the cache's own dtype and layout (bf16 from the CUDA
// backend, f32 from the CPU one), so writing and restoring are raw copies;
// a file restores into a cache of the other dtype by conversion (bf16 ->
// f32 exactly, f32 -> bf16 rounded to nearest even, as the CUDA upload
// rounds). The retrieval head's blocks stay f32. Everything a reader finds wrong comes back as a Status whose
// message names the problem (version, truncation, checksum, identity).
// Version 1 files (no head layers, no aux) are still read; a reader that
// expects no retrieval head accepts a file with one and ignores it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/tensor.h"
#include "engine/engine.h"
#include "util/mapped_file.h"

namespace spx {

inline constexpr uint32_t kCheckpointVersion = 3;
inline constexpr size_t kCheckpointHeaderBytes = 80;    // versions 2 and 3
inline constexpr size_t kCheckpointHeaderBytesV1 = 64;
inline constexpr size_t kSegmentHeaderBytes = 48;

struct CheckpointGeometry {
  int32_t layers = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  int32_t rk_heads = 0;  // retrieval head K cache heads; 0: no retrieval head
  int32_t rk_dim = 0;
  int32_t rk_layers = 0;  // full K/V layers of the head below its scoring layer
  int32_t rk_aux = 0;     // floats of the head's per-position input kept per segment

  bool operator==(const CheckpointGeometry& o) const {
    return layers == o.layers && kv_heads == o.kv_heads && head_dim == o.head_dim &&
           rk_heads == o.rk_heads && rk_dim == o.rk_dim && rk_layers == o.rk_layers && rk_aux == o.rk_aux;
  }
  bool same_target(const CheckpointGeometry& o) const {
    return layers == o.layers && kv_heads == o.kv_heads && head_dim == o.head_dim;
  }
  // Payload bytes of a segment of n positions, KV elements of kv_elem bytes.
  uint64_t segment_payload(int n, size_t kv_elem = 4) const;
};

struct CheckpointHeader {
  uint64_t identity = 0;
  CheckpointGeometry geometry;
  uint64_t seed = 0;
  int32_t prompt_tokens = 0;  // of the request that wrote the first segment
  uint32_t version = kCheckpointVersion;  // 1, 2 only for compatibility tests
  DType kv_dtype = DType::F32;  // of the target's K/V rows (versions 1, 2: f32)
};

// n elements from one dtype to another (a copy when they are the same).
void convert_kv(const void* src, DType from, void* dst, DType to, size_t n);

// Rows of a cache laid out [heads, capacity, dim], as the KV store keeps them,
// in the file's KV dtype (target K/V) or f32 (the head's blocks). `first`:
// the position of data's row 0 (a copy of rows [first, ...) only).
struct CacheRows {
  const void* data = nullptr;
  int capacity = 0;
  int first = 0;
};

// What one segment writes: positions [from, to) of every cache.
struct SegmentSource {
  int from = 0;
  int to = 0;
  const int32_t* tokens = nullptr;  // [to - from]
  int32_t next_token = 0;           // sampled, not yet fed
  int32_t generated = 0;            // tokens the request has sampled so far
  uint64_t draws = 0;               // sampler RNG draws so far
  std::vector<CacheRows> k, v;      // per layer
  // When geometry.rk_heads > 0: the retrieval head's state.
  std::vector<CacheRows> head_k, head_v;  // per head layer (rk_layers)
  CacheRows retrieval_k;                  // the scoring layer's K
  const float* aux = nullptr;             // [rk_aux] at position to - 1
};

// fd open for writing at the end of the file. The header starts a new file;
// segments append. *bytes gets what was written.
Status write_checkpoint_header(int fd, const CheckpointHeader& header);
Status append_checkpoint_segment(int fd, const CheckpointGeometry& geometry,
                                 const SegmentSource& segment, uint64_t* bytes,
                                 DType kv_dtype = DType::F32);

// Maps a checkpoint file and validates all of it (header, identity, geometry,
// every segment's checksum and continuity) before exposing anything.
class CheckpointReader {
 public:
  Status open(const std::string& path, uint64_t expected_identity,
              const CheckpointGeometry& expected_geometry);

  const CheckpointHeader& header() const { return header_; }
  int tokens() const { return tokens_; }  // KV positions covered
  const std::vector<int32_t>& token_ids() const { return token_ids_; }  // fed, [tokens()]
  int32_t next_token() const { return next_token_; }
  int32_t generated() const { return generated_; }
  uint64_t draws() const { return draws_; }
  size_t file_bytes() const { return file_.size(); }

  DType kv_dtype() const { return header_.kv_dtype; }
  // Copies positions [0, tokens()) of one cache into dst [heads, capacity, dim] (f32).
  void copy_k(int layer, float* dst, int capacity) const { copy(2 * layer, dst, capacity); }
  void copy_v(int layer, float* dst, int capacity) const { copy(2 * layer + 1, dst, capacity); }
  // The file's own rows of a target block (2*layer K, 2*layer+1 V), piece by
  // piece: fn(head, from, n, src) with src [n, head_dim] in kv_dtype().
  void for_each_rows(int block, const std::function<void(int, int, int, const void*)>& fn) const;
  // The retrieval head's blocks (geometry().rk_heads > 0): 2*l / 2*l+1 are
  // head layer l's K / V, 2*rk_layers the scoring K.
  void copy_head(int block, float* dst, int capacity) const { copy(2 * header_.geometry.layers + block, dst, capacity); }
  void copy_retrieval_k(float* dst, int capacity) const { copy_head(2 * header_.geometry.rk_layers, dst, capacity); }
  // The last segment's aux row [rk_aux] (position tokens() - 1), or nullptr.
  const float* aux() const;

 private:
  struct Segment {
    int from, to;
    const uint8_t* payload;
  };
  // block: 2*layer (K), 2*layer+1 (V), then the head's blocks.
  void copy(int block, float* dst, int capacity) const;
  const uint8_t* block_start(const Segment& s, int block, size_t* esize) const;

  MappedFile file_;
  CheckpointHeader header_;
  std::vector<Segment> segments_;
  std::vector<int32_t> token_ids_;
  int tokens_ = 0;
  int32_t next_token_ = 0;
  int32_t generated_ = 0;
  uint64_t draws_ = 0;
};

}  // namespace spx
