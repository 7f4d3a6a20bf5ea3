// The identity a checkpoint is bound to: a 64-bit hash of what decides the
// KV a request produces (model config and weights, the DLM, the KV dtype).
// Weights are hashed by size plus their first and last megabyte (headers,
// embeddings, final norm), so identity costs milliseconds even for 16 GB.
#pragma once

#include <cstdint>

#include "engine/engine.h"

namespace spx {

uint64_t model_identity(const EngineOptions& options);

}  // namespace spx
