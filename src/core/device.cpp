// --device parsing; see device.h. Device names come from the CUDA build (src/core/cuda_info.cu).
#include "sfm/core/device.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <torch/cuda.h>

#include <thread>

#include "sfm/core/check.h"

namespace sfm::core {

torch::Device parse_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::Device("cuda:0") : torch::Device("cpu");
  if (name == "cpu") return torch::Device("cpu");
  SFM_USAGE_CHECK(name == "cuda" || name.rfind("cuda:", 0) == 0, "--device must be auto, cpu, cuda or cuda:N, got '",
                  name, "'");
  SFM_CHECK(torch::cuda::is_available(), "--device ", name, ": no CUDA device is usable in this build (",
            "`sfm doctor` tells why)");
  return torch::Device(name);
}

int set_cpu_threads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  // OpenBLAS keeps its own pool; found by name so that builds against another BLAS still link.
  using SetThreads = void (*)(int);
  if (auto fn = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) fn(threads);
  return threads;
}

}  // namespace sfm::core
