// A Hugging Face checkpoint directory: model.safetensors, or shards listed in
// model.safetensors.index.json. Tensors are looked up by name and read as f32
// (bf16/f16/f32 on disk), with their shape checked against what the model
// expects, so a checkpoint that does not match its config is a clear error.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/engine.h"
#include "model/safetensors.h"

namespace spx {

class Checkpoint {
 public:
  Status open(const std::string& dir);
  bool has(const std::string& name) const;
  // Converts the tensor to f32 into dst (numel floats) after checking its shape.
  Status read_f32(const std::string& name, const std::vector<int64_t>& shape, float* dst) const;
  // The tensor's bytes as stored (mmapped, possibly unaligned), after the same
  // shape and dtype checks: for backends that convert on their own device.
  Status raw(const std::string& name, const std::vector<int64_t>& shape, const void** bytes,
             WeightDtype* dtype) const;

 private:
  const SafetensorsFile* file_of(const std::string& name, const StTensor** t) const;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
};

// bf16 / f16 to f32 conversions, also used by tests.
float bf16_to_f32(uint16_t v);
float f16_to_f32(uint16_t v);

}  // namespace spx
