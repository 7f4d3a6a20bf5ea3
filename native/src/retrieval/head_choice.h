// Which retrieval head a run uses, resolved in one place for `generate
// --budget` and `eval fidelity`:
//   --dlm DIR        a separate distilled model sharing the tokenizer, scoring
//                    at its layer dlm_layers-1 (default: its last layer), or
//                    an EAGLE-3 draft (detected from config.json: eagle3_head.h);
//   --dlm-layers k   self-derived: the target's first k layers, scoring at k-1;
//   --oracle-layer l the target's own full attention at layer l (evaluation);
//   none             the recommended head for the model: a distilled head
//                    assembled next to it (recommended_dlm_dir) when it is
//                    there and fits, else self-derived (recommended_layers).
#pragma once

#include <memory>
#include <string>

#include "model/transformer.h"
#include "retrieval/pruned_head.h"

namespace spx::retrieval {

struct HeadChoice {
  std::string dlm_dir;
  int dlm_layers = 0;
  int oracle_layer = -1;
  int pool = 0;  // layers pooled, the scoring layer and those just below (0: recommended)
  // The target's directory: with no head flag, its recommended distilled
  // head is looked up next to it (empty: self-derived).
  std::string model_dir;
};

// Where the recommended distilled head of the target at model_dir lives:
// "<model_dir>-head" (`make setup` assembles SmolLM2-135M's there from the
// committed tensors, tools/train_head.py). Used only when its embedding and
// lower layers are the target's own (shares_lower_layers).
std::string recommended_dlm_dir(const std::string& model_dir);
// Whether the product ships a distilled head for this target (SmolLM2-135M):
// then its absence is worth a note.
bool has_distilled_head(const ModelConfig& target);

// Self-derived layers recommended for a target with no DLM (measured with
// `specontext eval fidelity`, see docs/specontext.md).
int recommended_layers(const ModelConfig& target);
int recommended_pool(const ModelConfig& target);

// Whether `dlm`'s embedding and its layers below scoring_layer are `target`'s
// own: the same shapes and configuration, tensors equal bit for bit as
// loaded. Such a DLM (a head distilled from the target, tools/train_head.py)
// differs only in its scoring layer, so it runs like a self-derived head:
// the target computes those layers densely and the head adopts its KV.
// *why names the first difference.
bool shares_lower_layers(const Transformer& target, const Transformer& dlm, int scoring_layer,
                         std::string* why);

// Builds the head. A DLM is loaded onto `backend` into *dlm_model (kept alive
// by the caller); `kind` describes the head for reports. *fallback_mass (if
// given) receives the head's recommended fallback threshold: a distilled
// head's config.json "specontext_fallback_mass", else 0 (none).
Status make_head(Transformer* target, Backend* backend, const HeadChoice& choice,
                 std::unique_ptr<Transformer>* dlm_model, std::unique_ptr<PrunedHead>* head,
                 std::string* kind, double* fallback_mass = nullptr);

// The fallback threshold a run uses: the one asked for (>= 0), else the
// head's recommendation.
inline float resolve_fallback(float asked, double recommended) {
  return asked >= 0 ? asked : static_cast<float>(recommended);
}
// What a head's description adds for the threshold a run uses ("" for none).
std::string fallback_note(float used, float asked);

}  // namespace spx::retrieval
