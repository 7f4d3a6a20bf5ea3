#include "engine/engine_impl.h"

#include <algorithm>
#include <cmath>

#include "backend/registry.h"
#include "checkpoint/model_identity.h"
#ifdef SPX_HAVE_CUDA
#include "cuda/device_memory.h"
#endif
#include "util/thread_pool.h"

namespace spx {

namespace {
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
}  // namespace

std::unique_ptr<Engine> Engine::open(const EngineOptions& options, Status* status) {
  // Nothing may escape into the Node process: out-of-memory while loading a
  // large checkpoint becomes a Status like any other failure.
  try {
    return EngineImpl::create(options, status);
  } catch (const std::exception& e) {
    *status = Status::Error(std::string("cannot open the engine: ") + e.what());
  } catch (...) {
    *status = Status::Error("cannot open the engine: unknown error");
  }
  return nullptr;
}

std::unique_ptr<Engine> EngineImpl::create(const EngineOptions& o, Status* status) {
  *status = Status::Ok();
  if (o.model_dir.empty()) {
    *status = Status::Error("model_dir is empty");
    return nullptr;
  }
  if (o.threads < 0 || o.max_batch <= 0 || o.prefill_chunk <= 0 || o.max_context < 0 ||
      o.dlm_layers < 0 || o.device_memory_bytes < 0 || !(o.fallback_mass < 1)) {
    *status = Status::Error(
        "invalid engine options: threads, max_context and device_memory_bytes must be >= 0, "
        "max_batch and prefill_chunk > 0, dlm_layers >= 0, fallback_mass < 1");
    return nullptr;
  }
  std::unique_ptr<EngineImpl> e(new EngineImpl());
  e->options_ = o;
  e->options_.threads = o.threads > 0 ? o.threads : available_cores();
  e->backend_ = make_backend(o.device, e->options_.threads, status);
  if (!e->backend_) return nullptr;
  *status = Transformer::load(o.model_dir, e->backend_.get(), &e->model_);
  if (!status->ok) return nullptr;

  const ModelConfig& c = e->model_->config();
  int max_context = o.max_context > 0 ? o.max_context : c.max_position;
  if (max_context > c.max_position) {
    *status = Status::Error("max_context " + std::to_string(max_context) +
                            " exceeds the model's max_position_embeddings " +
                            std::to_string(c.max_position));
    return nullptr;
  }
  e->options_.max_context = max_context;
  ModelInfo& info = e->info_;
  info.architecture = c.architecture;
  info.vocab_size = c.vocab_size;
  info.hidden_size = c.hidden_size;
  info.num_layers = c.num_layers;
  info.num_heads = c.num_heads;
  info.num_kv_heads = c.num_kv_heads;
  info.head_dim = c.head_dim;
  info.max_context = max_context;
  info.eos_token_ids = c.eos_token_ids;

  e->kv_ = std::make_unique<KvStore>(e->backend_.get(), c.num_layers, c.num_kv_heads, c.head_dim);
  retrieval::HeadChoice head;
  head.dlm_dir = o.dlm_dir;
  head.dlm_layers = o.dlm_layers;
  head.model_dir = o.model_dir;  // the recommended distilled head is looked up next to the model
  retrieval::SelectOptions select;
  select.fallback_mass = o.fallback_mass;
  *status = retrieval::SparseDecoder::make(e->model_.get(), e->backend_.get(), head, select, &e->sparse_);
  if (!status->ok) return nullptr;
  *status = e->configure_placement();
  if (!status->ok) return nullptr;
  e->sched_ = std::make_unique<Scheduler>(o.max_batch, o.prefill_chunk);
  e->identity_ = model_identity(o);
  e->ckpt_ = std::make_unique<Checkpointer>(
      e->backend_.get(), e->identity_,
      CheckpointGeometry{c.num_layers, c.num_kv_heads, c.head_dim, 0, 0}, [p = e.get()] {
        std::lock_guard<std::mutex> lk(p->mu_);
        p->cv_.notify_all();
      });
  e->ckpt_->set_head(e->sparse_->mutable_head());  // sparse requests checkpoint the head's state
  e->stats_.threads = e->options_.threads;
  e->stats_.device = e->backend_->name();
  e->thread_ = std::thread([p = e.get()] { p->run(); });
  return e;
}

Status EngineImpl::configure_placement() {
  const ModelConfig& c = model_->config();
  const bool cuda = backend_->name() == "cuda";
  planner::PlanInput in;
  in.model.layers = c.num_layers;
  in.model.kv_heads = c.num_kv_heads;
  in.model.head_dim = c.head_dim;
  in.model.alpha = 0;  // the attention kernels read K/V per group: no repeat_kv copy
  in.model.kv_elem_bytes = cuda ? 2 : 4;  // bf16 on the GPU, f32 on the CPU
  in.model.target_weight_bytes = static_cast<int64_t>(model_->weight_bytes());
  in.model.dlm_weight_bytes = static_cast<int64_t>(sparse_->head().weight_bytes(model_.get()));
  // The engine's own step buffers: activations of the largest step (a
  // prefill chunk plus a decode token per request), logits included.
  const int64_t rows = options_.prefill_chunk + options_.max_batch;
  const int64_t row_elems = 4LL * c.hidden_size + (c.num_heads + 2LL * c.num_kv_heads) * c.head_dim +
                            2LL * c.intermediate_size + c.vocab_size;
  in.measured_overhead_bytes = rows * row_elems * in.model.kv_elem_bytes;
  in.gpu_bytes = options_.device_memory_bytes;
#ifdef SPX_HAVE_CUDA
  if (cuda && in.gpu_bytes == 0) {
    uint64_t free_bytes = 0, total = 0;
    const size_t colon = options_.device.find(':');
    const int dev = colon == std::string::npos ? 0 : std::atoi(options_.device.c_str() + colon + 1);
    Status st = cuda::device_memory(dev, &free_bytes, &total);
    if (!st.ok) return st;
    // Weights are loaded already: what is free now comes on top of them.
    in.gpu_bytes = static_cast<int64_t>(free_bytes) + in.model.target_weight_bytes +
                   in.model.dlm_weight_bytes;
  }
#endif
  std::string error;
  if (!placement_.configure(in, &error))
    return Status::Error("memory planner: " + error);
  if (placement_.enabled()) {
    stats_.planner_memory_bytes = in.gpu_bytes;
    stats_.planner_fixed_bytes = placement_.fixed_bytes();
  }
  return Status::Ok();
}

void EngineImpl::update_placement() {
  if (!placement_.enabled()) return;
  int requests = 0, budget = 0;
  int64_t max_len = 0;
  for (const auto& [id, r] : requests_) {
    if (r->kv == nullptr || r->req.budget <= 0) continue;
    ++requests;
    budget = std::max(budget, r->req.budget);
    max_len = std::max<int64_t>(max_len, static_cast<int64_t>(r->req.prompt.size() +
                                                              r->generated.size()));
  }
  const int current = sparse_->host_layers();
  const int want = requests == 0 ? 0 : placement_.host_layers(requests, budget, max_len, current);
  if (want == current) return;
  Status st = sparse_->set_host_layers(want);
  if (!st.ok) return;  // keeps the current placement; the next step tries again
  for (int l = 0; l < info_.num_layers; ++l)
    kv_->set_placement(l, l >= info_.num_layers - want ? KvPlacement::Host : KvPlacement::Device);
  std::lock_guard<std::mutex> lk(mu_);
  stats_.layer_moves++;
}

EngineImpl::~EngineImpl() { close(); }

Status EngineImpl::validate(const GenerateRequest& r, const RequestSink* sink) const {
  if (sink == nullptr) return Status::Error("submit: sink is null");
  if (r.prompt.empty()) return Status::Error("prompt is empty");
  if (static_cast<int64_t>(r.prompt.size()) > info_.max_context)
    return Status::Error("prompt of " + std::to_string(r.prompt.size()) +
                         " tokens is longer than the context of " +
                         std::to_string(info_.max_context) + " tokens");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= info_.vocab_size)
      return Status::Error("prompt token id " + std::to_string(r.prompt[i]) + " at index " +
                           std::to_string(i) + " is out of range [0, " +
                           std::to_string(info_.vocab_size) + ")");
  }
  if (r.max_new_tokens <= 0)
    return Status::Error("max_new_tokens must be > 0 (got " + std::to_string(r.max_new_tokens) + ")");
  for (int32_t s : r.stop_token_ids)
    if (s < 0 || s >= info_.vocab_size)
      return Status::Error("stop token id " + std::to_string(s) + " is out of range");
  const SamplingParams& p = r.sampling;
  if (!std::isfinite(p.temperature) || p.temperature < 0)
    return Status::Error("temperature must be a finite number >= 0");
  if (p.top_k < 0) return Status::Error("top_k must be >= 0");
  if (!(p.top_p > 0 && p.top_p <= 1)) return Status::Error("top_p must be in (0, 1]");
  if (r.budget < 0) return Status::Error("budget must be >= 0");
  return Checkpointer::validate(r);
}

uint64_t EngineImpl::submit(GenerateRequest request, std::shared_ptr<RequestSink> sink,
                            Status* status) try {
  std::lock_guard<std::mutex> lk(mu_);
  if (closed_ || stopping_) {
    *status = Status::Error("engine is closed");
    return 0;
  }
  *status = validate(request, sink.get());
  if (!status->ok) return 0;
  const uint64_t id = next_id_++;
  incoming_.push_back(std::make_unique<RequestState>(id, std::move(request), std::move(sink)));
  stats_.queued_requests++;
  cv_.notify_one();
  return id;
} catch (const std::exception& e) {
  *status = Status::Error(std::string("submit failed: ") + e.what());
  return 0;
}

void EngineImpl::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  if (closed_ || stopping_) return;
  cancels_.push_back(id);
  cv_.notify_one();
}

EngineStats EngineImpl::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

ModelInfo EngineImpl::info() const { return info_; }

void EngineImpl::close() {
  std::lock_guard<std::mutex> guard(close_mu_);
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (closed_) return;
    stopping_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) {
    // A sink that closes the engine from inside a callback must not join itself.
    if (thread_.get_id() == std::this_thread::get_id()) return;
    thread_.join();
  }
  ckpt_.reset();  // writes what is queued; before the tensors' backend goes
  requests_.clear();
  sparse_.reset();
  kv_.reset();
  model_.reset();
  backend_.reset();
  std::lock_guard<std::mutex> lk(mu_);
  closed_ = true;
}

void EngineImpl::publish_stats() {
  std::lock_guard<std::mutex> lk(mu_);
  stats_.active_requests = sched_->running();
  stats_.queued_requests = sched_->queued() + static_cast<int>(incoming_.size());
  stats_.kv_bytes_in_use = kv_->bytes_in_use();
  const retrieval::SparseStats& sp = sparse_->stats();
  stats_.sparse_steps = sp.sparse_steps;
  stats_.full_steps = sp.full_steps;
  stats_.fallback_steps = sp.fallback_steps;
  stats_.host_layers = sparse_->host_layers();
  stats_.elastic_loads = sp.tier.loads;
  stats_.elastic_bytes = sp.tier.bytes;
  stats_.reload_fraction = sp.elastic.reload_fraction();
  stats_.transfer_ms = sp.transfer_ms;
  stats_.exposed_transfer_ms = sp.exposed_transfer_ms;
  const StepGraphStats& g = model_->graph_stats();
  stats_.graph_captures = g.captures;
  stats_.graph_replays = g.replays;
  stats_.graph_failures = g.failures;
  stats_.graph_capture_ms = g.capture_ms;
}

void EngineImpl::finish(RequestState* r, const std::string& reason, const std::string& error) {
  ckpt_->settle(r);  // its last write lands (and is counted) before the request ends
  kv_->free(r->id);
  sparse_->release(r->id);
  sched_->remove(r->id);
  RequestStats s = r->stats;
  s.prompt_tokens = static_cast<int>(r->req.prompt.size());
  s.generated_tokens = static_cast<int>(r->generated.size());
  const Clock::time_point now = Clock::now();
  if (r->prefill_started) {
    const bool has_first = !r->generated.empty();
    s.prefill_ms = ms_between(r->prefill_start, has_first ? r->first_token : now);
    if (has_first) s.decode_ms = ms_between(r->first_token, now);
    if (has_first && s.prefill_ms > 0) s.prefill_tokens_per_s = s.prompt_tokens / s.prefill_ms * 1e3;
    if (s.decode_ms > 0) s.decode_tokens_per_s = (s.generated_tokens - 1) / s.decode_ms * 1e3;
  }
  s.finish_reason = reason;
  std::shared_ptr<RequestSink> sink = r->sink;
  requests_.erase(r->id);  // r is gone after this line
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (reason == "cancelled") stats_.cancelled_requests++;
    else if (reason != "error") stats_.completed_requests++;
  }
  publish_stats();
  if (error.empty()) sink->on_done(s);
  else sink->on_error(error);
}

bool EngineImpl::admit(uint64_t id) {
  RequestState* r = requests_.at(id).get();
  const int prompt = static_cast<int>(r->req.prompt.size());
  // The last sampled token is never fed back, so it needs no KV slot.
  const int64_t want = static_cast<int64_t>(prompt) + r->req.max_new_tokens - 1;
  const int capacity = static_cast<int>(std::min<int64_t>(std::max<int64_t>(want, prompt),
                                                          info_.max_context));
  Status st = kv_->allocate(id, capacity, &r->kv);
  if (!st.ok) {
    r->kv = nullptr;
    return false;
  }
  r->kv_capacity = capacity;
  st = sparse_->admit(id, capacity, r->req.budget, r->kv);
  if (!st.ok) {
    kv_->free(id);
    r->kv = nullptr;
    return false;
  }
  if (int n = ckpt_->restore(r)) sched_->skip_prefill(id, n);
  return true;
}

void EngineImpl::run() {
  while (true) {
    std::vector<std::unique_ptr<RequestState>> incoming;
    std::vector<uint64_t> cancels;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] {
        return stopping_ || !incoming_.empty() || !cancels_.empty() || !sched_->idle() ||
               ckpt_->has_work();
      });
      if (stopping_) break;
      incoming.swap(incoming_);
      cancels.swap(cancels_);
    }
    for (auto& r : incoming) {
      sched_->enqueue(r->id, static_cast<int>(r->req.prompt.size()));
      // A resumed request's sampler continues where the earlier one stopped.
      if (r->req.sampling.temperature > 0)
        r->sampler.skip(static_cast<uint64_t>(r->req.checkpoint.resumed_generated));
      requests_[r->id] = std::move(r);
    }
    for (uint64_t id : cancels) {
      auto it = requests_.find(id);
      if (it != requests_.end()) finish(it->second.get(), "cancelled");
    }
    ckpt_->deliver(requests_);
    publish_stats();
    try {
      step();
    } catch (const std::exception& e) {
      fail_all(std::string("engine step failed: ") + e.what());
    }
  }
  // Stopping: everything still known ends as cancelled.
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& r : incoming_) requests_[r->id] = std::move(r);
    incoming_.clear();
  }
  while (!requests_.empty()) finish(requests_.begin()->second.get(), "cancelled");
}

void EngineImpl::fail_all(const std::string& message) {
  while (!requests_.empty()) {
    try {
      finish(requests_.begin()->second.get(), "error", message);
    } catch (...) {
      requests_.erase(requests_.begin());
    }
  }
}

void EngineImpl::step() {
  std::vector<uint64_t> failed;
  StepPlan plan = sched_->plan([&](uint64_t id) {
    if (admit(id)) return true;
    failed.push_back(id);
    return false;
  });
  for (uint64_t id : failed) {
    auto it = requests_.find(id);
    if (it != requests_.end())
      finish(it->second.get(), "error", "cannot allocate the KV cache for this request");
  }
  if (plan.work.empty()) return;
  update_placement();

  ForwardBatch batch;
  std::vector<uint64_t> chunk_ids;      // request of each chunk (SpeContext)
  std::vector<RequestState*> samplers;  // one per logits row, in order
  uint64_t prefill_tokens = 0, decode_tokens = 0;
  const Clock::time_point now = Clock::now();
  for (const ScheduledWork& w : plan.work) {
    RequestState* r = requests_.at(w.id).get();
    ForwardChunk ch;
    ch.kv = r->kv;
    if (w.prefill) {
      if (!r->prefill_started) {
        r->prefill_started = true;
        r->prefill_start = now;
      }
      batch.tokens.insert(batch.tokens.end(), r->req.prompt.begin() + w.begin,
                          r->req.prompt.begin() + w.begin + w.count);
      ch.start_pos = w.begin;
      ch.n_tokens = w.count;
      ch.logits = w.completes_prompt ? LogitsMode::Last : LogitsMode::None;
      prefill_tokens += static_cast<uint64_t>(w.count);
    } else {
      batch.tokens.push_back(r->generated.back());
      ch.start_pos = static_cast<int>(r->req.prompt.size() + r->generated.size()) - 1;
      ch.n_tokens = 1;
      ch.logits = LogitsMode::Last;
      decode_tokens++;
    }
    // Sparse decoding: sparse_->before_forward() sets ch.selection / ch.budget
    // from the retrieval head when r->req.budget > 0 (retrieval/sparse_decoder.h).
    if (ch.logits != LogitsMode::None) samplers.push_back(r);
    batch.chunks.push_back(ch);
    chunk_ids.push_back(w.id);
  }

  // Every sampled row greedy (the common case): the argmax runs where the
  // logits are and only the ids come back (Transformer::device_argmax;
  // SPX_DEVICE_ARGMAX=0 keeps the host samplers). A greedy Sampler draws
  // nothing, so skipping it leaves its state as it was.
  bool greedy = model_->device_argmax() && !samplers.empty();
  for (const RequestState* r : samplers) greedy = greedy && !(r->req.sampling.temperature > 0);
  std::vector<int32_t> greedy_ids;
  if (greedy) batch.greedy_ids = &greedy_ids;

  std::vector<float> logits;
  Status st = sparse_->before_forward(chunk_ids, &batch);
  if (st.ok) st = model_->forward(batch, &logits);
  if (st.ok) st = sparse_->after_forward(chunk_ids, batch);
  if (st.ok && greedy && greedy_ids.size() != samplers.size())
    st = Status::Error("the forward returned " + std::to_string(greedy_ids.size()) + " greedy ids for " +
                       std::to_string(samplers.size()) + " sampled rows");
  if (!st.ok) {
    for (const ScheduledWork& w : plan.work) {
      auto it = requests_.find(w.id);
      if (it != requests_.end()) finish(it->second.get(), "error", "forward failed: " + st.message);
    }
    return;
  }
  sched_->complete(plan);
  {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.prefill_tokens += prefill_tokens;
    stats_.decode_tokens += decode_tokens;
  }

  const int V = info_.vocab_size;
  const Clock::time_point sampled_at = Clock::now();
  for (size_t i = 0; i < samplers.size(); ++i) {
    RequestState* r = samplers[i];
    const int32_t tok = greedy ? greedy_ids[i] : r->sampler.sample(logits.data() + i * static_cast<size_t>(V), V);
    if (r->generated.empty()) r->first_token = sampled_at;
    r->generated.push_back(tok);
    r->sink->on_token(tok);
    const auto& stops = r->req.stop_token_ids;
    const int fed = static_cast<int>(r->req.prompt.size() + r->generated.size()) - 1;
    if (std::find(stops.begin(), stops.end(), tok) != stops.end()) {
      finish(r, "stop");
    } else if (static_cast<int>(r->generated.size()) >= r->req.max_new_tokens ||
               fed >= r->kv_capacity) {
      finish(r, "length");
    }
  }
  ckpt_->after_step(requests_);
  publish_stats();
}

}  // namespace spx
