#include "util/json.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace spx {

namespace {
constexpr int kMaxDepth = 64;
}

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : s_(text) {}

  Status run(Json* out) {
    skip_ws();
    if (!value(out, 0)) return Status::Error(error_);
    skip_ws();
    if (pos_ != s_.size()) return fail("trailing characters after the JSON value");
    return Status::Ok();
  }

 private:
  std::string_view s_;
  size_t pos_ = 0;
  std::string error_;

  Status fail(const std::string& what) {
    return Status::Error("invalid JSON at byte " + std::to_string(pos_) + ": " + what);
  }
  bool set_error(const std::string& what) {
    if (error_.empty()) error_ = "invalid JSON at byte " + std::to_string(pos_) + ": " + what;
    return false;
  }
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return set_error("unexpected token");
    pos_ += word.size();
    return true;
  }

  bool value(Json* out, int depth) {
    if (depth > kMaxDepth) return set_error("nesting deeper than 64 levels");
    if (pos_ >= s_.size()) return set_error("unexpected end of input");
    char c = s_[pos_];
    switch (c) {
      case '{': return object(out, depth);
      case '[': return array(out, depth);
      case '"': out->kind_ = Json::Kind::String; return string(&out->string_);
      case 't': out->kind_ = Json::Kind::Bool; out->bool_ = true; return literal("true");
      case 'f': out->kind_ = Json::Kind::Bool; out->bool_ = false; return literal("false");
      case 'n': out->kind_ = Json::Kind::Null; return literal("null");
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return number(out);
        return set_error(std::string("unexpected character '") + c + "'");
    }
  }

  bool object(Json* out, int depth) {
    out->kind_ = Json::Kind::Object;
    ++pos_;  // '{'
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == '}') { ++pos_; return true; }
    while (true) {
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != '"') return set_error("expected a string key");
      std::string key;
      if (!string(&key)) return false;
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != ':') return set_error("expected ':'");
      ++pos_;
      skip_ws();
      Json member;
      if (!value(&member, depth + 1)) return false;
      out->members_.emplace_back(std::move(key), std::move(member));
      skip_ws();
      if (pos_ >= s_.size()) return set_error("unterminated object");
      if (s_[pos_] == ',') { ++pos_; continue; }
      if (s_[pos_] == '}') { ++pos_; return true; }
      return set_error("expected ',' or '}'");
    }
  }

  bool array(Json* out, int depth) {
    out->kind_ = Json::Kind::Array;
    ++pos_;  // '['
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == ']') { ++pos_; return true; }
    while (true) {
      skip_ws();
      Json item;
      if (!value(&item, depth + 1)) return false;
      out->items_.push_back(std::move(item));
      skip_ws();
      if (pos_ >= s_.size()) return set_error("unterminated array");
      if (s_[pos_] == ',') { ++pos_; continue; }
      if (s_[pos_] == ']') { ++pos_; return true; }
      return set_error("expected ',' or ']'");
    }
  }

  static void append_utf8(std::string* out, uint32_t cp) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  bool hex4(uint32_t* cp) {
    if (pos_ + 4 > s_.size()) return set_error("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char h = s_[pos_ + i];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= h - '0';
      else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
      else return set_error("bad hex digit in \\u escape");
    }
    pos_ += 4;
    *cp = v;
    return true;
  }

  bool string(std::string* out) {
    ++pos_;  // opening quote
    while (true) {
      if (pos_ >= s_.size()) return set_error("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return set_error("control character in string");
      if (c != '\\') { out->push_back(c); continue; }
      if (pos_ >= s_.size()) return set_error("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp = 0;
          if (!hex4(&cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo = 0;
            if (pos_ + 2 > s_.size() || s_[pos_] != '\\' || s_[pos_ + 1] != 'u')
              return set_error("unpaired surrogate");
            pos_ += 2;
            if (!hex4(&lo)) return false;
            if (lo < 0xDC00 || lo > 0xDFFF) return set_error("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return set_error("unpaired surrogate");
          }
          append_utf8(out, cp);
          break;
        }
        default: return set_error("unknown escape");
      }
    }
  }

  bool number(Json* out) {
    size_t start = pos_;
    bool integral = true;
    if (s_[pos_] == '-') ++pos_;
    if (pos_ >= s_.size()) return set_error("truncated number");
    if (s_[pos_] == '0') {
      ++pos_;
    } else if (s_[pos_] >= '1' && s_[pos_] <= '9') {
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    } else {
      return set_error("bad number");
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      integral = false;
      ++pos_;
      size_t d = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      if (pos_ == d) return set_error("bad fraction");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      size_t d = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      if (pos_ == d) return set_error("bad exponent");
    }
    std::string literal(s_.substr(start, pos_ - start));
    errno = 0;
    double v = std::strtod(literal.c_str(), nullptr);
    if (!std::isfinite(v)) return set_error("number out of range");
    out->kind_ = Json::Kind::Number;
    out->number_ = v;
    out->integral_ = integral;
    return true;
  }
};

bool Json::is_integer() const {
  return kind_ == Kind::Number && std::floor(number_) == number_ && number_ >= -9.2e18 &&
         number_ <= 9.2e18;
}

const Json* Json::find(std::string_view key) const {
  const Json* hit = nullptr;
  for (const auto& m : members_)
    if (m.first == key) hit = &m.second;
  return hit;
}

namespace {

void dump_string(const std::string& s, std::string* out) {
  out->push_back('"');
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(static_cast<char>(c));
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      *out += buf;
    } else {
      out->push_back(static_cast<char>(c));  // UTF-8 bytes pass through
    }
  }
  out->push_back('"');
}

void dump_value(const Json& v, std::string* out) {
  switch (v.kind()) {
    case Json::Kind::Null: *out += "null"; break;
    case Json::Kind::Bool: *out += v.as_bool() ? "true" : "false"; break;
    case Json::Kind::Number: {
      char buf[32];
      if (v.is_integer()) std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(v.as_int()));
      else std::snprintf(buf, sizeof(buf), "%.17g", v.as_double());
      *out += buf;
      break;
    }
    case Json::Kind::String: dump_string(v.as_string(), out); break;
    case Json::Kind::Array: {
      out->push_back('[');
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (i) out->push_back(',');
        dump_value(v.items()[i], out);
      }
      out->push_back(']');
      break;
    }
    case Json::Kind::Object: {
      out->push_back('{');
      for (size_t i = 0; i < v.members().size(); ++i) {
        if (i) out->push_back(',');
        dump_string(v.members()[i].first, out);
        out->push_back(':');
        dump_value(v.members()[i].second, out);
      }
      out->push_back('}');
      break;
    }
  }
}

}  // namespace

std::string Json::dump() const {
  std::string out;
  dump_value(*this, &out);
  return out;
}

Status Json::parse(std::string_view text, Json* out) {
  *out = Json();
  JsonParser p(text);
  return p.run(out);
}

}  // namespace spx
