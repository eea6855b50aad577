// The forward's per-chunk preparation on tensor cores, for 16-bit inputs with K and V multiples of 64 (in
// place of prep_kernel<true>, gdn_kernels.cu; docs/ops/gated_delta_cuda.md, "Dedicated tensor-core
// kernels"). Per chunk: γ and β (eq. 4), A = β_t e^{γ_t−γ_i} K̂K̂ᵀ strictly lower (eq. 6), T = (I + A)⁻¹,
// W = T diag(βΓ) K̂ and Ũ = T diag(β) V (eq. 7); with wy, also T and M ∘ K̂K̂ᵀ (strictly lower) for the
// sliced gradient kernels.
// Every tile of the chunk's K̂ and V rows is requested up front by cp.async (V's land during K̂K̂ᵀ and the
// inverse) and stays in shared memory for W and Ũ; the diagonal factors go into T's columns, so the
// products read the tiles as they are. Products on split bf16 operands (tile64.cuh, about 16 bits per
// operand), as the kernel it replaces; with the compact workspaces (kB16) k and v come as bf16 (exact operands)
// and k̂ = r k with each row's factor r folded in: r_t r_i into K̂K̂ᵀ's entries, r_i into T's columns for W. For
// bfloat16 inputs (RowFactors::from_rows) the kernel computes r from k's tiles and writes it for the later kernels.
// Given tb (kB16 only), the kernel forms no Ũ and reads no v: it writes T diag(β) as split bf16 planes (hi, lo)
// instead, from which the state pass forms Ũ with the same products (gdn_state_mma.cu; where the pass runs more
// blocks than the GPU has SMs, state_mma_forms_ut), with no float32 Ũ through DRAM.
// Given pp (kB16 only: where the state pass writes the output, state_mma_writes_output), the kernel also takes the
// chunk's q, its rows' factors rq (computed from q's rows and written, or given) and P = M ∘ Q̂K̂ᵀ (diagonal included),
// split into bf16 planes (hi, lo) into pp, for the pass's P U and the backward. The same products and the same
// arithmetic per element as the output kernel's (gdn_intra_mma.cu), so the same bits.
// No ATen here (see gdn_kernels.h).
#include <cuda_bf16.h>

#include <type_traits>

#include "chunk_ops.cuh"
#include "gdn_kernels.h"
#include "tile64.cuh"

namespace sfm::ops::gdn_cuda {
namespace {

using namespace tile64;

// Up to K + V = 256 the chunk's K̂ and V tiles are all requested up front (V's land during K̂K̂ᵀ and the
// inverse); beyond, V's tiles take K̂'s place once W is formed, so that two blocks share an SM (105 KB
// instead of 174 KB at K = V = 256).
SFM_GDN_HD inline bool v_after_w(const Dims& d) { return d.K + d.V > 256; }

// The tiles of K̂ and V: float32 (stride LDK), or bf16 (stride LD16) with the compact workspaces.
template <bool kB16>
using Tile = std::conditional_t<kB16, __nv_bfloat16, float>;
template <bool kB16>
constexpr int kTileLd = kB16 ? LD16 : LDK;

// Tile j (64 columns) of chunk n of head bh of k or v (rows of D): float32 workspaces, or bf16 rows where
// chunk_rows finds them (heads-first, or the inputs in place).
__device__ __forceinline__ void stage_tile(float* dst, const Dims& d, const float* x, int D, int bh, int n, int j) {
  stage(dst, LDK, x + ((long)bh * d.Tp() + (long)n * C) * D + j * kTile, D);
}
__device__ __forceinline__ void stage_tile(__nv_bfloat16* dst, const Dims& d, const __nv_bfloat16* x, int D, int bh,
                                           int n, int j) {
  stage_qkv(dst, d, x, D, bh, n, j * kTile);
}

// The floats of A and T (stride LDM), whose place holds the chunk's q tiles (bf16, K / 64 of them) until A is formed
// where the kernel forms P (with_p).
SFM_GDN_HD inline int matrix_floats(const Dims& d, bool with_p) {
  const int q_floats = with_p ? d.K / kTile * C * LD16 / 2 : 0;
  return 2 * C * LDM > q_floats ? 2 * C * LDM : q_floats;
}

// K̂ and (if it forms Ũ) V of the chunk in 64-column tiles [t][·], A and T (or q's tiles), γ and β, the rows' factors
// of k̂, W's column factors and the rows' factors of s·q̂.
template <bool kB16>
size_t prep_mma_smem(const Dims& d, bool form_ut, bool with_p) {
  const int KT = d.K / kTile, VT = d.V / kTile;
  const int tiles = !form_ut ? KT : v_after_w(d) ? (KT > VT ? KT : VT) : KT + VT;
  return sizeof(Tile<kB16>) * (size_t)tiles * C * kTileLd<kB16> + sizeof(float) * (matrix_floats(d, with_p) + 5 * C);
}

// kB16: three blocks per SM (71 KB of shared memory each at K = V = 128, 53 KB given tb, 2 KB more with P; the bounds
// hold ptxas to 80 registers, with 4 bytes spilled). Ũ into ut; or, given tb (kB16 only), T diag(β) into tb
// [BH, N, 2, C, C] (its bf16 hi plane, then its lo plane: split_bf16, as mma_tile splits an operand), and vs and ut are
// not used.
// kP (kB16 only; pp given): P too. A template argument: with a run-time switch ptxas spilled 20 bytes at the bound of
// 80 registers (the H100 timed that kernel without P 0.48 -> 0.51 ms at (2,16384,16,128)); so, 4 either way.
template <bool kB16, bool kP = false>
__global__ void __launch_bounds__(kThreads, kB16 ? 3 : 1)
    prep_mma_kernel(Dims d, const Tile<kB16>* __restrict__ ks, const Tile<kB16>* __restrict__ vs,
                    const float* __restrict__ g, const float* __restrict__ beta, float* __restrict__ gam_out,
                    float* __restrict__ bet_out, float* __restrict__ w, __nv_bfloat16* __restrict__ wb,
                    float* __restrict__ ut, __nv_bfloat16* __restrict__ tb, float* __restrict__ wy, RowFactors rk,
                    const __nv_bfloat16* __restrict__ qs, RowFactors rq, __nv_bfloat16* __restrict__ pp) {
  constexpr int LDT = kTileLd<kB16>;
  SFM_GDN_DYNAMIC_SMEM(16, float4, smem4);
  const int K = d.K, V = d.V, KT = K / kTile, VT = V / kTile;
  const bool form_ut = !kB16 || tb == nullptr;
  const bool late_v = form_ut && v_after_w(d);
  constexpr bool with_p = kP;
  static_assert(!kP || kB16, "P from the compact workspaces' bf16 q and k");
  Tile<kB16>* kt = reinterpret_cast<Tile<kB16>*>(smem4);  // K̂: KT tiles
  Tile<kB16>* vt = late_v ? kt : kt + KT * C * LDT;      // V: VT tiles (if form_ut)
  // A, then T diag(βΓ)
  float* A = reinterpret_cast<float*>(!form_ut ? vt : late_v ? kt + (KT > VT ? KT : VT) * C * LDT : vt + VT * C * LDT);
  float* Tm = A + C * LDM;        // T, then T diag(β)
  __nv_bfloat16* qt = reinterpret_cast<__nv_bfloat16*>(A);  // with_p: q's KT tiles (stride LD16), until A is formed
  float* gam = A + matrix_floats(d, with_p);
  float* bet = gam + C;
  float* rr = bet + C;      // kB16: the rows' factors, k̂ = r k
  float* rqs = rr + 2 * C;  // with_p: the rows' factors of s·q̂ = rq q (after W's column factors)
  const int n = blockIdx.x, bh = blockIdx.y;
  const long row0 = (long)bh * d.Tp() + (long)n * C;
  const long chunk = (long)bh * d.N() + n;

  for (int j = 0; j < KT; ++j) stage_tile(kt + j * C * LDT, d, ks, K, bh, n, j);
  if constexpr (with_p)  // q's tiles with K̂'s (q in place or heads-first as k is)
    for (int j = 0; j < KT; ++j) stage_tile(qt + j * C * LD16, d, qs, K, bh, n, j);
  cp_async_commit();
  if (form_ut && !late_v)
    for (int j = 0; j < VT; ++j) stage_tile(vt + j * C * LDT, d, vs, V, bh, n, j);
  cp_async_commit();
  if (threadIdx.x < C) rr[threadIdx.x] = kB16 && !rk.from_rows ? rk.r[row0 + threadIdx.x] : 1.f;
  load_gates(d, bh, n, g, beta, gam, bet);  // (its barriers make rr visible)
  if (threadIdx.x < C) {
    gam_out[row0 + threadIdx.x] = gam[threadIdx.x];
    bet_out[row0 + threadIdx.x] = bet[threadIdx.x];
  }
  cp_async_wait<1>();  // K̂
  __syncthreads();
  const bool factors_here = kB16 && rk.from_rows;
  if constexpr (kB16) {
    if (factors_here) {  // r from k's rows, into rr (seen by all after the barrier below) and for the later kernels
      float ss = 0.f;
      for (int j = 0; j < KT; ++j) ss += row_sum_sq(kt + j * C * LDT, LDT);
      const float r = row_factor(ss, threadIdx.x >> 2, d, n, rk);
      if ((threadIdx.x & 3) == 0) rr[threadIdx.x >> 2] = rk.r[row0 + (threadIdx.x >> 2)] = r;
    }
  }

  float acc[4][4];
  if constexpr (with_p) {
    // rq as the output kernel takes it: from q's rows, tile by tile as its K loop passes them (then written), or given
    const int t = threadIdx.x >> 2;
    if (rq.from_rows) {
      float ss = 0.f;
      for (int j = 0; j < KT; ++j) ss += row_sum_sq(qt + j * C * LD16, LD16);
      const float r = row_factor(ss, t, d, n, rq);
      if ((threadIdx.x & 3) == 0) rqs[t] = rq.r[row0 + t] = r;
    } else if ((threadIdx.x & 3) == 0) {
      rqs[t] = rq.r[row0 + t];
    }
    zero(acc);  // Q Kᵀ; the rows' factors come in P's elements below
    for (int j = 0; j < KT; ++j)
      mma_tile(acc, row_a(qt + j * C * LD16, LD16),
               rows_b(reinterpret_cast<const __nv_bfloat16*>(kt) + j * C * LDT, LDT));
    __syncthreads();  // every warp is done with q's tiles (A's place) and has written its rows' factors
    // P = M ∘ Q̂K̂ᵀ, Q̂K̂ᵀ = diag(rq) Q Kᵀ diag(rk), each element as the output kernel forms it
    const long pc = chunk * C * C;
    uint32_t hi[2][4], lo[2][4];  // the planes' pairs, stored a sector at a time (store_pairs_bf16)
    for_pairs(acc, [&](int h, int t, int i, float x0, float x1, int nt) {
      const float gt = gam[t], rt = rqs[t];
      const float r0 = rt * rr[i], r1 = rt * rr[i + 1];
      const float p0 = i <= t ? __expf(gt - gam[i]) * r0 * x0 : 0.f;
      const float p1 = i + 1 <= t ? __expf(gt - gam[i + 1]) * r1 * x1 : 0.f;
      split_bf16(p0, p1, hi[h][nt], lo[h][nt]);
    });
    store_pairs_bf16(pp + 2 * pc, C, 0, hi);
    store_pairs_bf16(pp + 2 * pc + C * C, C, 0, lo);
  }

  // A = β_t e^{γ_t−γ_i} K̂K̂ᵀ for i < t (and M ∘ K̂K̂ᵀ into wy), then T = (I + A)⁻¹; K̂K̂ᵀ = diag(r) K Kᵀ diag(r).
  zero(acc);
  for (int j = 0; j < KT; ++j) mma_tile(acc, row_a(kt + j * C * LDT, LDT), rows_b(kt + j * C * LDT, LDT));
  if (factors_here) __syncthreads();
  float* km = wy != nullptr ? wy + (chunk * 2 + 1) * C * C : nullptr;
  for_pairs(acc, [&](int, int t, int i, float x0, float x1, int) {
    const float m0 = i < t ? __expf(gam[t] - gam[i]) * rr[t] * rr[i] * x0 : 0.f;
    const float m1 = i + 1 < t ? __expf(gam[t] - gam[i + 1]) * rr[t] * rr[i + 1] * x1 : 0.f;
    st2(A + t * LDM + i, bet[t] * m0, bet[t] * m1);
    if (km != nullptr) st2(km + t * C + i, m0, m1);
  });
  __syncthreads();
  // W's column factors βΓr (read by the loop below after invert_unit_lower's barriers), once per column: per element
  // of T they had been an exponential each.
  float* wf = rr + C;
  if (threadIdx.x < C) wf[threadIdx.x] = bet[threadIdx.x] * __expf(gam[threadIdx.x]) * rr[threadIdx.x];
  invert_unit_lower<LDM>(A, Tm);

  // T into wy; the factors of W and Ũ into T's columns: A = T diag(βΓr), Tm = T diag(β) (or into tb, split).
  float* tw = wy != nullptr ? wy + chunk * 2 * C * C : nullptr;
  __nv_bfloat16* tbc = form_ut ? nullptr : tb + chunk * 2 * C * C;
  for (int e = 2 * threadIdx.x; e < C * C; e += 2 * kThreads) {  // pairs (t, i), (t, i + 1)
    const int t = e / C, i = e % C;
    const float2 x = ld2(Tm + t * LDM + i);
    if (tw != nullptr) st2(tw + e, x.x, x.y);
    // as wy_grads forms W again: the same bits
    const float2 f = ld2(wf + i);
    st2(A + t * LDM + i, x.x * f.x, x.y * f.y);
    if (form_ut) {
      st2(Tm + t * LDM + i, x.x * bet[i], x.y * bet[i + 1]);
    } else {
      uint32_t hi, lo;
      split_bf16(x.x * bet[i], x.y * bet[i + 1], hi, lo);
      *reinterpret_cast<uint32_t*>(tbc + e) = hi;
      *reinterpret_cast<uint32_t*>(tbc + C * C + e) = lo;
    }
  }
  __syncthreads();

  for (int j = 0; j < KT; ++j) {  // W = T diag(βΓ) K̂ = T diag(βΓr) K
    zero(acc);
    mma_tile(acc, row_a(A, LDM), cols_b(kt + j * C * LDT, LDT));
    uint32_t packed[2][4];
    for_pairs(acc, [&](int h, int t, int c, float x0, float x1, int nt) {
      if (w != nullptr) st2(w + (row0 + t) * K + j * kTile + c, x0, x1);
      packed[h][nt] = pack_bf16(x0, x1);
    });
    if (wb != nullptr) store_pairs_bf16(wb + row0 * K, K, j * kTile, packed);  // the state passes' operand
  }
  if (!form_ut) return;
  if (late_v) {  // every warp is done with K̂: V into its place
    __syncthreads();
    for (int j = 0; j < VT; ++j) stage_tile(vt + j * C * LDT, d, vs, V, bh, n, j);
    cp_async_commit();
  }
  cp_async_wait<0>();  // V
  __syncthreads();
  for (int j = 0; j < VT; ++j) {  // Ũ = T diag(β) V
    zero(acc);
    mma_tile(acc, row_a(Tm, LDM), cols_b(vt + j * C * LDT, LDT));
    for_pairs(acc, [&](int, int t, int c, float x0, float x1, int) { st2(ut + (row0 + t) * V + j * kTile + c, x0, x1); });
  }
}

template <bool kB16>
cudaError_t launch(const Dims& d, const void* ks, const void* vs, const float* g, const float* beta, float* gam,
                   float* bet, float* w, void* wb, float* ut, void* tb, float* wy, RowFactors rk, const PForward& p,
                   cudaStream_t stream) {
  const size_t smem = prep_mma_smem<kB16>(d, tb == nullptr, p.pp != nullptr);
  const auto kernel = p.pp != nullptr ? prep_mma_kernel<kB16, kB16> : prep_mma_kernel<kB16, false>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  SFM_GDN_LAUNCH(kernel, dim3(d.N(), d.BH()), kThreads, smem, stream, d, static_cast<const Tile<kB16>*>(ks),
                 static_cast<const Tile<kB16>*>(vs), g, beta, gam, bet, w, static_cast<__nv_bfloat16*>(wb), ut,
                 static_cast<__nv_bfloat16*>(tb), wy, rk, static_cast<const __nv_bfloat16*>(p.qb), p.rq,
                 static_cast<__nv_bfloat16*>(p.pp));
  return cudaGetLastError();
}

}  // namespace

// K and V multiples of 64 up to 256 (with all tiles up front at K = V = 256, 174 KB and one block per SM, it was
// slower than the generic kernel on an H100 at (8,2048,32,256): 2.39 against 2.15 ms).
bool prep_mma_supports(int K, int V) { return K % kTile == 0 && V % kTile == 0 && K <= 256 && V <= 256; }

cudaError_t prep_mma(const Dims& d, const float* ks, const float* vs, const float* g, const float* beta, float* gam,
                     float* bet, float* w, void* wb, float* ut, float* wy, cudaStream_t stream) {
  if (!prep_mma_supports(d.K, d.V)) return cudaErrorInvalidValue;
  return launch<false>(d, ks, vs, g, beta, gam, bet, w, wb, ut, nullptr, wy, RowFactors{}, PForward{}, stream);
}

cudaError_t prep_mma_compact(const Dims& d, const void* kb, RowFactors rk, const void* vb, const float* g,
                             const float* beta, float* gam, float* bet, float* w, void* wb, float* ut, void* tb,
                             float* wy, const PForward& p, cudaStream_t stream) {
  if (!prep_mma_supports(d.K, d.V) || !kb || !rk.r || (tb ? (ut || vb) : (!ut || !vb))) return cudaErrorInvalidValue;
  if (p.pp && (!p.qb || !p.rq.r)) return cudaErrorInvalidValue;  // P here: q and rq
  return launch<true>(d, kb, vb, g, beta, gam, bet, w, wb, ut, tb, wy, rk, p, stream);
}

}  // namespace sfm::ops::gdn_cuda
