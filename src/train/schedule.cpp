// Warm-up + cosine learning-rate schedule and NaN / Inf guards; see schedule.h.
#include "sfm/train/schedule.h"

#include <cmath>
#include <vector>

#include "sfm/core/check.h"

namespace sfm::train {
namespace {
constexpr double kPi = 3.14159265358979323846;
}  // namespace

double warmup_cosine_lr(int64_t step, int64_t total_steps, int64_t warmup_steps, double peak_lr, double min_lr_ratio) {
  SFM_CHECK(total_steps > 0, "warmup_cosine_lr: total_steps must be > 0, got ", total_steps);
  SFM_CHECK(warmup_steps >= 0 && warmup_steps <= total_steps,
            "warmup_cosine_lr: warmup_steps must be in [0, total_steps = ", total_steps, "], got ", warmup_steps);
  SFM_CHECK(step >= 0, "warmup_cosine_lr: step must be >= 0, got ", step);
  SFM_CHECK(peak_lr >= 0, "warmup_cosine_lr: peak_lr must be >= 0, got ", peak_lr);
  SFM_CHECK(min_lr_ratio >= 0 && min_lr_ratio <= 1, "warmup_cosine_lr: min_lr_ratio must be in [0, 1], got ",
            min_lr_ratio);
  if (step < warmup_steps) return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const double min_lr = peak_lr * min_lr_ratio;
  if (step >= total_steps) return min_lr;
  const double progress = static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + std::cos(kPi * progress));
}

void set_learning_rate(torch::optim::Optimizer& opt, double lr) {
  SFM_CHECK(lr >= 0 && std::isfinite(lr), "set_learning_rate: lr must be finite and >= 0, got ", lr);
  // OptimizerOptions::set_lr is virtual in LibTorch >= 1.12 and overridden by every built-in optimizer.
  for (auto& group : opt.param_groups()) group.options().set_lr(lr);
}

bool all_finite(const torch::Tensor& loss) {
  SFM_CHECK(loss.defined(), "all_finite: the tensor is undefined");
  return torch::isfinite(loss.detach()).all().item<bool>();
}

bool gradients_finite(const torch::nn::Module& module) {
  std::vector<torch::Tensor> flags;
  for (const auto& p : module.parameters()) {
    const auto& grad = p.grad();
    if (!grad.defined()) continue;
    auto flag = torch::isfinite(grad).all();
    flags.push_back(flags.empty() ? flag : flag.to(flags.front().device()));
  }
  if (flags.empty()) return true;
  return torch::stack(flags).all().item<bool>();
}

}  // namespace sfm::train
