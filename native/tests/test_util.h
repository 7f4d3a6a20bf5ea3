// Helpers shared by the native tests (header only, not a test binary).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "util/json.h"
#include "util/mapped_file.h"

namespace spx::testing {

inline std::string fixture(const std::string& name) { return std::string(SPX_FIXTURES_DIR) + "/" + name; }

inline Json load_json(const std::string& path) {
  std::string text;
  Status st = read_text_file(path, &text);
  EXPECT_TRUE(st.ok) << st.message;
  Json j;
  st = Json::parse(text, &j);
  EXPECT_TRUE(st.ok) << st.message;
  return j;
}

inline std::vector<float> floats(const Json& arr) {
  std::vector<float> v;
  for (const Json& x : arr.items()) v.push_back(static_cast<float>(x.as_double()));
  return v;
}

inline std::vector<int32_t> ints(const Json& arr) {
  std::vector<int32_t> v;
  for (const Json& x : arr.items()) v.push_back(static_cast<int32_t>(x.as_int()));
  return v;
}

// max |got - ref| / max |ref| over one row: the relative error the fixtures
// promise to stay under 1e-4.
inline double relative_error(const float* got, const float* ref, size_t n) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - ref[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

// Little-endian f32 values packed in base64 (the reference files' full rows).
inline std::vector<float> base64_floats(const std::string& s) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
  };
  std::string bytes;
  int acc = 0, bits = 0;
  for (char c : s) {
    const int v = val(c);
    if (v < 0) continue;
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

// The converted SmolLM2-135M-Instruct (git-ignored; SPX_SMOLLM2_DIR overrides).
inline std::string smollm2_dir() {
  if (const char* env = std::getenv("SPX_SMOLLM2_DIR")) return env;
  return std::string(SPX_FIXTURES_DIR) + "/../../models/smollm2-135m-instruct";
}

}  // namespace spx::testing
