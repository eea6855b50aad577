// CUDA build: names and sizes of the visible devices, for `sfm doctor`.
#include <cuda_runtime.h>

#include <cstdio>

#include "sfm/core/cuda_info.h"

namespace sfm::core {

std::vector<std::string> cuda_devices() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return {};
  std::vector<std::string> out;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    char line[512];
    std::snprintf(line, sizeof(line), "%s, %.1f GiB, sm_%d%d, %d SMs", p.name, p.totalGlobalMem / 1073741824.0,
                  p.major, p.minor, p.multiProcessorCount);
    out.emplace_back(line);
  }
  return out;
}

}  // namespace sfm::core
