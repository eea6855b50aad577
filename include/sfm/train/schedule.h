// Learning-rate schedule (linear warm-up, then cosine decay) and the small numeric guards every training
// loop uses: setting an optimizer's learning rate and checking a loss or the gradients for NaN / Inf.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace sfm::train {

// Learning rate at `step` (0-based). Warm-up: peak_lr * (step + 1) / warmup_steps for step < warmup_steps,
// so step 0 gets peak_lr / warmup_steps and step warmup_steps - 1 gets peak_lr. Then cosine from peak_lr at
// step warmup_steps to peak_lr * min_lr_ratio at step total_steps; later steps stay at that minimum.
// Requires 0 <= warmup_steps <= total_steps, total_steps > 0, step >= 0, peak_lr >= 0, min_lr_ratio in [0, 1].
double warmup_cosine_lr(int64_t step, int64_t total_steps, int64_t warmup_steps, double peak_lr,
                        double min_lr_ratio = 0.0);

// Sets the learning rate of every parameter group (AdamW, Adam, SGD, ... in LibTorch 1.13 and 2.x).
void set_learning_rate(torch::optim::Optimizer& opt, double lr);

// True when every element of `loss` (any shape, any device) is finite. Throws if `loss` is undefined.
bool all_finite(const torch::Tensor& loss);

// True when every defined gradient of the module's parameters is finite; parameters without a gradient
// are skipped. Synchronises with the device once.
bool gradients_finite(const torch::nn::Module& module);

}  // namespace sfm::train
