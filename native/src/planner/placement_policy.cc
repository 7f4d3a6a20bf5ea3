#include "planner/placement_policy.h"

#include <algorithm>

namespace spx::planner {

bool PlacementPolicy::configure(const PlanInput& base, std::string* error) {
  base_ = base;
  enabled_ = false;
  if (base.gpu_bytes <= 0) return true;
  PlanInput probe = base;
  probe.requests = 1;
  probe.budget = 1;
  Plan plan;
  if (!make_plan(probe, &plan, error)) return false;
  enabled_ = true;
  fixed_bytes_ = plan.fixed_bytes;
  return true;
}

int PlacementPolicy::host_layers(int requests, int budget, int64_t max_len, int current) const {
  if (!enabled_ || requests <= 0 || budget <= 0) return 0;
  PlanInput in = base_;
  in.requests = requests;
  in.budget = budget;
  Plan plan;
  std::string error;
  if (!make_plan(in, &plan, &error)) return current;
  return std::max(current, place(in, plan, max_len).host_layers);
}

}  // namespace spx::planner
