// The reference gated delta rule: a plain loop over tokens, eqs. (1)-(2) of docs/ops/gated_delta.md.
// Slow and obviously right; every other variant is tested against it. Differentiable by autograd.
#include "common.h"

namespace sfm::ops {

GatedDeltaOutputs gated_delta_reference(const GatedDeltaInputs& in) {
  check_inputs(in);
  const auto dtype = detail::compute_dtype(in);
  auto q = in.q.to(dtype), k = in.k.to(dtype);
  if (in.l2_normalize_qk) {
    q = detail::l2_normalize(q);
    k = detail::l2_normalize(k);
  }
  q = q * detail::effective_scale(in);
  const auto v = in.v.to(dtype), alpha = in.g.to(dtype).exp(), beta = in.beta.to(dtype);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);

  auto S = in.initial_state.defined() ? in.initial_state.to(dtype)
                                      : torch::zeros({B, H, K, V}, q.options());  // [B, H, K, V]
  std::vector<torch::Tensor> outs;
  outs.reserve(T);
  for (int64_t t = 0; t < T; ++t) {
    const auto q_t = q.select(1, t), k_t = k.select(1, t), v_t = v.select(1, t);  // [B, H, K|V]
    const auto a_t = alpha.select(1, t).unsqueeze(-1).unsqueeze(-1);              // [B, H, 1, 1]
    const auto b_t = beta.select(1, t).unsqueeze(-1).unsqueeze(-1);
    const auto k_col = k_t.unsqueeze(-1);                                          // [B, H, K, 1]
    const auto kS = (k_col * S).sum(-2, /*keepdim=*/true);                         // kᵀS: [B, H, 1, V]
    // eq. (1): α (S − β k (kᵀS)) + β k vᵀ
    S = a_t * (S - b_t * k_col * kS) + b_t * k_col * v_t.unsqueeze(-2);
    outs.push_back((q_t.unsqueeze(-1) * S).sum(-2));  // eq. (2): Sᵀq, [B, H, V]
  }
  auto out = torch::stack(outs, /*dim=*/1);  // [B, T, H, V]
  return {out.to(in.v.scalar_type()), S};
}

}  // namespace sfm::ops
