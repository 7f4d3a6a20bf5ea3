// Memory planner vs thresholds computed by hand for a Llama-3.1-8B shape.
//
// Shape: L = 32 layers, H = 8 KV heads, D = 128, alpha = 32/8 = 4, bf16.
//   M_O = 8,030,261,248 params * 2 B = 16,060,522,496 B
//   M_D = 60,000,000 B (the paper's ~0.03B-parameter retrieval head in bf16)
//   fixed = 1.3 * (M_O + M_D) = 1.3 * 16,120,522,496 = 20,956,679,244.8 B
//   K+V per token, layer, request: 4 * H * D = 4 * 8 * 128 = 4,096 B
//   B = 2048 (the paper's throughput budget)
// GPU memory in decimal GB: 80 GB = 80e9 B, 141 GB = 141e9 B.
//   free(80)  = 80e9  - 20,956,679,244.8 = 59,043,320,755.2
//   free(141) = 141e9 - 20,956,679,244.8 = 120,043,320,755.2
// S_i = floor((free - 4096*R*i*2048) / (4096*R*(32 - i + 1 + 4)))
//   R=1 : denominators i=0:151,552  i=1:147,456  i=8:118,784  i=32:20,480;  slot term 8,388,608*i
//   R=8 : denominators i=0:1,212,416 i=1:1,179,648 i=8:950,272 i=32:163,840; slot term 67,108,864*i
//   R=32: denominators i=0:4,849,664 i=1:4,718,592 i=8:3,801,088 i=32:655,360; slot term 268,435,456*i
// e.g. 80 GB, R=1, i=0: 59,043,320,755.2 / 151,552 = 389,591.6 -> 389,591
//      80 GB, R=32, i=8: (59,043,320,755.2 - 8*268,435,456) / 3,801,088
//                      = 56,895,837,107.2 / 3,801,088 = 14,968.3 -> 14,968
#include <gtest/gtest.h>

#include "planner/memory_plan.h"

namespace {

using spx::planner::make_plan;
using spx::planner::place;
using spx::planner::Plan;
using spx::planner::PlanInput;

PlanInput llama8b(double gpu_gb, int requests) {
  PlanInput in;
  in.model.layers = 32;
  in.model.kv_heads = 8;
  in.model.head_dim = 128;
  in.model.alpha = 4;
  in.model.target_weight_bytes = 16060522496LL;
  in.model.dlm_weight_bytes = 60000000LL;
  in.requests = requests;
  in.budget = 2048;
  in.gpu_bytes = static_cast<int64_t>(gpu_gb * 1e9);
  return in;
}

struct Expected {
  double gb;
  int requests;
  int64_t s0, s1, s8, s32;
};

// Hand-computed (see the header comment).
const Expected kExpected[] = {
    {80, 1, 389591, 400356, 496499, 2869867},   {80, 8, 48698, 49994, 61568, 347264},
    {80, 32, 12174, 12456, 14968, 76985},       {141, 1, 792093, 814038, 1010036, 5848383},
    {141, 8, 99011, 101705, 125760, 719579},    {141, 32, 24752, 25383, 31016, 170064},
};

TEST(PlannerMemory, Llama8BThresholdsMatchHandComputation) {
  for (const Expected& e : kExpected) {
    SCOPED_TRACE(testing::Message() << e.gb << " GB, R=" << e.requests);
    PlanInput in = llama8b(e.gb, e.requests);
    Plan plan;
    std::string err;
    ASSERT_TRUE(make_plan(in, &plan, &err)) << err;
    ASSERT_EQ(plan.thresholds.size(), 33u);
    EXPECT_EQ(plan.fixed_bytes, 20956679245LL);
    EXPECT_EQ(plan.kv_token_bytes, 4096);
    EXPECT_EQ(plan.thresholds[0], e.s0);
    EXPECT_EQ(plan.thresholds[1], e.s1);
    EXPECT_EQ(plan.thresholds[8], e.s8);
    EXPECT_EQ(plan.thresholds[32], e.s32);
    for (int i = 1; i <= 32; ++i) EXPECT_GT(plan.thresholds[i], plan.thresholds[i - 1]);
  }
}

TEST(PlannerMemory, PlacementOffloadsLastLayersFirstAtThresholds) {
  PlanInput in = llama8b(80, 32);
  Plan plan;
  ASSERT_TRUE(make_plan(in, &plan, nullptr));
  // Exactly at S_0 everything stays; one token more moves layer 31 out.
  auto p = place(in, plan, 12174);
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.host_layers, 0);
  p = place(in, plan, 12175);
  EXPECT_TRUE(p.fits);
  EXPECT_EQ(p.host_layers, 1);
  EXPECT_TRUE(p.on_host[31]);
  EXPECT_FALSE(p.on_host[30]);
  // Between S_7 and S_8: 8 host layers, 24..31.
  p = place(in, plan, 14968);
  EXPECT_EQ(p.host_layers, 8);
  for (int l = 0; l < 32; ++l) EXPECT_EQ(p.on_host[l], l >= 24) << l;
  EXPECT_LE(p.bytes, in.gpu_bytes);
  // Past S_32 nothing fits.
  p = place(in, plan, 76986);
  EXPECT_FALSE(p.fits);
  EXPECT_EQ(p.host_layers, 32);
  EXPECT_GT(p.bytes, in.gpu_bytes);
}

TEST(PlannerMemory, PlacementBytesStayUnderMemoryEverywhere) {
  PlanInput in = llama8b(141, 8);
  Plan plan;
  ASSERT_TRUE(make_plan(in, &plan, nullptr));
  for (int64_t s = 1; s <= plan.thresholds[32]; s += 997) {
    auto p = place(in, plan, s);
    ASSERT_TRUE(p.fits) << s;
    EXPECT_LE(p.bytes, in.gpu_bytes) << s;
    if (p.host_layers > 0) {
      // One layer fewer would not fit: the placement is minimal.
      EXPECT_GT(spx::planner::plan_bytes(in, plan, p.host_layers - 1, s), in.gpu_bytes) << s;
    }
  }
}

TEST(PlannerMemory, MeasuredOverheadReplacesThirtyPercent) {
  PlanInput in = llama8b(80, 1);
  in.measured_overhead_bytes = 1000000000LL;  // 1 GB measured activations
  Plan plan;
  ASSERT_TRUE(make_plan(in, &plan, nullptr));
  // fixed = 16,120,522,496 + 1e9 = 17,120,522,496; free = 62,879,477,504
  // S_0 = 62,879,477,504 / 151,552 = 414,903.1 -> 414,903
  EXPECT_EQ(plan.fixed_bytes, 17120522496LL);
  EXPECT_EQ(plan.thresholds[0], 414903);
}

TEST(PlannerMemory, BelowBudgetNothingMoves) {
  PlanInput in = llama8b(80, 1);
  in.gpu_bytes = 21000000000LL;  // barely more than the weights
  Plan plan;
  ASSERT_TRUE(make_plan(in, &plan, nullptr));
  auto p = place(in, plan, 100);  // < B
  EXPECT_EQ(p.host_layers, 0);
}

TEST(PlannerMemory, RejectsBadInputWithMessage) {
  PlanInput in = llama8b(80, 1);
  in.requests = 0;
  Plan plan;
  std::string err;
  EXPECT_FALSE(make_plan(in, &plan, &err));
  EXPECT_NE(err.find("requests"), std::string::npos);
  in = llama8b(80, 1);
  in.budget = -5;
  EXPECT_FALSE(make_plan(in, &plan, &err));
  EXPECT_NE(err.find("budget"), std::string::npos);
}

}  // namespace
