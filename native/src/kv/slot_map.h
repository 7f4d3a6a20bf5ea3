// Elastic loading bookkeeping for a host-resident layer (paper section 2).
//
// A host-tier layer keeps, per request and KV head, a device buffer of B token
// slots. Each decode step brings a new selection; only selected tokens not yet
// in a slot are copied, into slots whose token is not selected now. A slot's
// token stays until the slot is needed, so a token that leaves the selection
// and comes back before its slot is reused costs nothing (loads are at most
// |S_now - S_last|, the paper's elastic figure). Victims are the slots
// selected least recently.
//
// Shared by the CPU and CUDA backends: this file only decides what moves; the
// backend performs the copies from its (token, slot) list.
#pragma once

#include <cstdint>
#include <vector>

namespace spx {

struct SlotLoad {
  int32_t token;  // position in the request's full KV (host tier)
  int32_t slot;   // destination slot in the device buffer [B]
};

// One request x one KV head.
class SlotMap {
 public:
  explicit SlotMap(int budget = 0) { reset(budget); }
  void reset(int budget);

  // `selected` holds n distinct token positions, n <= budget. Appends the
  // loads this step needs to *loads and writes each selected token's slot to
  // slot_of_selected[0..n) (may be null). Returns the number of loads, or -1
  // if n > budget or a token is negative or repeated (nothing changes then).
  int update(const int32_t* selected, int n, std::vector<SlotLoad>* loads,
             int32_t* slot_of_selected);

  int budget() const { return static_cast<int>(slot_token_.size()); }
  int32_t token_in(int slot) const { return slot_token_[slot]; }  // -1: empty
  int32_t slot_of(int32_t token) const {
    return token >= 0 && token < static_cast<int32_t>(token_slot_.size()) ? token_slot_[token] : -1;
  }

 private:
  std::vector<int32_t> slot_token_;  // [B]
  std::vector<int64_t> slot_used_;   // [B] step the slot's token was last selected
  std::vector<int32_t> token_slot_;  // [T seen] dense: positions are small integers
  std::vector<int64_t> token_mark_;  // [T seen] step stamp, to detect repeats
  std::vector<int32_t> pending_;     // scratch: selected tokens to load
  std::vector<int32_t> free_;        // scratch: candidate victim slots
  int64_t step_ = 0;
};

// Counters over steps, for the tier and for `eval fidelity`.
struct ElasticStats {
  uint64_t steps = 0;           // (request, head) updates
  uint64_t loads = 0;           // tokens copied
  uint64_t slots = 0;           // sum of B over updates
  uint64_t bytes = 0;           // loads * bytes per token
  double reload_fraction() const { return slots ? static_cast<double>(loads) / slots : 0.0; }
};

// The slot maps of one host-tier layer group: [requests, kv_heads], all
// host-tier layers share one selection, so one map per (request, head)
// serves every host layer and bytes scale with their count.
class SlotTable {
 public:
  // bytes_per_token: K+V bytes of one token, one head, summed over host layers.
  void configure(int kv_heads, int64_t bytes_per_token);
  int64_t bytes_per_token() const { return bytes_per_token_; }
  // (Re)starts request r's maps with budget B.
  void open_request(int r, int budget);
  void close_request(int r);
  bool has_request(int r) const { return r >= 0 && r < static_cast<int>(maps_.size()) && !maps_[r].empty(); }
  // selected: [kv_heads, n] for request r; slots out: [kv_heads, n]; loads are
  // appended per head to loads[h]. Returns false on bad input.
  bool update(int r, const int32_t* selected, int n, std::vector<std::vector<SlotLoad>>* loads,
              int32_t* slots);
  const ElasticStats& stats() const { return stats_; }
  ElasticStats last_step() const { return last_; }

 private:
  int kv_heads_ = 0;
  int64_t bytes_per_token_ = 0;
  std::vector<std::vector<SlotMap>> maps_;  // [requests][kv_heads]
  ElasticStats stats_;
  ElasticStats last_;
};

}  // namespace spx
