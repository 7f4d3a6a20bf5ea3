// Helpers shared by the native tests (header only, not a test binary).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
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

}  // namespace spx::testing
