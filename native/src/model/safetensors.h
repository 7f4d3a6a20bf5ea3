// Reader for the safetensors format: an 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets}}, then the raw tensor bytes.
//
// Every header field is validated against the real file size before any byte
// is touched, so a header that lies (offsets out of range, a size that does not
// match dtype x shape, a truncated file) is a Status error, never a crash.
// parse_safetensors() works on a plain byte buffer so it can be fuzzed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "util/mapped_file.h"

namespace spx {

enum class StDtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2 };

const char* st_dtype_name(StDtype t);
size_t st_dtype_size(StDtype t);

struct StTensor {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the data section
  uint64_t end = 0;
  int64_t numel() const;
};

struct StHeader {
  uint64_t data_start = 0;  // absolute file offset of the data section
  std::map<std::string, StTensor> tensors;
};

// Validates the header of a safetensors image of `size` bytes.
Status parse_safetensors(const uint8_t* data, size_t size, StHeader* out);

// One mmapped safetensors file.
class SafetensorsFile {
 public:
  Status open(const std::string& path);
  const StHeader& header() const { return header_; }
  const std::string& path() const { return file_.path(); }
  const StTensor* find(const std::string& name) const;
  // Pointer to the first byte of a tensor inside the map (validated at open).
  const uint8_t* bytes(const StTensor& t) const {
    return file_.data() + header_.data_start + t.begin;
  }

 private:
  MappedFile file_;
  StHeader header_;
};

}  // namespace spx
