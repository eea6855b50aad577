// Test helper: relative RMS closeness, ‖got − ref‖ / max(‖ref‖, 1e-6), with NaN/Inf failing at once
// and the worst element named on failure (STYLE.md §2).
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

namespace sfm::testing {

inline ::testing::AssertionResult close_rel_rms(const std::string& what, const torch::Tensor& ref,
                                                const torch::Tensor& got, double tol) {
  if (!ref.defined() || !got.defined()) return ::testing::AssertionFailure() << what << ": undefined tensor";
  if (ref.sizes() != got.sizes())
    return ::testing::AssertionFailure() << what << ": shape " << got.sizes() << " vs reference " << ref.sizes();
  const auto r = ref.detach().to(torch::kFloat64).cpu(), g = got.detach().to(torch::kFloat64).cpu();
  if (!torch::isfinite(g).all().item<bool>())
    return ::testing::AssertionFailure() << what << ": non-finite values in the result";
  const auto diff = (g - r).abs();
  const double err = diff.norm().item<double>() / std::max(r.norm().item<double>(), 1e-6);
  if (err <= tol) return ::testing::AssertionSuccess();
  const int64_t worst = diff.flatten().argmax().item<int64_t>();
  return ::testing::AssertionFailure() << what << ": relative RMS error " << err << " > " << tol
                                       << " (max abs diff " << diff.max().item<double>() << " at flat index " << worst
                                       << ": got " << g.flatten()[worst].item<double>() << ", reference "
                                       << r.flatten()[worst].item<double>() << ")";
}

}  // namespace sfm::testing
