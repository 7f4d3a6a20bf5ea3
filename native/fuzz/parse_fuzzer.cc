// libFuzzer target for everything the engine parses from untrusted files:
// safetensors images (header length, JSON header, offsets vs. size) and
// config.json text. The first input byte picks the parser, so one corpus
// covers both. Build and run: native/fuzz/run.sh.
#include <cstddef>
#include <cstdint>
#include <string>

#include "model/config.h"
#include "model/safetensors.h"
#include "util/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 3;
  ++data;
  --size;
  if (mode == 0) {
    spx::StHeader h;
    spx::Status st = spx::parse_safetensors(data, size, &h);
    if (st.ok) {
      // Whatever the header says must lie inside the buffer.
      for (const auto& kv : h.tensors) {
        if (h.data_start + kv.second.end > size) __builtin_trap();
        if (kv.second.end - kv.second.begin !=
            static_cast<uint64_t>(kv.second.numel()) * spx::st_dtype_size(kv.second.dtype))
          __builtin_trap();
      }
    }
  } else if (mode == 1) {
    spx::ModelConfig c;
    spx::parse_model_config(std::string(reinterpret_cast<const char*>(data), size), &c);
  } else {
    spx::Json j;
    spx::Json::parse(std::string_view(reinterpret_cast<const char*>(data), size), &j);
  }
  return 0;
}
