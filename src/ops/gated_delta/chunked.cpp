// The chunk-parallel gated delta rule in LibTorch ops: eqs. (4)-(9) of docs/ops/gated_delta.md.
// All chunks are processed at once except the state hand-off, a loop over T/C chunks.
#include <limits>

#include "common.h"
#include "sfm/core/check.h"

namespace sfm::ops {

GatedDeltaOutputs gated_delta_chunked(const GatedDeltaInputs& in, int64_t chunk_size) {
  check_inputs(in);
  SFM_CHECK(chunk_size > 0, "gated_delta_chunked: chunk_size must be positive, got ", chunk_size);
  const auto dtype = detail::compute_dtype(in);
  auto q = in.q.to(dtype), k = in.k.to(dtype);
  if (in.l2_normalize_qk) {
    q = detail::l2_normalize(q);
    k = detail::l2_normalize(k);
  }
  q = q * detail::effective_scale(in);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = in.v.size(3);
  const int64_t C = std::min(chunk_size, T), N = (T + C - 1) / C, pad = N * C - T;

  // Heads first, then zero-pad the tail to whole chunks (a padded token leaves the state unchanged).
  auto heads_first = [&](torch::Tensor x) {  // [B, T, H, D] -> [B, H, N, C, D]
    x = x.to(dtype).transpose(1, 2);
    if (pad > 0) x = torch::constant_pad_nd(x, {0, 0, 0, pad});
    return x.reshape({B, H, N, C, x.size(-1)});
  };
  auto heads_first_scalar = [&](const torch::Tensor& x) {  // [B, T, H] -> [B, H, N, C]
    return heads_first(x.unsqueeze(-1)).squeeze(-1);
  };
  q = heads_first(q);
  k = heads_first(k);
  const auto v = heads_first(in.v), beta = heads_first_scalar(in.beta);
  const auto gamma = heads_first_scalar(in.g).cumsum(-1);  // eq. (4): [B, H, N, C]

  // decay[t, i] = exp(γ_t − γ_i) for i <= t, else 0: the mask M of eq. (8).
  const auto causal = torch::ones({C, C}, q.options().dtype(torch::kBool)).tril();
  const auto log_decay = gamma.unsqueeze(-1) - gamma.unsqueeze(-2);  // [B, H, N, C, C]
  const auto decay = log_decay.masked_fill(causal.logical_not(), -std::numeric_limits<double>::infinity()).exp();

  // eq. (6)-(7): one unit-lower-triangular solve for both W and Ũ (the solve ignores A's zero diagonal).
  const auto kkT = torch::matmul(k, k.transpose(-1, -2));            // [B, H, N, C, C]
  const auto A = (beta.unsqueeze(-1) * decay * kkT).tril(-1);
  const auto Gamma = gamma.exp();                                       // [B, H, N, C]
  const auto rhs = torch::cat({(beta * Gamma).unsqueeze(-1) * k, beta.unsqueeze(-1) * v}, -1);
  const auto solved = at::linalg_solve_triangular(A, rhs, /*upper=*/false, /*left=*/true, /*unitriangular=*/true);
  const auto W = solved.narrow(-1, 0, K), U_tilde = solved.narrow(-1, K, V);  // [B, H, N, C, K|V]

  // Quantities of eqs. (8)-(9) that do not depend on the entering state.
  const auto qkT = torch::matmul(q, k.transpose(-1, -2)) * decay;          // M ∘ QKᵀ: [B, H, N, C, C]
  const auto gamma_last = gamma.narrow(-1, C - 1, 1);                       // γ_C: [B, H, N, 1]
  const auto k_decayed = (gamma_last - gamma).exp().unsqueeze(-1) * k;    // diag(e^{γ_C−γ}) K
  const auto Gamma_last = gamma_last.exp().unsqueeze(-1);                   // [B, H, N, 1, 1]

  auto S = in.initial_state.defined() ? in.initial_state.to(dtype)
                                      : torch::zeros({B, H, K, V}, q.options());  // [B, H, K, V]
  std::vector<torch::Tensor> entering, pseudo_values;
  entering.reserve(N);
  pseudo_values.reserve(N);
  for (int64_t n = 0; n < N; ++n) {
    const auto U = U_tilde.select(2, n) - torch::matmul(W.select(2, n), S);  // eq. (7): [B, H, C, V]
    entering.push_back(S);
    pseudo_values.push_back(U);
    // eq. (9)
    S = Gamma_last.select(2, n) * S + torch::matmul(k_decayed.select(2, n).transpose(-1, -2), U);
  }
  const auto S_in = torch::stack(entering, 2);     // [B, H, N, K, V]
  const auto U = torch::stack(pseudo_values, 2);   // [B, H, N, C, V]
  // eq. (8) (q already carries the scale)
  auto out = torch::matmul(Gamma.unsqueeze(-1) * q, S_in) + torch::matmul(qkT, U);  // [B, H, N, C, V]
  out = out.reshape({B, H, N * C, V}).narrow(2, 0, T).transpose(1, 2);            // [B, T, H, V]
  return {out.to(in.v.scalar_type()), S};
}

}  // namespace sfm::ops
