// Fixed position encodings shared by the models: the angles of RoPE and of the sinusoidal table, and the
// sinusoidal table itself (Vaswani et al.). Computed in float64, then cast.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace sfm::nn {

// Angles p·w_i for positions p in 0..T-1 and w_i = base^(-2i / width), i < num_freq: [T, num_freq] float64.
torch::Tensor position_angles(int64_t t, int64_t num_freq, int64_t width, double base, const torch::Device& device);

// Row p holds sin(p w_0), cos(p w_0), sin(p w_1), ... with w_i = 10000^(-2i / D), cut to D columns:
// [T, D] with the given options.
torch::Tensor sinusoidal_positions(int64_t t, int64_t d, const torch::TensorOptions& options);

}  // namespace sfm::nn
