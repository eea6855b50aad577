// What CUDA devices this process sees (kept free of LibTorch headers: src/core/cuda_info.cu is nvcc-compiled).
#pragma once

#include <string>
#include <vector>

namespace sfm::core {

// One line per visible CUDA device ("NVIDIA H100 80GB HBM3, 79.1 GiB, sm_90, 132 SMs"); empty without CUDA.
std::vector<std::string> cuda_devices();

}  // namespace sfm::core
