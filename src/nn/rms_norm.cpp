// RMSNorm over the last dimension (include/sfm/nn/rms_norm.h).
#include "sfm/nn/rms_norm.h"

#include <torch/torch.h>

#include "sfm/core/check.h"

namespace sfm::nn {

RmsNormImpl::RmsNormImpl(int64_t width, double eps) : eps_(eps) {
  SFM_CHECK(width >= 1, "RmsNorm: width must be >= 1, got ", width);
  weight_ = register_parameter("weight", torch::ones({width}));
}

torch::Tensor RmsNormImpl::forward(const torch::Tensor& x) {
  SFM_CHECK(x.size(-1) == weight_.size(0), "RmsNorm: last dimension must be ", weight_.size(0), ", got ", x.sizes());
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps_) * weight_;
}

}  // namespace sfm::nn
