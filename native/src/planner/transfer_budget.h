// Transfer-aware placement: how many host-tier layer-requests a step can
// carry before its elastic loads stop hiding behind compute, and the batch
// admission rule built on it (issue 6).
//
// The paper's placement (memory_plan.h, Eq. 6-8) only asks whether the KV
// fits device memory; it ignores PCIe. Every host layer of every request
// ("layer-request") reloads, each step, the share of its B slots that the new
// selection changed:
//
//   bytes per layer-request = reload * B * H * 2 (K and V) * D * elem bytes
//   transfer_ms(n)          = n * bytes / (gather GB/s * 1e6)
//
// The gathers start right after the selection and run beside the layers; the
// last host layer cannot start before all of them are done, so they hide
// behind `hide_ms` (the compute before the last host layer; about (L-1)/L of
// the step's layer compute). What is left waits on the compute stream:
//
//   exposed_ms(n)    = max(0, transfer_ms(n) - hide_ms)
//   exposed_share(n) = exposed_ms / (step_ms + exposed_ms)
//
// so the most layer-requests under a share s is
//   floor((hide_ms + s * step_ms / (1 - s)) * GB/s * 1e6 / bytes).
// The gathers also slow the compute they overlap (shared SMs and memory);
// that is not modelled here, which is why a caller measures around the rule.
//
// Admission: the largest batch R whose placement at the end of the output
// range fits device memory (memory_plan.h) and the host pool, and whose
// end-of-range host layer-requests stay under the share above. The step time
// for R comes from a linear fit of measured all-device steps
// (step(R) = fixed + per_request * R). Pure arithmetic, like memory_plan.
#pragma once

#include <cstdint>
#include <string>

#include "planner/memory_plan.h"

namespace spx::planner {

struct TransferInput {
  int kv_heads = 0;              // H
  int head_dim = 0;              // D
  int kv_elem_bytes = 2;
  int budget = 0;                // B
  double reload_fraction = 0;    // measured share of B reloaded per step and head, 0..1
  double gather_gbps = 0;        // measured host->device gather bandwidth, GB/s (1e9 B/s)
  double max_exposed_share = 0.10;
};

// Bytes one host layer of one request moves per step.
double layer_request_bytes(const TransferInput& t);
// Copy-stream time for n layer-requests (ms).
double transfer_ms(const TransferInput& t, int64_t layer_requests);
// Compute-stream wait for n layer-requests, given the compute they hide behind.
double exposed_ms(const TransferInput& t, int64_t layer_requests, double hide_ms);
// exposed / (step + exposed).
double exposed_share(const TransferInput& t, int64_t layer_requests, double hide_ms,
                     double step_ms);
// The most layer-requests whose exposed share stays <= t.max_exposed_share.
// -1 on invalid input (see transfer_input_error).
int64_t max_layer_requests(const TransferInput& t, double hide_ms, double step_ms);
// Empty when valid, else what is wrong.
std::string transfer_input_error(const TransferInput& t);

struct StepTime {
  double fixed_ms = 0;        // step(R) = fixed_ms + per_request_ms * R (all layers on the device)
  double per_request_ms = 0;
  double hide_share = 0;      // share of step(R) the gathers can hide behind
};

struct AdmissionInput {
  PlanInput base;                       // requests ignored; measured_overhead_bytes = its fixed part
  int64_t overhead_per_request_bytes = 0;  // overhead(R) = base.measured_overhead_bytes + R * this
  int64_t end_len = 0;                  // sequence length at the end of the output range
  int64_t host_pool_bytes = 0;          // pinned host memory the host tier may use
  int max_requests = 4096;
  TransferInput transfer;
  StepTime step;
};

struct Admission {
  int requests = 0;               // the admitted batch (0: not even one request fits)
  int host_layers = 0;            // at the end of the range
  int64_t layer_requests = 0;     // host_layers * requests
  int64_t max_layer_requests = 0; // what the step time at this batch can hide
  double step_ms = 0;             // predicted all-device step at this batch
  double transfer_ms = 0, exposed_ms = 0, exposed_share = 0;  // predicted, end of range
  // Why the next batch up is refused: "memory", "host pool", "transfer" or "max requests".
  std::string limited_by;
};

// false with *error on invalid input.
bool admit(const AdmissionInput& in, Admission* out, std::string* error);

}  // namespace spx::planner
