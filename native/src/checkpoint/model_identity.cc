#include "checkpoint/model_identity.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <vector>

namespace spx {

namespace {

struct Fnv {
  uint64_t h = 1469598103934665603ull;
  void add(const void* data, size_t n) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  void add(const std::string& s) {
    add(s.data(), s.size());
    add("\0", 1);
  }
  void add_u64(uint64_t v) { add(&v, sizeof(v)); }
};

void add_file_sample(Fnv* f, const std::filesystem::path& p) {
  constexpr uint64_t kSample = 1 << 20;
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(p, ec);
  if (ec) return;
  f->add(p.filename().string());
  f->add_u64(size);
  std::ifstream in(p, std::ios::binary);
  std::vector<char> buf(static_cast<size_t>(std::min(size, kSample)));
  in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
  f->add(buf.data(), static_cast<size_t>(in.gcount()));
  if (size > kSample) {
    const uint64_t tail = std::min(kSample, size - kSample);
    in.clear();
    in.seekg(static_cast<std::streamoff>(size - tail));
    buf.resize(static_cast<size_t>(tail));
    in.read(buf.data(), static_cast<std::streamsize>(tail));
    f->add(buf.data(), static_cast<size_t>(in.gcount()));
  }
}

void add_model_dir(Fnv* f, const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const bool weights = e.path().extension() == ".safetensors";
    if (weights || name == "config.json") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& p : files) add_file_sample(f, p);
}

}  // namespace

uint64_t model_identity(const EngineOptions& o) {
  Fnv f;
  f.add("spx-kv-f32");
  add_model_dir(&f, o.model_dir);
  f.add(o.dlm_dir.empty() ? std::string("dlm:default") : std::string("dlm:dir"));
  if (!o.dlm_dir.empty()) add_model_dir(&f, o.dlm_dir);
  f.add_u64(static_cast<uint64_t>(o.dlm_layers));
  return f.h;
}

}  // namespace spx
