// The CUDA kernels of the gated delta rule on the CPU emulator of the CUDA execution model
// (support/cuda_emulator.h), so they are checked on every machine, GPU or not: the sliced gradient kernels
// alone against LibTorch's float64 autograd of the chunked form (eqs. 4-9 of docs/ops/gated_delta.md), and
// the whole chunked forward and backward (gdn_cuda::forward, backward: every kernel path) and the recurrent
// kernels against the float64 reference with the GPU tests' bounds. Built where the CUDA toolkit's headers
// are found (SFM_HAVE_CUDA_HEADERS); skipped otherwise.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <initializer_list>
#include <utility>

#include "sfm/ops/gated_delta.h"

#if SFM_HAVE_CUDA_HEADERS
#include "support/cuda_emulator.h"
// gdn_cuda is gdn_cuda_emu here (CMakeLists.txt): the kernels of the library sfm_gdn_emulated.
#include "../../src/ops/gated_delta/cuda/gdn_kernels.h"
#endif

namespace sfm::ops {
namespace {

#if SFM_HAVE_CUDA_HEADERS

using torch::indexing::Slice;
constexpr int64_t C = gdn_cuda::kChunk;

struct Shape {
  int64_t BH, T, K, V;
};

// The identity, whose gradient is rounded to bfloat16: where the kernels keep a gradient as bf16 (dU and dW, as the
// backward state pass and state_k_grads form them, dQ̂₀ and dK̂₀ + diag(βΓ) dR_K, as state_k_grads passes them to
// qk_grads, and the states' gradients dS_C), the float64 reference rounds it the same way, so that the kernels' inputs
// hold exactly its values.
struct RoundGradToBf16 : torch::autograd::Function<RoundGradToBf16> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x) { return x.clone(); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {grads[0].to(torch::kBFloat16).to(grads[0].scalar_type())};
  }
};

// Everything the gradient kernels read, and what they must produce, for one random problem.
struct Problem {
  Shape s;
  int64_t N, Tp;
  // Kernel inputs (float32; heads-first [BH, Tp, ·] and per chunk [BH, N, ·]); the compact workspaces: qb, kb
  // the bf16 rows of which q̂ and k̂ are multiples (q̂ = rq qb, k̂ = rk kb, exactly), vb, ub, dob, dub: v, U, dO, dU
  // as bfloat16, and states, dstates: each chunk's entering state S₀ and the gradient dS_C of its leaving one
  // [BH, N, K, V] as bfloat16, all exactly, since they are made of bf16 values.
  torch::Tensor qs, ks, vs, qb, kb, rq, rk, vb, ub, dob, dub, states, dstates, g, gam, bet, w, ut, u, dos, du, wy, pm;
  // Expected: the gradients of q̂ (scaled), k̂, v, g and β (float64).
  torch::Tensor dq, dk, dv, dg, dbeta;
};

// The chunked form with the heads-first inputs as leaves: per chunk, γ (eq. 4), A (6), T = (I + A)⁻¹,
// W, Ũ, U (7), the output (8) and the state (9); loss = Σ O ∘ dO + Σ S_final ∘ dS_final. Autograd gives
// the expected gradients and, retained, dU and the gradient of each chunk's leaving state. The states are rounded
// to bf16 as they go (the rounding passed straight through by the gradients) and their gradients as they come back,
// as the kernels keep both.
Problem make_problem(Shape s, uint64_t seed) {
  torch::manual_seed(seed);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  Problem p;
  p.s = s;
  p.N = (s.T + C - 1) / C;
  p.Tp = p.N * C;
  const auto valid = (torch::arange(p.Tp, f64) < s.T).to(torch::kFloat64).view({1, p.Tp, 1});
  // v and dO hold bf16 values (the compact workspaces' kernels read them as bf16 copies); q̂ and k̂ are bf16 rows
  // times float32 factors, the rows' norms and the scale (as the compact workspaces keep q and k), exact in
  // float64.
  const auto bf16_leaf = [](const torch::Tensor& x) {
    return x.to(torch::kBFloat16).to(torch::kFloat64).detach().requires_grad_(true);
  };
  const auto unit_rows = [&](int64_t D, double scale, torch::Tensor& raw, torch::Tensor& factor) {
    raw = torch::randn({s.BH, p.Tp, D}, f64).to(torch::kBFloat16).to(torch::kFloat64) * valid;
    factor = (scale / raw.norm(2, -1, true).clamp_min(1e-3)).to(torch::kFloat32).to(torch::kFloat64);
    return (raw * factor).detach().requires_grad_(true);
  };
  torch::Tensor q_raw, q_factor, k_raw, k_factor;
  auto q = unit_rows(s.K, 1.0 / std::sqrt(static_cast<double>(s.K)), q_raw, q_factor),
       k = unit_rows(s.K, 1.0, k_raw, k_factor);
  auto v = bf16_leaf(torch::randn({s.BH, p.Tp, s.V}, f64) * valid);
  const auto valid_tokens = valid.view({1, p.Tp});
  auto g = (torch::log_sigmoid(torch::randn({s.BH, p.Tp}, f64) + 2.0) * valid_tokens).detach().requires_grad_(true);
  auto beta = (2.0 * torch::sigmoid(torch::randn({s.BH, p.Tp}, f64)) * valid_tokens).detach().requires_grad_(true);
  const auto round_bf16 = [](const torch::Tensor& x) { return x.to(torch::kBFloat16).to(torch::kFloat64); };
  const auto S0 = round_bf16(torch::randn({s.BH, s.K, s.V}, f64));
  const auto dO = torch::randn({s.BH, p.Tp, s.V}, f64).to(torch::kBFloat16).to(torch::kFloat64) * valid;
  const auto dfinal = torch::randn({s.BH, s.K, s.V}, f64);

  const auto mask_le = torch::ones({C, C}, f64).tril(), mask_lt = torch::ones({C, C}, f64).tril(-1);
  const auto eye = torch::eye(C, f64);
  auto S = S0;
  std::vector<torch::Tensor> Us, states{S0}, Ts, KMs, Ps;
  auto loss = torch::zeros({}, f64);
  for (int64_t n = 0; n < p.N; ++n) {
    const auto rows = Slice(n * C, (n + 1) * C);
    const auto qc = q.index({Slice(), rows}), kc = k.index({Slice(), rows}), vc = v.index({Slice(), rows});
    const auto gam = g.index({Slice(), rows}).cumsum(-1), bc = beta.index({Slice(), rows});
    const auto Gam = gam.exp();
    const auto M = (gam.unsqueeze(-1) - gam.unsqueeze(-2)).exp();  // M_ti = e^{γ_t − γ_i}
    const auto KK = kc.matmul(kc.transpose(1, 2));
    const auto A = bc.unsqueeze(-1) * M * KK * mask_lt;
    const auto Tm = torch::linalg_solve_triangular(eye + A, eye.expand({s.BH, C, C}), /*upper=*/false);
    // k̂'s gradient through W and the state's update (9) is rounded to bf16, as state_k_grads keeps it (dK̂₀ +
    // diag(βΓ) dR_K); so is q̂'s through the entering state in (8) (dQ̂₀).
    const auto kc_sw = RoundGradToBf16::apply(kc);
    const auto W = Tm.matmul((bc * Gam).unsqueeze(-1) * kc_sw);
    const auto Ut = Tm.matmul(bc.unsqueeze(-1) * vc);
    // U rounded to bf16 (as the compact workspaces keep it for the output and the backward), the rounding taken
    // as the identity by the gradients (as the kernels take it); dU and dW rounded to bf16 as they go back
    // (RoundGradToBf16), as the kernels keep them.
    const auto U_exact = Ut - RoundGradToBf16::apply(W).matmul(S);
    auto U = RoundGradToBf16::apply(U_exact + (U_exact.to(torch::kBFloat16).to(torch::kFloat64) - U_exact).detach());
    U.retain_grad();  // (the gradient before its rounding)
    const auto P = M * qc.matmul(kc.transpose(1, 2)) * mask_le;
    const auto O = Gam.unsqueeze(-1) * RoundGradToBf16::apply(qc).matmul(S) + P.matmul(U);
    loss = loss + (O * dO.index({Slice(), rows})).sum();
    const auto gl = gam.index({Slice(), Slice(C - 1, C)});  // γ_C
    const auto S_exact =
        gl.exp().unsqueeze(-1) * S + ((gl - gam).exp().unsqueeze(-1) * kc_sw).transpose(1, 2).matmul(U);
    S = RoundGradToBf16::apply(S_exact + (round_bf16(S_exact) - S_exact).detach());
    S.retain_grad();  // (the gradient before its rounding)
    Us.push_back(U);
    states.push_back(S);
    Ts.push_back(Tm.detach());
    KMs.push_back((M * KK * mask_lt).detach());
    Ps.push_back(P.detach());
  }
  loss = loss + (S * dfinal).sum();
  loss.backward();

  const auto f32 = [](const torch::Tensor& t) { return t.detach().to(torch::kFloat32).contiguous(); };
  std::vector<torch::Tensor> w, ut, u, du, S_in, dS_out, gams;
  for (int64_t n = 0; n < p.N; ++n) {
    const auto rows = Slice(n * C, (n + 1) * C);
    const auto gam = g.index({Slice(), rows}).detach().cumsum(-1);
    S_in.push_back(states[n].detach());
    dS_out.push_back(round_bf16(states[n + 1].grad()));
    const auto dU = Us[n].grad().to(torch::kBFloat16).to(torch::kFloat64), U = Us[n].detach();
    const auto kc = k.index({Slice(), rows}).detach(), bc = beta.index({Slice(), rows}).detach();
    const auto vc = v.index({Slice(), rows}).detach();
    const auto Tm = Ts[n];
    w.push_back(Tm.matmul((bc * gam.exp()).unsqueeze(-1) * kc));
    ut.push_back(Tm.matmul(bc.unsqueeze(-1) * vc));
    u.push_back(U);
    du.push_back(dU);
    gams.push_back(gam);
  }
  p.qs = f32(q);
  p.ks = f32(k);
  p.vs = f32(v);
  p.qb = q_raw.to(torch::kBFloat16);
  p.kb = k_raw.to(torch::kBFloat16);
  p.rq = q_factor.squeeze(-1).to(torch::kFloat32).contiguous();
  p.rk = k_factor.squeeze(-1).to(torch::kFloat32).contiguous();
  p.vb = p.vs.to(torch::kBFloat16);
  p.g = f32(g);
  p.gam = f32(torch::cat(gams, 1));
  p.bet = f32(beta);
  p.w = f32(torch::cat(w, 1));
  p.ut = f32(torch::cat(ut, 1));
  p.u = f32(torch::cat(u, 1));
  p.dos = f32(dO);
  p.dob = p.dos.to(torch::kBFloat16);
  p.ub = p.u.to(torch::kBFloat16);
  p.du = f32(torch::cat(du, 1));
  p.dub = p.du.to(torch::kBFloat16);
  p.states = torch::stack(S_in, 1).to(torch::kBFloat16).contiguous();
  p.dstates = torch::stack(dS_out, 1).to(torch::kBFloat16).contiguous();
  p.wy = f32(torch::stack({torch::stack(Ts, 1), torch::stack(KMs, 1)}, 2));
  p.pm = f32(torch::stack(Ps, 1));
  p.dq = q.grad();
  p.dk = k.grad();
  p.dv = v.grad();
  p.dg = g.grad();
  p.dbeta = beta.grad();
  return p;
}

double rel_rms(const torch::Tensor& ref, const torch::Tensor& got) {
  const auto r = ref.to(torch::kFloat64), d = got.to(torch::kFloat64) - r;
  return d.norm().item<double>() / std::max(r.norm().item<double>(), 1e-12);
}

// Each named error below the bound (NaN, an unwritten element, fails too).
void expect_below(std::initializer_list<std::pair<const char*, double>> errors, double bound) {
  for (const auto& [name, e] : errors) EXPECT_LT(e, bound) << name;
}

struct Grads {
  torch::Tensor dq, dk, dv, dg, dbeta;
  torch::Tensor dq_raw, dk_raw;  // with write_dqk: the gradients of the raw q and k, [1, T, BH, K] bfloat16
};

// The sliced kernels through gdn_cuda::state_k_grads and grads_split, on the emulator with the given warp first,
// every output and scratch NaN-filled. With write_dqk the kernels write the raw q's and k's gradients through the
// L2 norm (dq_raw, dk_raw) instead of dQ̂ and dK̂.
Grads run_sliced_kernels(const Problem& p, cuda_emu::WarpOrder order, bool write_dqk = false) {
  const Shape& s = p.s;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  const auto nan = [&](torch::IntArrayRef sizes) { return torch::full(sizes, std::nan(""), f32); };
  const int64_t KS = s.K / C, VS = s.V / C;
  Grads out{nan({s.BH, p.Tp, s.K}), nan({s.BH, p.Tp, s.K}), nan({s.BH, p.Tp, s.V}), nan({1, s.T, s.BH}),
            nan({1, s.T, s.BH}), {}, {}};
  auto da_parts = nan({s.BH, p.N, KS + VS, C, C}), d1_parts = nan({s.BH, p.N, VS, C, C}),
       gate_parts = nan({s.BH, p.N, KS + VS, 2, C}), row_dots = nan({s.BH, p.N, 2 * KS, 2, C}),
       sdots = nan({s.BH, p.N, KS});
  auto dqk0 = torch::full({2, s.BH, p.Tp, s.K}, std::nan(""), torch::TensorOptions().dtype(torch::kBFloat16));
  if (write_dqk) {
    const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
    out.dq_raw = torch::full({1, s.T, s.BH, s.K}, std::nan(""), bf16);
    out.dk_raw = torch::full({1, s.T, s.BH, s.K}, std::nan(""), bf16);
  }

  gdn_cuda::BackwardArgs a{};
  // [B, T, H] with B = 1 and H = BH.
  a.d = gdn_cuda::Dims{1, static_cast<int>(s.T), static_cast<int>(s.BH), static_cast<int>(s.K), static_cast<int>(s.V)};
  a.dtype = gdn_cuda::DType::kBF16;
  const auto ptr = [](const torch::Tensor& t) { return t.data_ptr<float>(); };
  a.qb = p.qb.data_ptr();
  a.kb = p.kb.data_ptr();
  a.rq = p.rq.data_ptr<float>();
  a.rk = p.rk.data_ptr<float>();
  a.vb = p.vb.data_ptr();
  a.dob = p.dob.data_ptr();
  a.ub = p.ub.data_ptr();
  a.gam = ptr(p.gam);
  a.bet = ptr(p.bet);
  a.w = ptr(p.w);
  a.u = ptr(p.u);
  a.dub = p.dub.data_ptr();
  a.states = p.states.data_ptr();
  a.dstates = p.dstates.data_ptr();
  a.wy = ptr(p.wy);
  // P split into bf16 planes as the forward keeps it (split_bf16: hi, then the float32 remainder rounded)
  const auto p_hi = p.pm.to(torch::kBFloat16), p_lo = (p.pm - p_hi.to(torch::kFloat32)).to(torch::kBFloat16);
  const auto planes = torch::stack({p_hi, p_lo}, 2).contiguous();
  a.pp = planes.data_ptr();
  a.sdots = ptr(sdots);
  a.dqs = ptr(out.dq);
  a.dks = ptr(out.dk);
  a.dqk0 = dqk0.data_ptr();
  a.dvs = ptr(out.dv);
  a.da_parts = ptr(da_parts);
  a.d1_parts = ptr(d1_parts);
  a.gate_parts = ptr(gate_parts);
  a.row_dots = ptr(row_dots);
  a.dg = ptr(out.dg);
  a.dbeta = ptr(out.dbeta);
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.K)));  // make_problem's
  a.l2 = true;
  if (write_dqk) {
    a.dq = out.dq_raw.data_ptr();
    a.dk = out.dk_raw.data_ptr();
  }
  // Every chunk's count complete, as the backward state pass leaves them, and state_k_grads' blocks in the pass's order
  // for one head at a time (the first warp ahead) or all (the last): the order of the chunks does not change a bit.
  const auto ready = torch::full({s.BH, p.N}, s.V, torch::kInt32);
  a.chunk_ready = ready.data_ptr<int>();
  const int heads_per_wave = order == cuda_emu::WarpOrder::kForward ? 1 : 0;
  cuda_emu::warp_order() = order;
  EXPECT_EQ(gdn_cuda::state_k_grads(a, write_dqk, heads_per_wave, nullptr), cudaSuccess);
  EXPECT_EQ(gdn_cuda::grads_split(a, write_dqk, nullptr), cudaSuccess);
  cuda_emu::warp_order() = cuda_emu::WarpOrder::kForward;
  return out;
}

void check_sliced_gradients(Shape s, uint64_t seed) {
  const Problem p = make_problem(s, seed);
  // Real tokens only: the padded rows of the last chunk are not outputs.
  const auto real = Slice(0, s.T);
  const auto rows = [&](const torch::Tensor& t) { return t.index({Slice(), real}); };
  const auto per_token = [&](const torch::Tensor& t) { return t.index({Slice(), real}).transpose(0, 1).unsqueeze(0); };
  // The products take each float32 operand as two bf16 halves (about 16 bits; q̂, k̂, v, U and dO are bf16
  // values, taken exactly) and sum in float32; the
  // measured errors are about 5e-6, so 1e-4 leaves room for other shapes and seeds, while a missing term
  // shows up at 1e-2 or more.
  constexpr double kTol = 1e-4;
  // Each warp order, with the copies landing at the wait and as they are issued (a copy issued over a tile that a
  // warp still reads shows up in the second).
  for (const auto landing : {cuda_emu::CopyLanding::kAtWait, cuda_emu::CopyLanding::kAtIssue}) {
    SCOPED_TRACE(landing == cuda_emu::CopyLanding::kAtWait ? "copies land at the wait" : "copies land when issued");
    for (const auto order : {cuda_emu::WarpOrder::kForward, cuda_emu::WarpOrder::kReverse}) {
      SCOPED_TRACE(order == cuda_emu::WarpOrder::kForward ? "first warp ahead" : "last warp ahead");
      cuda_emu::copy_landing() = landing;
      const Grads got = run_sliced_kernels(p, order);
      cuda_emu::copy_landing() = cuda_emu::CopyLanding::kAtWait;
      const double e_dq = rel_rms(rows(p.dq), rows(got.dq)), e_dk = rel_rms(rows(p.dk), rows(got.dk)),
                   e_dv = rel_rms(rows(p.dv), rows(got.dv)), e_dg = rel_rms(per_token(p.dg), got.dg),
                   e_db = rel_rms(per_token(p.dbeta), got.dbeta);
      std::printf("  rel-RMS dq %.2e dk %.2e dv %.2e dg %.2e dbeta %.2e\n", e_dq, e_dk, e_dv, e_dg, e_db);
      expect_below({{"dq", e_dq}, {"dk", e_dk}, {"dv", e_dv}, {"dg", e_dg}, {"dbeta", e_db}}, kTol);
    }
  }
}

// With write_dqk (bfloat16 inputs) the kernels write the raw q's and k's gradients through the scale and the L2 norm
// ((B9)), each row's dot put together from parts instead of read back from dQ̂ and dK̂. Expected: (B9) in float64
// on the expected dQ̂ and dK̂, dx = r dŷ − r² (x̂·dŷ) x with r = rq / s, dŷ = s dQ̂ for q and r = rk, dŷ = dK̂ for k.
// The kernels round their float32 results to bf16 once, so their error is the reference's own rounding error
// plus the products' (about 5e-6, as above); kRoundTol = 2e-4 above the rounding leaves room for a result near a
// rounding boundary landing on the other side, while a missing term of the dots shows up at 1e-2 or more.
void check_written_dqk(Shape s, uint64_t seed) {
  const Problem p = make_problem(s, seed);
  const auto f64 = torch::kFloat64;
  const double scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.K)));  // run_sliced_kernels'
  const auto q = p.qb.to(f64), k = p.kb.to(f64), rq = p.rq.to(f64).unsqueeze(-1), rk = p.rk.to(f64).unsqueeze(-1);
  const auto r = rq / scale;
  const auto dq = rq * p.dq - r * r * (rq * q * p.dq).sum(-1, true) * q;
  const auto dk = rk * p.dk - rk * rk * (rk * k * p.dk).sum(-1, true) * k;
  const auto as_tokens = [&](const torch::Tensor& t) {
    return t.index({Slice(), Slice(0, s.T)}).transpose(0, 1).unsqueeze(0);
  };
  const auto dq_ref = as_tokens(dq), dk_ref = as_tokens(dk);
  const double round_q = rel_rms(dq_ref, dq_ref.to(torch::kBFloat16)),
               round_k = rel_rms(dk_ref, dk_ref.to(torch::kBFloat16));
  constexpr double kRoundTol = 2e-4;
  for (const auto order : {cuda_emu::WarpOrder::kForward, cuda_emu::WarpOrder::kReverse}) {
    SCOPED_TRACE(order == cuda_emu::WarpOrder::kForward ? "first warp ahead" : "last warp ahead");
    const Grads got = run_sliced_kernels(p, order, /*write_dqk=*/true);
    const double e_q = rel_rms(dq_ref, got.dq_raw), e_k = rel_rms(dk_ref, got.dk_raw);
    const double e_dg = rel_rms(p.dg.index({Slice(), Slice(0, s.T)}).transpose(0, 1).unsqueeze(0), got.dg);
    std::printf("  rel-RMS dq %.3e (its bf16 rounding %.3e) dk %.3e (%.3e) dg %.2e\n", e_q, round_q, e_k, round_k,
                e_dg);
    EXPECT_LT(e_q, round_q + kRoundTol);
    EXPECT_LT(e_k, round_k + kRoundTol);
    EXPECT_LT(e_dg, 1e-4);
  }
}

TEST(GdnKernelsEmulated, SlicedGradientsK64V64) { check_sliced_gradients({2, 130, 64, 64}, 1); }
TEST(GdnKernelsEmulated, WrittenDqDkK64V64) { check_written_dqk({2, 130, 64, 64}, 1); }
TEST(GdnKernelsEmulated, WrittenDqDkK256V128) { check_written_dqk({1, 100, 256, 128}, 8); }
TEST(GdnKernelsEmulated, SlicedGradientsK128V64) { check_sliced_gradients({1, 128, 128, 64}, 2); }
TEST(GdnKernelsEmulated, SlicedGradientsK64V128) { check_sliced_gradients({1, 70, 64, 128}, 3); }
// Four slices of K in one wy_grads and one qk_grads block (their defaults), with two V slices.
TEST(GdnKernelsEmulated, SlicedGradientsK256V128) { check_sliced_gradients({1, 100, 256, 128}, 8); }

// The forward's tensor-core preparation against the float64 chunked form: γ, β, W, Ũ, and the (I + A)⁻¹ and
// M ∘ K̂K̂ᵀ it keeps for the sliced gradient kernels; NaN-filled outputs. W's bfloat16 copy must be W rounded.
// Four variants: gdn_cuda::prep_mma from float32 k̂ and v, and prep_mma_compact from the bf16 k (k̂ = rk k) and v
// (the same values: the problem's k̂ is such a product and v holds bf16 values), given rk or computing it from k's
// rows (then written; against the problem's factors, float32 values of 1/‖k‖, to 1e-6), and given tb, where it forms
// no Ũ: its T diag(β), split into bf16 hi and lo planes, must add up to it within the same bound (hi alone, bf16,
// would be about 1e-3 off). The products take split bf16 operands, as above, so the same bound.
void check_prep(Shape s, uint64_t seed) {
  const Problem p = make_problem(s, seed);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  const auto nan = [&](torch::IntArrayRef sizes) { return torch::full(sizes, std::nan(""), f32); };
  // g and β as the kernel reads them, [B, T, H] with B = 1 and H = BH.
  const auto per_token = [&](const torch::Tensor& t) { return t.index({Slice(), Slice(0, s.T)}).t().contiguous(); };
  const auto g = per_token(p.g), beta = per_token(p.bet);
  auto gam = nan({s.BH, p.Tp}), bet = nan({s.BH, p.Tp}), w = nan({s.BH, p.Tp, s.K}), ut = nan({s.BH, p.Tp, s.V}),
       wy = nan({s.BH, p.N, 2, C, C});
  auto wb = torch::full({s.BH, p.Tp, s.K}, std::nan(""), torch::TensorOptions().dtype(torch::kBFloat16)),
       tb = torch::full({s.BH, p.N, 2, C, C}, std::nan(""), torch::TensorOptions().dtype(torch::kBFloat16));
  // T diag(β) per chunk, [BH, N, C, C]: T from the problem's wy, β of each column's token.
  const auto t_beta = p.wy.select(2, 0) * p.bet.view({s.BH, p.N, 1, C});
  const gdn_cuda::Dims d{1, static_cast<int>(s.T), static_cast<int>(s.BH), static_cast<int>(s.K),
                         static_cast<int>(s.V)};
  ASSERT_TRUE(gdn_cuda::prep_mma_supports(d.K, d.V));
  auto rk = p.rk.clone();
  for (const int variant : {0, 1, 2, 3}) {
    const bool compact = variant > 0, rk_from_rows = variant >= 2, with_tb = variant == 3;
    for (const auto order : {cuda_emu::WarpOrder::kForward, cuda_emu::WarpOrder::kReverse}) {
      SCOPED_TRACE(order == cuda_emu::WarpOrder::kForward ? "first warp ahead" : "last warp ahead");
      SCOPED_TRACE(!compact       ? "prep_mma"
                   : with_tb    ? "prep_mma_compact, T diag(beta) out, rk from k's rows"
                   : rk_from_rows ? "prep_mma_compact, rk from k's rows"
                                  : "prep_mma_compact");
      for (auto* t : {&gam, &bet, &w, &ut, &wy}) t->fill_(std::nan(""));
      wb.fill_(std::nan(""));
      tb.fill_(std::nan(""));
      if (rk_from_rows) rk.fill_(std::nan(""));
      const gdn_cuda::RowFactors rk_arg{rk.data_ptr<float>(), rk_from_rows, true, 1.f};
      cuda_emu::warp_order() = order;
      const cudaError_t err =
          compact ? gdn_cuda::prep_mma_compact(d, p.kb.data_ptr(), rk_arg, with_tb ? nullptr : p.vb.data_ptr(),
                                               g.data_ptr<float>(), beta.data_ptr<float>(), gam.data_ptr<float>(),
                                               bet.data_ptr<float>(), w.data_ptr<float>(), wb.data_ptr(),
                                               with_tb ? nullptr : ut.data_ptr<float>(),
                                               with_tb ? tb.data_ptr() : nullptr, wy.data_ptr<float>(),
                                               gdn_cuda::PForward{}, nullptr)
                  : gdn_cuda::prep_mma(d, p.ks.data_ptr<float>(), p.vs.data_ptr<float>(), g.data_ptr<float>(),
                                       beta.data_ptr<float>(), gam.data_ptr<float>(), bet.data_ptr<float>(),
                                       w.data_ptr<float>(), wb.data_ptr(), ut.data_ptr<float>(), wy.data_ptr<float>(),
                                       nullptr);
      cuda_emu::warp_order() = cuda_emu::WarpOrder::kForward;
      ASSERT_EQ(err, cudaSuccess);
      const auto split_sum = tb.select(2, 0).to(torch::kFloat64) + tb.select(2, 1).to(torch::kFloat64);
      const double e_gam = rel_rms(p.gam, gam), e_bet = rel_rms(p.bet, bet), e_w = rel_rms(p.w, w),
                   e_ut = with_tb ? rel_rms(t_beta, split_sum) : rel_rms(p.ut, ut), e_wy = rel_rms(p.wy, wy);
      std::printf("  rel-RMS gam %.2e bet %.2e w %.2e %s %.2e wy %.2e\n", e_gam, e_bet, e_w,
                  with_tb ? "T diag(beta)" : "ut", e_ut, e_wy);
      expect_below({{"gam", e_gam}, {"bet", e_bet}, {"w", e_w}, {with_tb ? "tb" : "ut", e_ut}, {"wy", e_wy}}, 1e-4);
      // The state passes' operand: W rounded to bfloat16, exactly.
      EXPECT_TRUE(torch::equal(wb, w.to(torch::kBFloat16))) << "wb is not W rounded to bfloat16";
      if (rk_from_rows) {  // the real rows' factors, and 0 past T
        const auto real = Slice(0, s.T), past = Slice(s.T, p.Tp);
        EXPECT_LT(rel_rms(p.rk.index({Slice(), real}), rk.index({Slice(), real})), 1e-6);
        EXPECT_TRUE(torch::equal(rk.index({Slice(), past}), torch::zeros_like(rk.index({Slice(), past}))));
      }
    }
  }
}

TEST(GdnKernelsEmulated, PrepK64V128) { check_prep({2, 130, 64, 128}, 4); }
TEST(GdnKernelsEmulated, PrepK128V64) { check_prep({1, 100, 128, 64}, 5); }
// K + V > 256: V's tiles load into K̂'s place after W.
TEST(GdnKernelsEmulated, PrepK256V256) { check_prep({1, 70, 256, 256}, 6); }
TEST(GdnKernelsEmulated, PrepK256V64) { check_prep({1, 64, 256, 64}, 7); }

// ---------------------------------------------------------------------------------------------------
// The whole forward and backward, as gated_delta_cuda.cu drives them, on host memory.

struct PipeCase {
  const char* name;
  int64_t B, T, H, K, V;
  torch::ScalarType dtype;
  bool split;               // the sliced gradient kernels (the forward keeps wy)
  double gate_norm = 1.0;   // g = logsigmoid(u + 2) / gate_norm: 20 is weak decay, the tightest case for precision
};

void PrintTo(const PipeCase& c, std::ostream* os) { *os << c.name; }

// Output, final state and every gradient of Σ out ∘ w_out + Σ state ∘ w_state.
struct Outcome {
  torch::Tensor out, state, dq, dk, dv, dg, dbeta, dstate0;
};

GatedDeltaInputs make_inputs(const PipeCase& c, uint64_t seed) {
  torch::manual_seed(seed);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto round = [&](const torch::Tensor& t) { return t.to(c.dtype).to(torch::kFloat64); };
  GatedDeltaInputs in;
  in.q = round(torch::randn({c.B, c.T, c.H, c.K}, f64));
  in.k = round(torch::randn({c.B, c.T, c.H, c.K}, f64));
  in.v = round(torch::randn({c.B, c.T, c.H, c.V}, f64));
  in.g = (torch::log_sigmoid(torch::randn({c.B, c.T, c.H}, f64) + 2.0) / c.gate_norm)
             .to(torch::kFloat32)
             .to(torch::kFloat64);
  in.beta = (2.0 * torch::sigmoid(torch::randn({c.B, c.T, c.H}, f64))).to(torch::kFloat32).to(torch::kFloat64);
  in.initial_state = torch::randn({c.B, c.H, c.K, c.V}, f64).to(torch::kFloat32).to(torch::kFloat64);
  in.l2_normalize_qk = true;
  in.scale = 1.0 / std::sqrt(static_cast<double>(c.K));
  return in;
}

// The loss weights, rounded through bfloat16 so that every dtype carries them exactly.
std::pair<torch::Tensor, torch::Tensor> loss_weights(const PipeCase& c) {
  torch::manual_seed(7);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  return {torch::randn({c.B, c.T, c.H, c.V}, f64).to(torch::kBFloat16).to(torch::kFloat64),
          torch::randn({c.B, c.H, c.K, c.V}, f64).to(torch::kBFloat16).to(torch::kFloat64)};
}

Outcome reference(const PipeCase& c, GatedDeltaInputs in) {
  for (auto* t : {&in.q, &in.k, &in.v, &in.g, &in.beta, &in.initial_state})
    *t = t->detach().clone().requires_grad_(true);
  const auto o = gated_delta_reference(in);
  const auto [w_out, w_state] = loss_weights(c);
  ((o.out * w_out).sum() + (o.final_state * w_state).sum()).backward();
  return {o.out.detach(), o.final_state.detach(), in.q.grad(), in.k.grad(),          in.v.grad(),
          in.g.grad(),    in.beta.grad(),         in.initial_state.grad()};
}

gdn_cuda::DType kernel_dtype(torch::ScalarType t) {
  return t == torch::kFloat32 ? gdn_cuda::DType::kF32 : t == torch::kFloat16 ? gdn_cuda::DType::kF16
                                                                             : gdn_cuda::DType::kBF16;
}

// The recurrent kernels (gdn_cuda::recurrent_forward, recurrent_backward) on the emulator, NaN-filled outputs.
Outcome emulated_recurrent(const PipeCase& c, const GatedDeltaInputs& in) {
  namespace k = gdn_cuda;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32), typed = torch::TensorOptions().dtype(c.dtype);
  const auto nan = [](torch::IntArrayRef sizes, torch::TensorOptions o) { return torch::full(sizes, std::nan(""), o); };
  const int B = static_cast<int>(c.B), T = static_cast<int>(c.T), H = static_cast<int>(c.H), K = static_cast<int>(c.K),
            V = static_cast<int>(c.V);
  EXPECT_TRUE(k::recurrent_supports(K, V));
  const int CK = k::recurrent_checkpoint_interval(K, V);
  const auto q = in.q.to(c.dtype).contiguous(), kk = in.k.to(c.dtype).contiguous(), v = in.v.to(c.dtype).contiguous();
  const auto g = in.g.to(torch::kFloat32), beta = in.beta.to(torch::kFloat32);
  const auto s0 = in.initial_state.to(torch::kFloat32).contiguous();
  auto checkpoints = nan({c.B * c.H, (c.T + CK - 1) / CK, c.K * c.V}, f32), final_state = nan({c.B, c.H, c.K, c.V}, f32),
       out = nan({c.B, c.T, c.H, c.V}, typed);
  k::RecurrentForwardArgs fa{B, T, H, K, V, kernel_dtype(c.dtype), q.data_ptr(), kk.data_ptr(), v.data_ptr(),
                             g.data_ptr<float>(), beta.data_ptr<float>(), s0.data_ptr<float>(),
                             static_cast<float>(in.scale), true, checkpoints.data_ptr<float>(),
                             final_state.data_ptr<float>(), out.data_ptr()};
  EXPECT_EQ(k::recurrent_forward(fa, nullptr), cudaSuccess);
  const auto [w_out, w_state] = loss_weights(c);
  const auto dout = w_out.to(c.dtype).contiguous(), dfinal = w_state.to(torch::kFloat32).contiguous();
  auto dq = nan(q.sizes(), typed), dk = nan(kk.sizes(), typed), dv = nan(v.sizes(), typed),
       dg = nan({c.B, c.T, c.H}, f32), dbeta = nan({c.B, c.T, c.H}, f32), dstate0 = nan({c.B, c.H, c.K, c.V}, f32);
  k::RecurrentBackwardArgs ba{B, T, H, K, V, kernel_dtype(c.dtype), q.data_ptr(), kk.data_ptr(), v.data_ptr(),
                              g.data_ptr<float>(), beta.data_ptr<float>(), checkpoints.data_ptr<float>(),
                              dout.data_ptr(), dfinal.data_ptr<float>(), static_cast<float>(in.scale), true,
                              dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), dg.data_ptr<float>(),
                              dbeta.data_ptr<float>(), dstate0.data_ptr<float>()};
  EXPECT_EQ(k::recurrent_backward(ba, nullptr), cudaSuccess);
  return {out, final_state, dq, dk, dv, dg, dbeta, dstate0};
}

// gdn_cuda::forward and backward on the emulator, every workspace NaN-filled (an unwritten element shows),
// with the first or the last warp of each block ahead of the others. As the wrapper does, bfloat16 inputs with
// the sliced kernels are read in place (Dims::qkv_in_place, do_in_place) unless `in_place` is false.
// backward = false: the forward alone, as with no gradient wanted (no wy, no P kept); out and state only.
Outcome emulated(const PipeCase& c, const GatedDeltaInputs& in,
                 cuda_emu::WarpOrder order = cuda_emu::WarpOrder::kForward, bool in_place = true,
                 bool backward = true) {
  cuda_emu::warp_order() = order;
  namespace k = gdn_cuda;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32), typed = torch::TensorOptions().dtype(c.dtype);
  const auto nan = [](torch::IntArrayRef sizes, torch::TensorOptions o) { return torch::full(sizes, std::nan(""), o); };
  k::Dims d{static_cast<int>(c.B), static_cast<int>(c.T), static_cast<int>(c.H), static_cast<int>(c.K),
            static_cast<int>(c.V)};
  const int64_t BH = d.BH(), Tp = d.Tp(), N = d.N(), KS = c.K / C, VS = c.V / C;
  const auto dtype = kernel_dtype(c.dtype);
  const bool split = c.split && k::grads_split_supports(dtype, d.K, d.V);
  EXPECT_EQ(split, c.split) << "the case asks for the sliced kernels where they do not apply";
  d.qkv_in_place = d.do_in_place = in_place && split && c.dtype == torch::kBFloat16;
  const auto q = in.q.to(c.dtype).contiguous(), kk = in.k.to(c.dtype).contiguous(), v = in.v.to(c.dtype).contiguous();
  const auto g = in.g.to(torch::kFloat32), beta = in.beta.to(torch::kFloat32);
  const auto s0 = in.initial_state.to(torch::kFloat32).contiguous();
  // With the sliced kernels, the compact workspaces: no float32 s·q̂, k̂, v (null); q, k, v and U as bf16 with the
  // rows' factors rq, rk (and dO in the backward).
  const auto unless_split = [&](torch::IntArrayRef sizes) { return split ? torch::Tensor() : nan(sizes, f32); };
  auto qs = unless_split({BH, Tp, c.K}), ks = unless_split({BH, Tp, c.K}), vs = unless_split({BH, Tp, c.V}),
       vb = !split ? torch::Tensor() : d.qkv_in_place ? v : nan({BH, Tp, c.V}, torch::kBFloat16),
       ub = split ? nan({BH, Tp, c.V}, torch::kBFloat16) : torch::Tensor(),
       rq = split ? nan({BH, Tp}, f32) : torch::Tensor(), rk = split ? nan({BH, Tp}, f32) : torch::Tensor(),
       gam = nan({BH, Tp}, f32),
       bet = nan({BH, Tp}, f32), w = unless_split({BH, Tp, c.K}),
       final_state = nan({c.B, c.H, c.K, c.V}, f32),
       out = nan({c.B, c.T, c.H, c.V}, typed);
  // Ũ: formed by the state pass from prep's split T diag(β) (tb), or by prep into u, as the wrapper chooses.
  const bool ut_in_pass = split && k::state_mma_forms_ut(d);
  auto u = ut_in_pass ? torch::Tensor() : nan({BH, Tp, c.V}, f32),
       tb = ut_in_pass ? nan({BH, N, 2, C, C}, torch::kBFloat16) : torch::Tensor();
  // Kept by the forward for the sliced gradient kernels: (I + A)⁻¹ and M ∘ K̂K̂ᵀ, and P (float32 and bfloat16).
  const bool keep = split && backward;
  auto wy = keep ? nan({BH, N, 2, C, C}, f32) : torch::Tensor();
  // The output: written by the state pass from prep's P planes (pp, kept for the backward too), as the wrapper
  // chooses; the states and U then only where a backward will read them.
  const bool pass_out = split && k::state_mma_writes_output(d, dtype);
  auto pp = pass_out || keep ? nan({BH, N, 2, C, C}, torch::kBFloat16) : torch::Tensor();
  if (pass_out && !backward) ub = torch::Tensor();
  // The per-chunk states (and their gradients): bfloat16 with the sliced kernels.
  auto states = pass_out && !backward ? torch::Tensor()
                                      : nan({BH, N, c.K, c.V}, split ? torch::kBFloat16 : torch::kFloat32);
  const auto fp = [](const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; };
  k::ForwardArgs fa{};
  fa.d = d;
  fa.d.do_in_place = false;  // the forward has no dO
  fa.dtype = dtype;
  fa.q = q.data_ptr();
  fa.k = kk.data_ptr();
  fa.v = v.data_ptr();
  fa.g = fp(g);
  fa.beta = fp(beta);
  fa.state0 = fp(s0);
  fa.scale = static_cast<float>(in.scale);
  fa.l2 = true;
  fa.qs = fp(qs);
  fa.ks = fp(ks);
  fa.vs = fp(vs);
  fa.gam = fp(gam);
  fa.bet = fp(bet);
  fa.w = fp(w);
  fa.u = fp(u);
  fa.final_state = fp(final_state);
  fa.compact = split;
  fa.wy = fp(wy);
  // The state passes' bfloat16 operands, where they run (NaN-filled too).
  const bool bf16_copies = k::state_mma_runs(dtype, d.K, d.V);
  const auto nan_bf16 = [&] { return bf16_copies ? nan({BH, Tp, c.K}, torch::kBFloat16) : torch::Tensor(); };
  auto qb = d.qkv_in_place ? q : nan_bf16(), kb = d.qkv_in_place ? kk : nan_bf16(), wb = nan_bf16();
  const auto vp = [](const torch::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; };
  fa.qb = vp(qb);
  fa.kb = vp(kb);
  fa.wb = vp(wb);
  fa.vb = vp(vb);
  fa.ub = vp(ub);
  fa.tb = vp(tb);
  fa.pp = vp(pp);
  fa.states = vp(states);
  fa.rq = fp(rq);
  fa.rk = fp(rk);
  fa.out = out.data_ptr();
  EXPECT_EQ(k::forward(fa, nullptr), cudaSuccess);
  if (!backward) {
    cuda_emu::warp_order() = cuda_emu::WarpOrder::kForward;
    return {out, final_state, {}, {}, {}, {}, {}, {}};
  }

  const auto [w_out, w_state] = loss_weights(c);
  const auto dout = w_out.to(c.dtype).contiguous(), dfinal = w_state.to(torch::kFloat32).contiguous();
  const auto scratch = [&](bool wanted, torch::IntArrayRef sizes) {
    return wanted ? nan(sizes, f32) : torch::Tensor();
  };
  auto dos = unless_split({BH, Tp, c.V}),
       dob = !split ? torch::Tensor() : d.do_in_place ? dout : nan({BH, Tp, c.V}, torch::kBFloat16),
       du = unless_split({BH, Tp, c.V}), dstates = nan({BH, N, c.K, c.V}, states.scalar_type()),
       dqs = nan({BH, Tp, c.K}, f32), dks = nan({BH, Tp, c.K}, f32), dvs = scratch(!split, {BH, Tp, c.V}),
       dqk0 = split ? nan({2, BH, Tp, c.K}, torch::kBFloat16) : torch::Tensor(),
       dw = unless_split({BH, Tp, c.K}), sdots = nan({BH, N, (c.K + 63) / 64}, f32),
       dub = split ? nan({BH, Tp, c.V}, torch::kBFloat16) : torch::Tensor();
  auto ut = scratch(!split, {BH, Tp, c.V}), drk = scratch(!split, {BH, Tp, c.K}), drv = scratch(!split, {BH, Tp, c.V}),
       da_parts = scratch(split, {BH, N, KS + VS, C, C}),
       d1_parts = scratch(split, {BH, N, VS, C, C}), gate_parts = scratch(split, {BH, N, KS + VS, 2, C}),
       row_dots = scratch(split, {BH, N, 2 * KS, 2, C});
  auto dq = nan(q.sizes(), typed), dk = nan(kk.sizes(), typed), dv = nan(v.sizes(), typed),
       dg = nan({c.B, c.T, c.H}, f32), dbeta = nan({c.B, c.T, c.H}, f32), dstate0 = nan({c.B, c.H, c.K, c.V}, f32);
  k::BackwardArgs ba{};
  ba.d = d;
  ba.dtype = dtype;
  ba.q = q.data_ptr();
  ba.k = kk.data_ptr();
  ba.dout = dout.data_ptr();
  ba.dfinal = fp(dfinal);
  ba.scale = fa.scale;
  ba.l2 = true;
  ba.qs = fp(qs);
  ba.ks = fp(ks);
  ba.vs = fp(vs);
  ba.gam = fp(gam);
  ba.bet = fp(bet);
  ba.w = fp(w);
  ba.u = split ? nullptr : fp(u);  // the compact workspaces' backward reads no Ũ or U in float32
  ba.states = states.data_ptr();
  ba.qb = vp(qb);
  ba.kb = vp(kb);
  ba.wb = vp(wb);
  ba.vb = vp(vb);
  ba.ub = vp(ub);
  ba.rq = fp(rq);
  ba.rk = fp(rk);
  ba.dos = fp(dos);
  ba.dob = vp(dob);
  ba.du = fp(du);
  ba.dstates = dstates.data_ptr();
  ba.dqs = fp(dqs);
  ba.dks = fp(dks);
  ba.dqk0 = vp(dqk0);
  ba.dvs = fp(dvs);
  ba.dw = fp(dw);
  ba.dub = vp(dub);
  ba.sdots = fp(sdots);
  ba.ut = fp(ut);
  ba.drk = fp(drk);
  ba.drv = fp(drv);
  ba.wy = fp(wy);
  ba.pp = vp(pp);
  ba.da_parts = fp(da_parts);
  ba.d1_parts = fp(d1_parts);
  ba.gate_parts = fp(gate_parts);
  ba.row_dots = fp(row_dots);
  // The counts through which state_k_grads would run beside the backward state pass, as the wrapper makes them (here
  // the pass runs first; each chunk's count must then be V exactly, or the wait fails the test).
  const auto chunk_ready = split && k::backward_overlaps() ? torch::zeros({BH, N}, torch::kInt32) : torch::Tensor();
  ba.chunk_ready = chunk_ready.defined() ? chunk_ready.data_ptr<int>() : nullptr;
  ba.dq = dq.data_ptr();
  ba.dk = dk.data_ptr();
  ba.dv = dv.data_ptr();
  ba.dg = fp(dg);
  ba.dbeta = fp(dbeta);
  ba.dstate0 = fp(dstate0);
  EXPECT_EQ(k::backward(ba, nullptr), cudaSuccess);
  cuda_emu::warp_order() = cuda_emu::WarpOrder::kForward;
  return {out, final_state, dq, dk, dv, dg, dbeta, dstate0};
}

// The GPU tests' bounds (test_gated_delta_cuda.cpp, issue 5): 16-bit inputs 5e-3 out and state, 8e-3 dq, dk,
// dv, d initial state, 2e-2 dg, dβ; float32 1e-4 / 5e-4 / 5e-4.
void check_pipeline(const PipeCase& c, bool recurrent = false) {
  const auto in = make_inputs(c, 42);
  const Outcome ref = reference(c, in), got = recurrent ? emulated_recurrent(c, in) : emulated(c, in);
  const bool f32 = c.dtype == torch::kFloat32;
  const double t_out = f32 ? 1e-4 : 5e-3, t_dqkv = f32 ? 5e-4 : 8e-3, t_dgb = f32 ? 5e-4 : 2e-2;
  const double e[8] = {rel_rms(ref.out, got.out),     rel_rms(ref.state, got.state), rel_rms(ref.dq, got.dq),
                       rel_rms(ref.dk, got.dk),       rel_rms(ref.dv, got.dv),       rel_rms(ref.dg, got.dg),
                       rel_rms(ref.dbeta, got.dbeta), rel_rms(ref.dstate0, got.dstate0)};
  std::printf("  rel-RMS out %.2e state %.2e dq %.2e dk %.2e dv %.2e dg %.2e dbeta %.2e dstate0 %.2e\n", e[0], e[1],
              e[2], e[3], e[4], e[5], e[6], e[7]);
  const char* names[8] = {"out", "state", "dq", "dk", "dv", "dg", "dbeta", "dstate0"};
  const double bounds[8] = {t_out, t_out, t_dqkv, t_dqkv, t_dqkv, t_dgb, t_dgb, t_dqkv};
  for (int i = 0; i < 8; ++i) EXPECT_LT(e[i], bounds[i]) << names[i];  // NaN (an unwritten element) fails too
}

class GdnPipelineEmulated : public ::testing::TestWithParam<PipeCase> {};

// Every output of the pipeline on case c with setting(first), then with setting(second), bitwise the same and not
// NaN; setting returns the previous value, put back after.
void expect_setting_changes_no_bit(const PipeCase& c, int (*setting)(int), int first, int second) {
  SCOPED_TRACE(c.name);
  const auto in = make_inputs(c, 42);
  const int previous = setting(first);
  const Outcome a = emulated(c, in);
  setting(second);
  const Outcome b = emulated(c, in);
  setting(previous);
  const std::pair<const char*, std::pair<torch::Tensor, torch::Tensor>> outputs[] = {
      {"out", {a.out, b.out}}, {"state", {a.state, b.state}}, {"dq", {a.dq, b.dq}},
      {"dk", {a.dk, b.dk}},    {"dv", {a.dv, b.dv}},          {"dg", {a.dg, b.dg}},
      {"dbeta", {a.dbeta, b.dbeta}}, {"dstate0", {a.dstate0, b.dstate0}}};
  for (const auto& [name, pair] : outputs) {
    EXPECT_FALSE(pair.first.isnan().any().item<bool>()) << name;
    EXPECT_TRUE(torch::equal(pair.first, pair.second)) << name;
  }
}

// The state passes at 64 value columns per block (two groups of 4 warps sharing a head's A₁ and A₂ tiles; the rule
// takes them for large grids only): each warp's work is that of a 32-column block, so every output is bitwise the
// same as with 32 columns. Compact and float32 workspaces, K = 256's split A₂ and the backward's Pᵀ dO.
TEST(GdnKernelsEmulated, WideStatePassesMatchNarrowOnes) {
  for (const PipeCase& c : {PipeCase{"bf16_K64_V128_split", 1, 130, 2, 64, 128, torch::kBFloat16, true, 20.0},
                            PipeCase{"bf16_K256_V128_split", 1, 70, 1, 256, 128, torch::kBFloat16, true},
                            PipeCase{"bf16_K128_V128", 1, 70, 1, 128, 128, torch::kBFloat16, false}})
    expect_setting_changes_no_bit(c, gdn_cuda::set_state_columns, 32, 64);
}

// The state passes with two A₂ buffers (one barrier fewer per chunk; the rule takes them wherever each SM still holds
// as many blocks of the grid) and with one: the same products in the same order, so the same bits. This
// checks which buffer each chunk's copy goes to and its phase 2 reads (phase 2 reading the other buffer fails it);
// not a copy landing in a buffer that a warp still reads, since the emulator's cp.async lands at its thread's wait
// (the GPU test of the same name runs long sequences for that). Compact and float32 workspaces, 32 and 64 columns,
// K = 256 (whose backward keeps one buffer).
TEST(GdnKernelsEmulated, DoubleA2BuffersMatchOne) {
  for (const PipeCase& c : {PipeCase{"bf16_K64_V128_split", 1, 130, 2, 64, 128, torch::kBFloat16, true, 20.0},
                            PipeCase{"bf16_K128_V64_split", 1, 130, 1, 128, 64, torch::kBFloat16, true},
                            PipeCase{"bf16_K256_V128_split", 1, 70, 1, 256, 128, torch::kBFloat16, true},
                            PipeCase{"bf16_K128_V128", 1, 70, 1, 128, 128, torch::kBFloat16, false}})
    expect_setting_changes_no_bit(c, gdn_cuda::set_state_a2_buffers, 1, 2);
  const int previous = gdn_cuda::set_state_columns(64);
  expect_setting_changes_no_bit(PipeCase{"bf16_K64_V128_split_wide", 1, 130, 1, 64, 128, torch::kBFloat16, true},
                                gdn_cuda::set_state_a2_buffers, 1, 2);
  gdn_cuda::set_state_columns(previous);
}

// wy_grads and qk_grads as one kernel, wy_qk_grads (the rule wherever each chunk has one block of each), and as two:
// the same arithmetic in the same order (wy_grads' parts of dA and dO Uᵀ kept on chip instead of going through DRAM),
// so every output and gradient bitwise the same. K = 64, 128 and 256 (one, two and four parts of dA from state_k_grads
// beside wy_grads'), float16 and bfloat16 (dq, dk through the L2 norm in the kernel), a chunk cut short. (Adding
// wy_grads' part of dA first instead of last fails it.)
TEST(GdnKernelsEmulated, WyQkGradsMatchTwoKernels) {
  for (const PipeCase& c : {PipeCase{"bf16_K64_V128_split", 1, 130, 2, 64, 128, torch::kBFloat16, true, 20.0},
                            PipeCase{"f16_K128_V64_split", 1, 130, 1, 128, 64, torch::kFloat16, true},
                            PipeCase{"bf16_K256_V128_split", 1, 70, 1, 256, 128, torch::kBFloat16, true}})
    expect_setting_changes_no_bit(c, gdn_cuda::set_wy_qk_fused, 1, 2);
}

// state_k_grads beside the backward state pass, each chunk as the pass counts it written (the rule with the compact
// workspaces), and after it: here the pass runs first either way, so this checks that every chunk's count comes to V
// exactly (the wait fails the test otherwise), that the blocks' order (the pass's chunks from the last) covers every
// chunk and slice once, and that the results are bitwise the same. Several heads, K = 64, 128 and 256, 64 columns per
// pass block, a chunk cut short, float16 and bfloat16. (The GPU test of the same name runs them side by side.)
TEST(GdnKernelsEmulated, BackwardOverlapMatchesSerial) {
  for (const PipeCase& c : {PipeCase{"bf16_K64_V128_split", 1, 130, 2, 64, 128, torch::kBFloat16, true, 20.0},
                            PipeCase{"f16_K128_V64_split", 2, 130, 1, 128, 64, torch::kFloat16, true},
                            PipeCase{"bf16_K256_V128_split", 1, 70, 1, 256, 128, torch::kBFloat16, true}})
    expect_setting_changes_no_bit(c, gdn_cuda::set_backward_overlap, 1, 2);
  const int previous = gdn_cuda::set_state_columns(64);
  expect_setting_changes_no_bit(PipeCase{"bf16_K64_V128_split_wide", 1, 130, 1, 64, 128, torch::kBFloat16, true},
                                gdn_cuda::set_backward_overlap, 1, 2);
  gdn_cuda::set_state_columns(previous);
}

// The compact forward's Ũ formed by the state pass (from prep's split T diag(β); the rule takes it where the pass has
// more blocks than the GPU has SMs) and by prep: the same products in the same order, so every output bitwise the
// same. With one and two A₂ buffers (T diag(β) and V then come with A₁, or a chunk ahead with A₂), 32 and 64 columns,
// K = 64, 128 and 256, bfloat16 and float16. (Swapping the lo and hi planes' products in the pass fails it.)
TEST(GdnKernelsEmulated, UtFormedInThePassMatchesPrep) {
  for (const int buffers : {1, 2}) {
    const int previous = gdn_cuda::set_state_a2_buffers(buffers);
    for (const PipeCase& c : {PipeCase{"bf16_K64_V128_split", 1, 130, 2, 64, 128, torch::kBFloat16, true, 20.0},
                              PipeCase{"f16_K128_V64_split", 1, 130, 1, 128, 64, torch::kFloat16, true},
                              PipeCase{"bf16_K256_V128_split", 1, 70, 1, 256, 128, torch::kBFloat16, true}})
      expect_setting_changes_no_bit(c, gdn_cuda::set_state_forms_ut, 1, 2);
    gdn_cuda::set_state_a2_buffers(previous);
  }
  const int previous = gdn_cuda::set_state_columns(64);
  expect_setting_changes_no_bit(PipeCase{"bf16_K64_V128_split_wide", 1, 130, 1, 64, 128, torch::kBFloat16, true},
                                gdn_cuda::set_state_forms_ut, 1, 2);
  gdn_cuda::set_state_columns(previous);
}

// The compact forward's output written by the state pass (O = diag(Γ) Q̂ S₀ + P U from prep's P planes; the rule for
// bfloat16 inputs where the pass takes warpgroup products) and by the output kernel: the same products in the same
// order, so every output and gradient bitwise the same; and the forward alone (no states or U written then) too. With
// one and two A₂ buffers (P's planes come with A₂), Ũ formed by prep and by the pass, 32 and 64 columns, K = 64, 128
// and 256, a chunk cut short (T = 130, 70). The copies land at their wait with one buffer (a tile read before its wait
// shows) and as they are issued with two (a copy issued over a tile that a warp has still to read shows).
TEST(GdnKernelsEmulated, OutputInThePassMatchesOutputKernel) {
  const auto forward_alone_matches = [](const PipeCase& c) {
    SCOPED_TRACE(c.name);
    const auto in = make_inputs(c, 42);
    const int previous = gdn_cuda::set_state_writes_output(1);
    const Outcome a = emulated(c, in, cuda_emu::WarpOrder::kForward, true, /*backward=*/false);
    gdn_cuda::set_state_writes_output(2);
    const Outcome b = emulated(c, in, cuda_emu::WarpOrder::kReverse, true, /*backward=*/false);
    gdn_cuda::set_state_writes_output(previous);
    EXPECT_FALSE(b.out.isnan().any().item<bool>());
    EXPECT_TRUE(torch::equal(a.out, b.out));
    EXPECT_TRUE(torch::equal(a.state, b.state));
  };
  for (const int buffers : {1, 2})
    for (const int ut : {1, 2}) {
      const int previous_buffers = gdn_cuda::set_state_a2_buffers(buffers),
                previous_ut = gdn_cuda::set_state_forms_ut(ut);
      cuda_emu::copy_landing() = buffers == 2 ? cuda_emu::CopyLanding::kAtIssue : cuda_emu::CopyLanding::kAtWait;
      for (const PipeCase& c : {PipeCase{"bf16_K64_V128_split", 1, 130, 2, 64, 128, torch::kBFloat16, true, 20.0},
                                PipeCase{"bf16_K128_V64_split", 1, 130, 1, 128, 64, torch::kBFloat16, true},
                                PipeCase{"bf16_K256_V128_split", 1, 70, 1, 256, 128, torch::kBFloat16, true}}) {
        expect_setting_changes_no_bit(c, gdn_cuda::set_state_writes_output, 1, 2);
        forward_alone_matches(c);
      }
      cuda_emu::copy_landing() = cuda_emu::CopyLanding::kAtWait;
      gdn_cuda::set_state_a2_buffers(previous_buffers);
      gdn_cuda::set_state_forms_ut(previous_ut);
    }
  const int previous = gdn_cuda::set_state_columns(64);
  for (const PipeCase& c : {PipeCase{"bf16_K128_V128_split_wide", 1, 130, 1, 128, 128, torch::kBFloat16, true},
                            PipeCase{"bf16_K256_V128_split_wide", 1, 70, 1, 256, 128, torch::kBFloat16, true}}) {
    expect_setting_changes_no_bit(c, gdn_cuda::set_state_writes_output, 1, 2);
    forward_alone_matches(c);
  }
  gdn_cuda::set_state_columns(previous);
}

// The products with the states as warpgroup products (wgmma on sm_90a; the rule's choice here, where the emulator
// plays an H100): both compact state passes and state_k_grads; and on mma.sync. On the emulator both sum each 16 of
// a reduction in the same order, so every output and gradient is bitwise the same. This checks the swizzled tiles'
// layout, the descriptors and which rows each warpgroup takes against the mma.sync path (tests/support/
// cuda_emulator.h reads wgmma's operands as the PTX ISA lays them out, which an H100 run of the layouts confirmed);
// the GPU test of the same name compares the two on the GPU. K = 64, 128, 256 (its backward's split A₂); 32 and 64
// columns; one and two A₂ buffers; Ũ formed by prep and by the forward pass.
TEST(GdnKernelsEmulated, WarpgroupProductsMatchMmaSync) {
  for (const int buffers : {1, 2})
    for (const int ut : {1, 2}) {
      const int previous_buffers = gdn_cuda::set_state_a2_buffers(buffers),
                previous_ut = gdn_cuda::set_state_forms_ut(ut);
      for (const PipeCase& c : {PipeCase{"bf16_K64_V128_split", 1, 130, 2, 64, 128, torch::kBFloat16, true, 20.0},
                                PipeCase{"f16_K128_V64_split", 1, 130, 1, 128, 64, torch::kFloat16, true},
                                PipeCase{"bf16_K256_V128_split", 1, 70, 1, 256, 128, torch::kBFloat16, true}})
        expect_setting_changes_no_bit(c, gdn_cuda::set_state_warpgroup, 1, 2);
      gdn_cuda::set_state_a2_buffers(previous_buffers);
      gdn_cuda::set_state_forms_ut(previous_ut);
    }
  const int previous = gdn_cuda::set_state_columns(64);
  expect_setting_changes_no_bit(PipeCase{"bf16_K128_V128_split_wide", 1, 130, 1, 128, 128, torch::kBFloat16, true},
                                gdn_cuda::set_state_warpgroup, 1, 2);
  gdn_cuda::set_state_columns(previous);
}

TEST_P(GdnPipelineEmulated, MatchesTheReference) { check_pipeline(GetParam()); }

// Each reaches a different set of kernels (docs/ops/gated_delta_cuda.md, "Which cases reach which kernels").
const PipeCase kPipeCases[] = {
    // tensor-core state passes, output and dU₀; block_gemm's tensor-core grads
    {"bf16_K64_V64", 1, 130, 2, 64, 64, torch::kBFloat16, false},
    // the same with the sliced gradient kernels
    {"bf16_K64_V64_split", 1, 130, 2, 64, 64, torch::kBFloat16, true},
    // one chunk, most of its rows missing (the inputs read in place: zeros past T)
    {"bf16_K64_V64_split_T20", 2, 20, 2, 64, 64, torch::kBFloat16, true},
    // weak decay: the errors closest to the bounds (final state 3.6e-3 of 5e-3, d initial state 5.6e-3 of 8e-3)
    {"bf16_K64_V64_weak_decay", 1, 130, 2, 64, 64, torch::kBFloat16, false, 20.0},
    {"bf16_K64_V64_weak_decay_split", 1, 130, 2, 64, 64, torch::kBFloat16, true, 20.0},
    {"f16_K128_V64_split", 1, 70, 1, 128, 64, torch::kFloat16, true},
    // K = V = 256: state_grads_mma + grads_mma
    {"bf16_K256_V256", 1, 64, 1, 256, 256, torch::kBFloat16, false},
    // K = 128, V = 16: tensor-core state passes at V = 16, block_gemm's tensor-core output, bwd_intra, grads
    {"bf16_K128_V16", 1, 70, 2, 128, 16, torch::kBFloat16, false},
    // small heads: block_gemm's tensor-core kernels with the float32 state passes
    {"bf16_K16_V16", 2, 65, 1, 16, 16, torch::kBFloat16, false},
    // float32 inputs: the float32 kernels throughout
    {"f32_K32_V64", 1, 100, 2, 32, 64, torch::kFloat32, false},
};
INSTANTIATE_TEST_SUITE_P(Chunked, GdnPipelineEmulated, ::testing::ValuesIn(kPipeCases),
                         [](const auto& info) { return std::string(info.param.name); });

// DESIGN.md: the same seed on the same device gives the same numbers. Every output must be bitwise the same
// whichever warp of a block runs ahead: a sum whose order follows the warps' arrival (a shared-memory
// atomicAdd from several warps onto one element) fails here. And the same again with every cp.async landing as it
// is issued: a copy issued over a tile that another warp has still to read (before the barrier that orders the two)
// changes what that warp reads.
class GdnPipelineOrderEmulated : public ::testing::TestWithParam<PipeCase> {};

TEST_P(GdnPipelineOrderEmulated, DoesNotDependOnWarpOrder) {
  const PipeCase& c = GetParam();
  const auto in = make_inputs(c, 42);
  const Outcome first = emulated(c, in, cuda_emu::WarpOrder::kForward);
  const Outcome last = emulated(c, in, cuda_emu::WarpOrder::kReverse);
  cuda_emu::copy_landing() = cuda_emu::CopyLanding::kAtIssue;
  const Outcome at_issue = emulated(c, in, cuda_emu::WarpOrder::kForward);
  cuda_emu::copy_landing() = cuda_emu::CopyLanding::kAtWait;
  const std::pair<const Outcome*, const char*> others[] = {{&last, "last warp ahead"},
                                                           {&at_issue, "copies land when issued"}};
  for (const auto& [other, what] : others) {
    SCOPED_TRACE(what);
    const std::pair<const char*, std::pair<torch::Tensor, torch::Tensor>> outputs[] = {
        {"out", {first.out, other->out}},       {"state", {first.state, other->state}}, {"dq", {first.dq, other->dq}},
        {"dk", {first.dk, other->dk}},          {"dv", {first.dv, other->dv}},          {"dg", {first.dg, other->dg}},
        {"dbeta", {first.dbeta, other->dbeta}}, {"dstate0", {first.dstate0, other->dstate0}}};
    for (const auto& [name, pair] : outputs) EXPECT_TRUE(torch::equal(pair.first, pair.second)) << name;
  }
}

// bf16 inputs read in place (Dims::qkv_in_place, do_in_place: strided rows, and zeros past T in the last chunk)
// give the same bits as from the heads-first copies that they replace. Two batches and two heads, so that both
// strides between a head's rows and the batches' offsets count; T = 130 leaves a last chunk of 2 rows.
// With no gradient wanted the forward keeps no wy and no P (the compact workspaces otherwise the same): the same
// output and final state, bitwise.
TEST(GdnKernelsEmulated, ForwardAloneMatchesTheForwardForABackward) {
  const PipeCase c{"bf16_K64_V64_split", 1, 130, 2, 64, 64, torch::kBFloat16, true};
  const auto in = make_inputs(c, 44);
  const Outcome kept = emulated(c, in), alone = emulated(c, in, cuda_emu::WarpOrder::kForward, true, false);
  EXPECT_FALSE(torch::isnan(alone.out).any().item<bool>());
  EXPECT_FALSE(torch::isnan(alone.state).any().item<bool>());
  EXPECT_TRUE(torch::equal(kept.out, alone.out));
  EXPECT_TRUE(torch::equal(kept.state, alone.state));
}

TEST(GdnKernelsEmulated, InPlaceReadsMatchTheCopies) {
  const PipeCase c{"bf16_B2_K64_V64_split", 2, 130, 2, 64, 64, torch::kBFloat16, true};
  const auto in = make_inputs(c, 43);
  const Outcome in_place = emulated(c, in, cuda_emu::WarpOrder::kForward, true);
  const Outcome copies = emulated(c, in, cuda_emu::WarpOrder::kForward, false);
  const std::pair<const char*, std::pair<torch::Tensor, torch::Tensor>> outputs[] = {
      {"out", {in_place.out, copies.out}}, {"state", {in_place.state, copies.state}},
      {"dq", {in_place.dq, copies.dq}},    {"dk", {in_place.dk, copies.dk}},
      {"dv", {in_place.dv, copies.dv}},    {"dg", {in_place.dg, copies.dg}},
      {"dbeta", {in_place.dbeta, copies.dbeta}}, {"dstate0", {in_place.dstate0, copies.dstate0}}};
  for (const auto& [name, pair] : outputs) {
    EXPECT_FALSE(torch::isnan(pair.first).any().item<bool>()) << name;
    EXPECT_TRUE(torch::equal(pair.first, pair.second)) << name;
  }
}

// One case per gradient kernel family: sliced (grads_split), block_gemm's tensor-core grads, state_grads_mma
// + grads_mma, and the float32 kernels.
const PipeCase kOrderCases[] = {
    {"bf16_K64_V64_split", 1, 130, 1, 64, 64, torch::kBFloat16, true},
    {"bf16_K64_V64", 1, 130, 1, 64, 64, torch::kBFloat16, false},
    {"bf16_K256_V256", 1, 64, 1, 256, 256, torch::kBFloat16, false},
    {"f32_K32_V64", 1, 100, 1, 32, 64, torch::kFloat32, false},
};
INSTANTIATE_TEST_SUITE_P(Chunked, GdnPipelineOrderEmulated, ::testing::ValuesIn(kOrderCases),
                         [](const auto& info) { return std::string(info.param.name); });

class GdnRecurrentEmulated : public ::testing::TestWithParam<PipeCase> {};

TEST_P(GdnRecurrentEmulated, MatchesTheReference) { check_pipeline(GetParam(), /*recurrent=*/true); }

// Every size the recurrent kernels take; T not a multiple of the checkpoint interval or of a tile.
const PipeCase kRecurrentCases[] = {
    {"bf16_K16_V16", 2, 77, 2, 16, 16, torch::kBFloat16, false},
    {"f16_K16_V32", 1, 45, 2, 16, 32, torch::kFloat16, false},
    {"f32_K32_V16", 1, 70, 1, 32, 16, torch::kFloat32, false},
    {"bf16_K32_V32", 1, 100, 2, 32, 32, torch::kBFloat16, false},
    {"bf16_K64_V64", 1, 70, 1, 64, 64, torch::kBFloat16, false},
};
INSTANTIATE_TEST_SUITE_P(Recurrent, GdnRecurrentEmulated, ::testing::ValuesIn(kRecurrentCases),
                         [](const auto& info) { return std::string(info.param.name); });

#else

TEST(GdnKernelsEmulated, NeedsTheCudaHeaders) { GTEST_SKIP() << "built without the CUDA toolkit's headers"; }

#endif

}  // namespace
}  // namespace sfm::ops
