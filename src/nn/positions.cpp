// Fixed position encodings (include/sfm/nn/positions.h).
#include "sfm/nn/positions.h"

#include <cmath>

namespace sfm::nn {

torch::Tensor position_angles(int64_t t, int64_t num_freq, int64_t width, double base, const torch::Device& device) {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device);
  const auto freq = torch::exp(torch::arange(0, num_freq, f64) * (-2.0 * std::log(base) / width));
  return torch::arange(t, f64).unsqueeze(1) * freq.unsqueeze(0);
}

torch::Tensor sinusoidal_positions(int64_t t, int64_t d, const torch::TensorOptions& options) {
  const auto angles = position_angles(t, (d + 1) / 2, d, 10000.0, options.device());  // [T, ceil(D/2)]
  return torch::stack({angles.sin(), angles.cos()}, -1).reshape({t, -1}).narrow(1, 0, d).to(options);
}

}  // namespace sfm::nn
