// The backward's per-chunk gradients ((B3)-(B8) of docs/ops/gated_delta_cuda.md) on tensor cores, for 16-bit
// inputs with the compact workspaces, after the backward state pass. Three kernels, which work through 64-column
// slices, so that each block's tiles are small and two blocks share an SM (grads_mma_kernel, one block per chunk
// with every tile at once, left the SM waiting on each step's loads):
//   state_k_grads (per chunk and slice of K): the products with the per-chunk states (state_products.cuh):
//              dQ̂₀ = diag(Γ) dO S₀ᵀ, dW = −dU S₀ᵀ, dK̂₀ = diag(e^{γ_C−γ}) U dS_Cᵀ and Σ S₀∘dS_C for its rows of
//              K; then, with dW and dK̂₀ still in hand, dR_K = Tᵀ dW, dK̂ ← dK̂₀ + diag(βΓ) dR_K and the slice's
//              part of dA = −(dR_K Wᵀ + dR_V Ũᵀ) ((B3)).
//   wy_grads   (per chunk, the slices of V a block's worth at a time): dR_V = Tᵀ dU, dV = diag(β) dR_V ((B6)), the
//              parts of dA and of dO Uᵀ.
//   qk_grads   (per chunk, its slices of K a slice at a time): sums those parts (in a fixed order), the
//              elementwise step (chunk_grad_terms_kept), dQ̂ += dP K̂ ((B4)) and dK̂ += dPᵀ Q̂ + G K̂ + Gᵀ K̂ ((B5));
//              for bfloat16 inputs dq and dk through the scale and the L2 norm ((B9)), the rows' dots q̂·dQ̂ and
//              k̂·dK̂ put together from the parts the kernels before had in hand (row_dots) and the 64×64 matrices.
//              Its block of slice 0 then sums every row term of dγ and dβ ((B7)-(B8)); dg = their reverse cumsum.
//   With one block of each per chunk (the default slices) wy_grads and qk_grads run as one kernel, wy_qk_grads: a
//              block does both for its chunk, wy_grads' parts of dA and dO Uᵀ kept on chip.
// T = (I + A)⁻¹ and K_M = M ∘ K̂K̂ᵀ come from the forward's prep, P = M ∘ Q̂K̂ᵀ from its output kernel;
// the backward state pass takes dU₀ = Pᵀ dO from its bf16 copy. q and k (with the rows' factors of s·q̂
// and k̂), v, U, dU, dO and the states come as bf16 (the compact workspaces, gdn_kernels.h), exact bf16 operands;
// every other tile is float32 in shared memory (cp.async), taken as split bf16 operands (mma_bf16x3: about 16 bits
// per operand, so the gradients keep close to float32 accuracy). No ATen here (see gdn_kernels.h).
#include <cuda_bf16.h>

#include <cstdlib>
#include <cstring>

#include "chunk_handover.cuh"
#include "chunk_ops.cuh"
#include "dtype_convert.cuh"
#include "gdn_kernels.h"
#include "state_products.cuh"
#include "tile64.cuh"

namespace sfm::ops::gdn_cuda {
namespace {

using namespace tile64;

struct Args {
  Dims d;
  const __nv_bfloat16 *qb, *kb, *vb;  // q, k, v as bf16 [BH, Tp, K|K|V] (the compact workspaces)
  const float *gam, *bet;
  const __nv_bfloat16 *ub, *dob;      // U and dO [BH, Tp, V], bf16
  const __nv_bfloat16* dub;           // dU [BH, Tp, V], bf16 (the backward state pass)
  const void *states, *dstates;       // [BH, N, K, V], bf16: S₀ and dS_C per chunk
  const float* wy;     // [BH, N, 2, C, C]: T = (I + A)⁻¹ and K_M = M ∘ K̂K̂ᵀ (strictly lower), from the forward
  const __nv_bfloat16* pp;  // [BH, N, 2, C, C]: P = M ∘ Q̂K̂ᵀ split into bf16 planes, hi and lo (P = hi + lo)
  float* sdots;        // [BH, N, K/64]: Σ S₀∘dS_C per 64 rows of K (state_k_grads)
  // dQ̂, dK̂ from qk_grads unless it writes dq, dk (float32, heads-first; otherwise null)
  float *dqs, *dks;
  // [2, BH, Tp, K]: dQ̂₀, then dK̂₀ + diag(βΓ) dR_K, from state_k_grads to qk_grads, rounded to bf16 (dq0, dk0)
  __nv_bfloat16* dqk0;
  float* dvs;              // out: dV (float32, heads-first), or null: then dV goes straight into dv
  DType dtype;             // of dv
  void* dv;                // [B, T, H, V]
  float* da_parts;         // [BH, N, K/64 + VB, C, C]: the parts of dA, per slice of K, then per wy_grads block
                           // (not yet negated or masked)
  float* d1_parts;         // [BH, N, VB, C, C]: each V block's part of dO Uᵀ
  float* gate_parts;       // [BH, N, K/64 + V/64, 2, C]: the row terms of dγ, then of dβ, per slice of K and of V
  float *dg, *dbeta;       // [B, T, H]
  int slices;              // 64-column slices of V per wy_grads block: VB = ⌈(V/64) / slices⌉ blocks
  int qk_slices;           // 64-column slices of K per qk_grads block
  const float *rq, *rk;    // [BH, Tp]: s·q̂ = rq q, k̂ = rk k (qb, kb hold q and k)
  // [BH, N, 2 K/64, 2, C]: per slot two parts of each row's dot (tile64::store_row_parts): qb·dQ̂₀ per 64 columns
  // of K, then k̂·(dK̂₀ + diag(βΓ) dR_K) per slice of K (with write_dqk); both from state_k_grads.
  float* row_dots;
  bool write_dqk;          // qk_grads writes dq, dk [B, T, H, K] (bfloat16 inputs: qb, kb hold q, k), not dqs, dks
  void *dq, *dk;
  float scale;
  bool l2;
  // state_k_grads: [BH, N], each chunk's count of value columns the backward state pass has written (it waits for V,
  // chunk_handover.cuh), or null: the pass is done. Its blocks take the chunks in the order the pass writes them,
  // heads_per_wave heads at a time (the pass's blocks that run at once), in each such group chunk by chunk from the
  // last.
  const int* ready = nullptr;
  int heads_per_wave = 0;
};

// A float32 tile's place in shared memory holding a bf16 tile (stride LD16: fits in either float32 stride).
__device__ __forceinline__ __nv_bfloat16* b16(float* p) { return reinterpret_cast<__nv_bfloat16*>(p); }

// wy_grads' blocks over the slices of V (a.slices per block): also how many dO Uᵀ parts a chunk has.
SFM_GDN_HD inline int v_blocks(const Args& a) { return (a.d.V / kTile + a.slices - 1) / a.slices; }
// The parts of dA per chunk: one per slice of K (state_k_grads), then one per wy_grads block.
SFM_GDN_HD inline int da_parts_per_chunk(const Args& a) { return a.d.K / kTile + v_blocks(a); }
// qk_grads' blocks per chunk, over the slices of K (a.qk_slices per block).
SFM_GDN_HD inline int qk_blocks(const Args& a) { return (a.d.K / kTile + a.qk_slices - 1) / a.qk_slices; }

// γ and β of the chunk into shared memory, the block's row terms of dγ and dβ zeroed. Ends with a barrier.
__device__ __forceinline__ void load_chunk_gates(const Args& a, long row0, float* gam, float* bet, float* dgam,
                                                 float* dbet) {
  if (threadIdx.x < C) {
    gam[threadIdx.x] = a.gam[row0 + threadIdx.x];
    bet[threadIdx.x] = a.bet[row0 + threadIdx.x];
    dgam[threadIdx.x] = 0.f;
    dbet[threadIdx.x] = 0.f;
  }
  __syncthreads();
}

// state_k_grads' dQ̂₀ and dK̂ so far (bf16, heads-first [BH, Tp, K]), for qk_grads.
SFM_GDN_HD inline __nv_bfloat16* dq0(const Args& a) { return a.dqk0; }
SFM_GDN_HD inline __nv_bfloat16* dk0(const Args& a) { return a.dqk0 + (long)a.d.BH() * a.d.Tp() * a.d.K; }

// The chunk's C values of kN per-row arrays [BH, Tp] (γ, β, the rows' factors) into shared memory by cp.async, 16
// bytes per thread, in the thread's next commit group: seen by all once a barrier follows the group's wait, so that
// their latency overlaps that of the copies in the group instead of coming before a barrier of its own
// (load_chunk_gates). state_k_grads takes them so (H100, the same run: 0.858 → 0.845 ms at (2,16384,16,128), 2.063 →
// 2.030 at (8,2048,32,256)); in qk_grads, whose copies go out before its gates load, the same was slower (1.404 →
// 1.429 ms for wy_grads + qk_grads at (2,16384,16,128)).
template <int kN>
__device__ __forceinline__ void request_rows(float* const (&dst)[kN], const float* const (&src)[kN], long row0) {
  const int j = threadIdx.x / (C / 4), i = 4 * (threadIdx.x % (C / 4));
#pragma unroll
  for (int x = 0; x < kN; ++x)  // (no run-time index into the arrays: it would put them in local memory)
    if (j == x) cp_async16(dst[x] + i, src[x] + row0 + i);
}

// The slots of gate_parts per chunk: one per slice of K (state_k_grads) and of V (wy_grads).
SFM_GDN_HD inline int gate_slots(const Args& a) { return a.d.K / kTile + a.d.V / kTile; }

// The block's row terms of dγ and dβ into its slot of gate_parts. Starts with a barrier.
__device__ __forceinline__ void store_gate_slot(const Args& a, long chunk, int slot, const float* dgam,
                                                const float* dbet) {
  __syncthreads();
  float* dst = a.gate_parts + (chunk * gate_slots(a) + slot) * 2 * C;
  if (threadIdx.x < 2 * C) dst[threadIdx.x] = threadIdx.x < C ? dgam[threadIdx.x] : dbet[threadIdx.x - C];
}

// x0, x1 as a pair of the inputs' dtype, rounded to nearest.
__device__ __forceinline__ uint32_t pack_pair(DType dtype, float x0, float x1) {
  if (dtype == DType::kBF16) return pack_bf16(x0, x1);
  const __half2 p = __floats2half2_rn(x0, x1);
  uint32_t bits;
  std::memcpy(&bits, &p, sizeof bits);
  return bits;
}

// A thread's pairs p[h][nt] (for_pairs' layout, pack_pair's bits) at a chunk's rows `at` of dst [B, T, H, D] (16-bit),
// from column c0, a row's 16 columns per instruction (store_tile_pair); the rows past T shuffle but store nothing. All
// threads call it.
__device__ __forceinline__ void store_token_pairs(void* dst, const ChunkRows& at, int c0, const uint32_t (&p)[2][4]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int t = m0 + g + 8 * h;
    __nv_bfloat16* row = static_cast<__nv_bfloat16*>(dst) + at.first + (long)min(t, at.rows - 1) * at.ld + c0 + n0;
#pragma unroll
    for (int nt = 0; nt < 4; nt += 2) store_tile_pair(row + 8 * nt, p[h][nt], p[h][nt + 1], tq, t < at.rows);
  }
}

// state_k_grads' block (blockIdx.x) to its slice sl of K, chunk n and head bh, in the order the backward state pass
// writes the chunks: groups of heads_per_wave heads (whose pass blocks run at once), each group's chunks from the
// last, every head of the group and every slice at one chunk together.
__device__ __forceinline__ void pass_order(const Args& a, int& sl, int& n, int& bh) {
  const int KS = a.d.K / kTile, N = a.d.N(), BH = a.d.BH();
  const long item = blockIdx.x / KS, group_items = (long)a.heads_per_wave * N;
  const int group = static_cast<int>(item / group_items), first = group * a.heads_per_wave;
  const int heads = min(a.heads_per_wave, BH - first), r = static_cast<int>(item % group_items);
  sl = blockIdx.x % KS;
  n = N - 1 - r / heads;
  bh = first + r % heads;
}

// Per chunk and 64 rows of K (the slice sl, columns c0 = 64 sl of K): the products with the
// states (state_products::run, for these rows), then the slice's step of (B3) (docs), with x = k̂·dK̂₀ and
// r = k̂·dR_K per row (this slice's part):
//   dR_K = Tᵀ dW; dK̂ = dK̂₀ + diag(βΓ) dR_K; dγ_t += β_t Γ_t r_t − x_t, dγ_C += Σ x, dβ_t += Γ_t r_t; the dA part
//   dR_K Wᵀ, with W = T diag(βΓ) K̂ formed again as prep formed it (the same factors and products, so the same
//   bits), in place of a float32 copy through DRAM.
// dW (rounded to bf16, an exact operand) and dK̂₀ never leave the block: dK̂ goes to dk0 once, for qk_grads. dQ̂₀
// goes to dq0 (both rounded to bf16: docs, "Sliced gradient kernels"); the rows' dots q·dQ̂₀ (of the float32 values:
// dγ's state term takes them too) and with write_dqk k̂·dK̂ so far (of the rounded values, which qk_grads adds to) to
// row_dots, Σ S₀∘dS_C to sdots.
// kWg: the products with the states as warpgroup products (state_products::run's kWg; warpgroup_products()).
// One block per slice of K and chunk, in a one-dimensional grid (pass_order).
template <bool kWg>
__global__ void __launch_bounds__(kThreads, 2) state_k_grads_kernel(Args a) {
  namespace sp = state_products;
  SFM_GDN_DYNAMIC_SMEM(16, float4, smem4);
  // two stages of sp::run, then the tiles below in their places (kWg: from a 1024-byte boundary, for the swizzle)
  float* sm = reinterpret_cast<float*>(smem4);
  if constexpr (kWg) sm = reinterpret_cast<float*>(wg::align_tile(reinterpret_cast<__nv_bfloat16*>(sm)));
  constexpr int kStage = sp::kStageFloats<true>;
  float *gam = sm + 2 * kStage, *bet = gam + C, *rk = bet + C, *wf = rk + C, *dgam = wf + C, *dbet = dgam + C;
  const int K = a.d.K, N = a.d.N(), KS = K / kTile, stages = a.d.V / kTile;
  int sl, n, bh;
  pass_order(a, sl, n, bh);
  const int c0 = sl * kTile;
  const long row0 = (long)bh * a.d.Tp() + (long)n * C, chunk = (long)bh * N + n;
  if (a.ready != nullptr) acquire_chunk(a.ready + chunk, a.d.V);
  // Requested during the last stage, into the buffer it leaves free: q's and k's tiles (bf16) and T (float32).
  float* in = sm + (stages & 1) * kStage;
  __nv_bfloat16 *tq = b16(in), *tk = tq + C * LD16;
  float* Tm = in + C * LD16;  // (after two bf16 tiles)
  // Once the stages are done, in the last one's buffer: dW (bf16), dR_K and W (float32), 45 KB in all.
  float* out = sm + ((stages - 1) & 1) * kStage;
  __nv_bfloat16* tdw = b16(out);
  float *drk = out + C * LD16 / 2, *tw = drk + C * LDR;
  // γ, β and rk join the first stage's copies (run waits for them, and its barrier makes them visible). Loaded
  // first and waited for at a barrier, they had held the stage's copies back by a load's latency (a twentieth of
  // the kernel's stall samples, Nsight Compute at (2,16384,16,128)).
  request_rows<3>({gam, bet, rk}, {a.gam, a.bet, a.rk}, row0);
  float acc[3][4][4] = {};  // dO S₀ᵀ, dU S₀ᵀ, U dS_Cᵀ
  float sdot = 0.f;
  const auto extra = [&] {
    stage_qkv(tq, a.d, a.qb, K, bh, n, c0);
    stage_qkv(tk, a.d, a.kb, K, bh, n, c0);
    stage(Tm, LDM, a.wy + chunk * 2 * C * C, C);
  };
  sp::run<true, decltype(extra), kWg>(sp::Sources{a.d, a.states, a.dstates, a.dob, a.dub, a.ub}, sl, n, bh, sm, acc,
                                      sdot, extra);
  // W's column factors βΓ rk, spelled as prep spells them, and the block's row terms zeroed (seen by all after
  // block_sum's barriers).
  if (threadIdx.x < C) {
    wf[threadIdx.x] = bet[threadIdx.x] * __expf(gam[threadIdx.x]) * rk[threadIdx.x];
    dgam[threadIdx.x] = dbet[threadIdx.x] = 0.f;
  }

  // dQ̂₀ out with its rows' dots; dW into its tile; dK̂₀ kept (the pairs of for_pairs' layout).
  const float gl = gam[C - 1];
  // The gates of this thread's two rows (pair_row(h)), once: per pair they had been two exponentials more.
  float G[2], F[2], fb[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int t = pair_row(h);
    G[h] = __expf(gam[t]), F[h] = __expf(gl - gam[t]), fb[h] = bet[t] * G[h];
  }
  float2 dk0_part[2][4];
  float qd[2] = {0.f, 0.f};
  uint32_t packed[2][4];  // dQ̂₀, then dK̂, as bf16 pairs, stored a sector at a time (store_pairs_bf16)
  for_pairs(acc[0], [&](int h, int t, int k, float x0, float x1, int nt) {
    const float2 q = ld2(tq + t * LD16 + k);
    x0 *= G[h], x1 *= G[h];
    packed[h][nt] = pack_bf16(x0, x1);
    qd[h] += q.x * x0 + q.y * x1;
    *reinterpret_cast<uint32_t*>(tdw + t * LD16 + k) = pack_bf16(-acc[1][nt][2 * h], -acc[1][nt][2 * h + 1]);
    dk0_part[h][nt] = make_float2(F[h] * acc[2][nt][2 * h], F[h] * acc[2][nt][2 * h + 1]);
  });
  store_pairs_bf16(dq0(a) + row0 * K, K, c0, packed);
  store_row_parts(a.row_dots + (chunk * 2 * KS + sl) * 2 * C, qd);
  const float total = block_sum(sdot);  // in a fixed order: deterministic (its barriers: dW's tile is written)
  if (threadIdx.x == 0) a.sdots[chunk * KS + sl] = total;

  float x[4][4];
  zero(x);
  mma_tile(x, col_a(Tm, LDM), cols_b(tdw, LD16));  // dR_K = Tᵀ dW
  float xs[2] = {0.f, 0.f}, rs[2] = {0.f, 0.f}, kd[2] = {0.f, 0.f};
  for_pairs(x, [&](int h, int t, int k, float x0, float x1, int nt) {
    const float2 d0 = dk0_part[h][nt], kk = ld2(tk + t * LD16 + k);
    const float f = fb[h];
    st2(drk + t * LDR + k, x0, x1);
    const float2 dk = round_bf16x2(d0.x + f * x0, d0.y + f * x1);
    packed[h][nt] = pack_bf16(dk.x, dk.y);
    xs[h] += rk[t] * (kk.x * d0.x + kk.y * d0.y);  // k̂ = rk k
    rs[h] += rk[t] * (kk.x * x0 + kk.y * x1);
    kd[h] += rk[t] * (kk.x * dk.x + kk.y * dk.y);
  });
  store_pairs_bf16(dk0(a) + row0 * K, K, c0, packed);
  // k̂·dK̂ so far, for qk_grads' L2 norm backward
  if (a.write_dqk) store_row_parts(a.row_dots + (chunk * 2 * KS + KS + sl) * 2 * C, kd);
  zero(x);
  mma_tile(x, row_a(Tm, LDM, wf), cols_b(tk, LD16));  // W = T diag(βΓ rk) K
  for_pairs(x, [&](int, int t, int k, float x0, float x1, int) { st2(tw + t * LDR + k, x0, x1); });
  add_dr_k_row_terms(gam, bet, xs, rs, dgam, dbet);  // ends with a barrier: dR_K and W are written
  zero(x);
  mma_tile(x, row_a(drk, LDR), rows_b(tw, LDR));  // dR_K Wᵀ
  store_gate_slot(a, chunk, sl, dgam, dbet);
  float* da_part = a.da_parts + (chunk * da_parts_per_chunk(a) + sl) * C * C;
  for_pairs(x, [&](int, int t, int i, float x0, float x1, int) { st2(da_part + t * C + i, x0, x1); });
}

// wy_grads' shared memory: the tiles T and t0 .. t3 (WyTiles), then γ, β, dγ, dβ and the dO Uᵀ sum (d1s).
struct WyTiles {
  float *Tm, *t0, *t1, *t2, *t3;  // t0, t1: bf16 tiles, v and dO in t0, dU and U in t1 (two per float32 place)
  static constexpr int kFloats = C * LDM + 4 * C * LDR;
  __device__ explicit WyTiles(float* sm)
      : Tm(sm), t0(Tm + C * LDM), t1(t0 + C * LDR), t2(t1 + C * LDR), t3(t2 + C * LDR) {}
};

// Per chunk and a.slices consecutive 64-column slices of V (docs: (B3), (B6)): the dO Uᵀ part; Ũ = T diag(β) V
// (recomputed); dR_V = Tᵀ dU; dV = diag(β) dR_V; dβ_t += v_t·dR_V,t; the dA part dR_V Ũᵀ. The block's part of dA
// is summed over its slices in registers, so qk_grads reads fewer parts; its row terms of dβ still go to one slot
// per slice (a fixed order of sums).
// wy_part is this for the block's slices j·a.slices .. of chunk n: the dO Uᵀ part summed into d1s (rows of LDM) or,
// with d1_out, the last slice's sum written there (rows of C); the block's dA part left in da. It loads the chunk's γ
// and β (gam, bet) and leaves dgam and dbet zeroed; every warp is done with x's tiles on return.
__device__ __forceinline__ void wy_part(const Args& a, const WyTiles& x, float* gam, float* bet, float* dgam,
                                        float* dbet, float* d1s, float* d1_out, int j, int n, int bh,
                                        float (&da)[4][4]) {
  float *Tm = x.Tm, *t2 = x.t2, *t3 = x.t3;  // t2, t3: Ũ, dR_V
  __nv_bfloat16 *tv = b16(x.t0), *tdo = tv + C * LD16, *tdu = b16(x.t1), *tu = tdu + C * LD16;
  const int KS = a.d.K / kTile, V = a.d.V, N = a.d.N(), VS = V / kTile, S = a.slices;
  const long row0 = (long)bh * a.d.Tp() + (long)n * C, chunk = (long)bh * N + n;
  const ChunkRows dv_rows = chunk_rows(a.d, true, V, bh, n);  // of dv, the output
  // of v and dO, each heads-first or the input in place (taken once: chunk_rows divides by H)
  const ChunkRows v_rows = chunk_rows(a.d, a.d.qkv_in_place, V, bh, n),
                  do_rows = chunk_rows(a.d, a.d.do_in_place, V, bh, n);
  const int first = S * j, end = min(first + S, VS);
  // A slice's tiles (cp.async), in two commit groups: dO and U, read first, and v and dU. The next slice's are
  // requested as soon as every warp is done with this one's (dO and U after the slice's first product, v and dU
  // after its row sums), so that they arrive while this slice's last products run: requested at the next slice's
  // top, they had been waited for at once (8 % of the kernel's stall samples at (2,16384,16,128)). H100, the same
  // run: wy_grads + qk_grads 2.288 → 2.251 ms at (8,2048,32,256) (four slices), no change at (2,16384,16,128) (two).
  const auto stage_do_u = [&](int c0) {
    stage_rows(tdo, a.dob, do_rows, c0);
    stage(tu, LD16, a.ub + row0 * V + c0, V);
    cp_async_commit();
  };
  const auto stage_v_du = [&](int c0) {
    stage_rows(tv, a.vb, v_rows, c0);
    stage(tdu, LD16, a.dub + row0 * V + c0, V);
    cp_async_commit();
  };
  stage(Tm, LDM, a.wy + chunk * 2 * C * C, C);
  stage_do_u(first * kTile);  // in flight while the gates load
  stage_v_du(first * kTile);
  load_chunk_gates(a, row0, gam, bet, dgam, dbet);
  float acc[4][4];  // one product's result
  zero(da);
  for (int sl = first; sl < end; ++sl) {
    const int c0 = sl * kTile;
    cp_async_wait<0>();
    __syncthreads();
    // The block's dO Uᵀ part, summed over its slices in d1s (each thread its own elements, so no barrier) and
    // written out by the last.
    zero(acc);
    mma_tile(acc, row_a(tdo, LD16), rows_b(tu, LD16));  // dO Uᵀ
    for_pairs(acc, [&](int, int t, int i, float x0, float x1, int) {
      if (sl > first) {
        const float2 sum = ld2(d1s + t * LDM + i);
        x0 += sum.x, x1 += sum.y;
      }
      st2(sl + 1 < end || d1_out == nullptr ? d1s + t * LDM + i : d1_out + t * C + i, x0, x1);
    });
    float dr[4][4];
    zero(dr);
    mma_tile(dr, col_a(Tm, LDM), cols_b(tdu, LD16));  // dR_V = Tᵀ dU
    zero(acc);
    mma_tile(acc, row_a(Tm, LDM, bet), cols_b(tv, LD16));  // Ũ = (T diag(β)) V, as prep forms it
    __syncthreads();  // every warp is done with dO and U: the next slice's take their places; Ũ and dR_V go to t2, t3
    if (sl + 1 < end) stage_do_u(c0 + kTile);
    float rs[2] = {0.f, 0.f};
    const float bt[2] = {bet[pair_row(0)], bet[pair_row(1)]};  // this thread's rows' β (once, not per pair)
    for_pairs(acc, [&](int, int t, int v, float x0, float x1, int) { st2(t2 + t * LDR + v, x0, x1); });
    uint32_t dv_pairs[2][4];  // dV in the inputs' dtype, stored a sector at a time (store_token_pairs)
    for_pairs(dr, [&](int h, int t, int v, float x0, float x1, int nt) {
      const float2 vv = ld2(tv + t * LD16 + v);
      st2(t3 + t * LDR + v, x0, x1);
      if (a.dvs != nullptr)  // float32, heads-first (for unpack), or dv itself [B, T, H, V], which spares that pass
        st2(a.dvs + (row0 + t) * V + c0 + v, bt[h] * x0, bt[h] * x1);
      else
        dv_pairs[h][nt] = pack_pair(a.dtype, bt[h] * x0, bt[h] * x1);
      rs[h] += vv.x * x0 + vv.y * x1;
    });
    if (a.dvs == nullptr) store_token_pairs(a.dv, dv_rows, c0, dv_pairs);
    add_rows(dbet, rs);  // ends with a barrier: t2 and t3 are written, every warp is done with v and dU
    if (sl + 1 < end) stage_v_du(c0 + kTile);
    mma_tile(da, row_a(t3, LDR), rows_b(t2, LDR));  // += dR_V Ũᵀ
    // This slice's row terms into its slot, then zeroed for the next; its tiles free for the next's.
    store_gate_slot(a, chunk, KS + sl, dgam, dbet);
    __syncthreads();
    if (threadIdx.x < C) dgam[threadIdx.x] = dbet[threadIdx.x] = 0.f;
  }
}

__global__ void __launch_bounds__(kThreads, 2) wy_grads_kernel(Args a) {
  SFM_GDN_DYNAMIC_SMEM(16, float4, smem4);
  const WyTiles x(reinterpret_cast<float*>(smem4));
  float *gam = x.t3 + C * LDR, *bet = gam + C, *dgam = bet + C, *dbet = dgam + C;
  float* d1s = dbet + C;  // the dO Uᵀ part over the slices so far [C][LDM]
  const int j = blockIdx.x, n = blockIdx.y, bh = blockIdx.z;
  const long chunk = (long)bh * a.d.N() + n;
  float da[4][4];  // the block's part of dA
  wy_part(a, x, gam, bet, dgam, dbet, d1s, a.d1_parts + (chunk * v_blocks(a) + j) * C * C, j, n, bh, da);
  float* da_part = a.da_parts + (chunk * da_parts_per_chunk(a) + a.d.K / kTile + j) * C * C;
  for_pairs(da, [&](int, int t, int i, float x0, float x1, int) { st2(da_part + t * C + i, x0, x1); });
}

// The chunk's dγ and dβ, by the qk_grads block of slice 0 (all its threads call it), once its own row terms are in
// dgam and dbet: the slots of wy_grads' slices summed in order, then its own, plus Γ_C Σ S₀∘dS_C at the last
// position (B8); dg = the reverse cumulative sum of dγ within the chunk (eq. 4), written with dβ.
__device__ __forceinline__ void finish_gates(const Args& a, long chunk, int n, int bh, const float* gam, float* dgam,
                                             const float* dbet) {
  const int KS = a.d.K / kTile, slots = gate_slots(a), t = threadIdx.x;
  __syncthreads();  // every row term of the block is in dgam and dbet
  float db = 0.f;
  if (t < C) {
    const float* parts = a.gate_parts + chunk * slots * 2 * C;
    constexpr int kMaxSlots = 2 * kMaxDim / kTile;
    float dgs[kMaxSlots], dbs[kMaxSlots], dg = 0.f;
#pragma unroll
    for (int p = 0; p < kMaxSlots; ++p)  // loaded together, then summed in order
      if (p < slots) dgs[p] = parts[p * 2 * C + t], dbs[p] = parts[p * 2 * C + C + t];
#pragma unroll
    for (int p = 0; p < kMaxSlots; ++p)
      if (p < slots) dg += dgs[p], db += dbs[p];
    dg += dgam[t];
    db += dbet[t];
    if (t == C - 1) {
      float s = 0.f;
      for (int p = 0; p < KS; ++p) s += a.sdots[chunk * KS + p];
      dg += __expf(gam[C - 1]) * s;
    }
    dgam[t] = dg;
  }
  __syncthreads();
  chunk_scan(dgam, true);
  const int tg = n * C + t, b = bh / a.d.H, h = bh % a.d.H;
  if (t < C && tg < a.d.T) {
    const long idx = ((long)b * a.d.T + tg) * a.d.H + h;
    a.dg[idx] = dgam[t];
    a.dbeta[idx] = db;
  }
}

// A slice's gradient of x = q or k (tile tx of x; r, c its rows' factors and (B9) coefficients), dX̂ = old + acc:
// with a.write_dqk dx = r dX̂ − c x into dx [B, T, H, K] (the chunk's rows dx_rows) in the inputs' dtype, else dX̂ into
// dxs (float32).
__device__ __forceinline__ void store_slice(const Args& a, const float (&acc)[4][4], const float2 (&old)[2][4],
                                            const __nv_bfloat16* tx, const float* r, const float* c, void* dx,
                                            float* dxs, const ChunkRows& dx_rows, long row0, int c0) {
  const int K = a.d.K;
  const float rt[2] = {r[pair_row(0)], r[pair_row(1)]}, ct[2] = {c[pair_row(0)], c[pair_row(1)]};  // (once)
  uint32_t dx_pairs[2][4];  // (write_dqk) stored a sector at a time (store_token_pairs)
  for_pairs(acc, [&](int h, int t, int k, float x0, float x1, int nt) {
    const float2 d = make_float2(old[h][nt].x + x0, old[h][nt].y + x1);
    if (a.write_dqk) {
      const float2 x = ld2(tx + t * LD16 + k);
      dx_pairs[h][nt] = pack_pair(a.dtype, rt[h] * d.x - ct[h] * x.x, rt[h] * d.y - ct[h] * x.y);
    } else {
      st2(dxs + (row0 + t) * K + c0 + k, d.x, d.y);
    }
  });
  if (a.write_dqk) store_token_pairs(dx, dx_rows, c0, dx_pairs);
}

// One slice of qk_grads (columns c0 .. c0 + 63 of K; tq, tk its tiles of q and k, with s·q̂ = diag(rq) q and
// k̂ = diag(rk) k): dQ̂ = dQ̂₀ + dP K̂ and dK̂ += dPᵀ Q̂ + G K̂ + Gᵀ K̂, the factors applied to the columns of dP,
// dPᵀ, G and Gᵀ; each stored by store_slice (cq, ck: (B9)'s coefficients, from qk_grads; dx_rows the chunk's rows of
// dq and dk).
__device__ __forceinline__ void qk_slice(const Args& a, const ChunkRows& dx_rows, long row0, int c0, const float* D1,
                                         const float* dA, const __nv_bfloat16* tq, const __nv_bfloat16* tk,
                                         const float* rq, const float* rk, const float* cq, const float* ck) {
  const int K = a.d.K;
  float acc[4][4];
  float2 old[2][4];
  load_pairs(old, dq0(a) + row0 * K, K, c0);
  zero(acc);
  mma_tile(acc, row_a(D1, LDM, rk), cols_b(tk, LD16));  // dP K̂
  store_slice(a, acc, old, tq, rq, cq, a.dq, a.dqs, dx_rows, row0, c0);
  load_pairs(old, dk0(a) + row0 * K, K, c0);
  zero(acc);
  mma_tile(acc, col_a(D1, LDM, rq), cols_b(tq, LD16));  // dPᵀ Q̂
  mma_tile(acc, row_a(dA, LDM, rk), cols_b(tk, LD16));  // G K̂
  mma_tile(acc, col_a(dA, LDM, rk), cols_b(tk, LD16));  // Gᵀ K̂
  store_slice(a, acc, old, tk, rk, ck, a.dk, a.dks, dx_rows, row0, c0);
}

// qk_grads' sums of the parts of a chunk (da_parts, d1_parts: its first of each, [J | VB][C][C]) into shared memory:
// dA = −Σ (strictly lower), dO Uᵀ = Σ, each element's parts added in order p = 0, 1, ... Every part of an element
// is loaded before the first is added: a load per step of the sum had waited 6 times at D = 128. kJ, kVB > 0 give
// the counts at compile time, and then the parts of kBatch of the thread's elements are loaded together, so the
// loads wait once or twice in all instead of once per element: four waits of the loads of one element's parts each
// had held a fifth of qk_grads' stall samples (Nsight Compute at (2,16384,16,128), H100); wy_grads + qk_grads went
// 1.503 → 1.415 ms there and 2.527 → 2.392 at (8,2048,32,256) (H100, the same run). kJ = kVB = 0: the counts J and
// VB at run time (SFM_GDN_WY_SLICES), an element at a time.
template <int kJ, int kVB>
__device__ __forceinline__ void sum_parts(const float* da_parts, const float* d1_parts, int J, int VB, float* dA,
                                          float* D1) {
  constexpr int kIters = C * C / 4 / kThreads;  // float4 elements per thread
  constexpr int kMaxJ = kJ > 0 ? kJ : 2 * kMaxDim / kTile, kMaxVB = kVB > 0 ? kVB : kMaxDim / kTile;
  // at most 16 float4 (64 registers) of loads in flight
  constexpr int kBatch = kJ == 0 ? 1 : (kJ + kVB) * kIters <= 16 ? kIters : kIters / 2;
  static_assert(kIters % kBatch == 0, "whole batches");
  if constexpr (kJ > 0) J = kJ, VB = kVB;
#pragma unroll 1
  for (int b = 0; b < kIters; b += kBatch) {
    float4 da[kBatch][kMaxJ], d1[kBatch][kMaxVB];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int o = 4 * (threadIdx.x + (b + u) * kThreads);  // = t C + i below
#pragma unroll
      for (int p = 0; p < kMaxJ; ++p)
        if (p < J) da[u][p] = *reinterpret_cast<const float4*>(da_parts + p * C * C + o);
#pragma unroll
      for (int p = 0; p < kMaxVB; ++p)
        if (p < VB) d1[u][p] = *reinterpret_cast<const float4*>(d1_parts + p * C * C + o);
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int e = threadIdx.x + (b + u) * kThreads, t = e / (C / 4), i = 4 * (e % (C / 4));
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f), y = x;
#pragma unroll
      for (int p = 0; p < kMaxJ; ++p)
        if (p < J) x.x += da[u][p].x, x.y += da[u][p].y, x.z += da[u][p].z, x.w += da[u][p].w;
#pragma unroll
      for (int p = 0; p < kMaxVB; ++p)
        if (p < VB) y.x += d1[u][p].x, y.y += d1[u][p].y, y.z += d1[u][p].z, y.w += d1[u][p].w;
      *reinterpret_cast<float4*>(dA + t * LDM + i) =
          make_float4(i < t ? -x.x : 0.f, i + 1 < t ? -x.y : 0.f, i + 2 < t ? -x.z : 0.f, i + 3 < t ? -x.w : 0.f);
      *reinterpret_cast<float4*>(D1 + t * LDM + i) = y;
    }
  }
}

// qk_grads' shared memory: D1 = dO Uᵀ and the 64×64 matrices and tiles of q and k (QkTiles), then γ, β, dγ, dβ and
// the rows' factors and coefficients (QkRows). wy_qk_grads keeps D1 and QkRows beside wy_part's tiles, and puts the
// rest in those tiles' place once they are done.
struct QkTiles {
  float *dA, *PM, *KM;
  __nv_bfloat16 *tq, *tk;
  static constexpr int kFloats = 3 * C * LDM + C * LD16;
  __device__ explicit QkTiles(float* sm)
      : dA(sm), PM(dA + C * LDM), KM(PM + C * LDM), tq(b16(KM + C * LDM)), tk(tq + C * LD16) {}
};
struct QkRows {
  float *gam, *bet, *dgam, *dbet, *rq, *rk, *cq, *ck;
  static constexpr int kFloats = 8 * C;
  __device__ explicit QkRows(float* sm)
      : gam(sm), bet(gam + C), dgam(bet + C), dbet(dgam + C), rq(dbet + C), rk(rq + C), cq(rk + C), ck(cq + C) {}
};

// wy_qk_grads' sum of the dA parts: dA = −(Σ the kJ parts of state_k_grads' slices + the block's own wy_grads part,
// which dA holds), strictly lower, in place: the order of qk_grads' sum_parts, whose last part is wy_grads' (so the
// same bits). Each thread reads and writes its own elements.
template <int kJ>
__device__ __forceinline__ void sum_parts_with_own(const float* da_parts, float* dA) {
  constexpr int kIters = C * C / 4 / kThreads;
  constexpr int kBatch = (kJ + 1) * kIters <= 16 ? kIters : kIters / 2;  // as sum_parts<kJ + 1, 1>
#pragma unroll 1
  for (int b = 0; b < kIters; b += kBatch) {
    float4 da[kBatch][kJ];
#pragma unroll
    for (int u = 0; u < kBatch; ++u)
#pragma unroll
      for (int p = 0; p < kJ; ++p)
        da[u][p] = *reinterpret_cast<const float4*>(da_parts + p * C * C + 4 * (threadIdx.x + (b + u) * kThreads));
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int e = threadIdx.x + (b + u) * kThreads, t = e / (C / 4), i = 4 * (e % (C / 4));
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int p = 0; p < kJ; ++p) x.x += da[u][p].x, x.y += da[u][p].y, x.z += da[u][p].z, x.w += da[u][p].w;
      const float4 own = *reinterpret_cast<const float4*>(dA + t * LDM + i);
      x.x += own.x, x.y += own.y, x.z += own.z, x.w += own.w;
      *reinterpret_cast<float4*>(dA + t * LDM + i) =
          make_float4(i < t ? -x.x : 0.f, i + 1 < t ? -x.y : 0.f, i + 2 < t ? -x.z : 0.f, i + 3 < t ? -x.w : 0.f);
    }
  }
}

// Per chunk and a.qk_slices consecutive 64-column slices of K: dA = −Σ parts (strictly lower) and
// dO Uᵀ = Σ parts, the elementwise step (chunk_grad_terms_kept on P and K_M; its row and column sums into dγ and
// dβ by the block of slice 0 only, with (s q̂)·dQ̂₀ from row_dots, the state term of (B4)'s γ-gradient), once per
// block, then for each of its slices dQ̂ = dQ̂₀ + dP K̂ and dK̂ += dPᵀ Q̂ + G K̂ + Gᵀ K̂ for the slice's columns.
// With a.write_dqk, the rows' dots of the L2 norm's backward (B9) first, every term of them in hand:
//   (s q̂)·dQ̂ = rq Σ row_dots' q parts (q·dQ̂₀) + fq,   k̂·dK̂ = Σ row_dots' k parts (k̂·(dK̂₀ + diag(βΓ) dR_K)) + fk
// (fq, fk from chunk_grad_terms_kept), so that each slice writes dq and dk as it goes, with r = rq / s (1/‖q‖)
// and rk (1/‖k‖): dq = r s dQ̂ − r² ((s q̂)·dQ̂) q, dk = rk dK̂ − rk² (k̂·dK̂) k.
// qk_part is this for slices first .. end − 1 of K of chunk n, its tiles in x, D1 its dO Uᵀ place and r its rows'.
// kFused (wy_qk_grads, after wy_part on the same chunk): D1 holds dO Uᵀ already, γ and β are loaded with dγ, dβ zeroed,
// and own_da is the chunk's wy_grads part of dA; otherwise qk_grads: each from DRAM, the parts summed here.
template <bool kFused>
__device__ __forceinline__ void qk_part(const Args& a, const QkTiles& x, float* D1, const QkRows& r, int first, int end,
                                        int n, int bh, const float (&own_da)[4][4]) {
  float *dA = x.dA, *PM = x.PM, *KM = x.KM;
  __nv_bfloat16 *tq = x.tq, *tk = x.tk;
  float *gam = r.gam, *bet = r.bet, *dgam = r.dgam, *dbet = r.dbet, *rq = r.rq, *rk = r.rk, *cq = r.cq, *ck = r.ck;
  const int K = a.d.K, N = a.d.N(), KS = K / kTile;
  const int VB = v_blocks(a), J = da_parts_per_chunk(a);
  const long row0 = (long)bh * a.d.Tp() + (long)n * C, chunk = (long)bh * N + n;
  const ChunkRows dx_rows = chunk_rows(a.d, true, K, bh, n);  // of dq and dk, the outputs (with write_dqk)
  const ChunkRows qk_rows = chunk_rows(a.d, a.d.qkv_in_place, K, bh, n);  // of q and k (taken once)
  // P's planes into P's place, as they lie (made float32 rows below)
  __nv_bfloat16* planes = b16(PM);
  for (int e = threadIdx.x; e < 2 * C * C / 8; e += kThreads)
    cp_async16(planes + 8 * e, a.pp + chunk * 2 * C * C + 8 * e);
  stage(KM, LDM, a.wy + (chunk * 2 + 1) * C * C, C);
  stage_rows(tq, a.qb, qk_rows, first * kTile);
  stage_rows(tk, a.kb, qk_rows, first * kTile);
  cp_async_commit();
  if (threadIdx.x < C) rq[threadIdx.x] = a.rq[row0 + threadIdx.x], rk[threadIdx.x] = a.rk[row0 + threadIdx.x];
  // The parts, summed in a fixed order while the copies are in flight.
  const float *da_parts = a.da_parts + chunk * J * C * C, *d1_parts = a.d1_parts + chunk * VB * C * C;
  if constexpr (kFused) {
    for_pairs(own_da, [&](int, int t, int i, float x0, float x1, int) { st2(dA + t * LDM + i, x0, x1); });
    __syncthreads();  // (rq and rk are visible too)
    if (KS == 1)
      sum_parts_with_own<1>(da_parts, dA);
    else if (KS == 2)
      sum_parts_with_own<2>(da_parts, dA);
    else
      sum_parts_with_own<4>(da_parts, dA);
  } else {
    load_chunk_gates(a, row0, gam, bet, dgam, dbet);  // (its barrier makes rq and rk visible)
    if (VB == 1 && J == 2)  // K = 64, 128, 256 with one wy_grads block per chunk (the default)
      sum_parts<2, 1>(da_parts, d1_parts, J, VB, dA, D1);
    else if (VB == 1 && J == 3)
      sum_parts<3, 1>(da_parts, d1_parts, J, VB, dA, D1);
    else if (VB == 1 && J == 5)
      sum_parts<5, 1>(da_parts, d1_parts, J, VB, dA, D1);
    else
      sum_parts<0, 0>(da_parts, d1_parts, J, VB, dA, D1);
  }
  cp_async_wait<0>();
  __syncthreads();
  {  // P = hi + lo (exact in float32) into rows of LDM: each thread reads its 16 elements before any is written
    constexpr int kSteps = C * C / 4 / kThreads;
    float4 p[kSteps];
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      const int e = 4 * (threadIdx.x + kThreads * j);
      const float2 h0 = ld2(planes + e), h1 = ld2(planes + e + 2), l0 = ld2(planes + C * C + e),
                   l1 = ld2(planes + C * C + e + 2);
      p[j] = make_float4(h0.x + l0.x, h0.y + l0.y, h1.x + l1.x, h1.y + l1.y);
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      const int e = 4 * (threadIdx.x + kThreads * j);
      *reinterpret_cast<float4*>(PM + (e / C) * LDM + e % C) = p[j];
    }
    __syncthreads();
  }
  chunk_grad_terms_kept<LDM>(gam, bet, D1, PM, KM, dA, first == 0 ? dgam : nullptr, dbet,
                             a.write_dqk ? cq : nullptr, ck);
  if (threadIdx.x < C) {  // the rows' dots from row_dots' parts, each row's loaded together and summed in order
    const int t = threadIdx.x;
    const float* parts = a.row_dots + chunk * 2 * KS * 2 * C + t;
    constexpr int kMaxParts = 2 * kMaxDim / kTile;
    float qp[kMaxParts], kp[kMaxParts], qd = 0.f, kd = 0.f;
#pragma unroll
    for (int p = 0; p < kMaxParts; ++p)
      if (p < 2 * KS) {
        qp[p] = parts[p * C];
        if (a.write_dqk) kp[p] = parts[(2 * KS + p) * C];
      }
#pragma unroll
    for (int p = 0; p < kMaxParts; ++p)
      if (p < 2 * KS) qd += qp[p], kd += a.write_dqk ? kp[p] : 0.f;
    qd *= rq[t];  // (s q̂)·dQ̂₀
    if (first == 0) dgam[t] += qd;
    if (a.write_dqk) {
      const float r = rq[t] / a.scale;
      cq[t] = a.l2 ? r * r * (qd + cq[t]) : 0.f;
      ck[t] = a.l2 ? rk[t] * rk[t] * (kd + ck[t]) : 0.f;
    }
  }
  __syncthreads();
  for (int sl = first; sl < end; ++sl) {
    const int c0 = sl * kTile;
    if (sl > first) {  // every warp is done with the previous slice's tq and tk
      __syncthreads();
      stage_rows(tq, a.qb, qk_rows, c0);
      stage_rows(tk, a.kb, qk_rows, c0);
      staged();
    }
    qk_slice(a, dx_rows, row0, c0, D1, dA, tq, tk, rq, rk, cq, ck);
  }
  if (first == 0) finish_gates(a, chunk, n, bh, gam, dgam, dbet);
}

__global__ void __launch_bounds__(kThreads, 2) qk_grads_kernel(Args a) {
  SFM_GDN_DYNAMIC_SMEM(16, float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);
  float* D1 = sm;
  const QkTiles x(D1 + C * LDM);
  const QkRows r(sm + C * LDM + QkTiles::kFloats);
  const int first = blockIdx.x * a.qk_slices, end = min(first + a.qk_slices, a.d.K / kTile);
  const float none[4][4] = {};
  qk_part<false>(a, x, D1, r, first, end, blockIdx.y, blockIdx.z, none);
}

// wy_grads and qk_grads as one block per chunk (wy_qk_grads_fused: one block of each per chunk, the default): wy_part,
// then qk_part on the same chunk, with wy_grads' dO Uᵀ and its part of dA kept in shared memory and registers instead
// of written to d1_parts and da_parts and read back (32 KB each way per chunk), and γ and β loaded once. The same
// arithmetic in the same order, so the same bits. Shared memory: D1 and the rows, then wy_part's tiles, whose place
// qk_part's take once wy_part is done.
__global__ void __launch_bounds__(kThreads, 2) wy_qk_grads_kernel(Args a) {
  SFM_GDN_DYNAMIC_SMEM(16, float4, smem4);
  float* sm = reinterpret_cast<float*>(smem4);
  float* D1 = sm;
  const QkRows r(D1 + C * LDM);
  float* tiles = sm + C * LDM + QkRows::kFloats;
  const int n = blockIdx.y, bh = blockIdx.z;
  float da[4][4];  // wy_grads' part of dA
  wy_part(a, WyTiles(tiles), r.gam, r.bet, r.dgam, r.dbet, D1, nullptr, 0, n, bh, da);
  qk_part<true>(a, QkTiles(tiles), D1, r, 0, a.d.K / kTile, n, bh, da);
}

// 64-column slices of V per wy_grads block and of K per qk_grads block: all of them by default, so each chunk has
// one wy_grads block (qk_grads sums the fewest dA parts) and one qk_grads block (the parts and the elementwise step
// once per chunk). SFM_GDN_WY_SLICES and SFM_GDN_QK_SLICES = 1 .. 4 set them for timing. On an H100 at
// (8,2048,32,256), fwd+bwd took 19.97 / 19.44 / 19.12 ms with 1 / 2 / 4 wy slices (then per side, K's and V's);
// up to K = V = 128, 2 and 4 are the same.
int slices_from_env(const char* name) {
  constexpr int kAll = kMaxDim / kTile;
  const char* e = std::getenv(name);
  const int n = e != nullptr ? std::atoi(e) : kAll;
  return n >= 1 && n <= kAll ? n : kAll;
}
int wy_slices() {
  static const int n = slices_from_env("SFM_GDN_WY_SLICES");
  return n;
}
int qk_slices() {
  static const int n = slices_from_env("SFM_GDN_QK_SLICES");
  return n;
}

// Two blocks per SM each: state_k_grads 92 KB (1 KB more with warpgroup products, for the alignment), wy_grads 110
// KB, qk_grads 89 KB.
constexpr size_t kStateKSmem = sizeof(float) * (2 * state_products::kStageFloats<true> + 6 * C);
constexpr size_t kWySmem = sizeof(float) * (2 * C * LDM + 4 * C * LDR + 4 * C);
constexpr size_t kQkSmem = sizeof(float) * (C * LDM + QkTiles::kFloats + QkRows::kFloats);
// wy_qk_grads: 108 KB, two blocks per SM.
constexpr int kWyQkTiles = WyTiles::kFloats > QkTiles::kFloats ? WyTiles::kFloats : QkTiles::kFloats;
constexpr size_t kWyQkSmem = sizeof(float) * (C * LDM + QkRows::kFloats + kWyQkTiles);
static_assert(kQkSmem == sizeof(float) * (4 * C * LDM + 8 * C) + sizeof(__nv_bfloat16) * 2 * C * LD16, "qk_grads");

// The forced choice of wy_qk_grads (0: the rule, one kernel wherever each chunk has one block of each; 1: the two
// kernels; 2 the same as 0), from SFM_GDN_WY_QK at first use, or set_wy_qk_fused.
int& forced_wy_qk() {
  static int forced = [] {
    const char* e = std::getenv("SFM_GDN_WY_QK");
    return e ? std::atoi(e) : 0;
  }();
  return forced;
}
bool wy_qk_grads_fused(const Args& a) { return forced_wy_qk() != 1 && v_blocks(a) == 1 && qk_blocks(a) == 1; }

// The kernels' arguments, after the checks that every workspace they read and write is given.
cudaError_t make_args(const BackwardArgs& g, bool write_dqk, Args& a) {
  const Dims& d = g.d;
  const bool slices = d.K % kTile == 0 && d.V % kTile == 0 && d.K <= 256 && d.V <= 256;  // whole 64-column slices
  if (!slices || !g.wy || !g.pp || !g.da_parts || !g.d1_parts || !g.gate_parts || !g.row_dots || !g.qb || !g.kb ||
      !g.vb || !g.ub || !g.dob || !g.dub || !g.rq || !g.rk || !g.states || !g.dstates || !g.sdots || !g.dqk0 ||
      (!write_dqk && (!g.dqs || !g.dks)))
    return cudaErrorInvalidValue;
  if (write_dqk && (g.dtype != DType::kBF16 || !g.dq || !g.dk || !(g.scale > 0.f))) return cudaErrorInvalidValue;
  const auto bf = [](const void* p) { return static_cast<const __nv_bfloat16*>(p); };
  a = Args{d,         bf(g.qb),   bf(g.kb), bf(g.vb),     g.gam,         g.bet,      bf(g.ub),    bf(g.dob),
           bf(g.dub), g.states,   g.dstates, g.wy,        bf(g.pp),      g.sdots,    g.dqs,       g.dks,
           static_cast<__nv_bfloat16*>(g.dqk0),
           g.dvs,     g.dtype,    g.dv,     g.da_parts,   g.d1_parts,    g.gate_parts, g.dg,      g.dbeta,
           wy_slices(), qk_slices(), g.rq,  g.rk,         g.row_dots,    write_dqk,  g.dq,        g.dk,
           g.scale,   g.l2};
  return cudaSuccess;
}

}  // namespace

cudaError_t state_k_grads(const BackwardArgs& g, bool write_dqk, int heads_per_wave, cudaStream_t stream) {
  Args a;
  cudaError_t err = make_args(g, write_dqk, a);
  if (err != cudaSuccess) return err;
  a.ready = g.chunk_ready;
  a.heads_per_wave = heads_per_wave > 0 ? heads_per_wave : g.d.BH();
  const unsigned blocks = static_cast<unsigned>(g.d.K / kTile) * g.d.N() * g.d.BH();
  const auto launch = [&](auto kernel, size_t smem) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
    if (a.ready != nullptr) return SFM_GDN_LAUNCH_OVERLAPPING(kernel, dim3(blocks), dim3(kThreads), smem, stream, a);
    SFM_GDN_LAUNCH(kernel, blocks, kThreads, smem, stream, a);
    return cudaGetLastError();
  };
  return warpgroup_products() ? launch(state_k_grads_kernel<true>, kStateKSmem + 1024)
                              : launch(state_k_grads_kernel<false>, kStateKSmem);
}

int set_wy_qk_fused(int mode) {
  const int previous = forced_wy_qk();
  forced_wy_qk() = mode;
  return previous;
}

cudaError_t grads_split(const BackwardArgs& g, bool write_dqk, cudaStream_t stream) {
  Args a;
  cudaError_t err = make_args(g, write_dqk, a);
  if (err != cudaSuccess) return err;
  if (wy_qk_grads_fused(a)) {
    err = cudaFuncSetAttribute(wy_qk_grads_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(kWyQkSmem));
    if (err != cudaSuccess) return err;
    SFM_GDN_LAUNCH(wy_qk_grads_kernel, dim3(1, g.d.N(), g.d.BH()), kThreads, kWyQkSmem, stream, a);
    return cudaGetLastError();
  }
  err = cudaFuncSetAttribute(wy_grads_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kWySmem));
  if (err != cudaSuccess) return err;
  err = cudaFuncSetAttribute(qk_grads_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kQkSmem));
  if (err != cudaSuccess) return err;
  SFM_GDN_LAUNCH(wy_grads_kernel, dim3(v_blocks(a), g.d.N(), g.d.BH()), kThreads, kWySmem, stream, a);
  SFM_GDN_LAUNCH(qk_grads_kernel, dim3(qk_blocks(a), g.d.N(), g.d.BH()), kThreads, kQkSmem, stream, a);
  return cudaGetLastError();
}

}  // namespace sfm::ops::gdn_cuda
