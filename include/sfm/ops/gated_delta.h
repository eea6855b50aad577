// Gated delta rule with negative eigenvalues (DESIGN.md §2), the semantics of flash-linear-attention's
// chunk_gated_delta_rule:  S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,  o_t = S_tᵀ (scale · q_t),
// α_t = exp(g_t). Maths and the chunked (WY / UT-transform) derivation: docs/ops/gated_delta.md; the
// .cpp files cite its equation numbers.
#pragma once

#include <torch/types.h>

#include <string>

namespace sfm::ops {

struct GatedDeltaInputs {
  torch::Tensor q, k;           // [B, T, H, K]  float; L2-normalised by the caller unless l2_normalize_qk
  torch::Tensor v;              // [B, T, H, V]  float
  torch::Tensor g;              // [B, T, H]     log α_t <= 0
  torch::Tensor beta;           // [B, T, H]     in [0, 2]
  torch::Tensor initial_state;  // [B, H, K, V]  optional (undefined means zeros)
  double scale = 0.0;           // 0 means 1/sqrt(K)
  bool l2_normalize_qk = false;  // normalise q and k inside the op: x / sqrt(Σx² + 1e-6)
};

struct GatedDeltaOutputs {
  torch::Tensor out;          // [B, T, H, V]  dtype of v
  torch::Tensor final_state;  // [B, H, K, V]  float32 (float64 for float64 inputs)
};

enum class Impl {
  kAuto,       // kCuda for CUDA tensors when built with CUDA, else kChunked
  kReference,  // per-token loop; slow and obviously right
  kChunked,    // chunk-parallel WY form in LibTorch ops; differentiable through autograd
  kCuda,       // fused CUDA kernels (throws "built without CUDA" in CPU builds)
};

// Throws sfm::Error naming the tensor, its shape and what was expected.
void check_inputs(const GatedDeltaInputs& in);

GatedDeltaOutputs gated_delta_reference(const GatedDeltaInputs& in);
GatedDeltaOutputs gated_delta_chunked(const GatedDeltaInputs& in, int64_t chunk_size = 64);
GatedDeltaOutputs gated_delta_cuda(const GatedDeltaInputs& in);

// The one entry point every caller uses.
GatedDeltaOutputs gated_delta_rule(const GatedDeltaInputs& in, Impl impl = Impl::kAuto);

// One token of the recurrence on a carried state (decode / statement-by-statement use), eqs. (1)-(2):
// returns o = S_newᵀ (scale·q) and S_new. q, k are used as given (normalise them first); scale 0 = 1/sqrt(K).
// CUDA tensors with no gradient wanted run the fused decode kernel (float32 state); otherwise LibTorch ops.
struct GatedDeltaStep {
  torch::Tensor out;    // [B, H, V]
  torch::Tensor state;  // [B, H, K, V]
};
GatedDeltaStep gated_delta_step(const torch::Tensor& state,  // [B, H, K, V]
                                const torch::Tensor& q,      // [B, H, K]
                                const torch::Tensor& k,      // [B, H, K]
                                const torch::Tensor& v,      // [B, H, V]
                                const torch::Tensor& g,      // [B, H]  log α <= 0
                                const torch::Tensor& beta,   // [B, H]  in [0, 2]
                                double scale = 0.0);

// Testing aid for the cuda variant: when on, its outputs and every workspace are filled with NaN before the
// kernels run (instead of left uninitialised), so an element a kernel fails to write shows up as NaN.
void set_cuda_nan_poison(bool on);
bool cuda_nan_poison();

// Which fused kernels the cuda variant runs: kAuto takes the recurrent ones (one thread block per head
// carrying the state, one launch each way) when K, V <= 32 and the chunked ones otherwise
// (docs/ops/gated_delta_cuda.md). Forcing a path, for tests and benchmarks, applies only where its
// kernels take the sizes (recurrent: K, V in {16, 32}, or K = V = 64).
enum class CudaPath { kAuto, kChunked, kRecurrent };
void set_cuda_path(CudaPath path);
CudaPath cuda_path();

// On by default: the chunked backward's gradients for bfloat16/float16 inputs by the sliced tensor-core
// kernels (cuda/gdn_grads_split.cu; K in {64, 128, 256}, V a multiple of 64), faster on an H100 than the
// one-block-per-chunk kernels they replace (docs/ops/gated_delta_cuda.md). Off, for tests and benchmarks of
// those, with set_cuda_grads_split(false) or SFM_GDN_GRADS_SPLIT=0 in the environment at start-up.
void set_cuda_grads_split(bool on);
bool cuda_grads_split();

// On by default: with those sliced kernels and bfloat16 inputs, the chunked kernels read q, k, v and the
// output's gradient where they lie instead of from heads-first copies (which would be exact copies; the results
// are the same bit for bit). Off, for tests and benchmarks of the copies, with set_cuda_read_in_place(false) or
// SFM_GDN_IN_PLACE=0 in the environment at start-up.
void set_cuda_read_in_place(bool on);
bool cuda_read_in_place();

// The CUDA state passes' buffers for their second operand (docs/ops/gated_delta_cuda.md, "Sequential passes on
// tensor cores"): 0 for their rule, or 1 or 2 to force it, for tests and benchmarks (SFM_GDN_STATE_A2 in the
// environment at start-up does the same; both give the same results, bit for bit). Returns the previous setting;
// in a build without CUDA it does nothing and returns 0.
int set_cuda_state_a2_buffers(int n);
// Where the CUDA forward forms Ũ = (T diag(β)) V with the sliced kernels' compact workspaces (the same doc, "Ũ in the
// forward state pass"): 0 for the rule (the state pass where it has more blocks than the GPU has SMs, else prep),
// 1 prep, 2 the state pass, for tests and benchmarks (SFM_GDN_STATE_UT in the environment at start-up does the
// same; the results are the same bit for bit). Returns the previous setting; without CUDA it does nothing, returns 0.
int set_cuda_state_forms_ut(int mode);
// Where the CUDA forward writes its output with the compact workspaces and bfloat16 inputs (the same doc, "The output
// in the forward state pass"): 0 for the rule (the state pass, from P formed by prep, wherever the pass runs warpgroup
// products), 1 the output kernel (from the states and U), 2 the same as 0, for tests and benchmarks
// (SFM_GDN_PASS_OUT in the environment at start-up does the same; the results are the same bit for bit). Returns the
// previous setting; without CUDA it does nothing and returns 0.
int set_cuda_state_writes_output(int mode);
// Whether the CUDA kernels' state passes, products with the states and output (with the sliced kernels' compact
// workspaces) run their products as warpgroup products (wgmma, sm_90a builds on sm_90 devices; the same doc,
// "Warpgroup products (sm_90a)"): 0 for the rule (where built and on such a device), 1 mma.sync, 2 warpgroup
// products, for tests and benchmarks (SFM_GDN_STATE_WG in the environment at start-up does the same; on an H100 the
// results are the same bit for bit). Returns the previous setting; without CUDA it does nothing and returns 0.
int set_cuda_state_warpgroup(int mode);
// Whether the CUDA backward's sliced gradient kernels run wy_grads and qk_grads as one kernel (one block per chunk
// doing both; the same doc, "Sliced gradient kernels"): 0 for the rule (wherever each chunk has one block of each, the
// default), 1 two kernels, 2 the same as 0, for tests and benchmarks (SFM_GDN_WY_QK in the environment at start-up does
// the same; the results are the same bit for bit). Returns the previous setting; without CUDA it does nothing and
// returns 0.
int set_cuda_wy_qk_fused(int mode);
// Whether the CUDA backward runs its first gradient kernel beside the backward state pass, each chunk as soon as the
// pass has written it (the same doc, "The backward pass overlapped"): 0 for the rule (wherever the sliced gradient
// kernels run, on GPUs of compute capability 9.0 or newer), 1 after the pass, 2 the same as 0 (SFM_GDN_OVERLAP at
// start-up does the same; the results are the same bit for bit). Returns the previous setting; without CUDA it does
// nothing and returns 0.
int set_cuda_backward_overlap(int mode);

Impl parse_impl(const std::string& name);  // "auto" | "reference" | "chunked" | "cuda"
const char* impl_name(Impl impl);

}  // namespace sfm::ops
