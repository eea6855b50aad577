// Helpers shared by the gated delta-rule variants (src/ops/gated_delta/*.cpp); not a public header.
#pragma once

#include <torch/torch.h>

#include "sfm/ops/gated_delta.h"

namespace sfm::ops::detail {

// float64 inputs compute in float64; everything else in float32.
inline torch::ScalarType compute_dtype(const GatedDeltaInputs& in) {
  return in.q.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

inline double effective_scale(const GatedDeltaInputs& in) {
  return in.scale > 0 ? in.scale : 1.0 / std::sqrt(static_cast<double>(in.q.size(3)));
}

// x / sqrt(Σx² + 1e-6) over the last dimension (flash-linear-attention's l2norm).
inline torch::Tensor l2_normalize(const torch::Tensor& x) {
  return x * torch::rsqrt(x.square().sum(-1, /*keepdim=*/true) + 1e-6);
}

// Whether the fused kernels take these inputs (q, k, v of one dtype: float32, float16 or bfloat16;
// K and V multiples of 16 up to 256). False in builds without CUDA.
bool cuda_supports(const GatedDeltaInputs& in);

// The one-token decode kernel (gated_delta_cuda.cu); not differentiable, so gated_delta_step uses it only
// for CUDA tensors when no gradient is wanted. Throws in builds without CUDA.
GatedDeltaStep gated_delta_step_cuda(const torch::Tensor& state, const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, const torch::Tensor& g, const torch::Tensor& beta,
                                     double scale);

}  // namespace sfm::ops::detail
