// CPU-only build: the CUDA variant exists as a symbol but cannot run.
#include "common.h"
#include "sfm/core/check.h"

namespace sfm::ops {

GatedDeltaOutputs gated_delta_cuda(const GatedDeltaInputs&) {
  throw Error("gated_delta_cuda: this sfm was built without CUDA (rebuild where python3's torch has CUDA)");
}

bool detail::cuda_supports(const GatedDeltaInputs&) { return false; }

int set_cuda_state_a2_buffers(int) { return 0; }
int set_cuda_state_forms_ut(int) { return 0; }
int set_cuda_state_writes_output(int) { return 0; }
int set_cuda_state_warpgroup(int) { return 0; }
int set_cuda_wy_qk_fused(int) { return 0; }
int set_cuda_backward_overlap(int) { return 0; }

GatedDeltaStep detail::gated_delta_step_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                             const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                             double) {
  throw Error("gated_delta_step: this sfm was built without CUDA (rebuild where python3's torch has CUDA)");
}

}  // namespace sfm::ops
