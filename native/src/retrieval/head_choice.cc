#include "retrieval/head_choice.h"

#include <algorithm>

#include "retrieval/eagle3_head.h"

namespace spx::retrieval {

int recommended_layers(const ModelConfig& target) {
  // A quarter of the depth (7 of 30 layers on SmolLM2-135M): with the layers
  // below the scoring layer dense, the best balance of recall, top-1 and
  // perplexity we measured (docs/specontext.md).
  return std::max(1, target.num_layers / 4);
}

// No pooling: the pooled layers are the dense ones below the scoring layer,
// so pooling optimises the selection for layers that do not use it
// (measured: higher recall on average, worse perplexity).
int recommended_pool(const ModelConfig& target) { return 1; }

Status make_head(Transformer* target, Backend* backend, const HeadChoice& choice,
                 std::unique_ptr<Transformer>* dlm_model, std::unique_ptr<PrunedHead>* head,
                 std::string* kind) {
  const ModelConfig& c = target->config();
  const int given = (!choice.dlm_dir.empty()) + (choice.oracle_layer >= 0);
  if (given > 1) return Status::Error("give at most one of a DLM directory and an oracle layer");
  if (choice.oracle_layer >= 0) {
    if (choice.oracle_layer >= c.num_layers)
      return Status::Error("oracle layer " + std::to_string(choice.oracle_layer) + " outside the target's " +
                           std::to_string(c.num_layers) + " layers");
    const int pool = std::max(choice.pool, 1);
    *kind = "oracle layer " + std::to_string(choice.oracle_layer) +
            (pool > 1 ? ", pooled over " + std::to_string(pool) + " layers" : "");
    return PrunedHead::make(target, choice.oracle_layer, head, pool);
  }
  if (!choice.dlm_dir.empty() && is_eagle3_dir(choice.dlm_dir)) {
    if (choice.dlm_layers > 1 || choice.pool > 1)
      return Status::Error("an EAGLE-3 draft has one layer: --dlm-layers and pooling do not apply");
    std::unique_ptr<Eagle3Head> e3;
    Status st = Eagle3Head::load(choice.dlm_dir, target, backend, &e3);
    if (!st.ok) return Status::Error("cannot load the DLM: " + st.message);
    const std::vector<int>& aux = e3->aux_layers();
    *kind = "eagle3 " + choice.dlm_dir + " (target layers " + std::to_string(aux[0]) + "," +
            std::to_string(aux[1]) + "," + std::to_string(aux[2]) + ")";
    return PrunedHead::make_eagle3(std::move(e3), head);
  }
  if (!choice.dlm_dir.empty()) {
    Status st = Transformer::load(choice.dlm_dir, backend, dlm_model);
    if (!st.ok) return Status::Error("cannot load the DLM: " + st.message);
    const ModelConfig& d = (*dlm_model)->config();
    if (d.vocab_size != c.vocab_size)
      return Status::Error("the DLM's vocabulary (" + std::to_string(d.vocab_size) +
                           ") differs from the target's (" + std::to_string(c.vocab_size) + ")");
    if (d.num_heads != c.num_heads || d.num_kv_heads != c.num_kv_heads)
      return Status::Error("the DLM's attention heads differ from the target's");
    const int k = choice.dlm_layers > 0 ? choice.dlm_layers : d.num_layers;
    if (k > d.num_layers) return Status::Error("dlm layers exceed the DLM's depth");
    const int pool = std::max(choice.pool, 1);
    *kind = "dlm " + choice.dlm_dir + " scoring layer " + std::to_string(k - 1);
    return PrunedHead::make(dlm_model->get(), k - 1, head, pool);
  }
  const int k = choice.dlm_layers > 0 ? choice.dlm_layers : recommended_layers(c);
  if (k > c.num_layers)
    return Status::Error("dlm layers " + std::to_string(k) + " exceed the target's " +
                         std::to_string(c.num_layers) + " layers");
  const bool rec = choice.dlm_layers <= 0;
  const int pool = choice.pool > 0 ? choice.pool : (rec ? std::min(recommended_pool(c), k) : 1);
  *kind = "self-derived, first " + std::to_string(k) + " layers" +
          (pool > 1 ? ", pooled over the last " + std::to_string(pool) : "") + (rec ? " (recommended)" : "");
  return PrunedHead::make(target, k - 1, head, pool);
}

}  // namespace spx::retrieval
