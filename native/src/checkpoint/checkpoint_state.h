// What the engine remembers about one request's checkpoint file.
#pragma once

#include <chrono>

namespace spx {

struct CheckpointState {
  int written_tokens = 0;     // KV positions already in the file (0: next write starts it)
  int written_generated = 0;  // tokens generated when it was last written
  std::chrono::steady_clock::time_point last{};
  bool pending = false;       // a write is with the writer thread
  bool forced = false;        // checkpoint_now() asked for one
};

}  // namespace spx
