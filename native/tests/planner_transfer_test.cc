// Transfer-aware placement (planner/transfer_budget.h) against figures
// computed by hand.
//
// Elastic loads, Llama-3.1-8B KV shape: H = 8, D = 128, bf16, B = 2048,
// reload 0.25, gathers at 32 GB/s:
//   bytes per layer-request = 0.25 * 2048 * 8 * 2 * 128 * 2 = 2,097,152 B
//   transfer_ms(10)         = 10 * 2,097,152 / 32e6 = 0.65536 ms
//   hide 8 ms, step 9 ms, share 10%: window = 8 + 0.1 * 9 / 0.9 = 9 ms
//   -> 9 * 32e6 / 2,097,152 = 137.33 -> 137 layer-requests
//   check: 137 -> transfer 8.978432, exposed 0.978432, share 0.978432/9.978432 = 0.09805
//          138 -> exposed 1.043968, share 0.10394 (over)
//
// Admission, a tiny shape so every figure is short: L = 4, H = 1, D = 64,
// bf16, alpha 0 -> K+V per token-layer-request 4 * 64 = 256 B; weights 1e6 B,
// overhead 1,000 B per request; B = 100, end of range S = 1,000; device
// 11,000,000 B. M_part(i) = 1e6 + 1,000 R + 256 R [(5 - i) * 1,000 + 100 i]:
//   i=0: 1e6 + 1,281,000 R   i=1: 1e6 + 1,050,600 R   i=2: 1e6 + 820,200 R
//   i=3: 1e6 + 589,800 R     i=4: 1e6 + 359,400 R
// so host layers at S: R<=7: 0, R 8-9: 1, R 10-12: 2, R 13-16: 3, R 17-27: 4,
// R=28 fits nowhere (1e6 + 10,063,200 > 11e6).
// Host pool bytes = host layers * R * 256 * 1,000.
// Transfer: reload 0.5 -> 0.5 * 100 * 1 * 2 * 64 * 2 = 12,800 B per layer-request.
// Step model: 10 ms + 1 ms per request.
#include <gtest/gtest.h>

#include "planner/transfer_budget.h"

namespace {

using namespace spx::planner;

TransferInput llama_loads() {
  TransferInput t;
  t.kv_heads = 8;
  t.head_dim = 128;
  t.budget = 2048;
  t.reload_fraction = 0.25;
  t.gather_gbps = 32;
  t.max_exposed_share = 0.10;
  return t;
}

TEST(PlannerTransfer, LayerRequestBytesAndTimesMatchHandComputation) {
  const TransferInput t = llama_loads();
  EXPECT_DOUBLE_EQ(layer_request_bytes(t), 2097152.0);
  EXPECT_NEAR(transfer_ms(t, 10), 0.65536, 1e-12);
  EXPECT_NEAR(exposed_ms(t, 137, 8.0), 0.978432, 1e-9);
  EXPECT_NEAR(exposed_share(t, 137, 8.0, 9.0), 0.978432 / 9.978432, 1e-12);
  EXPECT_DOUBLE_EQ(exposed_ms(t, 100, 8.0), 0.0);  // 6.5536 ms hides behind 8
  EXPECT_DOUBLE_EQ(exposed_share(t, 100, 8.0, 9.0), 0.0);
}

TEST(PlannerTransfer, MostLayerRequestsUnderTheShare) {
  const TransferInput t = llama_loads();
  EXPECT_EQ(max_layer_requests(t, 8.0, 9.0), 137);
  EXPECT_LE(exposed_share(t, 137, 8.0, 9.0), 0.10);
  EXPECT_GT(exposed_share(t, 138, 8.0, 9.0), 0.10);
  // A random head reloads nearly all of B: 0.93 -> 7,801,405.44 B per layer-request;
  // the same 9 ms window carries 288e6 / 7,801,405.44 = 36.9 -> 36.
  TransferInput r = t;
  r.reload_fraction = 0.93;
  EXPECT_EQ(max_layer_requests(r, 8.0, 9.0), 36);
  // Share 0: only what hides: 8 ms * 32e6 / 2,097,152 = 122.07 -> 122.
  TransferInput z = t;
  z.max_exposed_share = 0;
  EXPECT_EQ(max_layer_requests(z, 8.0, 9.0), 122);
}

TEST(PlannerTransfer, BadInputIsNamed) {
  TransferInput t = llama_loads();
  t.gather_gbps = 0;
  EXPECT_NE(transfer_input_error(t).find("gather_gbps"), std::string::npos);
  EXPECT_EQ(max_layer_requests(t, 8, 9), -1);
  t = llama_loads();
  t.reload_fraction = 1.5;
  EXPECT_NE(transfer_input_error(t).find("reload_fraction"), std::string::npos);
  t = llama_loads();
  t.max_exposed_share = 1;
  EXPECT_NE(transfer_input_error(t).find("max_exposed_share"), std::string::npos);
}

AdmissionInput tiny(double gbps, double hide_share, int64_t pool) {
  AdmissionInput in;
  in.base.model.layers = 4;
  in.base.model.kv_heads = 1;
  in.base.model.head_dim = 64;
  in.base.model.alpha = 0;
  in.base.model.target_weight_bytes = 1000000;
  in.base.model.dlm_weight_bytes = 0;
  in.base.budget = 100;
  in.base.gpu_bytes = 11000000;
  in.base.measured_overhead_bytes = 0;
  in.overhead_per_request_bytes = 1000;
  in.end_len = 1000;
  in.host_pool_bytes = pool;
  in.transfer.kv_heads = 1;
  in.transfer.head_dim = 64;
  in.transfer.budget = 100;
  in.transfer.reload_fraction = 0.5;
  in.transfer.gather_gbps = gbps;
  in.transfer.max_exposed_share = 0.10;
  in.step = StepTime{10.0, 1.0, hide_share};
  return in;
}

TEST(PlannerTransfer, AdmissionStopsWhereLoadsNoLongerHide) {
  // 0.0128 GB/s = 12,800 B/ms: one layer-request per ms. hide 75%:
  // window(R) = (10 + R) * (0.75 + 0.1/0.9) = (10 + R) * 0.861111
  //   R=9:  1 host layer, 9 layer-requests, window 16.36 -> 16: admitted
  //   R=10: 2 host layers, 20 layer-requests, window 17.22 -> 17: refused
  Admission a;
  std::string err;
  ASSERT_TRUE(admit(tiny(0.0128, 0.75, int64_t(1) << 40), &a, &err)) << err;
  EXPECT_EQ(a.requests, 9);
  EXPECT_EQ(a.host_layers, 1);
  EXPECT_EQ(a.layer_requests, 9);
  EXPECT_EQ(a.max_layer_requests, 16);
  EXPECT_DOUBLE_EQ(a.step_ms, 19.0);
  EXPECT_NEAR(a.transfer_ms, 9.0, 1e-9);
  EXPECT_DOUBLE_EQ(a.exposed_ms, 0.0);  // 9 ms behind 14.25
  EXPECT_EQ(a.limited_by, "transfer");
}

TEST(PlannerTransfer, AdmissionReportsThePredictedExposedShare) {
  // hide 40%: window(R) = (10 + R) * (0.4 + 0.1/0.9)
  //   R=9: 9 layer-requests, window 9.71 -> 9: admitted; transfer 9 ms,
  //        hide 7.6 ms, exposed 1.4 ms, share 1.4 / 20.4 = 0.0686275
  //   R=10: 20 layer-requests, window 10.22 -> 10: refused
  Admission a;
  ASSERT_TRUE(admit(tiny(0.0128, 0.4, int64_t(1) << 40), &a, nullptr));
  EXPECT_EQ(a.requests, 9);
  EXPECT_NEAR(a.exposed_ms, 1.4, 1e-9);
  EXPECT_NEAR(a.exposed_share, 1.4 / 20.4, 1e-12);
  EXPECT_LE(a.exposed_share, 0.10);
}

TEST(PlannerTransfer, AdmissionLimitedByMemoryThenByHostPool) {
  // 0.0512 GB/s: four layer-requests per ms; every batch up to the memory
  // limit hides (R=27: 4 host layers, 108 layer-requests, window
  // 37 * 0.861111 = 31.86 ms -> 127).
  Admission a;
  ASSERT_TRUE(admit(tiny(0.0512, 0.75, int64_t(1) << 40), &a, nullptr));
  EXPECT_EQ(a.requests, 27);
  EXPECT_EQ(a.host_layers, 4);
  EXPECT_EQ(a.layer_requests, 108);
  EXPECT_EQ(a.max_layer_requests, 127);
  EXPECT_EQ(a.limited_by, "memory");
  // A 20,000,000 B pool: R=19 needs 4 * 19 * 256,000 = 19,456,000, R=20 20,480,000.
  ASSERT_TRUE(admit(tiny(0.0512, 0.75, 20000000), &a, nullptr));
  EXPECT_EQ(a.requests, 19);
  EXPECT_EQ(a.limited_by, "host pool");
  // No pool at all: only all-device batches (R <= 7).
  ASSERT_TRUE(admit(tiny(0.0512, 0.75, 0), &a, nullptr));
  EXPECT_EQ(a.requests, 7);
  EXPECT_EQ(a.host_layers, 0);
}

TEST(PlannerTransfer, AdmissionRejectsBadInputWithMessage) {
  AdmissionInput in = tiny(0.0128, 0.75, 0);
  in.end_len = 0;
  Admission a;
  std::string err;
  EXPECT_FALSE(admit(in, &a, &err));
  EXPECT_NE(err.find("end_len"), std::string::npos);
  in = tiny(-1, 0.75, 0);
  EXPECT_FALSE(admit(in, &a, &err));
  EXPECT_NE(err.find("gather_gbps"), std::string::npos);
}

}  // namespace
