// The scheduler's bookkeeping alone: admission limits, one decode token per
// running request, the prefill chunk budget shared oldest first.
#include <gtest/gtest.h>

#include "scheduler/scheduler.h"

namespace spx {
namespace {

auto admit_all = [](uint64_t) { return true; };

TEST(Scheduler, ChunkedPrefillThenDecode) {
  Scheduler s(2, 4);
  s.enqueue(1, 10);
  StepPlan p = s.plan(admit_all);
  ASSERT_EQ(p.work.size(), 1u);
  EXPECT_TRUE(p.work[0].prefill);
  EXPECT_EQ(p.work[0].begin, 0);
  EXPECT_EQ(p.work[0].count, 4);
  EXPECT_FALSE(p.work[0].completes_prompt);
  s.complete(p);
  p = s.plan(admit_all);
  EXPECT_EQ(p.work[0].begin, 4);
  s.complete(p);
  p = s.plan(admit_all);
  EXPECT_EQ(p.work[0].count, 2);
  EXPECT_TRUE(p.work[0].completes_prompt);
  s.complete(p);
  p = s.plan(admit_all);
  ASSERT_EQ(p.work.size(), 1u);
  EXPECT_FALSE(p.work[0].prefill);
  EXPECT_EQ(p.work[0].count, 1);
}

TEST(Scheduler, BatchLimitAndJoinLeave) {
  Scheduler s(2, 100);
  s.enqueue(1, 3);
  s.enqueue(2, 3);
  s.enqueue(3, 3);
  StepPlan p = s.plan(admit_all);
  EXPECT_EQ(p.admitted, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(s.running(), 2);
  EXPECT_EQ(s.queued(), 1);
  s.complete(p);
  EXPECT_TRUE(s.remove(1));  // leaves between steps
  p = s.plan(admit_all);
  EXPECT_EQ(p.admitted, (std::vector<uint64_t>{3}));
  ASSERT_EQ(p.work.size(), 2u);
  EXPECT_EQ(p.work[0].id, 2u);  // decoders first
  EXPECT_FALSE(p.work[0].prefill);
  EXPECT_EQ(p.work[1].id, 3u);
  EXPECT_TRUE(p.work[1].prefill);
  EXPECT_FALSE(s.remove(99));
}

TEST(Scheduler, PrefillBudgetIsSharedOldestFirst) {
  Scheduler s(4, 10);
  s.enqueue(1, 6);
  s.enqueue(2, 6);
  s.enqueue(3, 6);
  StepPlan p = s.plan(admit_all);
  ASSERT_EQ(p.work.size(), 2u);
  EXPECT_EQ(p.work[0].count, 6);
  EXPECT_EQ(p.work[1].count, 4);
}

TEST(Scheduler, AdmitCallbackCanRefuse) {
  Scheduler s(4, 10);
  s.enqueue(1, 2);
  s.enqueue(2, 2);
  StepPlan p = s.plan([](uint64_t id) { return id == 1; });
  EXPECT_EQ(p.admitted, (std::vector<uint64_t>{1}));
  EXPECT_EQ(s.queued(), 1);
  EXPECT_TRUE(s.remove(2));
  EXPECT_EQ(s.queued(), 0);
}

}  // namespace
}  // namespace spx
