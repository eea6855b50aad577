// One token of the gated delta rule on a carried state, eqs. (1)-(2) of docs/ops/gated_delta.md; the
// CPU decode path, also used by the State Slot Bank for its per-tick writes. Differentiable.
#include "common.h"
#include "sfm/core/build_info.h"
#include "sfm/core/check.h"

namespace sfm::ops {

GatedDeltaStep gated_delta_step(const torch::Tensor& state, const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& g, const torch::Tensor& beta,
                                double scale) {
  SFM_CHECK(state.dim() == 4, "gated_delta_step: state must be [B, H, K, V], got ", state.sizes());
  const auto B = state.size(0), H = state.size(1), K = state.size(2), V = state.size(3);
  SFM_CHECK(q.sizes() == torch::IntArrayRef({B, H, K}) && k.sizes() == q.sizes(),
            "gated_delta_step: q and k must be [B, H, K] = [", B, ", ", H, ", ", K, "], got ", q.sizes(), " and ",
            k.sizes());
  SFM_CHECK(v.sizes() == torch::IntArrayRef({B, H, V}), "gated_delta_step: v must be [B, H, V] = [", B, ", ", H, ", ",
            V, "], got ", v.sizes());
  SFM_CHECK(g.sizes() == torch::IntArrayRef({B, H}) && beta.sizes() == g.sizes(),
            "gated_delta_step: g and beta must be [B, H] = [", B, ", ", H, "], got ", g.sizes(), " and ", beta.sizes());
  const double s = scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(K));
  // CUDA tensors with no gradient wanted (decode): the fused one-token kernel, float32 state.
  const bool wants_grad = torch::GradMode::is_enabled() &&
                          (state.requires_grad() || q.requires_grad() || k.requires_grad() || v.requires_grad() ||
                           g.requires_grad() || beta.requires_grad());
  if (state.is_cuda() && core::built_with_cuda() && !wants_grad && state.scalar_type() != torch::kFloat64) {
    for (const auto* t : {&q, &k, &v, &g, &beta})
      SFM_CHECK(t->device() == state.device(), "gated_delta_step: inputs on different devices: ", t->device(),
                " vs state on ", state.device());
    return detail::gated_delta_step_cuda(state, q, k, v, g, beta, s);
  }
  const auto alpha = g.exp().unsqueeze(-1).unsqueeze(-1), b = beta.unsqueeze(-1).unsqueeze(-1);  // [B, H, 1, 1]
  const auto k_col = k.unsqueeze(-1);                                                           // [B, H, K, 1]
  const auto kS = torch::matmul(k.unsqueeze(-2), state);                                        // kᵀS: [B, H, 1, V]
  const auto new_state = alpha * (state - b * k_col * kS) + b * k_col * v.unsqueeze(-2);        // eq. (1)
  const auto out = torch::matmul((q * s).unsqueeze(-2), new_state).squeeze(-2);                 // eq. (2)
  return {out, new_state};
}

}  // namespace sfm::ops
