#include "model/checkpoint.h"

#include <sys/stat.h>

#include <cstring>
#include <set>

#include "util/json.h"
#include "util/thread_pool.h"
#include "util/mapped_file.h"

namespace spx {

namespace {

bool is_file(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_dir(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// Shard names come from a file we do not trust: keep them inside the directory.
bool safe_shard_name(const std::string& n) {
  return !n.empty() && n.find('/') == std::string::npos && n.find('\\') == std::string::npos &&
         n != "." && n != "..";
}

// Unaligned 16-bit floats (safetensors only aligns the data section) to f32.
void convert_halves(const uint8_t* src, int64_t n, float* dst, float (*to_f32)(uint16_t)) {
  parallel_for(n, 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      uint16_t v;
      std::memcpy(&v, src + 2 * i, 2);
      dst[i] = to_f32(v);
    }
  });
}

}  // namespace

float bf16_to_f32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3FF) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

Status Checkpoint::open(const std::string& dir) {
  files_.clear();
  if (!is_dir(dir)) return Status::Error("model directory '" + dir + "' does not exist");
  std::vector<std::string> names;
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (is_file(dir + "/model.safetensors")) {
    names.push_back("model.safetensors");
  } else if (is_file(index_path)) {
    std::string text;
    Status st = read_text_file(index_path, &text);
    if (!st.ok) return st;
    Json root;
    st = Json::parse(text, &root);
    if (!st.ok) return Status::Error(index_path + ": " + st.message);
    const Json* map = root.find("weight_map");
    if (map == nullptr || !map->is_object())
      return Status::Error(index_path + ": missing 'weight_map'");
    std::set<std::string> shards;
    for (const auto& [tensor, file] : map->members()) {
      if (!file.is_string() || !safe_shard_name(file.as_string()))
        return Status::Error(index_path + ": bad shard name for tensor '" + tensor + "'");
      shards.insert(file.as_string());
    }
    if (shards.empty()) return Status::Error(index_path + ": weight_map is empty");
    names.assign(shards.begin(), shards.end());
  } else {
    return Status::Error("model directory '" + dir +
                         "' has neither model.safetensors nor model.safetensors.index.json");
  }
  for (const auto& n : names) {
    auto f = std::make_unique<SafetensorsFile>();
    Status st = f->open(dir + "/" + n);
    if (!st.ok) return st;
    files_.push_back(std::move(f));
  }
  return Status::Ok();
}

const SafetensorsFile* Checkpoint::file_of(const std::string& name, const StTensor** t) const {
  for (const auto& f : files_) {
    if ((*t = f->find(name)) != nullptr) return f.get();
  }
  return nullptr;
}

bool Checkpoint::has(const std::string& name) const {
  const StTensor* t;
  return file_of(name, &t) != nullptr;
}

Status Checkpoint::raw(const std::string& name, const std::vector<int64_t>& shape,
                       const void** bytes, WeightDtype* dtype) const {
  const StTensor* t = nullptr;
  const SafetensorsFile* f = file_of(name, &t);
  if (f == nullptr) return Status::Error("checkpoint has no tensor '" + name + "'");
  if (t->shape != shape)
    return Status::Error("tensor '" + name + "' has shape " + shape_str(t->shape) +
                         " but the config implies " + shape_str(shape));
  switch (t->dtype) {
    case StDtype::F32: *dtype = WeightDtype::F32; break;
    case StDtype::BF16: *dtype = WeightDtype::BF16; break;
    case StDtype::F16: *dtype = WeightDtype::F16; break;
    default:
      return Status::Error("tensor '" + name + "' has dtype " + st_dtype_name(t->dtype) +
                           "; weights must be F32, F16 or BF16");
  }
  *bytes = f->bytes(*t);
  return Status::Ok();
}

Status Checkpoint::read_f32(const std::string& name, const std::vector<int64_t>& shape,
                            float* dst) const {
  const void* bytes = nullptr;
  WeightDtype dtype;
  Status st = raw(name, shape, &bytes, &dtype);
  if (!st.ok) return st;
  const auto* src = static_cast<const uint8_t*>(bytes);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  switch (dtype) {
    case WeightDtype::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      break;
    case WeightDtype::BF16:
      convert_halves(src, n, dst, bf16_to_f32);
      break;
    case WeightDtype::F16:
      convert_halves(src, n, dst, f16_to_f32);
      break;
  }
  return Status::Ok();
}

}  // namespace spx
