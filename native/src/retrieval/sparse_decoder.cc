#include "retrieval/sparse_decoder.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace spx::retrieval {

Status SparseDecoder::make(Transformer* target, Backend* backend, const HeadChoice& choice,
                           const SelectOptions& select, std::unique_ptr<SparseDecoder>* out) {
  auto d = std::unique_ptr<SparseDecoder>(new SparseDecoder());
  d->target_ = target;
  d->select_ = select;
  double recommended = 0;
  Status st = make_head(target, backend, choice, &d->dlm_, &d->head_, &d->kind_, &recommended);
  if (!st.ok) return st;
  // fallback_mass < 0: the head's own recommendation (0 when it has none).
  d->select_.fallback_mass = resolve_fallback(select.fallback_mass, recommended);
  d->kind_ += fallback_note(d->select_.fallback_mass, select.fallback_mass);
  const ModelConfig& c = target->config();
  // The head scores and selects where its K cache lives when the backend can
  // (the CUDA backend; the CPU backend is the reference and has no hook).
  // SPX_HEAD_SCORING=host keeps the host path. The device reports the mean
  // reduce's mass, so a max reduce with a fallback threshold stays on the host.
  const char* where = std::getenv("SPX_HEAD_SCORING");
  const std::string scoring = where ? where : "";
  if (!scoring.empty() && scoring != "host" && scoring != "device")
    return Status::Error("SPX_HEAD_SCORING must be 'host' or 'device', not '" + scoring + "'");
  if (scoring != "host" && (select.reduce == GroupReduce::Mean || d->select_.fallback_mass <= 0))
    d->head_->use_device_select(select.n_sink, select.n_recent, select.reduce == GroupReduce::Max);
#ifdef SPX_HAVE_CUDA
  // The CUDA backend keeps host-tier caches in pinned memory (cuda_tier.h).
  d->tier_ = cuda::CudaTier::make(target->backend(), &st);
  if (!st.ok) return st;
#endif
  d->elem_bytes_ = d->tier_ ? 2 : 4;
  d->slots_.configure(c.num_kv_heads, 2LL * c.head_dim * d->elem_bytes_);
  if (d->tier_) {
    // Device slot maps need the selection on the device, from the target's
    // own backend (its stream orders the diff after the selection).
    const char* m = std::getenv("SPX_SLOT_MAPS");
    const std::string maps = m ? m : "";
    if (!maps.empty() && maps != "host" && maps != "device")
      return Status::Error("SPX_SLOT_MAPS must be 'host' or 'device', not '" + maps + "'");
    std::string why;
    if (maps == "host") why = "SPX_SLOT_MAPS=host";
    else if (!d->head_->device_select())
      why = "the retrieval head selects on the host (SPX_HEAD_SCORING=host, a pooled head, or a "
            "max reduce with a fallback threshold)";
    else if (backend != target->backend()) why = "the retrieval head runs on another backend";
    d->device_maps_ = why.empty();
    if (!why.empty() && maps != "host")
      std::fprintf(stderr, "spx: slot maps on the host (the selection goes to the CPU each step): %s\n",
                   why.c_str());
    // With the maps on the device only the fallback rule reads the selection
    // (its masses) on the host; SPX_SELECTION_DOWNLOAD=1 keeps the download
    // (the reference the tests compare with).
    const char* dl = std::getenv("SPX_SELECTION_DOWNLOAD");
    const std::string download = dl ? dl : "";
    if (!download.empty() && download != "0" && download != "1")
      return Status::Error("SPX_SELECTION_DOWNLOAD must be '0' or '1', not '" + download + "'");
    d->selection_on_device_ = d->device_maps_ && d->select_.fallback_mass <= 0 && download != "1";
  }
  *out = std::move(d);
  return Status::Ok();
}

Status SparseDecoder::set_host_layers(int n) {
  const ModelConfig& c = target_->config();
  if (n < 0 || n > c.num_layers)
    return Status::Error("host layers must be in [0, " + std::to_string(c.num_layers) + "]");
  if (n == host_layers_) return Status::Ok();
  // Counters so far belong to the old placement (bytes per load, tier or not).
  fold_map_counters(true);
  // Running requests follow at once (between steps, the batch keeps going):
  // each gets slot buffers for the layers that moved to the host tier.
  for (auto& [id, r] : reqs_) {
    Status st = alloc_tier(r, n);
    if (!st.ok) {
      // Back to the old placement: no request may attend through slots the
      // step will not fill (caches already moved to the host stay there,
      // which is correct, only slower).
      for (auto& [id2, r2] : reqs_) alloc_tier(r2, host_layers_);
      return st;
    }
  }
  if (n > host_layers_) {
    // The slot maps are shared by all host layers and the new layers' slots
    // are empty: every running request refills its B slots on its next step.
    for (auto& [id, row] : slot_row_) slots_.open_request(row, reqs_[id].budget);
    if (tier_) {
      Status st = tier_->clear_maps();
      if (!st.ok) return st;
    }
  }
  host_layers_ = n;
  // Bytes moved per loaded token: K and V rows of every host layer.
  slots_.configure(c.num_kv_heads, 2LL * c.head_dim * elem_bytes_ * n);
  return Status::Ok();
}

Status SparseDecoder::alloc_tier(Request& r, int host_layers) {
  const ModelConfig& c = target_->config();
  r.tier_k.resize(c.num_layers);
  r.tier_v.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    if (l < c.num_layers - host_layers) {
      r.tier_k[l] = Tensor();  // device-resident: attends to the full cache
      r.tier_v[l] = Tensor();
    } else if (r.tier_k[l].empty()) {
      const std::vector<int64_t> shape = {c.num_kv_heads, r.budget, c.head_dim};
      Status st = target_->backend()->alloc(shape, DType::F32, &r.tier_k[l]);
      if (st.ok) st = target_->backend()->alloc(shape, DType::F32, &r.tier_v[l]);
      if (!st.ok) return st;
      if (tier_ && r.kv) {
        // The full cache leaves the device; new tokens are written to it
        // there (through its mapped pointer) from now on.
        if (!(st = tier_->to_host(&r.kv->k[l])).ok) return st;
        if (!(st = tier_->to_host(&r.kv->v[l])).ok) return st;
      }
    }
  }
  if (host_layers == 0) {
    r.tier_k.clear();
    r.tier_v.clear();
  }
  return Status::Ok();
}

Status SparseDecoder::admit(uint64_t id, int capacity, int budget, KvSequence* kv) {
  if (budget <= 0) return Status::Ok();
  Status st = head_->open(id, capacity);
  if (!st.ok) return st;
  Request r;
  r.budget = budget;
  r.kv = kv;
  if (!(st = alloc_tier(r, host_layers_)).ok) {
    head_->close(id);
    return st;
  }
  const bool device = device_maps_ && budget <= cuda::kDeviceSlotMapMaxBudget;
  if (device_maps_ && !device && !warned_budget_) {
    std::fprintf(stderr, "spx: slot maps on the host for budgets over %d (budget %d)\n",
                 cuda::kDeviceSlotMapMaxBudget, budget);
    warned_budget_ = true;
  }
  if (device) {
    st = tier_->open_map(id, budget, capacity, target_->config().num_kv_heads);
    if (!st.ok) {
      head_->close(id);
      return st;
    }
    r.device_map = true;
    reqs_[id] = std::move(r);
    return Status::Ok();
  }
  reqs_[id] = std::move(r);
  int row = 0;
  while (true) {
    bool used = false;
    for (const auto& [rid, rr] : slot_row_) used |= rr == row;
    if (!used) break;
    ++row;
  }
  slot_row_[id] = row;
  slots_.open_request(row, budget);
  return Status::Ok();
}

void SparseDecoder::release(uint64_t id) {
  if (!reqs_.count(id)) return;
  head_->close(id);
  if (reqs_[id].device_map) tier_->close_map(id);
  reqs_.erase(id);
  auto it = slot_row_.find(id);
  if (it != slot_row_.end()) {
    slots_.close_request(it->second);
    slot_row_.erase(it);
  }
}

const SparseStats& SparseDecoder::stats() {
  fold_map_counters(false);
  return stats_;
}

void SparseDecoder::fold_map_counters(bool wait) {
  cuda::MapCounters now;
  if (!tier_ || !device_maps_ || !tier_->map_counters(&now, wait)) return;
  ElasticStats d;
  d.steps = now.rows - seen_.rows;
  d.loads = now.loads - seen_.loads;
  d.slots = now.slots - seen_.slots;
  d.bytes = d.loads * static_cast<uint64_t>(slots_.bytes_per_token());  // as the host maps count
  for (ElasticStats* e : {&stats_.elastic, &stats_.tier}) {
    if (e == &stats_.tier && host_layers_ == 0) continue;
    e->steps += d.steps;
    e->loads += d.loads;
    e->slots += d.slots;
    e->bytes += d.bytes;
  }
  seen_ = now;
}

Status SparseDecoder::slot_list(uint64_t id, std::vector<int32_t>* out) {
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return Status::Error("slot_list: unknown request");
  if (!it->second.device_map) {
    *out = it->second.tier_slots;
    return Status::Ok();
  }
  const int32_t* d = tier_->slot_list(id);
  out->clear();
  if (!d) return Status::Ok();
  out->resize(static_cast<size_t>(target_->config().num_kv_heads) * it->second.budget);
  return tier_->read_device(d, out->size() * sizeof(int32_t), out->data());
}

Status SparseDecoder::last_selection(uint64_t id, std::vector<int32_t>* out) {
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return Status::Error("last_selection: unknown request");
  const Request& r = it->second;
  out->clear();
  if (!r.sparse) return Status::Ok();
  if (!r.selection_device) {
    *out = r.selection;
    return Status::Ok();
  }
  out->resize(r.selection.size());
  return tier_->read_device(r.selection_device, out->size() * sizeof(int32_t), out->data());
}

Status SparseDecoder::before_forward(const std::vector<uint64_t>& ids, ForwardBatch* batch) {
  fold_map_counters(false);
  if (tier_) {
    tier_->harvest();
    stats_.transfer_ms = tier_->stats().transfer_ms;
    stats_.exposed_transfer_ms = tier_->stats().exposed_ms;
  }
  // An EAGLE-3 head reads the target's hidden states: the target's forward
  // captures them for after_forward, and the head sees a prompt only then.
  const bool eagle3 = !head_->aux_layers().empty();
  if (eagle3 && std::any_of(ids.begin(), ids.end(), [&](uint64_t id) { return reqs_.count(id); })) {
    batch->aux_layers = head_->aux_layers();
    batch->aux_hidden = &aux_rows_;
  }
  // A DLM sharing the target's lower layers scores the prompt from the
  // target's hidden states at its scoring layer (captured on prompt chunks only).
  const int capture = head_->scoring_input_layer();
  if (capture >= 0) {
    for (size_t i = 0; i < batch->chunks.size(); ++i) {
      const ForwardChunk& ch = batch->chunks[i];
      if (reqs_.count(ids[i]) && head_->tokens(ids[i]) == 0 && !(ch.n_tokens == 1 && ch.start_pos == 0)) {
        batch->aux_layers = {capture};
        batch->aux_hidden = &aux_rows_;
        break;
      }
    }
  }
  const bool adopts = head_->source() == target_ || eagle3;
  std::vector<HeadChunk> hc;
  std::vector<size_t> decode_chunks;
  // Whether the head's device selection comes back to the host this step:
  // a fallback threshold or a request on host slot maps needs it there.
  bool download = !selection_on_device_;
  size_t offset = 0;
  for (size_t i = 0; i < batch->chunks.size(); ++i) {
    ForwardChunk& ch = batch->chunks[i];
    auto it = reqs_.find(ids[i]);
    if (it != reqs_.end()) {
      const bool decode = ch.n_tokens == 1 && head_->tokens(ids[i]) == ch.start_pos;
      if (decode) {
        Request& r = it->second;
        r.sparse = false;
        r.selection_device = nullptr;
        HeadChunk h{ids[i], batch->tokens.data() + offset, 1, &r.scores};
        if (head_->device_select()) {
          // Selected on the device; a context within the budget needs none.
          h.scores = nullptr;
          if (ch.start_pos + 1 > r.budget) {
            r.selection.resize(static_cast<size_t>(target_->config().num_kv_heads) * r.budget);
            r.mass.resize(static_cast<size_t>(target_->config().num_kv_heads));
            h.selection = r.selection.data();
            h.mass = r.mass.data();
            h.budget = r.budget;
            download |= !r.device_map;
          }
        }
        hc.push_back(h);
        decode_chunks.push_back(i);
      } else if (!adopts) {
        // A separate DLM computes its own prompt KV.
        hc.push_back({ids[i], batch->tokens.data() + offset, ch.n_tokens, nullptr});
      }
    }
    offset += static_cast<size_t>(ch.n_tokens);
  }
  if (hc.empty()) return Status::Ok();
  // The switch is the backend's: on again right after, for any other user.
  const bool keep = tier_ && head_->device_select() && !download;
  if (keep) tier_->set_selection_download(false);
  Status st = head_->forward(hc);
  if (keep) tier_->set_selection_download(true);
  if (!st.ok) return st;
  const ModelConfig& c = target_->config();
  const int first_host = c.num_layers - host_layers_;
  std::vector<uint64_t> tiered;         // host slot maps, host-tier layers
  std::vector<cuda::MapRow> map_rows;   // device slot maps
  std::vector<size_t> device_tiered;    // chunks whose host-tier layers read device slot lists
  for (size_t i : decode_chunks) {
    ForwardChunk& ch = batch->chunks[i];
    Request& r = reqs_[ids[i]];
    const int T = ch.start_pos + 1;
    SelectResult res;
    if (head_->device_select()) {
      res = device_result(r, T);
      if (!res.full || res.fallback) ++stats_.device_selections;
    } else {
      SelectOptions so = select_;
      so.budget = r.budget;
      r.selection.resize(static_cast<size_t>(c.num_kv_heads) * r.budget);
      res = selector_.select(r.scores.data(), head_->pool(), c.num_heads, c.num_kv_heads, T, T, so,
                             r.selection.data());
    }
    if (res.fallback) ++stats_.fallback_steps;
    if (res.full) {
      if (!res.fallback) ++stats_.full_steps;
      continue;  // full attention this step
    }
    ++stats_.sparse_steps;
    r.sparse = true;
    if (r.device_map) {
      // Diffed on the device after the loop (one launch per budget).
      if (keep) {
        // Read in place by the attention (and the diff): the host copy is
        // only the key that finds it.
        r.selection_device = tier_->device_selection(r.selection.data());
        if (!r.selection_device) return Status::Error("sparse decoding: no device selection");
        ch.selection_device = r.selection_device;
      } else {
        ch.selection = r.selection.data();
      }
      ch.budget = r.budget;
      if (head_->source() == target_) ch.sparse_from_layer = head_->scoring_layer();
      cuda::MapRow m;
      m.id = ids[i];
      m.selection = r.selection.data();
      m.length = T;
      if (host_layers_ > 0) {
        r.kv = ch.kv;
        for (int l = first_host; l < c.num_layers; ++l)
          m.layers.push_back({&r.kv->k[l], &r.kv->v[l], &r.tier_k[l], &r.tier_v[l]});
        ch.tier_k = &r.tier_k;
        ch.tier_v = &r.tier_v;
        ch.tier_slots = nullptr;  // tier_slots_device, set below
        device_tiered.push_back(i);
      }
      map_rows.push_back(std::move(m));
      continue;
    }
    r.tier_slots.resize(r.selection.size());
    r.loads.assign(c.num_kv_heads, {});
    if (!slots_.update(slot_row_[ids[i]], r.selection.data(), r.budget, &r.loads, r.tier_slots.data()))
      return Status::Error("sparse decoding: invalid selection");
    const ElasticStats& last = slots_.last_step();
    stats_.elastic.steps += last.steps;
    stats_.elastic.loads += last.loads;
    stats_.elastic.slots += last.slots;
    stats_.elastic.bytes += last.bytes;
    if (host_layers_ > 0) {
      stats_.tier.steps += last.steps;
      stats_.tier.loads += last.loads;
      stats_.tier.slots += last.slots;
      stats_.tier.bytes += last.bytes;
    }
    ch.selection = r.selection.data();
    ch.budget = r.budget;
    // A self-derived head computed the layers below its scoring layer densely.
    if (head_->source() == target_) ch.sparse_from_layer = head_->scoring_layer();
    if (host_layers_ > 0) {
      // Older tokens load now (ahead of the forward: the prefetch); the step's
      // own token once the forward has written its K/V (tier_load).
      r.kv = ch.kv;
      r.new_pos = ch.start_pos;
      if (!tier_) {
        for (int l = c.num_layers - host_layers_; l < c.num_layers; ++l) {
          if (!(st = load_rows(r, l, false)).ok) return st;
        }
      }
      ch.tier_k = &r.tier_k;
      ch.tier_v = &r.tier_v;
      ch.tier_slots = r.tier_slots.data();
      tiered.push_back(ids[i]);
    }
  }
  if (device_maps_) {
    // The diff, then the prefetch of every host layer's loads (tier stream).
    if (!(st = tier_->update_maps(map_rows, c.num_kv_heads, c.head_dim)).ok) return st;
    for (size_t i : device_tiered) {
      ForwardChunk& ch = batch->chunks[i];
      ch.tier_slots_device = tier_->slot_list(ids[i]);
      if (!ch.tier_slots_device) return Status::Error("device slot maps: no slot list");
    }
  }
  if ((!tiered.empty() || !device_tiered.empty()) && tier_) {
    if (!tiered.empty() && !(st = prefetch_rows(tiered)).ok) return st;
    const bool device = !device_tiered.empty();
    batch->tier_load = [this, tiered, device](int layer) -> Status {
      const int first = target_->config().num_layers - host_layers_;
      if (layer < first) return Status::Ok();
      if (device) {
        Status s = tier_->load_fresh(layer - first);
        if (!s.ok) return s;
      }
      return tiered.empty() ? Status::Ok() : own_token_rows(tiered, layer);
    };
  } else if (!tiered.empty()) {
    batch->tier_load = [this, tiered](int layer) -> Status {
      if (layer < target_->config().num_layers - host_layers_) return Status::Ok();
      for (uint64_t id : tiered) {
        Status s = load_rows(reqs_[id], layer, true);
        if (!s.ok) return s;
      }
      return Status::Ok();
    };
  }
  return Status::Ok();
}

SelectResult SparseDecoder::device_result(const Request& r, int T) const {
  SelectResult res;
  if (T <= r.budget) {  // full attention, nothing was selected
    res.count = T;
    res.full = true;
    return res;
  }
  res.count = r.budget;
  double sum = 0;
  res.min_mass = 1.0f;
  for (float m : r.mass) {
    res.min_mass = std::min(res.min_mass, m);
    sum += m;
  }
  res.mean_mass = r.mass.empty() ? 1.0f : static_cast<float>(sum / r.mass.size());
  if (select_.fallback_mass > 0 && res.min_mass < select_.fallback_mass) {
    res.full = true;
    res.fallback = true;
  }
  return res;
}

Status SparseDecoder::load_rows(Request& r, int layer, bool new_token_only) {
  const ModelConfig& c = target_->config();
  Backend* be = target_->backend();
  const int64_t D = c.head_dim, cap = r.kv->capacity, B = r.budget;
  // Row views: the full cache as [kv_heads * cap, D], the slots as [kv_heads * B, D].
  const Tensor fk = r.kv->k[layer].reshaped({c.num_kv_heads * cap, D});
  const Tensor fv = r.kv->v[layer].reshaped({c.num_kv_heads * cap, D});
  Tensor sk = r.tier_k[layer].reshaped({c.num_kv_heads * B, D});
  Tensor sv = r.tier_v[layer].reshaped({c.num_kv_heads * B, D});
  row_.resize(static_cast<size_t>(D));
  for (int h = 0; h < c.num_kv_heads; ++h) {
    for (const SlotLoad& ld : r.loads[h]) {
      if ((ld.token == r.new_pos) != new_token_only) continue;
      for (auto [src, dst] : {std::make_pair(&fk, &sk), std::make_pair(&fv, &sv)}) {
        Status st = be->download(src->rows(h * cap + ld.token, 1), row_.data());
        if (!st.ok) return st;
        Tensor d = dst->rows(h * B + ld.slot, 1);
        if (!(st = be->upload(row_.data(), &d)).ok) return st;
      }
    }
  }
  return Status::Ok();
}

Status SparseDecoder::prefetch_rows(const std::vector<uint64_t>& ids) {
  const ModelConfig& c = target_->config();
  std::vector<cuda::TierCopy> copies;
  for (uint64_t id : ids) {
    Request& r = reqs_[id];
    copies.clear();
    for (int h = 0; h < c.num_kv_heads; ++h)
      for (const SlotLoad& ld : r.loads[h])
        if (ld.token != r.new_pos) copies.push_back({0, h, ld.token, ld.slot});
    if (copies.empty()) continue;
    for (int l = c.num_layers - host_layers_; l < c.num_layers; ++l) {
      const std::vector<cuda::TierRequest> one = {
          {&r.kv->k[l], &r.kv->v[l], &r.tier_k[l], &r.tier_v[l]}};
      Status st = tier_->load(copies, one, c.num_kv_heads, c.head_dim, r.budget, true);
      if (!st.ok) return st;
    }
  }
  return Status::Ok();
}

Status SparseDecoder::own_token_rows(const std::vector<uint64_t>& ids, int layer) {
  const ModelConfig& c = target_->config();
  // The prefetched rows must be in their slots before this layer attends.
  Status st = tier_->wait();
  if (!st.ok) return st;
  std::vector<cuda::TierCopy> copies;
  for (uint64_t id : ids) {
    Request& r = reqs_[id];
    copies.clear();
    for (int h = 0; h < c.num_kv_heads; ++h)
      for (const SlotLoad& ld : r.loads[h])
        if (ld.token == r.new_pos) copies.push_back({0, h, ld.token, ld.slot});
    if (copies.empty()) continue;
    const std::vector<cuda::TierRequest> one = {
        {&r.kv->k[layer], &r.kv->v[layer], &r.tier_k[layer], &r.tier_v[layer]}};
    if (!(st = tier_->load(copies, one, c.num_kv_heads, c.head_dim, r.budget, false)).ok) return st;
  }
  return Status::Ok();
}

Status SparseDecoder::after_forward(const std::vector<uint64_t>& ids, const ForwardBatch& batch) {
  if (!head_->aux_layers().empty())
    return batch.aux_hidden == &aux_rows_ ? head_->after_target(ids, batch, aux_rows_) : Status::Ok();
  if (head_->source() != target_) return Status::Ok();
  const bool own_scoring = head_->own_scoring();
  const size_t H = static_cast<size_t>(target_->config().hidden_size);
  size_t row = 0;
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    const ForwardChunk& ch = batch.chunks[i];
    const size_t first = row;
    row += static_cast<size_t>(ch.n_tokens);
    auto it = reqs_.find(ids[i]);
    if (it == reqs_.end() || head_->tokens(ids[i]) != 0) continue;
    std::vector<float>& hidden = it->second.prompt_hidden;
    if (own_scoring) {
      if (batch.aux_hidden != &aux_rows_ || aux_rows_.size() < row * H)
        return Status::Error("sparse decoding: the prompt's hidden states were not captured for the head");
      hidden.insert(hidden.end(), aux_rows_.begin() + static_cast<std::ptrdiff_t>(first * H),
                    aux_rows_.begin() + static_cast<std::ptrdiff_t>(row * H));
    }
    // The prompt is prefilled once its logits are asked for: take its KV.
    if (ch.logits == LogitsMode::None) continue;
    if (own_scoring && hidden.size() != static_cast<size_t>(ch.kv->n_tokens) * H)
      return Status::Error("sparse decoding: the head saw " + std::to_string(hidden.size() / H) + " of the prompt's " +
                           std::to_string(ch.kv->n_tokens) + " hidden states");
    Status st = head_->adopt(ids[i], *ch.kv, own_scoring ? hidden.data() : nullptr);
    std::vector<float>().swap(hidden);
    if (!st.ok) return st;
  }
  return Status::Ok();
}

}  // namespace spx::retrieval
