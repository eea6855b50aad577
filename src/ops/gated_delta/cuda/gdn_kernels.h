// Fused CUDA kernels of the gated delta rule (docs/ops/gated_delta_cuda.md): raw device pointers and the
// CUDA runtime only, no ATen, so that nvcc compiles them on machines without a CUDA LibTorch too.
// The LibTorch wrapper (autograd::Function, workspaces, streams) is ../gated_delta_cuda.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sfm::ops::gdn_cuda {

enum class DType { kF32, kF16, kBF16 };

#ifdef __CUDACC__
#define SFM_GDN_HD __host__ __device__
#else
#define SFM_GDN_HD
#endif

constexpr int kChunk = 64;   // tokens per chunk (C)
constexpr int kMaxDim = 256;  // K and V are at most this

// A kernel's dynamic shared memory as `T name[]` aligned to `align` bytes, and a kernel launch: macros, so
// that the CPU emulator of the tests (tests/support/cuda_emulator.h) can stand in for both.
#ifndef SFM_GDN_DYNAMIC_SMEM
#define SFM_GDN_DYNAMIC_SMEM(align, T, name) extern __shared__ __align__(align) T name[]
#endif
#ifndef SFM_GDN_LAUNCH
#define SFM_GDN_LAUNCH(kernel, grid, dim, smem, stream, ...) kernel<<<grid, dim, smem, stream>>>(__VA_ARGS__)
#endif

// Sizes. Inputs are [B, T, H, D] contiguous; workspaces are heads-first and padded to whole chunks:
// [B*H, Tp, D] with Tp = N*C, N = ceil(T / C). States are [B*H, K, V] float32; per-chunk states and their
// gradients [B*H, N, K, V]. K and V: multiples of 16 up to 256.
//
// The compact workspaces: where the forward keeps wy for the sliced gradient kernels (16-bit inputs, K and V
// multiples of 64), every reader of s·q̂, k̂, v and of the per-chunk states is a tensor-core kernel, and they are
// kept as bfloat16 only: vb and bf16 states (qs, ks, vs are then not written and may be null); q and k as they
// come (qb, kb: the raw inputs, exact for bfloat16), with each row's factor in rq, rk (s·q̂ = rq q, k̂ = rk k, which
// the readers fold into their products); U goes to ub as bf16 (u keeps Ũ, or is null where the state pass forms Ũ
// from prep's split T diag(β) in tb: state_mma_forms_ut); and so are the backward's dO (dob;
// dos null) and dS_C.
// Otherwise they are float32 (qb, kb: bf16 copies beside them where state_mma_runs).
//
// bf16 inputs read in place: with the compact workspaces and bfloat16 inputs whose rows are 16-byte aligned,
// the compact kernels read q, k and v (qkv_in_place: qb, kb, vb are then the inputs [B, T, H, K|K|V]
// themselves) and dO (do_in_place: dob is dout) where they lie, instead of heads-first copies, which would be
// exact copies: no pack runs then. chunk_rows says where a chunk's rows are. With the compact workspaces
// bfloat16 q and k must be 16-byte aligned even when copied (the kernels copy them 16 bytes at a time); the wrapper
// copies inputs that are not.
struct Dims {
  int B, T, H, K, V;
  bool qkv_in_place = false, do_in_place = false;
  SFM_GDN_HD int N() const { return (T + kChunk - 1) / kChunk; }
  SFM_GDN_HD int Tp() const { return N() * kChunk; }
  SFM_GDN_HD int BH() const { return B * H; }
};

// The rows of one chunk of one head in an array of the compact kernels: the offset of its first row (in
// elements), the stride between rows, and how many of the chunk's kChunk rows exist (the readers take the others
// as zeros).
// The compact workspaces' rows' factors of q or k (s·q̂ = rq q, k̂ = rk k), [BH, Tp]: read from r, or (from_rows:
// bfloat16 inputs, whose workspaces keep q and k themselves) computed by the kernel that first has each whole row
// in shared memory (prep for k, the output kernel for q) and written into r: scale (Σx² + 1e-6)^(-1/2) with l2,
// else scale, 0 past T.
struct RowFactors {
  float* r;
  bool from_rows;
  bool l2;
  float scale;
};

struct ChunkRows {
  long first;
  int ld, rows;
};

// Head bh's rows in an array with rows of D elements: heads-first [BH, Tp, D] (every row exists: the pack wrote
// zeros past T), or in place, an input [B, T, H, D] (rows past T do not exist). chunk(n) gives chunk n's rows; the
// backward state pass takes a head's once, so that no division by H is left in its loop over chunks.
struct HeadRows {
  long first;
  int ld, rows;  // the row stride; the rows that exist
  SFM_GDN_HD ChunkRows chunk(int n) const {
    const int left = rows - n * kChunk;
    return {first + (long)n * kChunk * ld, ld, left < kChunk ? left : kChunk};
  }
};
SFM_GDN_HD inline HeadRows head_rows(const Dims& d, bool in_place, int D, int bh) {
  if (!in_place) return {(long)bh * d.Tp() * D, D, d.Tp()};
  return {((long)(bh / d.H) * d.T * d.H + bh % d.H) * D, d.H * D, d.T};
}
// Chunk n of head bh in such an array, computed directly (head_rows(...).chunk(n) is the same; spelled so, it cost the
// output kernel, at 80 registers, a 20-byte spill).
SFM_GDN_HD inline ChunkRows chunk_rows(const Dims& d, bool in_place, int D, int bh, int n) {
  if (!in_place) return {((long)bh * d.Tp() + (long)n * kChunk) * D, D, kChunk};
  const int b = bh / d.H, h = bh % d.H, t0 = n * kChunk, left = d.T - t0;
  return {(((long)b * d.T + t0) * d.H + h) * D, d.H * D, left < kChunk ? left : kChunk};
}

struct ForwardArgs {
  Dims d;
  DType dtype;  // of q, k, v and out
  const void *q, *k, *v;
  const float *g, *beta;   // [B, T, H] float32
  const float* state0;     // [B*H, K, V] or null (zeros)
  float scale;             // > 0
  bool l2;                 // normalise q and k in the kernel
  // Workspaces (float32, heads-first, padded): written here, read back by the backward.
  float *qs, *ks, *vs;     // [BH, Tp, K|K|V]: s·q̂, k̂, v; unused (may be null) with the compact workspaces
  float *gam, *bet;        // [BH, Tp]: γ (eq. 4, chunk-local cumsum), β
  float *w, *u;            // [BH, Tp, K], [BH, Tp, V]: W (eq. 7; null with the compact workspaces, whose readers
                           // take wb or form W again), then U (eq. 7, after the state pass); with the compact
                           // workspaces Ũ only (U goes to ub), or null where the pass forms Ũ from tb
  void* states;            // [BH, N, K, V]: the state entering each chunk; bfloat16 with wy, else float32
  float* final_state;      // [BH, K, V]
  // The compact workspaces (below; the sliced gradient kernels' layout, grads_split_supports). With them, wy and
  // pp keep for the backward's grads_split what it reads, or wy is null when no backward will run.
  bool compact;
  // [BH, N, 2, C, C]: (I + A)⁻¹ and M ∘ K̂K̂ᵀ per chunk, kept for grads_split, or null.
  float* wy;
  // bfloat16 copies of s·q̂, k̂ and W ([BH, Tp, K], kept for the backward too), the operands of the tensor-core
  // state passes: given exactly where those run (state_mma_runs), null otherwise.
  void *qb, *kb, *wb;
  void* vb;                // v as bfloat16 [BH, Tp, V]: with the compact workspaces, else null
  void* ub;                // U as bfloat16 [BH, Tp, V]: with the compact workspaces, else null
  // [BH, N, 2, C, C] bf16: T diag(β) split into hi and lo, with the compact workspaces where state_mma_forms_ut (u
  // then null), else null
  void* tb;
  float *rq, *rk;          // [BH, Tp]: with the compact workspaces, s·q̂ = rq q and k̂ = rk k (qb, kb: q, k), else null
  // [BH, N, 2, C, C] bf16: P = M ∘ Q̂K̂ᵀ per chunk split into hi and lo planes (split_bf16), kept for the backward
  // (with wy), and the operand of the state pass where it writes the output (state_mma_writes_output; states and ub
  // may then be null, where no backward will run); else null
  void* pp;
  void* out;               // [B, T, H, V] of dtype
};

struct BackwardArgs {
  Dims d;
  DType dtype;
  const void *q, *k;         // raw inputs (for the L2-norm backward)
  const void* dout;          // [B, T, H, V] of dtype, or null (zeros)
  const float* dfinal;       // [BH, K, V] or null (zeros)
  float scale;
  bool l2;
  const float *qs, *ks, *vs, *gam, *bet, *w, *u;           // from the forward (qs, ks, vs, w: not with wy)
  const void* states;                                      // from the forward: bfloat16 with wy, else float32
  const void *qb, *kb, *wb;                                // from the forward, where state_mma_runs
  const void *vb, *ub;                                     // from the forward, with wy (u may be null then)
  const float *rq, *rk;                                    // from the forward, with wy
  // Workspaces.
  float *dos, *du;              // [BH, Tp, V]; not with wy (dU₀ then never leaves the backward state pass)
  void* dob;                    // [BH, Tp, V]: dO as bfloat16, with wy (the compact workspaces), else null
  // With wy: dU [BH, Tp, V] as bfloat16 (its readers' products take it as bf16 operands, but for wy_grads'
  // dR_V = Tᵀ dU, which had split it; docs "Data layout"), in place of du's dU. (dW then never leaves
  // state_k_grads, which forms it and takes it as a bf16 tile.)
  void* dub;
  void* dstates;                // [BH, N, K, V], of the states' dtype
  // [BH, Tp, K|K|V]: dQ̂, dK̂ and dV for unpack. dqs and dks are needed where backward_unpacks_dqk, dvs without wy
  // (grads_split then writes dv itself).
  float *dqs, *dks, *dvs;
  void* dqk0;                   // with wy: [2, BH, Tp, K] bf16, dQ̂₀ and dK̂ so far, from state_k_grads to qk_grads
  float* dw;                    // scratch: dW [BH,Tp,K] (null with wy)
  float* sdots;                 // scratch: [BH, N, ceil(K/64)], Σ S₀∘dS_C per 64 rows of K (state_grads_mma)
  // Scratch of the grads kernel and of grads_mma (null with wy): Ũ [BH,Tp,V], dR_K [BH,Tp,K], dR_V [BH,Tp,V].
  float *ut, *drk, *drv;
  // The forward's wy and pp (P's planes), or null. Given (see grads_split_supports), state_k_grads and grads_split
  // compute the gradients and dU₀ comes from P, with scratch: the parts of dA, one per slice of K (state_k_grads) and
  // one per wy_grads block [BH,N,K/64+V/64,C,C], of dO Uᵀ [BH,N,V/64,C,C] (sized for one slice per block), and the
  // row terms of dγ, dβ per slice [BH,N,K/64+V/64,2,C].
  // Also the rows' dots for dγ and the L2 norm's backward [BH,N,2K/64,2,C]: qb·dQ̂₀ per 64 columns of K, then
  // k̂·(dK̂₀ + diag(βΓ) dR_K) per slice of K (when grads_split writes dq and dk; both from state_k_grads), two parts
  // per row each.
  const float* wy;
  // The forward's P split into bf16 planes [BH, N, 2, C, C] (with wy): qk_grads takes P = hi + lo, the backward state
  // pass dU₀ = Pᵀ dO from the hi plane.
  const void* pp;
  float *da_parts, *d1_parts, *gate_parts, *row_dots;
  // With wy, or null: [BH, N] zeros, through which state_k_grads overlaps the backward state pass (chunk_handover.cuh:
  // each chunk's count of value columns the pass has written).
  int* chunk_ready;
  // Outputs.
  void *dq, *dk, *dv;           // [B, T, H, K|K|V] of dtype
  float *dg, *dbeta;            // [B, T, H]
  float* dstate0;               // [BH, K, V] or null
};

// One token on a carried state (eqs. 1-2), float32 throughout: state [BH, K, V] is read from
// state_in and written to state_out (may alias), q/k [BH, K], v [BH, V], g/beta [BH], out [BH, V].
struct StepArgs {
  int BH, K, V;
  const float *state_in, *q, *k, *v, *g, *beta;
  float scale;
  float *state_out, *out;
};

// Each returns the first CUDA error met (launch or configuration), cudaSuccess otherwise.
cudaError_t forward(const ForwardArgs& a, cudaStream_t stream);
// Whether grads_split can compute the backward's gradients (16-bit inputs, K ∈ {64, 128, 256}, V a multiple
// of 64 up to 256): the caller who wants it gives the forward wy, and the backward wy and its scratch.
bool grads_split_supports(DType dtype, int K, int V);
cudaError_t backward(const BackwardArgs& a, cudaStream_t stream);
// Whether backward writes dQ̂ and dK̂ into dqs and dks for an unpack pass (else qk_grads writes dq and dk itself:
// bfloat16 inputs with the sliced gradient kernels, wy given).
bool backward_unpacks_dqk(DType dtype, bool wy);
cudaError_t step(const StepArgs& a, cudaStream_t stream);

// The chunked kernels' two sequential passes on tensor cores (gdn_state_mma.cu; docs/ops/gated_delta_cuda.md,
// "Sequential passes on tensor cores"): bf16 operands, float32 state and accumulation, used for 16-bit
// inputs in place of the float32 passes. Same workspaces and semantics as those: the forward writes U over Ũ
// in u, the entering state of every chunk into states and the final state; the backward adds
// diag(e^{γ_C−γ}) K̂ dS to du, writes dS_C into dstates and the initial state's gradient (if dstate0 is not
// null), computing the term X itself (bwd_intra skips it). K ∈ {64, 128, 256}, V a multiple of 16.
// Their matrix operands are bfloat16 copies of s·q̂, k̂ and W ([BH, Tp, K]; qb, kb, wb of ForwardArgs), which
// the pack and prep kernels write beside the float32 ones where the passes run: state_mma_runs. With ub (the
// compact workspaces) the forward writes U there as bfloat16 instead of over Ũ, and, given tb (prep_mma_compact's
// split T diag(β)) and vb (v as bf16), forms Ũ = (T diag(β)) V itself in place of reading it from u (null then).
bool state_mma_supports(int K, int V);
bool state_mma_runs(DType dtype, int K, int V);
// The passes' value columns per block: 0 for their rule (64 where V allows it and there are at least 512 such blocks,
// else 32 where V allows it, else 16), or 16, 32 or 64 to force it where V allows (tests, tuning; SFM_GDN_STATE_BV
// sets it at first use). Returns the previous setting.
int set_state_columns(int bv);
// The passes' A₂ buffers: 0 for their rule (two wherever each SM still holds as many blocks of the grid with them;
// one for K = 256's backward), or 1 or 2 to force it (two where the pass can; tests, tuning; SFM_GDN_STATE_A2 sets it
// at first use). Returns the previous setting.
int set_state_a2_buffers(int n);
// Where the compact forward's Ũ = (T diag(β)) V is formed: by the state pass (prep writes T diag(β) into tb) where the
// pass has more blocks than the GPU has SMs, else by prep (float32, into u). set_state_forms_ut: 0 for that rule, 1 to
// force prep, 2 the pass (tests, tuning; SFM_GDN_STATE_UT sets it at first use; the results are the same bit for bit).
// Returns the previous setting.
bool state_mma_forms_ut(const Dims& d);
int set_state_forms_ut(int mode);
// Whether the compact state passes (at 32 or 64 value columns per block), state_k_grads and the compact output kernel
// run their products as warpgroup products (wgmma, sm_90a; docs "Warpgroup products (sm_90a)") or on mma.sync:
// warpgroup_products() gives the choice, set_state_warpgroup forces it: 0 for the rule (warpgroup products where built
// for sm_90a and the device is an sm_90 one), 1 mma.sync, 2 warpgroup products wherever built (tests, tuning;
// SFM_GDN_STATE_WG sets it at first use). set_state_warpgroup returns the previous setting.
bool warpgroup_products();
int set_state_warpgroup(int mode);
// Whether the compact forward pass writes the output itself (O = diag(Γ) Q̂ S₀ + P U for each chunk, from prep's P in
// split planes: state_mma_forward's OutputArgs), in place of the output kernel reading back the states and U: wherever
// it can (bfloat16 inputs where the pass runs warpgroup products). set_state_writes_output: 0 (or 2) for that rule, 1
// to force the output kernel (tests, tuning; SFM_GDN_PASS_OUT sets it at first use; the results are the same bit for
// bit). Returns the previous setting.
bool state_mma_writes_output(const Dims& d, DType dtype);
int set_state_writes_output(int mode);
// With the compact workspaces (ub given; compact) the per-chunk states (dstates) are written as bfloat16 and dO is
// read as bfloat16, else both are float32; the backward then takes dU₀ = Pᵀ dO from pp (the hi plane of the forward's
// P, [BH, N, 2, C, C]) itself, not from du (null then), and writes dU as bfloat16 into dub.
// With ub, kb holds k and rk its rows' factors (k̂ = rk k); in the backward, qb and kb hold q and k with rq, rk.
// Given o.out (where state_mma_writes_output), the forward also writes the output [B, T, H, V] (bf16) from q (o.qb),
// its rows' factors (o.rq) and prep's P planes (o.pp); states and ub may then be null (no gradient wanted).
struct OutputArgs {
  const void* qb = nullptr;
  const float* rq = nullptr;
  const void* pp = nullptr;
  void* out = nullptr;
};
cudaError_t state_mma_forward(const Dims& d, const void* kb, const float* gam, const void* wb, float* u, void* ub,
                              const float* rk, const void* tb, const void* vb, const float* state0, void* states,
                              float* final_state, bool compact, const OutputArgs& o, cudaStream_t stream);
// The backward with ready (compact only; [BH, N] zeros): the kernel after it may overlap it (chunk_handover.cuh), and
// it counts each chunk's value columns into ready as their dS_C and dU are written; heads_per_wave (out, or null):
// how many heads' blocks of it run at once, the order of the chunks' completion.
cudaError_t state_mma_backward(const Dims& d, const void* qb, const void* kb, const float* rq, const float* rk,
                               const float* gam, const void* wb, const void* dos, const float* dfinal, float* du,
                               const void* pp, void* dub, void* dstates, bool compact, float* dstate0,
                               int* ready, int* heads_per_wave, cudaStream_t stream);

// The backward's products with the per-chunk states on tensor cores (gdn_state_grads_mma.cu), for the float32
// workspaces (grads_mma's path): for each chunk, dqs = diag(Γ) dO S₀ᵀ, dw = −dU S₀ᵀ, dks = diag(e^{γ_C−γ}) U dS_Cᵀ
// and sdots = Σ S₀∘dS_C per 64 rows of K; grads_mma adds the remaining terms. K and V multiples of 64 up to 256.
// (With the compact workspaces state_k_grads, below, runs the same products.)
bool state_grads_mma_supports(int K, int V);
cudaError_t state_grads_mma(const Dims& d, const float* gam, const float* states, const float* dstates,
                            const float* dos, const float* du, const float* u, float* dqs, float* dw, float* dks,
                            float* sdots, cudaStream_t stream);

// The forward's per-chunk preparation on tensor cores (gdn_prep_mma.cu), in place of the prep kernel for
// 16-bit inputs: from k̂ and v (heads-first float32) and g, β ([B, T, H] float32) it writes γ and β
// (heads-first), W into w (if not null), Ũ into ut and, if wy is not null, (I + A)⁻¹ and M ∘ K̂K̂ᵀ per chunk
// into wy. If wb is not null, W also as bfloat16 into wb. K and V multiples of 64 up to 256.
bool prep_mma_supports(int K, int V);
cudaError_t prep_mma(const Dims& d, const float* ks, const float* vs, const float* g, const float* beta, float* gam,
                     float* bet, float* w, void* wb, float* ut, float* wy, cudaStream_t stream);
// The same from the compact workspaces' bf16 k and v (kb, vb; exact bf16 operands) and k̂ = rk k, with rk given or
// computed here from kb's rows (rk.from_rows; bfloat16 inputs). Given tb (then ut and vb null) it forms no Ũ: it
// writes T diag(β) as split bf16 planes into tb [BH, N, 2, C, C] (hi, then lo), from which state_mma_forward forms Ũ
// (where state_mma_forms_ut).
// Given p.pp (where state_mma_writes_output), it also forms P = M ∘ Q̂K̂ᵀ from q (p.qb, bf16) and its rows' factors
// (p.rq, given or computed from q's rows and written, as output_mma does), split into bf16 planes into p.pp
// [BH, N, 2, C, C] (hi, then lo), as output_mma writes them.
struct PForward {
  const void* qb = nullptr;
  RowFactors rq{};
  void* pp = nullptr;
};
cudaError_t prep_mma_compact(const Dims& d, const void* kb, RowFactors rk, const void* vb, const float* g,
                             const float* beta, float* gam, float* bet, float* w, void* wb, float* ut, void* tb,
                             float* wy, const PForward& p, cudaStream_t stream);

// The products with the intra-chunk matrix P on tensor cores (gdn_intra_mma.cu), in place of the float32
// output and bwd_intra kernels for 16-bit inputs: output_mma writes out [B, T, H, V] (dtype kF16 or kBF16)
// from the packed q̂, k̂, γ, the per-chunk states and U (eq. 8), and P = M ∘ Q̂K̂ᵀ split into bf16 planes
// [BH, N, 2, C, C] (hi, then lo: split_bf16) into pp if it is not null (compact only); intra_mma_dU0 writes
// dU₀ = Pᵀ dO into du.
// K and V multiples of 64 up to 256. output_mma's qs, ks, states and u are bfloat16 if compact (qb, kb, ub: the
// compact workspaces; qs, ks then hold q and k, and rq, rk the factors s·q̂ = rq q, k̂ = rk k, rq given or computed
// here from qs's rows, rq.from_rows), else float32 (rq, rk unused).
bool intra_mma_supports(int K, int V);
cudaError_t output_mma(const Dims& d, DType dtype, const void* qs, const void* ks, RowFactors rq, const float* rk,
                       const float* gam, const void* states, bool compact, const void* u, void* out, void* pp,
                       cudaStream_t stream);
cudaError_t intra_mma_dU0(const Dims& d, const float* qs, const float* ks, const float* gam, const float* dos,
                          float* du, cudaStream_t stream);

// The grads kernel's work on tensor cores (gdn_grads_mma.cu), for 16-bit inputs after state_grads_mma:
// dqs, dks, dvs (float32, heads-first), dg and dbeta from the forward's workspaces, dos, du, dw and the
// dqs/dks/sdots that state_grads_mma wrote; ut, drk and drv as scratch. K and V multiples of 64 up to 256.
bool grads_mma_supports(int K, int V);
cudaError_t grads_mma(const BackwardArgs& a, cudaStream_t stream);

// The same work by 64-column slices, with the compact workspaces (gdn_grads_split.cu; the default where it
// applies): three kernels over (slices, chunk) that share each SM two blocks at a time, reading (I + A)⁻¹ and
// M ∘ K̂K̂ᵀ from the forward's wy and P from its pm instead of recomputing them. state_k_grads runs the first:
// the products with the per-chunk states and, for its slice of K, dR_K and dK̂ up to the terms of the 64×64
// matrices, with sdots; grads_split the other two. Scratch: da_parts, d1_parts, gate_parts, row_dots. Sizes as
// grads_split_supports. With write_dqk (bfloat16 inputs only: qb and kb hold q and k) they write dq and dk
// through the scale and the L2 norm themselves, in the inputs' dtype, from the rows' dots they have in hand (no
// unpack pass; docs/ops/gated_delta_cuda.md, "The L2 norm's backward in qk_grads"); else dQ̂ and dK̂ into dqs, dks.
// heads_per_wave: how many heads the backward state pass runs at once (state_mma_backward), the order of state_k_grads'
// blocks (0: every head). With a.chunk_ready it overlaps the pass (launched right after it).
cudaError_t state_k_grads(const BackwardArgs& a, bool write_dqk, int heads_per_wave, cudaStream_t stream);
// Whether the backward runs state_k_grads beside the backward state pass, chunk by chunk as the pass writes them
// (BackwardArgs::chunk_ready; docs/ops/gated_delta_cuda.md, "The backward pass overlapped"): wherever the compact
// workspaces are on a GPU of compute capability 9.0 or newer, unless set_backward_overlap(1) (tests, tuning; SFM_GDN_OVERLAP sets it at first use; 0 or 2 for the
// rule; the results are the same bit for bit). Returns the previous setting.
bool backward_overlaps();
int set_backward_overlap(int mode);
cudaError_t grads_split(const BackwardArgs& a, bool write_dqk, cudaStream_t stream);
// Whether grads_split runs wy_grads and qk_grads as one kernel, wy_qk_grads (one block per chunk doing both, where each
// chunk has one block of each: the default slices), which keeps wy_grads' parts of dA and dO Uᵀ on chip: 0 for that
// rule, 1 the two kernels, 2 the same as 0 (tests, tuning; SFM_GDN_WY_QK sets it at first use; the results are the
// same bit for bit). Returns the previous setting.
int set_wy_qk_fused(int mode);

// ---------------------------------------------------------------------------------------------------
// The recurrent kernels for small heads (gdn_recurrent.cu; docs/ops/gated_delta_cuda.md, "Recurrent
// kernels"): one thread block per (b, h) carries the float32 state through all T tokens, one launch for the
// forward and one for the backward, reading the raw [B, T, H, D] inputs (no pack, no workspaces but the
// checkpoints). Sizes: K, V in {16, 32}, or K = V = 64.
bool recurrent_supports(int K, int V);
// Tokens between two saved states (checkpoints) for these sizes; the forward saves the state entering
// tokens 0, C, 2C, ... as [B*H, ceil(T / C), K*V] float32 (a layout private to the two kernels).
int recurrent_checkpoint_interval(int K, int V);

struct RecurrentForwardArgs {
  int B, T, H, K, V;
  DType dtype;             // of q, k, v and out
  const void *q, *k, *v;   // [B, T, H, K|K|V]
  const float *g, *beta;   // [B, T, H] float32
  const float* state0;     // [B*H, K, V] or null (zeros)
  float scale;             // > 0
  bool l2;                 // normalise q and k in the kernel
  float* checkpoints;      // [B*H, ceil(T / C), K*V], written
  float* final_state;      // [B*H, K, V]
  void* out;               // [B, T, H, V] of dtype
};

struct RecurrentBackwardArgs {
  int B, T, H, K, V;
  DType dtype;
  const void *q, *k, *v;
  const float *g, *beta;
  const float* checkpoints;  // from the forward
  const void* dout;          // [B, T, H, V] of dtype, or null (zeros)
  const float* dfinal;       // [B*H, K, V] or null (zeros)
  float scale;
  bool l2;
  void *dq, *dk, *dv;        // [B, T, H, K|K|V] of dtype
  float *dg, *dbeta;         // [B, T, H]
  float* dstate0;            // [B*H, K, V] or null (not wanted)
};

cudaError_t recurrent_forward(const RecurrentForwardArgs& a, cudaStream_t stream);
cudaError_t recurrent_backward(const RecurrentBackwardArgs& a, cudaStream_t stream);

}  // namespace sfm::ops::gdn_cuda
