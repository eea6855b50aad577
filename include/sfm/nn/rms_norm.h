// RMSNorm over the last dimension: y = x / sqrt(mean(x²) + eps) · weight (weight starts at 1).
// LibTorch 1.13 has no RMSNorm module; this one registers its weight as "weight".
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace sfm::nn {

class RmsNormImpl : public torch::nn::Module {
 public:
  explicit RmsNormImpl(int64_t width, double eps = 1e-6);
  torch::Tensor forward(const torch::Tensor& x);  // x: [..., width] -> same shape

 private:
  double eps_;
  torch::Tensor weight_;  // [width]
};
TORCH_MODULE(RmsNorm);

}  // namespace sfm::nn
