#include "planner/memory_plan.h"

#include <cmath>

namespace spx::planner {

namespace {

// The model works in doubles (the 1.3 factor), rounding once at the end, so
// thresholds match a hand computation exactly.
double overhead_bytes(const PlanInput& in) {
  if (in.measured_overhead_bytes >= 0) {
    return static_cast<double>(in.model.target_weight_bytes + in.model.dlm_weight_bytes) +
           static_cast<double>(in.measured_overhead_bytes);
  }
  return 1.3 * static_cast<double>(in.model.target_weight_bytes + in.model.dlm_weight_bytes);
}

}  // namespace

bool make_plan(const PlanInput& in, Plan* plan, std::string* error) {
  const ModelShape& m = in.model;
  auto fail = [&](const std::string& msg) {
    if (error) *error = msg;
    return false;
  };
  if (m.layers <= 0) return fail("layers must be > 0");
  if (m.kv_heads <= 0) return fail("kv_heads must be > 0");
  if (m.head_dim <= 0) return fail("head_dim must be > 0");
  if (m.alpha < 0) return fail("alpha must be >= 0");
  if (m.kv_elem_bytes <= 0) return fail("kv_elem_bytes must be > 0");
  if (m.target_weight_bytes <= 0) return fail("target weight bytes must be > 0");
  if (m.dlm_weight_bytes < 0) return fail("dlm weight bytes must be >= 0");
  if (in.requests <= 0) return fail("requests must be > 0");
  if (in.budget <= 0) return fail("budget must be > 0");
  if (in.gpu_bytes <= 0) return fail("gpu memory must be > 0");

  const double fixed = overhead_bytes(in);
  const double tok = 2.0 * m.kv_elem_bytes * m.kv_heads * m.head_dim;  // K+V per token-layer
  const double per_req = tok * in.requests;
  const double free_bytes = static_cast<double>(in.gpu_bytes) - fixed;
  plan->fixed_bytes = static_cast<int64_t>(std::llround(fixed));
  plan->kv_token_bytes = static_cast<int64_t>(tok);
  plan->thresholds.assign(m.layers + 1, -1);
  for (int i = 0; i <= m.layers; ++i) {
    const double slots = per_req * i * in.budget;
    const double per_len = per_req * (m.layers - i + 1 + m.alpha);
    const double s = (free_bytes - slots) / per_len;
    plan->thresholds[i] = s < 0 ? -1 : static_cast<int64_t>(std::floor(s));
  }
  return true;
}

int64_t plan_bytes(const PlanInput& in, const Plan& plan, int host_layers, int64_t seq_len) {
  const ModelShape& m = in.model;
  const double per_req = static_cast<double>(plan.kv_token_bytes) * in.requests;
  const double kv = per_req * ((m.layers - host_layers + 1 + m.alpha) * static_cast<double>(seq_len) +
                               static_cast<double>(host_layers) * in.budget);
  return static_cast<int64_t>(std::llround(overhead_bytes(in) + kv));
}

Placement place(const PlanInput& in, const Plan& plan, int64_t seq_len) {
  const int L = in.model.layers;
  Placement p;
  p.on_host.assign(L, false);
  int host = -1;
  if (seq_len <= plan.thresholds[0] || seq_len <= in.budget) {
    // Below B a host layer would cost as much device memory as a resident one.
    host = 0;
    p.fits = seq_len <= plan.thresholds[0];
  } else {
    for (int i = 1; i <= L; ++i) {
      if (seq_len <= plan.thresholds[i]) {
        host = i;
        break;
      }
    }
    p.fits = host >= 0;
    if (host < 0) host = L;
  }
  p.host_layers = host;
  for (int l = L - host; l < L; ++l) p.on_host[l] = true;
  p.bytes = plan_bytes(in, plan, host, seq_len);
  return p;
}

}  // namespace spx::planner
