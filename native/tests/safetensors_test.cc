// The safetensors reader and checkpoint loader on corrupted inputs: every lie
// in a header is a Status error naming the problem, never a crash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>

#include "engine/engine.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "test_util.h"

namespace spx {
namespace {

std::string image(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + std::string(data_bytes, '\x01');
}

Status parse(const std::string& img) {
  StHeader h;
  return parse_safetensors(reinterpret_cast<const uint8_t*>(img.data()), img.size(), &h);
}

void expect_error(const std::string& img, const std::string& part) {
  Status st = parse(img);
  EXPECT_FALSE(st.ok) << "expected an error containing '" << part << "'";
  EXPECT_NE(st.message.find(part), std::string::npos) << st.message;
}

TEST(Safetensors, ParsesAValidHeader) {
  const std::string img = image(
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}})",
      32);
  StHeader h;
  Status st = parse_safetensors(reinterpret_cast<const uint8_t*>(img.data()), img.size(), &h);
  ASSERT_TRUE(st.ok) << st.message;
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors["a"].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h.tensors["b"].dtype, StDtype::BF16);
  EXPECT_EQ(h.tensors["b"].begin, 24u);
}

TEST(Safetensors, RejectsLies) {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  expect_error(std::string("\x05\x00\x00", 3), "shorter than");
  expect_error(image("{" + ok_entry + "}", 0), "past the data section");         // truncated data
  expect_error(image("{" + ok_entry + "}", 0).substr(0, 20), "past the end");   // truncated header
  expect_error(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}})", 8), "past the data");
  expect_error(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "begin > end");
  expect_error(image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "needs 12");
  expect_error(image(R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}})", 8), "needs 4");
  expect_error(image(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype");
  expect_error(image(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "non-negative");
  expect_error(image(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8), "non-negative");
  expect_error(image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
               "overflows");
  expect_error(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,1e30]}})", 8), "data_offsets");
  expect_error(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), "data_offsets");
  expect_error(image(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), "missing dtype");
  expect_error(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 8), "invalid JSON");
  expect_error(image(R"([1,2])", 8), "not a JSON object");
  expect_error(image(R"({"a":3})", 8), "not an object");
  std::string huge(8, '\xff');
  expect_error(huge + "{}", "implausibly large");
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/spx-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }
  void write(const std::string& name, const std::string& bytes) const {
    std::ofstream(path_ + "/" + name, std::ios::binary) << bytes;
  }
  void copy_from(const std::string& src_dir, const std::string& name) const {
    std::ifstream in(src_dir + "/" + name, std::ios::binary);
    std::ofstream out(path_ + "/" + name, std::ios::binary);
    out << in.rdbuf();
  }

 private:
  std::string path_;
};

std::string read_all(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// f32 -> bf16 with round-to-nearest-even (finite inputs).
uint16_t to_bf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  b += 0x7FFF + ((b >> 16) & 1);
  return static_cast<uint16_t>(b >> 16);
}

std::string one_file(const std::string& header_body, const std::string& data) {
  std::string h = "{" + header_body + "}";
  std::string img(8, '\0');
  for (int b = 0; b < 8; ++b) img[b] = static_cast<char>((h.size() >> (8 * b)) & 0xFF);
  return img + h + data;
}

std::vector<float> logits_of(const std::string& dir) {
  auto be = make_cpu_backend(1);
  std::unique_ptr<Transformer> m;
  Status st = Transformer::load(dir, be.get(), &m);
  EXPECT_TRUE(st.ok) << st.message;
  std::vector<float> logits;
  if (!st.ok) return logits;
  KvStore kv(be.get(), m->config().num_layers, m->config().num_kv_heads, m->config().head_dim);
  KvSequence* seq;
  EXPECT_TRUE(kv.allocate(1, 8, &seq).ok);
  ForwardBatch b;
  b.tokens = {5, 200, 3, 77};
  b.chunks.push_back(ForwardChunk{seq, 0, 4, LogitsMode::All});
  EXPECT_TRUE(m->forward(b, &logits).ok);
  return logits;
}

Status open_engine(const std::string& dir) {
  EngineOptions o;
  o.model_dir = dir;
  Status st;
  auto e = Engine::open(o, &st);
  EXPECT_EQ(e == nullptr, !st.ok);
  return st;
}

TEST(Checkpoint, MissingAndCorruptFilesAreErrors) {
  const std::string src = testing::fixture("tiny-llama");
  {
    TempDir d;  // empty dir
    Status st = open_engine(d.path());
    EXPECT_NE(st.message.find("neither model.safetensors"), std::string::npos) << st.message;
  }
  {
    TempDir d;  // weights but no config
    d.copy_from(src, "model.safetensors");
    Status st = open_engine(d.path());
    EXPECT_NE(st.message.find("config.json"), std::string::npos) << st.message;
  }
  {
    TempDir d;  // corrupt config
    d.copy_from(src, "model.safetensors");
    d.write("config.json", "{\"architectures\": [\"LlamaForCausalLM\"], ");
    Status st = open_engine(d.path());
    EXPECT_NE(st.message.find("invalid JSON"), std::string::npos) << st.message;
  }
  {
    TempDir d;  // unsupported architecture
    d.copy_from(src, "model.safetensors");
    std::string cfg = read_all(src + "/config.json");
    const std::string from = "LlamaForCausalLM";
    cfg.replace(cfg.find(from), from.size(), "MistralForCausalLM");
    d.write("config.json", cfg);
    Status st = open_engine(d.path());
    EXPECT_NE(st.message.find("unsupported architecture 'MistralForCausalLM'"), std::string::npos)
        << st.message;
  }
  {
    TempDir d;  // truncated weights
    d.copy_from(src, "config.json");
    std::string w = read_all(src + "/model.safetensors");
    d.write("model.safetensors", w.substr(0, w.size() - 100));
    Status st = open_engine(d.path());
    EXPECT_NE(st.message.find("truncated"), std::string::npos) << st.message;
  }
  {
    TempDir d;  // config whose shapes do not match the weights
    std::string cfg = read_all(src + "/config.json");
    const std::string from = "\"intermediate_size\": 128";
    ASSERT_NE(cfg.find(from), std::string::npos) << cfg;
    cfg.replace(cfg.find(from), from.size(), "\"intermediate_size\": 96");
    d.write("config.json", cfg);
    d.copy_from(src, "model.safetensors");
    Status st = open_engine(d.path());
    EXPECT_NE(st.message.find("shape"), std::string::npos) << st.message;
  }
  {
    TempDir d;  // a weight stored as I32 with the right byte count
    d.copy_from(src, "config.json");
    std::string w = read_all(src + "/model.safetensors");
    const std::string key = "\"model.norm.weight\":{\"dtype\":\"F32\"";
    size_t at = w.find(key);
    ASSERT_NE(at, std::string::npos);
    w.replace(at + key.size() - 4, 3, "I32");
    d.write("model.safetensors", w);
    Status st = open_engine(d.path());
    EXPECT_NE(st.message.find("must be F32, F16 or BF16"), std::string::npos) << st.message;
  }
  {
    TempDir d;  // sharded index pointing at a missing shard / outside the dir
    d.copy_from(src, "config.json");
    d.write("model.safetensors.index.json", R"({"weight_map":{"a":"model-00001-of-00002.safetensors"}})");
    Status st = open_engine(d.path());
    EXPECT_NE(st.message.find("model-00001-of-00002"), std::string::npos) << st.message;
    d.write("model.safetensors.index.json", R"({"weight_map":{"a":"../../etc/passwd"}})");
    st = open_engine(d.path());
    EXPECT_NE(st.message.find("bad shard name"), std::string::npos) << st.message;
  }
}

TEST(Checkpoint, ShardedCheckpointLoadsAndMatches) {
  // Split tiny-llama's tensors over two shards plus an index; logits must be
  // those of the single-file checkpoint.
  const std::string src = testing::fixture("tiny-llama");
  SafetensorsFile f;
  ASSERT_TRUE(f.open(src + "/model.safetensors").ok);
  std::string header[2], data[2];
  std::string index = R"({"metadata":{},"weight_map":{)";
  int i = 0;
  for (const auto& [name, t] : f.header().tensors) {
    const int s = i++ % 2;
    const std::string shard = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
    std::string shape;
    for (size_t k = 0; k < t.shape.size(); ++k) shape += (k ? "," : "") + std::to_string(t.shape[k]);
    const size_t begin = data[s].size();
    data[s].append(reinterpret_cast<const char*>(f.bytes(t)), t.end - t.begin);
    if (!header[s].empty()) header[s] += ",";
    header[s] += "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + shape + "],\"data_offsets\":[" +
                 std::to_string(begin) + "," + std::to_string(data[s].size()) + "]}";
    index += (i > 1 ? "," : "") + ("\"" + name + "\":\"" + shard + "\"");
  }
  TempDir d;
  d.copy_from(src, "config.json");
  for (int s = 0; s < 2; ++s)
    d.write("model-0000" + std::to_string(s + 1) + "-of-00002.safetensors",
            one_file(header[s], data[s]));
  d.write("model.safetensors.index.json", index + "}}");

  auto a = logits_of(src), b = logits_of(d.path());
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b);
}

TEST(Checkpoint, Bf16WeightsLoadExactly) {
  // The same bf16-representable weights stored as BF16 and as F32 must give
  // bit-identical logits.
  const std::string src = testing::fixture("tiny-qwen2");
  SafetensorsFile f;
  ASSERT_TRUE(f.open(src + "/model.safetensors").ok);
  std::string h16, d16, h32, d32;
  for (const auto& [name, t] : f.header().tensors) {
    ASSERT_EQ(t.dtype, StDtype::F32);
    std::string shape;
    for (size_t k = 0; k < t.shape.size(); ++k) shape += (k ? "," : "") + std::to_string(t.shape[k]);
    const float* w = reinterpret_cast<const float*>(f.bytes(t));
    const size_t b16 = d16.size(), b32 = d32.size();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const uint16_t v = to_bf16(w[i]);
      const float r = bf16_to_f32(v);
      d16.append(reinterpret_cast<const char*>(&v), 2);
      d32.append(reinterpret_cast<const char*>(&r), 4);
    }
    auto entry = [&](const char* dt, size_t b, size_t e) {
      return "\"" + name + "\":{\"dtype\":\"" + dt + "\",\"shape\":[" + shape +
             "],\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(e) + "]}";
    };
    h16 += (h16.empty() ? "" : ",") + entry("BF16", b16, d16.size());
    h32 += (h32.empty() ? "" : ",") + entry("F32", b32, d32.size());
  }
  TempDir a, b;
  a.copy_from(src, "config.json");
  b.copy_from(src, "config.json");
  a.write("model.safetensors", one_file(h16, d16));
  b.write("model.safetensors", one_file(h32, d32));
  auto la = logits_of(a.path()), lb = logits_of(b.path());
  ASSERT_FALSE(la.empty());
  EXPECT_EQ(la, lb);
  // And they are close to the f32 original (bf16 keeps ~3 significant digits).
  auto orig = logits_of(src);
  EXPECT_LT(testing::relative_error(la.data(), orig.data(), orig.size()), 0.05);
}

TEST(Checkpoint, F16TensorsConvert) {
  // 1.0, -2.0, 0.5, 65504, smallest subnormal
  const uint16_t vals[] = {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001};
  TempDir d;
  d.write("model.safetensors",
          one_file(R"("t":{"dtype":"F16","shape":[5],"data_offsets":[0,10]})",
                   std::string(reinterpret_cast<const char*>(vals), 10)));
  Checkpoint c;
  ASSERT_TRUE(c.open(d.path()).ok);
  float out[5];
  Status st = c.read_f32("t", {5}, out);
  ASSERT_TRUE(st.ok) << st.message;
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 0.5f);
  EXPECT_EQ(out[3], 65504.0f);
  EXPECT_EQ(out[4], std::ldexp(1.0f, -24));
  EXPECT_FALSE(c.read_f32("t", {4}, out).ok);
  EXPECT_FALSE(c.read_f32("missing", {5}, out).ok);
}

TEST(Checkpoint, HalfPrecisionConversions) {
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xC040), -3.0f);
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xC500), -5.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7C00)));
}

}  // namespace
}  // namespace spx
