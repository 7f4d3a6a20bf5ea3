// A small, strict JSON reader for config.json and safetensors headers.
//
// Own code rather than a dependency so the native build needs nothing beyond a
// C++17 compiler. It never throws on bad input: parse() returns a Status naming
// the byte offset of the problem, and nesting depth is bounded so hostile input
// cannot exhaust the stack (it is fuzzed: native/fuzz/).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine.h"

namespace spx {

class Json {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_number() const { return kind_ == Kind::Number; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_array() const { return kind_ == Kind::Array; }
  bool is_object() const { return kind_ == Kind::Object; }
  // True for numbers that are exact integers representable as int64.
  bool is_integer() const;

  bool as_bool() const { return bool_; }
  double as_double() const { return number_; }
  int64_t as_int() const { return static_cast<int64_t>(number_); }
  const std::string& as_string() const { return string_; }
  const std::vector<Json>& items() const { return items_; }
  // Object members in document order (duplicate keys: the last one wins in find()).
  const std::vector<std::pair<std::string, Json>>& members() const { return members_; }
  // nullptr when this is not an object or has no such key.
  const Json* find(std::string_view key) const;

  static Status parse(std::string_view text, Json* out);
  // Compact JSON text of this value; parse(dump()) gives the same value.
  std::string dump() const;

 private:
  friend class JsonParser;
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  double number_ = 0;
  bool integral_ = false;  // the literal had no fraction or exponent
  std::string string_;
  std::vector<Json> items_;
  std::vector<std::pair<std::string, Json>> members_;
};

}  // namespace spx
