// SpeContext's memory model (paper Eq. 6-8) and the adaptive layer placement
// it drives: as the sequence grows past each threshold S_i, one more target
// layer moves its KV to host memory, last layer first, keeping only a
// device buffer of B slots per request and KV head.
//
//   M_part(i, S) = overhead + kv * R * [ (L - i + 1 + alpha) * S + i * B ] * H * D
//   overhead     = 1.3 * (M_O + M_D)          (or a measured figure)
//   kv           = 2 (K and V) * bytes per element (2 for 16-bit: the paper's 4)
//   S_i          = (Mem - overhead - kv*R*i*B*H*D) / (kv*R*H*D*(L - i + 1 + alpha))
//
// The "+1" is the retrieval head's own K cache over the whole context, and
// alpha the repeat_kv buffer of GQA (group factor). Both stay on the device.
// Pure arithmetic, no engine dependency, so the CLI, the engine and the tests
// share it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace spx::planner {

struct ModelShape {
  int layers = 0;                 // L
  int kv_heads = 0;               // H
  int head_dim = 0;               // D
  double alpha = 0;               // GQA group factor (repeat_kv buffer); 0 if not materialised
  int64_t target_weight_bytes = 0;  // M_O
  int64_t dlm_weight_bytes = 0;     // M_D (retrieval head weights not shared with the target)
  int kv_elem_bytes = 2;          // 16-bit K/V
};

struct PlanInput {
  ModelShape model;
  int requests = 1;               // R
  int budget = 0;                 // B, tokens per request and KV head
  int64_t gpu_bytes = 0;          // Mem
  // Measured runtime overhead (activations, workspaces) in bytes. Negative:
  // use the paper's 30% of the weights.
  int64_t measured_overhead_bytes = -1;
};

struct Plan {
  int64_t fixed_bytes = 0;        // weights + runtime overhead
  int64_t kv_token_bytes = 0;     // bytes of K+V for one token, one layer, one request
  // thresholds[i] = S_i: the longest sequence that fits with i layers in
  // host memory, i = 0..L. Negative when even S = 0 does not fit.
  std::vector<int64_t> thresholds;
};

struct Placement {
  int host_layers = 0;            // L_CPU
  bool fits = false;              // false: S exceeds S_L (no placement fits)
  std::vector<bool> on_host;      // [L], true for host-resident layers (the last ones)
  int64_t bytes = 0;              // M_part at this length
};

// Returns false with *error set on invalid input (non-positive sizes, ...).
bool make_plan(const PlanInput& in, Plan* plan, std::string* error);

// M_part for i host layers at sequence length S (bytes).
int64_t plan_bytes(const PlanInput& in, const Plan& plan, int host_layers, int64_t seq_len);

// The fewest host layers for which length S fits; host layers are the last ones.
// Offloading only pays once S > B: below that no layer moves.
Placement place(const PlanInput& in, const Plan& plan, int64_t seq_len);

}  // namespace spx::planner
