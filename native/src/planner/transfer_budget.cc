#include "planner/transfer_budget.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace spx::planner {

double layer_request_bytes(const TransferInput& t) {
  return t.reload_fraction * t.budget * t.kv_heads * 2.0 * t.head_dim * t.kv_elem_bytes;
}

double transfer_ms(const TransferInput& t, int64_t layer_requests) {
  return static_cast<double>(layer_requests) * layer_request_bytes(t) / (t.gather_gbps * 1e6);
}

double exposed_ms(const TransferInput& t, int64_t layer_requests, double hide_ms) {
  return std::max(0.0, transfer_ms(t, layer_requests) - hide_ms);
}

double exposed_share(const TransferInput& t, int64_t layer_requests, double hide_ms,
                     double step_ms) {
  const double e = exposed_ms(t, layer_requests, hide_ms);
  return e > 0 ? e / (step_ms + e) : 0.0;
}

std::string transfer_input_error(const TransferInput& t) {
  if (t.kv_heads <= 0) return "kv_heads must be > 0";
  if (t.head_dim <= 0) return "head_dim must be > 0";
  if (t.kv_elem_bytes <= 0) return "kv_elem_bytes must be > 0";
  if (t.budget <= 0) return "budget must be > 0";
  if (!(t.reload_fraction >= 0 && t.reload_fraction <= 1)) return "reload_fraction must be in [0, 1]";
  if (!(t.gather_gbps > 0)) return "gather_gbps must be > 0";
  if (!(t.max_exposed_share >= 0 && t.max_exposed_share < 1))
    return "max_exposed_share must be in [0, 1)";
  return "";
}

int64_t max_layer_requests(const TransferInput& t, double hide_ms, double step_ms) {
  if (!transfer_input_error(t).empty() || hide_ms < 0 || step_ms < 0) return -1;
  const double per = layer_request_bytes(t);
  if (per <= 0) return INT64_MAX;  // nothing reloads: any number hides
  const double s = t.max_exposed_share;
  const double window_ms = hide_ms + s * step_ms / (1.0 - s);
  // A hair of slack so a count exactly on the boundary (hand-computed
  // figures) is not lost to rounding in the divisions.
  return static_cast<int64_t>(std::floor(window_ms * t.gather_gbps * 1e6 / per + 1e-9));
}

bool admit(const AdmissionInput& in, Admission* out, std::string* error) {
  auto fail = [&](const std::string& msg) {
    if (error) *error = msg;
    return false;
  };
  const std::string terr = transfer_input_error(in.transfer);
  if (!terr.empty()) return fail(terr);
  if (in.end_len <= 0) return fail("end_len must be > 0");
  if (in.host_pool_bytes < 0) return fail("host_pool_bytes must be >= 0");
  if (in.max_requests <= 0) return fail("max_requests must be > 0");
  if (in.overhead_per_request_bytes < 0) return fail("overhead_per_request_bytes must be >= 0");
  if (in.base.measured_overhead_bytes < 0) return fail("base.measured_overhead_bytes must be >= 0");
  if (!(in.step.fixed_ms >= 0 && in.step.per_request_ms >= 0 && in.step.hide_share >= 0 &&
        in.step.hide_share <= 1))
    return fail("step time model must be non-negative, hide_share in [0, 1]");

  *out = Admission{};
  out->limited_by = "max requests";
  for (int R = 1; R <= in.max_requests; ++R) {
    PlanInput p = in.base;
    p.requests = R;
    p.measured_overhead_bytes = in.base.measured_overhead_bytes + R * in.overhead_per_request_bytes;
    Plan plan;
    std::string perr;
    if (!make_plan(p, &plan, &perr)) return fail(perr);
    const Placement pl = place(p, plan, in.end_len);
    if (!pl.fits) {
      out->limited_by = "memory";
      break;
    }
    const int64_t host_bytes = static_cast<int64_t>(pl.host_layers) * R *
                               static_cast<int64_t>(plan.kv_token_bytes) * in.end_len;
    if (host_bytes > in.host_pool_bytes) {
      out->limited_by = "host pool";
      break;
    }
    const double step = in.step.fixed_ms + in.step.per_request_ms * R;
    const double hide = in.step.hide_share * step;
    const int64_t lr = static_cast<int64_t>(pl.host_layers) * R;
    const int64_t cap = max_layer_requests(in.transfer, hide, step);
    if (lr > cap) {
      out->limited_by = "transfer";
      break;
    }
    out->requests = R;
    out->host_layers = pl.host_layers;
    out->layer_requests = lr;
    out->max_layer_requests = cap;
    out->step_ms = step;
    out->transfer_ms = transfer_ms(in.transfer, lr);
    out->exposed_ms = exposed_ms(in.transfer, lr, hide);
    out->exposed_share = exposed_share(in.transfer, lr, hide, step);
  }
  return true;
}

}  // namespace spx::planner
