// The engine's public C++ surface: the only header the Node binding includes.
//
// An Engine owns one model on one device and runs a scheduler thread that
// continuously batches requests (they join and leave between decode steps).
// Callers submit requests and receive tokens through a RequestSink, whose
// methods are called on the engine's thread; they must not block.
//
// Nothing here throws or aborts: every failure is a Status with a message.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace spx {

struct Status {
  bool ok = true;
  std::string message;
  static Status Ok() { return {}; }
  static Status Error(std::string msg) { return {false, std::move(msg)}; }
};

struct EngineOptions {
  std::string model_dir;
  std::string device = "cpu";   // "cpu" | "cuda:N"
  int threads = 0;              // 0: all cores
  int max_batch = 8;            // concurrent requests in the decode batch
  int max_context = 0;          // 0: the model's max_position_embeddings
  int prefill_chunk = 512;      // tokens per prefill chunk
  // SpeContext (see native/src/retrieval). Empty dlm_dir and dlm_layers == 0
  // means the product's recommended default head for the model.
  std::string dlm_dir;
  int dlm_layers = 0;
  // Fallback: a sparse step whose selection carries less than this share of
  // the head's attention mass attends fully (counted in fallback_steps).
  // < 0: the head's recommendation (a distilled head's config.json; else
  // none); 0: never.
  float fallback_mass = -1.0f;
  // Adaptive placement (planner/placement_policy.h): device memory in bytes
  // the memory planner may plan with (weights, KV, buffers). As sparse
  // requests grow past its thresholds, the target's last layers move to the
  // host tier. 0: on cuda the device's free memory at open plus the weights
  // (cudaMemGetInfo); on cpu no placement. > 0 forces that budget (tests).
  int64_t device_memory_bytes = 0;
};

struct SamplingParams {
  float temperature = 0.0f;     // 0: greedy
  int top_k = 0;                // 0: off
  float top_p = 1.0f;           // 1: off
  uint64_t seed = 0;
};

// Checkpoints of a running request (native/src/checkpoint, docs/checkpoints.md).
// A resumed request's prompt is the old prompt plus every token it had
// generated; `resumed_generated` says how many of those trailing tokens were
// sampled (the sampler continues from that position).
struct CheckpointSpec {
  std::string path;            // checkpoint file the engine writes; empty: none
  int every_tokens = 0;        // write after this many new tokens (0: off)
  int every_ms = 0;            // or after this long (0: off); either also writes once after prefill
  bool restore = false;        // load the prompt's KV prefix from `path` first
  int resumed_generated = 0;   // trailing prompt tokens that were sampled earlier
};

struct GenerateRequest {
  std::vector<int32_t> prompt;            // token ids
  int max_new_tokens = 128;               // > 0
  SamplingParams sampling;
  std::vector<int32_t> stop_token_ids;    // generation ends after emitting one
  int budget = 0;                         // sparse KV budget B; 0: full attention
  CheckpointSpec checkpoint;
};

struct RequestStats {
  int prompt_tokens = 0;
  int generated_tokens = 0;
  double prefill_ms = 0;
  double decode_ms = 0;
  double prefill_tokens_per_s = 0;
  double decode_tokens_per_s = 0;
  std::string finish_reason;              // "stop" | "length" | "cancelled" | "error"
  int restored_tokens = 0;                // KV positions loaded from a checkpoint
  std::string restore_error;              // why a requested restore fell back to prefill
  int checkpoints = 0;                    // checkpoint segments written
};

// One checkpoint write of a request, reported after it reached the file.
struct CheckpointEvent {
  bool ok = true;
  std::string message;         // why it failed
  std::string path;
  int tokens = 0;              // KV positions in the file
  int generated = 0;           // tokens sampled so far (resumed ones included)
  uint64_t bytes = 0;          // written by this checkpoint
  uint64_t file_bytes = 0;
  double stall_ms = 0;         // the engine's step spent taking the snapshot
  double write_ms = 0;         // on the writer thread
};

class RequestSink {
 public:
  virtual ~RequestSink() = default;
  virtual void on_token(int32_t token) = 0;
  // Exactly one of on_done / on_error is called, once, last.
  virtual void on_done(const RequestStats& stats) = 0;
  virtual void on_error(const std::string& message) = 0;
  // After each checkpoint write (before on_done/on_error); engine thread.
  virtual void on_checkpoint(const CheckpointEvent& event) {}
};

struct ModelInfo {
  std::string architecture;
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_context = 0;
  std::vector<int32_t> eos_token_ids;
};

struct EngineStats {
  int active_requests = 0;      // in the batch now
  int queued_requests = 0;      // waiting to join
  uint64_t completed_requests = 0;
  uint64_t cancelled_requests = 0;
  uint64_t kv_bytes_in_use = 0;
  uint64_t prefill_tokens = 0;  // totals since open
  uint64_t decode_tokens = 0;
  int threads = 0;
  std::string device;
  // SpeContext (requests with a budget), totals since open:
  uint64_t sparse_steps = 0;     // decode steps that attended to a selection
  uint64_t full_steps = 0;       // decode steps whose context was <= B (full attention)
  uint64_t fallback_steps = 0;   // selection mass under the threshold: full attention
  int host_layers = 0;           // target layers in the host tier now
  uint64_t layer_moves = 0;      // times the planner changed host_layers
  uint64_t elastic_loads = 0;    // tokens copied into host-tier slot buffers
  uint64_t elastic_bytes = 0;    // their bytes (K and V, all host layers)
  // Newly selected tokens over B, over all sparse steps (the paper's ~20%):
  // what elastic loading moves per step, host-tier layers or not.
  double reload_fraction = 0;
  // The memory planner's inputs (0 when placement is off): the device memory
  // it plans with, and the part it counts as fixed (weights, step buffers).
  int64_t planner_memory_bytes = 0;
  int64_t planner_fixed_bytes = 0;
  // CUDA host tier: time spent prefetching host-tier rows (GPU events, ms),
  // and the part the compute stream waited for; exposed / transfer is the
  // share of transfer time not hidden behind the device-resident layers.
  double transfer_ms = 0;
  double exposed_transfer_ms = 0;
  // CUDA graphs of the dense decode step (docs/cuda.md), totals since open:
  // steps recorded (once per batch shape), steps run as one replay, and
  // captures that failed (that step ran eagerly; graphs then stay off).
  uint64_t graph_captures = 0;
  uint64_t graph_replays = 0;
  uint64_t graph_failures = 0;
  double graph_capture_ms = 0;  // host time spent recording them
};

class Engine {
 public:
  virtual ~Engine() = default;
  // On failure returns nullptr and sets *status.
  static std::unique_ptr<Engine> open(const EngineOptions& options, Status* status);
  // Validates the request (ids in range, prompt fits the context, max_new_tokens > 0);
  // on success enqueues it and returns its id (> 0) with status ok.
  virtual uint64_t submit(GenerateRequest request, std::shared_ptr<RequestSink> sink,
                          Status* status) = 0;
  // Cancels a queued or running request; its sink gets on_done with
  // finish_reason "cancelled" and its KV is freed. Unknown ids are ignored.
  virtual void cancel(uint64_t id) = 0;
  // Writes a checkpoint of a running request at the next step boundary (for
  // SIGTERM); its sink gets on_checkpoint. Unknown ids are ignored.
  virtual void checkpoint_now(uint64_t id) {}
  // Hash of the model/DLM/options a checkpoint must match to be restored.
  virtual uint64_t identity() const { return 0; }
  virtual EngineStats stats() const = 0;
  virtual ModelInfo info() const = 0;
  // Cancels everything, joins the scheduler thread, frees the model. Idempotent.
  virtual void close() = 0;
};

}  // namespace spx
