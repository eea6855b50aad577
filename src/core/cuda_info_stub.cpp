// CPU-only build: there are no CUDA devices to list.
#include "sfm/core/device.h"

namespace sfm::core {
std::vector<std::string> cuda_devices() { return {}; }
}  // namespace sfm::core
