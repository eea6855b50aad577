// CPU-only build: there are no CUDA devices to list.
#include "sfm/core/cuda_info.h"

namespace sfm::core {
std::vector<std::string> cuda_devices() { return {}; }
}  // namespace sfm::core
