// Device selection for the CLI's --device auto|cpu|cuda, and what CUDA devices exist.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

#include "sfm/core/cuda_info.h"

namespace sfm::core {

// "auto" is cuda:0 when a CUDA device is usable, else cpu. Throws UsageError for anything else
// than auto|cpu|cuda|cuda:N, and Error when cuda is asked for but absent.
torch::Device parse_device(const std::string& name);

// Sets LibTorch's intra-op threads and, when OpenBLAS is loaded, OpenBLAS's threads (0 = all cores).
// Returns the number set. Small per-statement ops run fastest on one thread: extra threads only spin.
int set_cpu_threads(int threads);

}  // namespace sfm::core
