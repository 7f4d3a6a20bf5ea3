#include "model/safetensors.h"

#include <cstring>

#include "util/json.h"

namespace spx {

namespace {

struct DtypeRow {
  const char* name;
  StDtype type;
  size_t size;
};
constexpr DtypeRow kDtypes[] = {
    {"F64", StDtype::F64, 8},   {"F32", StDtype::F32, 4},   {"F16", StDtype::F16, 2},
    {"BF16", StDtype::BF16, 2}, {"I64", StDtype::I64, 8},   {"I32", StDtype::I32, 4},
    {"I16", StDtype::I16, 2},   {"I8", StDtype::I8, 1},     {"U8", StDtype::U8, 1},
    {"BOOL", StDtype::BOOL, 1}, {"F8_E4M3", StDtype::F8_E4M3, 1},
    {"F8_E5M2", StDtype::F8_E5M2, 1},
};

// Largest header we accept; real ones are a few hundred KB at most.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

}  // namespace

const char* st_dtype_name(StDtype t) {
  for (const auto& r : kDtypes)
    if (r.type == t) return r.name;
  return "?";
}

size_t st_dtype_size(StDtype t) {
  for (const auto& r : kDtypes)
    if (r.type == t) return r.size;
  return 0;
}

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Status parse_safetensors(const uint8_t* data, size_t size, StHeader* out) {
  *out = StHeader();
  if (size < 8) return Status::Error("file is shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n == 0) return Status::Error("header length is zero");
  if (n > kMaxHeaderBytes) return Status::Error("header length " + std::to_string(n) + " is implausibly large");
  if (n > size - 8)
    return Status::Error("header length " + std::to_string(n) + " runs past the end of the file (" +
                         std::to_string(size) + " bytes): truncated file?");
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = size - data_start;

  Json root;
  Status st = Json::parse(std::string_view(reinterpret_cast<const char*>(data) + 8, n), &root);
  if (!st.ok) return Status::Error("header: " + st.message);
  if (!root.is_object()) return Status::Error("header is not a JSON object");

  out->data_start = data_start;
  for (const auto& [name, entry] : root.members()) {
    if (name == "__metadata__") continue;
    const std::string where = "tensor '" + name + "': ";
    if (!entry.is_object()) return Status::Error(where + "entry is not an object");
    const Json* dt = entry.find("dtype");
    const Json* shape = entry.find("shape");
    const Json* offs = entry.find("data_offsets");
    if (!dt || !dt->is_string()) return Status::Error(where + "missing dtype");
    if (!shape || !shape->is_array()) return Status::Error(where + "missing shape");
    if (!offs || !offs->is_array() || offs->items().size() != 2)
      return Status::Error(where + "data_offsets must be [begin, end]");

    StTensor t;
    t.name = name;
    bool known = false;
    for (const auto& r : kDtypes) {
      if (dt->as_string() == r.name) {
        t.dtype = r.type;
        known = true;
      }
    }
    if (!known) return Status::Error(where + "unknown dtype '" + dt->as_string() + "'");

    uint64_t numel = 1;
    if (shape->items().size() > 8) return Status::Error(where + "more than 8 dimensions");
    for (const Json& d : shape->items()) {
      if (!d.is_integer() || d.as_double() < 0)
        return Status::Error(where + "shape entries must be non-negative integers");
      uint64_t dim = static_cast<uint64_t>(d.as_int());
      if (mul_overflows(numel, dim, &numel)) return Status::Error(where + "shape overflows");
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t nbytes;
    if (mul_overflows(numel, st_dtype_size(t.dtype), &nbytes) || nbytes > (1ull << 62))
      return Status::Error(where + "shape overflows");

    for (const Json& o : offs->items())
      if (!o.is_integer() || o.as_double() < 0)
        return Status::Error(where + "data_offsets must be non-negative integers");
    t.begin = static_cast<uint64_t>(offs->items()[0].as_int());
    t.end = static_cast<uint64_t>(offs->items()[1].as_int());
    if (t.begin > t.end) return Status::Error(where + "data_offsets begin > end");
    if (t.end > data_size)
      return Status::Error(where + "data_offsets [" + std::to_string(t.begin) + ", " +
                           std::to_string(t.end) + ") run past the data section (" +
                           std::to_string(data_size) + " bytes): truncated file or lying header");
    if (t.end - t.begin != nbytes)
      return Status::Error(where + "holds " + std::to_string(t.end - t.begin) + " bytes but " +
                           st_dtype_name(t.dtype) + " x shape needs " + std::to_string(nbytes));
    out->tensors[name] = std::move(t);
  }
  return Status::Ok();
}

Status SafetensorsFile::open(const std::string& path) {
  Status st = file_.open(path);
  if (!st.ok) return st;
  st = parse_safetensors(file_.data(), file_.size(), &header_);
  if (!st.ok) return Status::Error(path + ": " + st.message);
  return Status::Ok();
}

const StTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = header_.tensors.find(name);
  return it == header_.tensors.end() ? nullptr : &it->second;
}

}  // namespace spx
