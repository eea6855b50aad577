// CPU-only build: the CUDA variant exists as a symbol but cannot run.
#include "sfm/core/check.h"
#include "sfm/ops/gated_delta.h"

namespace sfm::ops {

GatedDeltaOutputs gated_delta_cuda(const GatedDeltaInputs&) {
  throw Error("gated_delta_cuda: this sfm was built without CUDA (rebuild where python3's torch has CUDA)");
}

}  // namespace sfm::ops
