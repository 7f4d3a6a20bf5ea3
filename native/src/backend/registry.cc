#include "backend/registry.h"

#include <cstdlib>

namespace spx {

std::vector<std::string> available_backends() {
#ifdef SPX_HAVE_CUDA
  return {"cpu", "cuda"};
#else
  return {"cpu"};
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& device, int threads, Status* status) {
  *status = Status::Ok();
  if (device == "cpu") return make_cpu_backend(threads);
  if (device.rfind("cuda", 0) == 0) {
    int index = 0;
    if (device.size() > 4) {
      const std::string rest = device.substr(4);
      char* end = nullptr;
      const long v = rest.size() > 1 && rest[0] == ':' ? std::strtol(rest.c_str() + 1, &end, 10) : -1;
      if (v < 0 || v > 1024 || end == nullptr || *end != '\0') {
        *status = Status::Error("bad device '" + device + "' (expected cpu or cuda:N)");
        return nullptr;
      }
      index = static_cast<int>(v);
    }
#ifdef SPX_HAVE_CUDA
    return make_cuda_backend(index, threads, status);
#else
    (void)index;
    *status = Status::Error("device '" + device + "' requested but this build has no CUDA backend");
    return nullptr;
#endif
  }
  *status = Status::Error("unknown device '" + device + "' (expected cpu or cuda:N)");
  return nullptr;
}

}  // namespace spx
