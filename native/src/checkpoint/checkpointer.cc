#include "checkpoint/checkpointer.h"

#include <algorithm>

namespace spx {

namespace {
double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

Checkpointer::Checkpointer(Backend* backend, uint64_t identity, CheckpointGeometry geometry,
                           std::function<void()> wake)
    : backend_(backend), identity_(identity), geometry_(geometry), wake_(std::move(wake)) {
  writer_ = std::make_unique<CheckpointWriter>([this](CheckpointResult r) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      done_.push_back(std::move(r));
    }
    written_.notify_all();
    wake_();
  });
}

Checkpointer::~Checkpointer() { writer_.reset(); }

Status Checkpointer::validate(const GenerateRequest& r) {
  const CheckpointSpec& c = r.checkpoint;
  if (c.every_tokens < 0 || c.every_ms < 0)
    return Status::Error("checkpoint every_tokens and every_ms must be >= 0");
  if (c.resumed_generated < 0 || c.resumed_generated >= static_cast<int>(r.prompt.size()) + 1)
    return Status::Error("checkpoint resumed_generated must be in [0, prompt length]");
  if (c.restore && c.path.empty()) return Status::Error("checkpoint restore needs a path");
  return Status::Ok();
}

CheckpointGeometry Checkpointer::geometry_for(const RequestState* r) const {
  CheckpointGeometry g = geometry_;
  if (r->req.budget > 0 && head_ != nullptr) {
    g.rk_heads = head_->kv_heads();
    g.rk_dim = head_->head_dim();
    g.rk_layers = head_->state_layers();
    g.rk_aux = head_->aux_width();
  }
  return g;
}

int Checkpointer::restore(RequestState* r) {
  const CheckpointSpec& spec = r->req.checkpoint;
  if (!spec.restore) return 0;
  if (r->req.budget > 0 && head_ == nullptr) {
    r->stats.restore_error = "restore of a sparse (budget > 0) request needs the retrieval head: recomputed";
    return 0;
  }
  const CheckpointGeometry g = geometry_for(r);
  CheckpointReader reader;
  Status st = reader.open(spec.path, identity_, g);
  const std::vector<int32_t>& prompt = r->req.prompt;
  // The last prompt token is always fed, to get the logits of the next one.
  const int usable = std::min(reader.tokens(), static_cast<int>(prompt.size()) - 1);
  if (st.ok && !std::equal(reader.token_ids().begin(), reader.token_ids().begin() + usable,
                           prompt.begin()))
    st = Status::Error("checkpoint tokens differ from the request's prompt");
  // Every segment is copied, so the whole file must fit (not only the usable prefix).
  if (st.ok && reader.tokens() > r->kv->capacity)
    st = Status::Error("checkpoint of " + std::to_string(reader.tokens()) +
                       " tokens is longer than the request's KV capacity " +
                       std::to_string(r->kv->capacity));
  if (!st.ok) {
    r->stats.restore_error = st.message;
    return 0;
  }
  // The file's rows go straight into the cache (raw bytes; converted only
  // when the file's KV dtype is not the cache's).
  KvSequence* kv = r->kv;
  const int hd = geometry_.head_dim;
  std::vector<uint8_t> conv;
  for (int l = 0; l < geometry_.layers && st.ok; ++l) {
    for (int which = 0; which < 2 && st.ok; ++which) {
      Tensor& t = which == 0 ? kv->k[static_cast<size_t>(l)] : kv->v[static_cast<size_t>(l)];
      const size_t esize = dtype_size(t.dtype);
      reader.for_each_rows(2 * l + which, [&](int h, int from, int n, const void* src) {
        if (!st.ok) return;
        const size_t elems = static_cast<size_t>(n) * hd;
        const void* p = src;
        if (reader.kv_dtype() != t.dtype) {
          conv.resize(elems * esize);
          convert_kv(src, reader.kv_dtype(), conv.data(), t.dtype, elems);
          p = conv.data();
        }
        st = backend_->write_bytes(p, (static_cast<size_t>(h) * kv->capacity + from) * hd * esize, elems * esize, &t);
      });
    }
  }
  if (st.ok) st = backend_->finish_writes();
  if (!st.ok) {
    r->stats.restore_error = "checkpoint upload failed: " + st.message;
    return 0;
  }
  if (g.rk_heads > 0) {
    // The head's state, so its scores continue exactly (an EAGLE-3 head's aux
    // row is the one of the file's last position).
    if (g.rk_aux > 0 && usable != reader.tokens())
      st = Status::Error("checkpoint's retrieval-head input is for position " + std::to_string(reader.tokens() - 1) +
                         ", the restore needs " + std::to_string(usable - 1));
    else
      st = head_->restore(
          r->id, usable, [&](int block, float* dst, int cap) { reader.copy_head(block, dst, cap); }, reader.aux());
    if (!st.ok) {
      r->stats.restore_error = "retrieval head restore failed: " + st.message;
      return 0;
    }
  }
  kv->n_tokens = usable;
  // Appends continue the same file when it ends where this request's KV does
  // and its rows are in this cache's dtype; otherwise the next write starts it again.
  const bool same_dtype = geometry_.layers == 0 || reader.kv_dtype() == kv->k[0].dtype;
  r->ckpt.written_tokens = usable == reader.tokens() && same_dtype ? usable : 0;
  r->ckpt.written_generated = 0;
  r->ckpt.last = std::chrono::steady_clock::now();
  r->stats.restored_tokens = usable;
  return usable;
}

std::unique_ptr<CheckpointJob> Checkpointer::snapshot(RequestState* r, int n) {
  auto job = std::make_unique<CheckpointJob>();
  const CheckpointSpec& spec = r->req.checkpoint;
  const std::vector<int32_t>& prompt = r->req.prompt;
  const int from = r->ckpt.written_tokens;
  job->request_id = r->id;
  job->path = spec.path;
  job->fresh = from == 0;
  job->header.identity = identity_;
  job->header.geometry = geometry_for(r);
  const CheckpointGeometry& g = job->header.geometry;
  retrieval::HeadState hs;
  if (g.rk_heads > 0 && (!head_->state(r->id, &hs).ok || hs.tokens != n)) return nullptr;
  job->header.seed = r->req.sampling.seed;
  job->header.prompt_tokens = static_cast<int>(prompt.size()) - spec.resumed_generated;
  const int P = static_cast<int>(prompt.size());
  for (int i = from; i < n; ++i)
    job->tokens.push_back(i < P ? prompt[static_cast<size_t>(i)] : r->generated[static_cast<size_t>(i - P)]);
  SegmentSource& s = job->segment;
  s.from = from;
  s.to = n;
  s.tokens = job->tokens.data();
  s.next_token = r->generated.back();
  s.generated = spec.resumed_generated + static_cast<int>(r->generated.size());
  s.draws = r->sampler.draws();
  KvSequence* kv = r->kv;
  if (geometry_.layers > 0) job->header.kv_dtype = kv->k[0].dtype;
  if (backend_->name() == "cpu") {
    for (int l = 0; l < geometry_.layers; ++l) {
      s.k.push_back(CacheRows{cache_rows(kv->k[static_cast<size_t>(l)], job.get()), kv->capacity});
      s.v.push_back(CacheRows{cache_rows(kv->v[static_cast<size_t>(l)], job.get()), kv->capacity});
    }
  } else {
    // Device caches: only the new rows, in the cache's dtype, copied by the
    // writer thread (the tensors stay alive with the job). The fence makes
    // those copies wait for this step's KV writes, not for later steps.
    std::vector<Tensor> tensors;
    for (int l = 0; l < geometry_.layers; ++l) {
      tensors.push_back(kv->k[static_cast<size_t>(l)]);
      tensors.push_back(kv->v[static_cast<size_t>(l)]);
    }
    s.k.resize(static_cast<size_t>(geometry_.layers));
    s.v.resize(static_cast<size_t>(geometry_.layers));
    backend_->fence_reads();
    job->fetch = [be = backend_, tensors = std::move(tensors), heads = geometry_.kv_heads, hd = geometry_.head_dim,
                  cap = kv->capacity](CheckpointJob* j) -> Status {
      SegmentSource& seg = j->segment;
      const size_t n = static_cast<size_t>(seg.to - seg.from);
      j->raw.resize(tensors.size());
      for (size_t i = 0; i < tensors.size(); ++i) {
        const Tensor& t = tensors[i];
        const size_t esize = dtype_size(t.dtype);
        const size_t piece = n * hd * esize;
        std::vector<uint8_t>& buf = j->raw[i];
        buf.resize(static_cast<size_t>(heads) * piece);
        for (int h = 0; h < heads; ++h) {
          const Status st = be->read_bytes(t, (static_cast<size_t>(h) * cap + seg.from) * hd * esize, piece,
                                           buf.data() + static_cast<size_t>(h) * piece);
          if (!st.ok) return st;
        }
        (i % 2 == 0 ? seg.k : seg.v)[i / 2] = CacheRows{buf.data(), static_cast<int>(n), seg.from};
      }
      return Status::Ok();
    };
  }
  if (g.rk_heads > 0) {
    for (size_t l = 0; l < hs.k.size(); ++l) {
      s.head_k.push_back(CacheRows{cache_rows(hs.k[l], job.get()), hs.capacity});
      s.head_v.push_back(CacheRows{cache_rows(hs.v[l], job.get()), hs.capacity});
    }
    job->keep.push_back(std::const_pointer_cast<std::vector<float>>(hs.scoring_k));
    s.retrieval_k = CacheRows{hs.scoring_k->data(), hs.capacity};
    job->host.push_back(std::move(hs.aux));
    s.aux = job->host.back().data();
  }
  return job;
}

const float* Checkpointer::cache_rows(const Tensor& t, CheckpointJob* job) {
  if (backend_->name() == "cpu") {
    job->keep.push_back(t.owner);  // rows below n never change: no copy
    return t.f32();
  }
  // The retrieval head's device blocks (small) are copied whole, as f32, on
  // this thread.
  job->host.emplace_back(static_cast<size_t>(t.numel()));
  backend_->download(t, job->host.back().data());
  return job->host.back().data();
}

void Checkpointer::after_step(Requests& requests) {
  std::set<uint64_t> forced;
  {
    std::lock_guard<std::mutex> lk(mu_);
    forced.swap(forced_);
  }
  for (uint64_t id : forced) {
    auto it = requests.find(id);
    if (it != requests.end()) it->second->ckpt.forced = true;
  }
  const auto now = std::chrono::steady_clock::now();
  for (auto& [id, rp] : requests) {
    RequestState* r = rp.get();
    const CheckpointSpec& spec = r->req.checkpoint;
    if (spec.path.empty() && r->ckpt.forced) {
      r->ckpt.forced = false;
      CheckpointEvent ev;
      ev.ok = false;
      ev.message = "request has no checkpoint path";
      r->sink->on_checkpoint(ev);
      continue;
    }
    if (spec.path.empty() || r->ckpt.pending) continue;
    if (r->kv == nullptr || r->generated.empty()) {
      if (r->ckpt.forced) {
        r->ckpt.forced = false;
        CheckpointEvent ev;
        ev.ok = false;
        ev.message = "request is still in its prefill";
        r->sink->on_checkpoint(ev);
      }
      continue;
    }
    const int n = r->kv->n_tokens;
    const int new_tokens = static_cast<int>(r->generated.size()) - r->ckpt.written_generated;
    const bool cadence = spec.every_tokens > 0 || spec.every_ms > 0;
    const bool due =
        r->ckpt.forced || (cadence && r->ckpt.written_tokens == 0) ||
        (spec.every_tokens > 0 && new_tokens >= spec.every_tokens) ||
        (spec.every_ms > 0 && std::chrono::duration<double, std::milli>(now - r->ckpt.last).count() >= spec.every_ms);
    if (!due) continue;
    if (n <= r->ckpt.written_tokens) {
      // Nothing new since the last write: the file is already current.
      if (r->ckpt.forced) {
        r->ckpt.forced = false;
        CheckpointEvent ev;
        ev.path = spec.path;
        ev.tokens = r->ckpt.written_tokens;
        ev.generated = spec.resumed_generated + static_cast<int>(r->generated.size());
        r->sink->on_checkpoint(ev);
      }
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<CheckpointJob> job = snapshot(r, n);
    if (!job) continue;  // the head lags the target this step: due again at the next
    job->stall_ms = ms_since(t0);
    r->ckpt.written_tokens = n;
    r->ckpt.written_generated = static_cast<int>(r->generated.size());
    r->ckpt.last = now;
    r->ckpt.pending = true;
    r->ckpt.forced = false;
    writer_->push(std::move(job));
  }
}

void Checkpointer::deliver(Requests& requests) {
  std::vector<CheckpointResult> done;
  {
    std::lock_guard<std::mutex> lk(mu_);
    done.swap(done_);
  }
  for (CheckpointResult& d : done) {
    auto it = requests.find(d.request_id);
    if (it == requests.end()) continue;  // ended meanwhile
    RequestState* r = it->second.get();
    r->ckpt.pending = false;
    if (d.event.ok) r->stats.checkpoints++;
    else r->ckpt.written_tokens = 0;  // the file is suspect: the next write starts it again
    r->sink->on_checkpoint(d.event);
  }
}

void Checkpointer::settle(RequestState* r) {
  if (!r->ckpt.pending) return;
  CheckpointResult mine;
  bool found = false;
  {
    std::unique_lock<std::mutex> lk(mu_);
    auto take = [&] {
      for (auto it = done_.begin(); it != done_.end(); ++it) {
        if (it->request_id != r->id) continue;
        mine = std::move(*it);
        done_.erase(it);
        return true;
      }
      return false;
    };
    // Bounded: a writer stuck on a dead disk must not hold the engine forever.
    found = written_.wait_for(lk, std::chrono::seconds(30), take);
  }
  if (!found) return;
  r->ckpt.pending = false;
  if (mine.event.ok) r->stats.checkpoints++;
  r->sink->on_checkpoint(mine.event);
}

void Checkpointer::force(uint64_t id) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    forced_.insert(id);
  }
  wake_();
}

bool Checkpointer::has_work() {
  std::lock_guard<std::mutex> lk(mu_);
  return !done_.empty() || !forced_.empty();
}

}  // namespace spx
