// Slot map vs a brute-force model on random and adversarial selection sequences.
//
// The model keeps slot contents and last-selected steps in plain arrays and
// recomputes everything from scratch each step with sets and a full sort; the
// slot map must make exactly the same moves.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <set>

#include "kv/slot_map.h"

namespace {

using spx::SlotLoad;
using spx::SlotMap;

struct Model {
  std::vector<int32_t> tok;   // [B]
  std::vector<int64_t> used;  // [B]
  int64_t step = 0;
  explicit Model(int B) : tok(B, -1), used(B, -1) {}

  // Returns the expected loads as (token -> slot), tokens in selection order.
  std::vector<SlotLoad> update(const std::vector<int32_t>& sel) {
    ++step;
    const std::set<int32_t> want(sel.begin(), sel.end());
    std::vector<int32_t> pending;
    for (int32_t t : sel) {
      auto it = std::find(tok.begin(), tok.end(), t);
      if (it != tok.end()) {
        used[it - tok.begin()] = step;
      } else {
        pending.push_back(t);
      }
    }
    std::vector<int32_t> victims;
    for (size_t s = 0; s < tok.size(); ++s)
      if (used[s] != step) victims.push_back(static_cast<int32_t>(s));
    std::sort(victims.begin(), victims.end(), [&](int32_t a, int32_t b) {
      return used[a] != used[b] ? used[a] < used[b] : a < b;
    });
    std::vector<SlotLoad> loads;
    for (size_t i = 0; i < pending.size(); ++i) {
      const int32_t s = victims.at(i);
      EXPECT_TRUE(tok[s] < 0 || !want.count(tok[s]));
      tok[s] = pending[i];
      used[s] = step;
      loads.push_back({pending[i], s});
    }
    return loads;
  }
};

// Checks one step of `map` against `model` and the elastic invariants.
void check_step(SlotMap& map, Model& model, const std::vector<int32_t>& sel,
                const std::vector<int32_t>& last, uint64_t* total_loads) {
  std::vector<int32_t> before(map.budget());
  for (int s = 0; s < map.budget(); ++s) before[s] = map.token_in(s);
  std::vector<SlotLoad> loads;
  std::vector<int32_t> slots(sel.size());
  const int n = map.update(sel.data(), static_cast<int>(sel.size()), &loads, slots.data());
  const auto want = model.update(sel);
  ASSERT_EQ(n, static_cast<int>(want.size()));
  ASSERT_EQ(loads.size(), want.size());
  // Same loads as a set (order within a step is free).
  auto key = [](const SlotLoad& l) { return std::make_pair(l.token, l.slot); };
  std::set<std::pair<int32_t, int32_t>> got_set, want_set;
  for (auto& l : loads) got_set.insert(key(l));
  for (auto& l : want) want_set.insert(key(l));
  ASSERT_EQ(got_set, want_set);
  for (int s = 0; s < map.budget(); ++s) ASSERT_EQ(map.token_in(s), model.tok[s]) << s;
  // Every selected token sits in the slot reported for it; residents never moved.
  for (size_t i = 0; i < sel.size(); ++i) {
    ASSERT_GE(slots[i], 0);
    ASSERT_EQ(map.token_in(slots[i]), sel[i]);
    auto it = std::find(before.begin(), before.end(), sel[i]);
    if (it != before.end()) ASSERT_EQ(slots[i], it - before.begin()) << "resident token moved";
  }
  // Never more than the paper's elastic diff |S_now - S_last|.
  const std::set<int32_t> prev(last.begin(), last.end());
  size_t fresh = 0;
  for (int32_t t : sel) fresh += !prev.count(t);
  ASSERT_LE(static_cast<size_t>(n), fresh);
  *total_loads += n;
}

std::vector<int32_t> random_subset(std::mt19937& rng, int T, int n) {
  std::vector<int32_t> all(T);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(n);
  return all;
}

// ~80% of the previous selection kept, the rest drawn anew from a growing context.
TEST(SlotMap, MatchesModelOnOverlappingRandomSelections) {
  double sum_frac = 0;
  int runs = 0;
  for (uint32_t seed = 1; seed <= 40; ++seed) {
    std::mt19937 rng(seed);
    const int B = 1 + static_cast<int>(rng() % 300);
    int T = B + 1 + static_cast<int>(rng() % 500);
    SlotMap map(B);
    Model model(B);
    std::vector<int32_t> last;
    uint64_t loads = 0, slots = 0;
    std::vector<int32_t> sel = random_subset(rng, T, B);
    for (int step = 0; step < 60; ++step) {
      check_step(map, model, sel, last, &loads);
      if (::testing::Test::HasFatalFailure()) return;
      if (step > 0) slots += B;
      last = sel;
      // Next: keep ~80%, replace the rest with tokens not selected now.
      ++T;
      std::shuffle(sel.begin(), sel.end(), rng);
      std::set<int32_t> in(sel.begin(), sel.end());
      const int replace = B / 5 + static_cast<int>(rng() % 3);
      for (int i = 0; i < replace && i < B; ++i) {
        int32_t t;
        do t = static_cast<int32_t>(rng() % T);
        while (in.count(t));
        in.erase(sel[i]);
        in.insert(t);
        sel[i] = t;
      }
      if (step == 0) loads = 0;  // the first fill is not a reload
    }
    sum_frac += static_cast<double>(loads) / slots;
    ++runs;
  }
  const double frac = sum_frac / runs;
  std::printf("mean reload fraction at ~80%% overlap: %.3f\n", frac);
  EXPECT_GT(frac, 0.05);
  EXPECT_LE(frac, 0.23);  // ~20% of B per step, as in the paper
}

TEST(SlotMap, MatchesModelOnAdversarialSequences) {
  const int B = 16;
  // Disjoint consecutive selections: every slot reloads.
  {
    SlotMap map(B);
    Model model(B);
    std::vector<int32_t> last;
    uint64_t loads = 0;
    for (int step = 0; step < 10; ++step) {
      std::vector<int32_t> sel(B);
      std::iota(sel.begin(), sel.end(), step * B);
      check_step(map, model, sel, last, &loads);
      last = sel;
    }
    EXPECT_EQ(loads, 10u * B);
  }
  // A selection that leaves and comes back before its slot is reused costs nothing.
  {
    SlotMap map(B);
    Model model(B);
    std::vector<int32_t> a(B), b(B / 2), last;
    std::iota(a.begin(), a.end(), 0);
    std::iota(b.begin(), b.end(), 0);
    uint64_t loads = 0;
    check_step(map, model, a, last, &loads);
    check_step(map, model, b, a, &loads);
    const uint64_t before = loads;
    check_step(map, model, a, b, &loads);
    EXPECT_EQ(loads, before);
  }
  // Alternating halves beyond capacity, shrinking and growing selections, budget 1.
  for (int budget : {1, 2, 7, 16}) {
    std::mt19937 rng(budget);
    SlotMap map(budget);
    Model model(budget);
    std::vector<int32_t> last;
    uint64_t loads = 0;
    for (int step = 0; step < 200; ++step) {
      const int n = static_cast<int>(rng() % (budget + 1));  // 0..B
      std::vector<int32_t> sel = random_subset(rng, budget * 3, n);
      if (step % 2) std::reverse(sel.begin(), sel.end());
      check_step(map, model, sel, last, &loads);
      if (::testing::Test::HasFatalFailure()) return;
      last = sel;
    }
  }
}

TEST(SlotMap, RejectsBadSelectionsWithoutChangingState) {
  SlotMap map(4);
  std::vector<SlotLoad> loads;
  const int32_t ok[] = {3, 1};
  ASSERT_EQ(map.update(ok, 2, &loads, nullptr), 2);
  const int32_t repeat[] = {5, 6, 5};
  EXPECT_EQ(map.update(repeat, 3, &loads, nullptr), -1);
  const int32_t negative[] = {-1};
  EXPECT_EQ(map.update(negative, 1, &loads, nullptr), -1);
  const int32_t too_many[] = {0, 1, 2, 3, 4};
  EXPECT_EQ(map.update(too_many, 5, &loads, nullptr), -1);
  EXPECT_EQ(loads.size(), 2u);
  EXPECT_GE(map.slot_of(3), 0);
  EXPECT_GE(map.slot_of(1), 0);
  EXPECT_EQ(map.slot_of(5), -1);
  // A valid step after the bad ones still works and reuses residents.
  const int32_t again[] = {1, 3, 5, 6};
  EXPECT_EQ(map.update(again, 4, &loads, nullptr), 2);
}

TEST(SlotTable, CountsBytesAndReloadFractionPerHead) {
  spx::SlotTable table;
  const int H = 2, B = 4;
  table.configure(H, 1000);
  table.open_request(3, B);
  EXPECT_FALSE(table.has_request(0));
  std::vector<std::vector<SlotLoad>> loads;
  std::vector<int32_t> slots(H * B);
  const int32_t s1[] = {0, 1, 2, 3, 10, 11, 12, 13};  // [H, B]
  ASSERT_TRUE(table.update(3, s1, B, &loads, slots.data()));
  EXPECT_EQ(table.last_step().loads, 8u);
  const int32_t s2[] = {0, 1, 2, 4, 10, 11, 14, 15};  // head 0: 1 new, head 1: 2 new
  loads.clear();
  ASSERT_TRUE(table.update(3, s2, B, &loads, slots.data()));
  EXPECT_EQ(table.last_step().loads, 3u);
  EXPECT_EQ(table.last_step().bytes, 3000u);
  EXPECT_DOUBLE_EQ(table.last_step().reload_fraction(), 3.0 / 8.0);
  EXPECT_EQ(loads[0].size(), 1u);
  EXPECT_EQ(loads[1].size(), 2u);
  EXPECT_EQ(table.stats().loads, 11u);
  EXPECT_FALSE(table.update(0, s2, B, &loads, nullptr));
  table.close_request(3);
  EXPECT_FALSE(table.has_request(3));
}

}  // namespace
