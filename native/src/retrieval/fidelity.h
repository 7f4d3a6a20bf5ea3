// `specontext eval fidelity`: how close sparse decoding with a retrieval head
// stays to full attention, on real text, teacher-forced.
//
// The first `context` tokens are prefilled (full attention). Then, for `steps`
// decode steps feeding the text's next tokens, each budget B runs its own
// sparse decode (the head's selection [kv_heads, B] shared by all layers) on a
// copy of the prefilled KV, and one full-attention run is the reference:
//   - attention recall: the share of the full run's attention mass (softmax of
//     q.k at every layer and query head) on the tokens selected for that
//     head's KV group; averaged over layers, heads and steps, with the spread;
//   - top-1 agreement of the sparse next-token argmax with the full one;
//   - perplexity ratio, sparse over full, on the text's next tokens;
//   - elastic-loading reload fraction (slot maps fed with the selections);
//   - fallback rate (selection mass under the threshold -> full attention).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "retrieval/head_choice.h"
#include "retrieval/pruned_head.h"
#include "retrieval/select.h"

namespace spx::retrieval {

struct FidelityOptions {
  int context = 4096;
  int steps = 32;
  std::vector<int> budgets;
  SelectOptions select;       // budget ignored (per entry of budgets)
  int prefill_chunk = 512;
  // Layers below a self-derived head's scoring layer attend fully: the head
  // computes them densely anyway, so the target can take them from it.
  bool dense_head_layers = true;
  // >= 0: layers below it attend fully for every head, overriding the rule
  // above (a control: e.g. an oracle pooled over the layers a head serves,
  // with the same dense layers as that head).
  int sparse_from = -1;
};

struct BudgetFidelity {
  int budget = 0;
  bool full_attention = false;  // context + steps <= B: nothing to select
  double recall_mean = 0, recall_std = 0, recall_min = 0, recall_p10 = 0;
  double top1_agreement = 0;
  double ppl_sparse = 0, ppl_ratio = 0;
  double reload_fraction = 0;
  double fallback_rate = 0;
  double head_mass_mean = 0;    // the head's own attention mass on its selection
  std::vector<double> recall_per_layer;  // [layers]
};

struct FidelityReport {
  std::string head_kind;
  int context = 0, steps = 0;
  int scoring_layer = 0;
  uint64_t head_params = 0, head_model_params = 0, target_params = 0;
  double ppl_full = 0;
  double seconds = 0;
  float fallback_mass = 0;  // the threshold the run used (0: none)
  std::vector<BudgetFidelity> budgets;
};

using FidelityProgress = std::function<void(const std::string& phase)>;

// tokens must hold at least context + steps + 1 ids. `head` may be cut from
// `target` or from another model sharing its tokenizer.
Status run_fidelity(Transformer* target, PrunedHead* head, const std::vector<int32_t>& tokens,
                    const FidelityOptions& opt, FidelityReport* report,
                    const FidelityProgress& progress = nullptr);
// Several heads over one prefill and one full-attention reference.
Status run_fidelity(Transformer* target, const std::vector<PrunedHead*>& heads,
                    const std::vector<int32_t>& tokens, const FidelityOptions& opt,
                    std::vector<FidelityReport>* reports, const FidelityProgress& progress = nullptr);

// The whole command: loads the target (and DLM), builds the head, runs.
struct FidelityRequest {
  std::string model_dir;
  std::string device = "cpu";
  int threads = 0;
  HeadChoice head;
  std::vector<int32_t> tokens;
  FidelityOptions options;
};
Status eval_fidelity(const FidelityRequest& req, FidelityReport* report,
                     const FidelityProgress& progress = nullptr);

}  // namespace spx::retrieval
