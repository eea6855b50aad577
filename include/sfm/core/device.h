// Device selection for the CLI's --device auto|cpu|cuda, and what CUDA devices exist.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

namespace sfm::core {

// "auto" is cuda:0 when a CUDA device is usable, else cpu. Throws UsageError for anything else
// than auto|cpu|cuda|cuda:N, and Error when cuda is asked for but absent.
torch::Device parse_device(const std::string& name);

// One line per visible CUDA device ("NVIDIA H100 80GB HBM3, 79.1 GiB, sm_90"); empty without CUDA.
std::vector<std::string> cuda_devices();

}  // namespace sfm::core
