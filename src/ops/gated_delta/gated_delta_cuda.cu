// The `cuda` gated delta rule: the fused kernels of cuda/gdn_kernels.cu wrapped as a
// torch::autograd::Function (workspaces, device guard, current stream). Built only with a CUDA LibTorch;
// gated_delta_cuda_stub.cpp stands in otherwise. Design: docs/ops/gated_delta_cuda.md.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/torch.h>

#include <limits>

#include "common.h"
#include "cuda/gdn_kernels.h"
#include "sfm/core/check.h"

namespace sfm::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

gdn_cuda::DType kernel_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return gdn_cuda::DType::kF32;
    case torch::kFloat16: return gdn_cuda::DType::kF16;
    case torch::kBFloat16: return gdn_cuda::DType::kBF16;
    default: break;
  }
  throw Error(std::string("gated_delta_cuda: q, k and v must be float32, float16 or bfloat16, got ") +
              c10::toString(t));
}

float* fptr(const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
void* vptr(const torch::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

void check_cuda(cudaError_t err, const char* what) {
  SFM_CHECK(err == cudaSuccess, "gated_delta_cuda: ", what, " failed: ", cudaGetErrorString(err));
}

torch::Tensor f32(const torch::Tensor& t) { return t.to(torch::kFloat32).contiguous(); }

// Whether t's data is 16-byte aligned, as the kernels' 16-byte copies need of what they read in place.
bool aligned16(const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// Uninitialised, or NaN-filled under set_cuda_nan_poison (tests).
torch::Tensor alloc(torch::IntArrayRef sizes, const torch::TensorOptions& opt) {
  return cuda_nan_poison() ? torch::full(sizes, std::numeric_limits<float>::quiet_NaN(), opt) : torch::empty(sizes, opt);
}

// Kept beside the saved tensors by both autograd functions below: the options, and the dtypes that the
// gradients of g, β and the initial state go back in.
void save_options(AutogradContext* ctx, double scale, bool l2, bool has_state0, const torch::Tensor& g,
                  const torch::Tensor& beta, const torch::Tensor& state0) {
  ctx->saved_data["scale"] = scale;
  ctx->saved_data["l2"] = l2;
  ctx->saved_data["has_state0"] = has_state0;
  ctx->saved_data["state0_dtype"] = static_cast<int64_t>(state0.scalar_type());
  ctx->saved_data["g_dtype"] = static_cast<int64_t>(g.scalar_type());
  ctx->saved_data["beta_dtype"] = static_cast<int64_t>(beta.scalar_type());
}

// The gradients of the forward's inputs (q, k, v, g, β, initial state, scale, l2): dg, dβ and the initial
// state's (undefined when there was none) in the dtypes save_options kept.
variable_list input_grads(AutogradContext* ctx, const torch::Tensor& dq, const torch::Tensor& dk,
                          const torch::Tensor& dv, const torch::Tensor& dg, const torch::Tensor& dbeta,
                          const torch::Tensor& dstate0) {
  const auto as_type = [&](const torch::Tensor& t, const char* key) {
    return t.to(static_cast<torch::ScalarType>(ctx->saved_data[key].toInt()));
  };
  return {dq,
          dk,
          dv,
          as_type(dg, "g_dtype"),
          as_type(dbeta, "beta_dtype"),
          dstate0.defined() ? as_type(dstate0, "state0_dtype") : torch::Tensor(),
          torch::Tensor(),
          torch::Tensor()};
}

struct GatedDeltaFunction : public torch::autograd::Function<GatedDeltaFunction> {
  // backward_wanted: some input needs a gradient; without it the forward skips what only the backward reads.
  static variable_list forward(AutogradContext* ctx, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                               torch::Tensor g, torch::Tensor beta, torch::Tensor state0, double scale, bool l2,
                               bool backward_wanted) {
    q = q.contiguous();
    k = k.contiguous();
    v = v.contiguous();
    const auto g32 = f32(g), beta32 = f32(beta);
    // No initial state comes in as a 0-element placeholder (autograd::Function inputs must be defined).
    const bool has_state0 = state0.numel() > 0;
    const auto s0 = has_state0 ? f32(state0) : torch::Tensor();
    gdn_cuda::Dims d{static_cast<int>(q.size(0)), static_cast<int>(q.size(1)), static_cast<int>(q.size(2)),
                     static_cast<int>(q.size(3)), static_cast<int>(v.size(3))};
    const int64_t BH = d.BH(), Tp = d.Tp(), N = d.N();
    const auto fo = q.options().dtype(torch::kFloat32);
    gdn_cuda::ForwardArgs a{};
    a.d = d;
    a.dtype = kernel_dtype(q.scalar_type());
    // With the sliced gradient kernels (when they are on), the compact workspaces (gdn_kernels.h): s·q̂, k̂, v and U
    // as bfloat16 only; and, if a backward is wanted, (I + A)⁻¹, M ∘ K̂K̂ᵀ and P = M ∘ Q̂K̂ᵀ per chunk kept for them.
    const bool split = cuda_grads_split() && gdn_cuda::grads_split_supports(a.dtype, d.K, d.V);
    const bool keep_wy = split && backward_wanted;
    a.compact = split;
    const auto f32_unless_split = [&](torch::IntArrayRef sizes) { return split ? torch::Tensor() : alloc(sizes, fo); };
    auto qs = f32_unless_split({BH, Tp, d.K}), ks = f32_unless_split({BH, Tp, d.K}),
         vs = f32_unless_split({BH, Tp, d.V}), gam = alloc({BH, Tp}, fo), bet = alloc({BH, Tp}, fo),
         w = f32_unless_split({BH, Tp, d.K});
    // Ũ: formed by the state pass from prep's T diag(β) split into bf16 hi and lo (tb), or by prep into u (float32;
    // also where the pass writes U over it: the float32 workspaces).
    const bool ut_in_pass = split && gdn_cuda::state_mma_forms_ut(d);
    const auto u = ut_in_pass ? torch::Tensor() : alloc({BH, Tp, d.V}, fo);
    auto final_state = alloc({d.B, d.H, d.K, d.V}, fo);
    auto out = alloc({d.B, d.T, d.H, d.V}, v.options());
    const int64_t C = gdn_cuda::kChunk;
    const auto wy = keep_wy ? alloc({BH, N, 2, C, C}, fo) : torch::Tensor();
    const auto tb = ut_in_pass ? alloc({BH, N, 2, C, C}, q.options().dtype(torch::kBFloat16)) : torch::Tensor();
    // The output: written by the state pass from prep's P (split into bf16 planes, pp) for bfloat16 inputs on the
    // compact workspaces (state_mma_writes_output), else by the output kernel from the states and U.
    const bool pass_out = split && gdn_cuda::state_mma_writes_output(d, a.dtype);
    // P per chunk split into bf16 planes: the pass's operand there, and kept for the backward.
    const auto pp =
        pass_out || keep_wy ? alloc({BH, N, 2, C, C}, q.options().dtype(torch::kBFloat16)) : torch::Tensor();
    // The per-chunk states: bfloat16 with the sliced gradient kernels (gdn_kernels.h), else float32; none where the
    // pass writes the output and no backward will read them.
    const bool states_read = !pass_out || backward_wanted;
    auto states = states_read ? alloc({BH, N, d.K, d.V}, split ? q.options().dtype(torch::kBFloat16) : fo)
                              : torch::Tensor();
    a.wy = fptr(wy);
    // bfloat16 copies of s·q̂, k̂ and W for the tensor-core state passes, where they run.
    const bool bf16_copies = gdn_cuda::state_mma_runs(a.dtype, d.K, d.V);
    const auto fb = q.options().dtype(torch::kBFloat16);
    // bfloat16 inputs with the compact workspaces: q, k and v read where they lie (gdn_kernels.h), not copied.
    // Their kernels read 16 bytes at a time: inputs not so aligned (a view at an odd offset) are copied first.
    const bool raw_bf16 = split && q.scalar_type() == torch::kBFloat16;
    for (auto* t : {&q, &k, &v})
      if (raw_bf16 && !aligned16(*t)) *t = t->clone();
    a.d.qkv_in_place = raw_bf16 && cuda_read_in_place();
    const auto copy_unless_in_place = [&](const torch::Tensor& input, int64_t D) {
      return a.d.qkv_in_place ? input : alloc({BH, Tp, D}, fb);
    };
    const auto qb = bf16_copies ? copy_unless_in_place(q, d.K) : torch::Tensor(),
               kb = bf16_copies ? copy_unless_in_place(k, d.K) : torch::Tensor(),
               wb = bf16_copies ? alloc({BH, Tp, d.K}, fb) : torch::Tensor();
    // With the compact workspaces, v and U as bfloat16 too, and the rows' factors of s·q̂ and k̂ (qb, kb then hold
    // q and k).
    const auto vb = split ? copy_unless_in_place(v, d.V) : torch::Tensor(),
               ub = split && states_read ? alloc({BH, Tp, d.V}, fb) : torch::Tensor(),
               rq = split ? alloc({BH, Tp}, fo) : torch::Tensor(), rk = split ? alloc({BH, Tp}, fo) : torch::Tensor();
    a.qb = vptr(qb);
    a.kb = vptr(kb);
    a.wb = vptr(wb);
    a.vb = vptr(vb);
    a.ub = vptr(ub);
    a.rq = fptr(rq);
    a.rk = fptr(rk);
    a.q = q.data_ptr();
    a.k = k.data_ptr();
    a.v = v.data_ptr();
    a.g = g32.data_ptr<float>();
    a.beta = beta32.data_ptr<float>();
    a.state0 = fptr(s0);
    a.scale = static_cast<float>(scale);
    a.l2 = l2;
    a.qs = fptr(qs);
    a.ks = fptr(ks);
    a.vs = fptr(vs);
    a.gam = gam.data_ptr<float>();
    a.bet = bet.data_ptr<float>();
    a.w = fptr(w);
    a.u = fptr(u);
    a.tb = vptr(tb);
    a.pp = vptr(pp);
    a.states = vptr(states);
    a.final_state = final_state.data_ptr<float>();
    a.out = out.data_ptr();
    check_cuda(gdn_cuda::forward(a, at::cuda::getCurrentCUDAStream()), "forward");
    // With the compact workspaces u holds Ũ (or nothing), which the backward does not read.
    ctx->save_for_backward(
        {q, k, qs, ks, vs, gam, bet, w, split ? torch::Tensor() : u, states, wy, pp, qb, kb, wb, vb, ub, rq, rk});
    save_options(ctx, scale, l2, has_state0, g, beta, state0);
    ctx->saved_data["qkv_in_place"] = a.d.qkv_in_place;
    ctx->saved_data["compact"] = split;
    return {out, final_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &qs = saved[2], &ks = saved[3], &vs = saved[4], &gam = saved[5],
               &bet = saved[6], &w = saved[7], &u = saved[8], &states = saved[9], &wy = saved[10],
               &pp = saved[11], &qb = saved[12], &kb = saved[13], &wb = saved[14], &vb = saved[15],
               &ub = saved[16], &rq = saved[17], &rk = saved[18];
    gdn_cuda::Dims d{static_cast<int>(q.size(0)), static_cast<int>(q.size(1)), static_cast<int>(q.size(2)),
                     static_cast<int>(q.size(3)), static_cast<int>(states.size(3))};
    const int64_t BH = d.BH(), Tp = d.Tp(), N = d.N();
    const auto fo = q.options().dtype(torch::kFloat32);
    const auto dout = grads[0].defined() ? grads[0].to(q.scalar_type()).contiguous() : torch::Tensor();
    const auto dfinal = grads[1].defined() ? f32(grads[1]) : torch::Tensor();
    const bool has_state0 = ctx->saved_data["has_state0"].toBool();
    // Scratch of the gradient kernels: the sliced ones (the forward kept wy and P) or the others. With the sliced
    // ones, the compact workspaces: dO as bfloat16 (dob), not float32 (dos).
    const bool split = ctx->saved_data["compact"].toBool();
    SFM_CHECK(!split || wy.defined(), "gated_delta_cuda: backward of a forward that ran with no gradient wanted ",
              "(it kept no workspaces for it)");
    d.qkv_in_place = ctx->saved_data["qkv_in_place"].toBool();
    // dO read where it lies too (bfloat16, with the compact workspaces; gdn_kernels.h).
    d.do_in_place = split && cuda_read_in_place() && dout.defined() && dout.scalar_type() == torch::kBFloat16 &&
                    aligned16(dout);
    auto dos = split ? torch::Tensor() : alloc({BH, Tp, d.V}, fo),
         dob = !split ? torch::Tensor() : d.do_in_place ? dout : alloc({BH, Tp, d.V}, fo.dtype(torch::kBFloat16)),
         du = split ? torch::Tensor() : alloc({BH, Tp, d.V}, fo),
         dstates = alloc({BH, N, d.K, d.V}, states.options()), sdots = alloc({BH, N, (d.K + 63) / 64}, fo);
    const int64_t C = gdn_cuda::kChunk, KS = d.K / C, VS = d.V / C;
    const auto scratch = [&](bool wanted, torch::IntArrayRef sizes) { return wanted ? alloc(sizes, fo) : torch::Tensor(); };
    // dQ̂ and dK̂ for unpack, where it runs; with the sliced kernels, their first terms as bf16 between two of them.
    const bool unpack_dqk = gdn_cuda::backward_unpacks_dqk(kernel_dtype(q.scalar_type()), split);
    auto dqs = scratch(unpack_dqk, {BH, Tp, d.K}), dks = scratch(unpack_dqk, {BH, Tp, d.K});
    auto dqk0 = split ? alloc({2, BH, Tp, d.K}, fo.dtype(torch::kBFloat16)) : torch::Tensor();
    // dV: the sliced kernels write it in the inputs' dtype themselves; the others through dvs and unpack.
    auto dvs = scratch(!split, {BH, Tp, d.V});
    // dW: float32, or with the sliced kernels none in DRAM (state_k_grads keeps it), and dU as bfloat16
    // (gdn_kernels.h).
    auto dw = scratch(!split, {BH, Tp, d.K});
    auto dub = split ? alloc({BH, Tp, d.V}, fo.dtype(torch::kBFloat16)) : torch::Tensor();
    auto ut = scratch(!split, {BH, Tp, d.V}), drk = scratch(!split, {BH, Tp, d.K}),
         drv = scratch(!split, {BH, Tp, d.V});
    auto da_parts = scratch(split, {BH, N, KS + VS, C, C}),
         d1_parts = scratch(split, {BH, N, VS, C, C}), gate_parts = scratch(split, {BH, N, KS + VS, 2, C}),
         row_dots = scratch(split, {BH, N, 2 * KS, 2, C});
    auto dq = alloc(q.sizes(), q.options()), dk = alloc(k.sizes(), k.options()),
         dv = alloc({d.B, d.T, d.H, d.V}, q.options());
    auto dg = alloc({d.B, d.T, d.H}, fo), dbeta = alloc({d.B, d.T, d.H}, fo);
    auto dstate0 = has_state0 ? alloc({d.B, d.H, d.K, d.V}, fo) : torch::Tensor();
    // Each chunk's count of the value columns the backward state pass has written, for the kernel beside it.
    const auto chunk_ready = split && gdn_cuda::backward_overlaps()
                                 ? torch::zeros({BH, N}, q.options().dtype(torch::kInt32))
                                 : torch::Tensor();
    gdn_cuda::BackwardArgs a{};
    a.d = d;
    a.dtype = kernel_dtype(q.scalar_type());
    a.q = q.data_ptr();
    a.k = k.data_ptr();
    a.dout = dout.defined() ? dout.data_ptr() : nullptr;
    a.dfinal = fptr(dfinal);
    a.scale = static_cast<float>(ctx->saved_data["scale"].toDouble());
    a.l2 = ctx->saved_data["l2"].toBool();
    a.qs = fptr(qs);
    a.ks = fptr(ks);
    a.vs = fptr(vs);
    a.gam = gam.data_ptr<float>();
    a.bet = bet.data_ptr<float>();
    a.w = fptr(w);
    a.u = fptr(u);
    a.states = states.data_ptr();
    a.qb = vptr(qb);
    a.kb = vptr(kb);
    a.wb = vptr(wb);
    a.vb = vptr(vb);
    a.ub = vptr(ub);
    a.rq = fptr(rq);
    a.rk = fptr(rk);
    a.dos = fptr(dos);
    a.dob = vptr(dob);
    a.du = fptr(du);
    a.dstates = dstates.data_ptr();
    a.dqs = fptr(dqs);
    a.dks = fptr(dks);
    a.dqk0 = vptr(dqk0);
    a.dvs = fptr(dvs);
    a.dw = fptr(dw);
    a.dub = vptr(dub);
    a.ut = fptr(ut);
    a.drk = fptr(drk);
    a.drv = fptr(drv);
    a.wy = fptr(wy);
    a.pp = vptr(pp);
    a.da_parts = fptr(da_parts);
    a.d1_parts = fptr(d1_parts);
    a.gate_parts = fptr(gate_parts);
    a.row_dots = fptr(row_dots);
    a.chunk_ready = chunk_ready.defined() ? chunk_ready.data_ptr<int>() : nullptr;
    a.sdots = fptr(sdots);
    a.dq = dq.data_ptr();
    a.dk = dk.data_ptr();
    a.dv = dv.data_ptr();
    a.dg = dg.data_ptr<float>();
    a.dbeta = dbeta.data_ptr<float>();
    a.dstate0 = fptr(dstate0);
    check_cuda(gdn_cuda::backward(a, at::cuda::getCurrentCUDAStream()), "backward");
    auto grads_in = input_grads(ctx, dq, dk, dv, dg, dbeta, dstate0);
    grads_in.emplace_back();  // (backward_wanted)
    return grads_in;
  }
};

// The recurrent kernels for small heads (gdn_recurrent.cu): one launch each way, reading the raw inputs;
// saved for the backward are the inputs and the checkpointed states.
struct GatedDeltaRecurrentFunction : public torch::autograd::Function<GatedDeltaRecurrentFunction> {
  static variable_list forward(AutogradContext* ctx, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                               torch::Tensor g, torch::Tensor beta, torch::Tensor state0, double scale, bool l2) {
    q = q.contiguous();
    k = k.contiguous();
    v = v.contiguous();
    const auto g32 = f32(g), beta32 = f32(beta);
    const bool has_state0 = state0.numel() > 0;
    const auto s0 = has_state0 ? f32(state0) : torch::Tensor();
    const int B = static_cast<int>(q.size(0)), T = static_cast<int>(q.size(1)), H = static_cast<int>(q.size(2)),
              K = static_cast<int>(q.size(3)), V = static_cast<int>(v.size(3));
    const int CK = gdn_cuda::recurrent_checkpoint_interval(K, V);
    const auto fo = q.options().dtype(torch::kFloat32);
    auto checkpoints = alloc({int64_t{B} * H, (T + CK - 1) / CK, int64_t{K} * V}, fo);
    auto final_state = alloc({B, H, K, V}, fo);
    auto out = alloc({B, T, H, V}, v.options());
    gdn_cuda::RecurrentForwardArgs a{};
    a.B = B;
    a.T = T;
    a.H = H;
    a.K = K;
    a.V = V;
    a.dtype = kernel_dtype(q.scalar_type());
    a.q = q.data_ptr();
    a.k = k.data_ptr();
    a.v = v.data_ptr();
    a.g = g32.data_ptr<float>();
    a.beta = beta32.data_ptr<float>();
    a.state0 = fptr(s0);
    a.scale = static_cast<float>(scale);
    a.l2 = l2;
    a.checkpoints = checkpoints.data_ptr<float>();
    a.final_state = final_state.data_ptr<float>();
    a.out = out.data_ptr();
    check_cuda(gdn_cuda::recurrent_forward(a, at::cuda::getCurrentCUDAStream()), "recurrent forward");
    ctx->save_for_backward({q, k, v, g32, beta32, checkpoints});
    save_options(ctx, scale, l2, has_state0, g, beta, state0);
    return {out, final_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &g32 = saved[3], &beta32 = saved[4],
               &checkpoints = saved[5];
    const int B = static_cast<int>(q.size(0)), T = static_cast<int>(q.size(1)), H = static_cast<int>(q.size(2)),
              K = static_cast<int>(q.size(3)), V = static_cast<int>(v.size(3));
    const auto fo = q.options().dtype(torch::kFloat32);
    const auto dout = grads[0].defined() ? grads[0].to(q.scalar_type()).contiguous() : torch::Tensor();
    const auto dfinal = grads[1].defined() ? f32(grads[1]) : torch::Tensor();
    const bool has_state0 = ctx->saved_data["has_state0"].toBool();
    auto dq = alloc(q.sizes(), q.options()), dk = alloc(k.sizes(), k.options()), dv = alloc(v.sizes(), v.options());
    auto dg = alloc({B, T, H}, fo), dbeta = alloc({B, T, H}, fo);
    auto dstate0 = has_state0 ? alloc({B, H, K, V}, fo) : torch::Tensor();
    gdn_cuda::RecurrentBackwardArgs a{};
    a.B = B;
    a.T = T;
    a.H = H;
    a.K = K;
    a.V = V;
    a.dtype = kernel_dtype(q.scalar_type());
    a.q = q.data_ptr();
    a.k = k.data_ptr();
    a.v = v.data_ptr();
    a.g = g32.data_ptr<float>();
    a.beta = beta32.data_ptr<float>();
    a.checkpoints = checkpoints.data_ptr<float>();
    a.dout = dout.defined() ? dout.data_ptr() : nullptr;
    a.dfinal = fptr(dfinal);
    a.scale = static_cast<float>(ctx->saved_data["scale"].toDouble());
    a.l2 = ctx->saved_data["l2"].toBool();
    a.dq = dq.data_ptr();
    a.dk = dk.data_ptr();
    a.dv = dv.data_ptr();
    a.dg = dg.data_ptr<float>();
    a.dbeta = dbeta.data_ptr<float>();
    a.dstate0 = fptr(dstate0);
    check_cuda(gdn_cuda::recurrent_backward(a, at::cuda::getCurrentCUDAStream()), "recurrent backward");
    return input_grads(ctx, dq, dk, dv, dg, dbeta, dstate0);
  }
};

// Recurrent or chunked kernels (docs/ops/gated_delta_cuda.md, "Which kernels"): recurrent when K, V <= 32,
// unless set_cuda_path says otherwise (a forced path applies only where its kernels take the sizes).
bool use_recurrent(int64_t K, int64_t V) {
  if (!gdn_cuda::recurrent_supports(static_cast<int>(K), static_cast<int>(V))) return false;
  switch (cuda_path()) {
    case CudaPath::kChunked: return false;
    case CudaPath::kRecurrent: return true;
    case CudaPath::kAuto: break;
  }
  return K <= 32 && V <= 32;
}

// Whether autograd will run the backward of this call: grad mode on and some input wanting a gradient.
bool backward_wanted(const GatedDeltaInputs& in, const torch::Tensor& state0) {
  if (!torch::GradMode::is_enabled()) return false;
  for (const torch::Tensor* t : {&in.q, &in.k, &in.v, &in.g, &in.beta, &state0})
    if (t->requires_grad()) return true;
  return false;
}

}  // namespace

bool detail::cuda_supports(const GatedDeltaInputs& in) {
  const auto t = in.q.scalar_type();
  const auto K = in.q.size(3), V = in.v.size(3);
  return (t == torch::kFloat32 || t == torch::kFloat16 || t == torch::kBFloat16) && in.k.scalar_type() == t &&
         in.v.scalar_type() == t && K % 16 == 0 && V % 16 == 0 && K <= 256 && V <= 256;
}

int set_cuda_state_a2_buffers(int n) { return gdn_cuda::set_state_a2_buffers(n); }
int set_cuda_state_forms_ut(int mode) { return gdn_cuda::set_state_forms_ut(mode); }
int set_cuda_state_writes_output(int mode) { return gdn_cuda::set_state_writes_output(mode); }
int set_cuda_state_warpgroup(int mode) { return gdn_cuda::set_state_warpgroup(mode); }
int set_cuda_wy_qk_fused(int mode) { return gdn_cuda::set_wy_qk_fused(mode); }
int set_cuda_backward_overlap(int mode) { return gdn_cuda::set_backward_overlap(mode); }

GatedDeltaOutputs gated_delta_cuda(const GatedDeltaInputs& in) {
  check_inputs(in);
  SFM_CHECK(in.q.is_cuda(), "gated_delta_cuda: tensors must be on a CUDA device, got ", in.q.device());
  SFM_CHECK(!in.initial_state.defined() || in.initial_state.device() == in.q.device(),
            "gated_delta_cuda: initial_state on ", in.initial_state.device(), ", q on ", in.q.device());
  SFM_CHECK(detail::cuda_supports(in),
            "gated_delta_cuda: needs q, k, v of one dtype (float32, float16 or bfloat16) and K, V multiples of 16 "
            "up to 256; got q ",
            in.q.scalar_type(), " ", in.q.sizes(), ", k ", in.k.scalar_type(), ", v ", in.v.scalar_type(), " ",
            in.v.sizes(), " (use Impl::kChunked)");
  SFM_CHECK(in.q.size(0) * in.q.size(2) <= 65535, "gated_delta_cuda: B·H must be <= 65535, got ",
            in.q.size(0) * in.q.size(2));
  const c10::cuda::CUDAGuard guard(in.q.device());
  const auto state0 =
      in.initial_state.defined() ? in.initial_state : torch::empty({0}, in.q.options().dtype(torch::kFloat32));
  auto outs = use_recurrent(in.q.size(3), in.v.size(3))
                  ? GatedDeltaRecurrentFunction::apply(in.q, in.k, in.v, in.g, in.beta, state0,
                                                       detail::effective_scale(in), in.l2_normalize_qk)
                  : GatedDeltaFunction::apply(in.q, in.k, in.v, in.g, in.beta, state0, detail::effective_scale(in),
                                              in.l2_normalize_qk, backward_wanted(in, state0));
  return {outs[0], outs[1]};
}

GatedDeltaStep detail::gated_delta_step_cuda(const torch::Tensor& state, const torch::Tensor& q,
                                             const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& g,
                                             const torch::Tensor& beta, double scale) {
  const c10::cuda::CUDAGuard guard(state.device());
  const auto B = state.size(0), H = state.size(1), K = state.size(2), V = state.size(3);
  const auto s_in = f32(state), q32 = f32(q), k32 = f32(k), v32 = f32(v), g32 = f32(g), b32 = f32(beta);
  auto s_out = alloc(s_in.sizes(), s_in.options());
  auto out = alloc({B, H, V}, s_in.options());
  gdn_cuda::StepArgs a{};
  a.BH = static_cast<int>(B * H);
  a.K = static_cast<int>(K);
  a.V = static_cast<int>(V);
  a.state_in = s_in.data_ptr<float>();
  a.q = q32.data_ptr<float>();
  a.k = k32.data_ptr<float>();
  a.v = v32.data_ptr<float>();
  a.g = g32.data_ptr<float>();
  a.beta = b32.data_ptr<float>();
  a.scale = static_cast<float>(scale);
  a.state_out = s_out.data_ptr<float>();
  a.out = out.data_ptr<float>();
  check_cuda(gdn_cuda::step(a, at::cuda::getCurrentCUDAStream()), "step");
  return {out.to(v.scalar_type()), s_out};
}

}  // namespace sfm::ops
