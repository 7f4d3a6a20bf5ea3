// config.json parsing: supported architectures and their flags, both rope
// layouts (transformers < 5 and >= 5), and clear errors for bad configs.
#include <gtest/gtest.h>

#include "model/config.h"
#include "util/json.h"

namespace spx {
namespace {

const char* kLlama = R"({
  "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
  "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
  "rope_theta": 500000.0, "tie_word_embeddings": true, "eos_token_id": [7, 9],
  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
})";

std::string with(const std::string& base, const std::string& from, const std::string& to) {
  std::string s = base;
  size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

std::string error_of(const std::string& text) {
  ModelConfig c;
  Status st = parse_model_config(text, &c);
  EXPECT_FALSE(st.ok);
  return st.message;
}

TEST(Config, Llama) {
  ModelConfig c;
  Status st = parse_model_config(kLlama, &c);
  ASSERT_TRUE(st.ok) << st.message;
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_EQ(c.rope.original_max_position, 64);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{7, 9}));
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.qk_norm);
}

TEST(Config, QwenFlagsAndRopeParameters) {
  ModelConfig c;
  std::string q2 = with(kLlama, "LlamaForCausalLM", "Qwen2ForCausalLM");
  ASSERT_TRUE(parse_model_config(q2, &c).ok);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  std::string q3 = with(kLlama, "LlamaForCausalLM", "Qwen3ForCausalLM");
  q3 = with(q3, "\"rope_theta\": 500000.0,", "\"head_dim\": 32,");
  q3 = with(q3, "\"rope_scaling\"", "\"rope_parameters\"");
  q3 = with(q3, "\"rope_type\": \"llama3\"", "\"rope_type\": \"default\", \"rope_theta\": 1000000.0");
  ASSERT_TRUE(parse_model_config(q3, &c).ok);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.rope.theta, 1000000.0);
  EXPECT_EQ(c.rope.type, "default");
}

TEST(Config, Errors) {
  EXPECT_NE(error_of("{").find("invalid JSON"), std::string::npos);
  EXPECT_NE(error_of("[]").find("not a JSON object"), std::string::npos);
  EXPECT_NE(error_of(with(kLlama, "LlamaForCausalLM", "GPT2LMHeadModel")).find("unsupported architecture 'GPT2LMHeadModel'"),
            std::string::npos);
  EXPECT_NE(error_of(with(kLlama, "\"vocab_size\": 100,", "")).find("vocab_size"), std::string::npos);
  EXPECT_NE(error_of(with(kLlama, "\"hidden_size\": 64", "\"hidden_size\": -64")).find("hidden_size"),
            std::string::npos);
  EXPECT_NE(error_of(with(kLlama, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3")).find("multiple"),
            std::string::npos);
  EXPECT_NE(error_of(with(kLlama, "\"llama3\"", "\"yarn\"")).find("unsupported rope scaling"), std::string::npos);
  EXPECT_NE(error_of(with(kLlama, "[7, 9]", "[7, 900]")).find("eos_token_id"), std::string::npos);
  EXPECT_NE(error_of(with(kLlama, "\"rms_norm_eps\"", "\"use_sliding_window\": true, \"rms_norm_eps\"")).find("sliding"),
            std::string::npos);
  EXPECT_NE(error_of(with(kLlama, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": 1")).find("tie_word"),
            std::string::npos);
  for (const char* bad : {"1", "-0.1", "\"0.9\""})
    EXPECT_NE(error_of(with(kLlama, "\"rms_norm_eps\"", std::string("\"specontext_fallback_mass\": ") + bad + ", \"rms_norm_eps\""))
                  .find("specontext_fallback_mass"),
              std::string::npos)
        << bad;
}

TEST(Config, RetrievalHeadFallback) {
  ModelConfig c;
  ASSERT_TRUE(parse_model_config(kLlama, &c).ok);
  EXPECT_EQ(c.spx_fallback_mass, 0.0);  // none unless the head's config says so
  ASSERT_TRUE(parse_model_config(with(kLlama, "\"rms_norm_eps\"", "\"specontext_fallback_mass\": 0.9, \"rms_norm_eps\""), &c).ok);
  EXPECT_DOUBLE_EQ(c.spx_fallback_mass, 0.9);
}

TEST(Json, Basics) {
  Json j;
  ASSERT_TRUE(Json::parse(R"({"a": [1, -2.5e3, "x\u00e9\ud83d\ude00"], "b": null, "c": true})", &j).ok);
  EXPECT_EQ(j.find("a")->items()[1].as_double(), -2500);
  EXPECT_EQ(j.find("a")->items()[2].as_string(), "x\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_TRUE(j.find("b")->is_null());
  EXPECT_TRUE(j.find("c")->as_bool());
  EXPECT_FALSE(Json::parse("01", &j).ok);
  EXPECT_FALSE(Json::parse("\"\\ud800\"", &j).ok);
  EXPECT_FALSE(Json::parse("[1,]", &j).ok);
  EXPECT_FALSE(Json::parse("{} x", &j).ok);
  EXPECT_FALSE(Json::parse(std::string(100, '['), &j).ok);  // too deep, no stack overflow
  EXPECT_FALSE(Json::parse("1e999", &j).ok);
}

// dump() writes text that parses back to the same value (the EAGLE-3
// speculators loader re-reads a nested config through it).
TEST(Json, DumpRoundTrips) {
  const std::string text =
      R"({"a":[1,-2500,0.1,1e-05,500000],"s":"q\"b\\s\n\u0001\u00e9","o":{"n":null,"t":true,"f":false},"e":[],"eo":{}})";
  Json j, k;
  ASSERT_TRUE(Json::parse(text, &j).ok);
  const std::string out = j.dump();
  ASSERT_TRUE(Json::parse(out, &k).ok) << out;
  EXPECT_EQ(k.dump(), out);
  EXPECT_EQ(k.find("a")->items()[0].dump(), "1");
  EXPECT_EQ(k.find("a")->items()[2].as_double(), 0.1);
  EXPECT_EQ(k.find("a")->items()[3].as_double(), 1e-05);
  EXPECT_EQ(k.find("s")->as_string(), "q\"b\\s\n\x01\xc3\xa9");
  EXPECT_TRUE(k.find("o")->find("n")->is_null());
  EXPECT_FALSE(k.find("o")->find("f")->as_bool());
  EXPECT_TRUE(k.find("eo")->is_object());
  EXPECT_EQ(k.find("e")->dump(), "[]");
}

}  // namespace
}  // namespace spx
