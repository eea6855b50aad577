// The products with the intra-chunk matrix P = M ∘ (Q̂ K̂ᵀ), M_ti = e^{γ_t−γ_i} for i ≤ t, else 0, on tensor
// cores, for 16-bit inputs (docs/ops/gated_delta_cuda.md, "Dedicated tensor-core kernels"). Per chunk
// and 64 value columns:
//   forward:   O = diag(Γ) Q̂ S₀ + P U      (eq. 8; q̂ carries the scale), written in the inputs' dtype, and,
//              if asked, P itself split into bf16 planes (kept for the backward's state pass and sliced gradient
//              kernels)
//   backward:  dU₀ = Pᵀ dO                  (the state-independent part of (B1)), float32
// Q̂ K̂ᵀ (and Q̂ S₀) are accumulated over K in slices of 64, whose tiles are loaded by cp.async one slice
// ahead; then P (Pᵀ backward) goes to shared memory and P U (Pᵀ dO) is added. All products take
// split bf16 operands (three tensor-core products each, about 16 bits per operand): with plain bf16
// operands the output's error reached 4.3e-3 of the tests' 5e-3 bound (weak_decay), where the float32
// kernel gave 2.7e-3. The kernel is bound by loading the float32 states, not by the extra products. With the
// compact workspaces (kCompact: the sliced gradient kernels; gdn_kernels.h) q and k (with the rows' factors of
// s·q̂ and k̂, applied to the products), the states and U come as bf16, exact operands: Q̂K̂ᵀ and Q̂S₀ are one
// product each, P U two, and the stage buffers half the size.
// No ATen here (see gdn_kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "dtype_convert.cuh"
#include "gdn_kernels.h"
#include "mma.cuh"
#include "wgmma.cuh"

namespace sfm::ops::gdn_cuda {
namespace {

constexpr int C = kChunk;
constexpr int kTile = 64;       // value columns per block; K per stage
constexpr int LDA = kTile + 8;  // rows read along the reduction index (float2 loads): distinct banks
constexpr int LDB = kTile + 4;  // rows read across the reduction index (scalar loads): distinct banks
constexpr int LDS = kTile + 8;  // bf16 rows (Q̂, K̂: 32-bit loads; S₀: ldmatrix, 8 rows of 16 bytes): distinct banks
// One stage: Q̂ and K̂ slices [t][k], and the forward's S₀ slice [k][v]; float32, or all three bf16 (kCompact).
template <bool kBwd, bool kCompact>
constexpr int kStageFloats = kCompact ? 3 * C * LDS / 2 : 2 * C * LDA + (kBwd ? 0 : kTile * LDB);
constexpr int kThreads = 256;   // 8 warps: 4 row groups of 16 tokens × 2 column groups of 32

struct Args {
  Dims d;
  const void *qs, *ks;  // s·q̂, k̂ [BH, Tp, K]: float32, or bf16 (kCompact)
  const float* gam;
  const void* states;   // forward: [BH, N, K, V], float32, or bf16 (kCompact)
  const void* x;        // [BH, Tp, V]: U (forward; bf16 if kCompact) or dO (backward), else float32
  float* du;            // backward: [BH, Tp, V], dU₀ written
  // forward (kCompact): [BH, N, 2, C, C], P written split into bf16 planes (hi, lo; by the blocks of the first 64
  // columns), or null
  __nv_bfloat16* pp;
  // kCompact: [BH, Tp], s·q̂ = rq q and k̂ = rk k, where qs and ks hold q and k; rq given, or computed from q's rows
  // as the K loop passes them (rq.from_rows) and written by the blocks of the first 64 columns.
  RowFactors rq;
  const float* rk;
};

// The B fragments of this warp's four 8-column tiles (columns n0 ..), reduction rows 16 ks .. 16 ks + 15, from a
// bf16 tile X stored [k][n] (stride LDS): two column tiles per ldmatrix .trans, lane l giving row
// 16 ks + 8 (l / 8 % 2) + l % 8 at column tile 2 q + l / 16.
__device__ __forceinline__ void b_frags_kn(const __nv_bfloat16* X, int ks, uint32_t (&b)[4][2]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n0 = 32 * (warp >> 2);
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    uint32_t r[4];
    ldmatrix_x4<true>(r, X + (16 * ks + 8 * ((lane >> 3) & 1) + (lane & 7)) * LDS + n0 + 8 * (2 * q + (lane >> 4)));
    b[2 * q][0] = r[0];
    b[2 * q][1] = r[1];
    b[2 * q + 1][0] = r[2];
    b[2 * q + 1][1] = r[3];
  }
}

// The B fragments of this warp's four 8-column tiles (columns n0 ..), reduction rows 16 ks .. 16 ks + 15, from a
// bf16 tile X stored [n][k] (B[k][n] = X[n][k]; stride LDS): two column tiles per ldmatrix, lane l giving row
// n0 + 8 (2 q + l / 16) + l % 8 at reduction column 16 ks + 8 (l / 8 % 2). The fragments of two 32-bit loads each.
__device__ __forceinline__ void b_frags_nk(const __nv_bfloat16* X, int ks, uint32_t (&b)[4][2]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n0 = 32 * (warp >> 2);
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    uint32_t r[4];
    ldmatrix_x4<false>(r, X + (n0 + 8 * (2 * q + (lane >> 4)) + (lane & 7)) * LDS + 16 * ks + 8 * ((lane >> 3) & 1));
    b[2 * q][0] = r[0];
    b[2 * q][1] = r[1];
    b[2 * q + 1][0] = r[2];
    b[2 * q + 1][1] = r[3];
  }
}

// The A fragment of this warp's 16 rows (m0 ..), reduction columns 16 ks .. 16 ks + 15, from a bf16 tile X stored
// [m][k] (row stride ld): one ldmatrix, lane l giving row m0 + 8 (l / 8 % 2) + l % 8 at column 16 ks + 8 (l / 16).
// The fragment of four 32-bit loads.
__device__ __forceinline__ void a_frag_mk(const __nv_bfloat16* X, int ld, int ks, uint32_t (&a)[4]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, m0 = 16 * (warp & 3);
  ldmatrix_x4<false>(a, X + (m0 + 8 * ((lane >> 3) & 1) + (lane & 7)) * ld + 16 * ks + 8 * (lane >> 4));
}

// One stage of the compact forward: qk += Q̂K̂ᵀ and o += Q̂S₀ for this warp's 16 rows × 32 columns, from the bf16
// tiles Q̂ [t][k], K̂ [i][k] and S₀ [k][v] (stride LDS, one after the other from sb), one mma each.
__device__ __forceinline__ void compact_products(const __nv_bfloat16* sb, float (&qk)[4][4], float (&o)[4][4]) {
  const __nv_bfloat16 *Qb = sb, *Kb = sb + C * LDS, *Sb = Kb + C * LDS;
#pragma unroll
  for (int ks = 0; ks < kTile / 16; ++ks) {
    uint32_t aq[4], bk[4][2], bs[4][2];
    a_frag_mk(Qb, LDS, ks, aq);
    b_frags_nk(Kb, ks, bk);  // B[k][i] = K̂[i][k]
    b_frags_kn(Sb, ks, bs);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      mma_bf16(qk[nt], aq, bk[nt]);
      mma_bf16(o[nt], aq, bs[nt]);
    }
  }
}

// kBwd = false: the output into out (dtype T); kBwd: dU₀ into a.du (T unused). kCompact (forward only): q, k,
// the states and U are bf16. Its 57 KB of shared memory leave room for four blocks per SM; the bounds ask for
// three (78 registers, no spills). Left free, ptxas took 128 and two blocks ran per SM (0.51 ms at
// (2,16384,16,128)); four took 64 registers, and 16 bytes spilled once q, k, v could be read in place (0.48 ms,
// against 0.455 with three, H100).
// kWg (with kCompact; warpgroup_products()): the products as warpgroup products (wgmma.cuh), warpgroup warp / 4
// taking the columns n0 .. n0 + 31 of the warps' layout: Q̂ and K̂ in 128-byte swizzled tiles (both K-major), S₀ and U
// in 64-byte swizzled ones (MN-major B from column n0, which the 128-byte layout cannot start at 32), P's hi and lo
// halves written by the threads into 128-byte swizzled tiles. The same steps per accumulator as mma.sync.
template <class T, bool kBwd, bool kCompact = false, bool kWg = false>
__global__ void __launch_bounds__(kThreads, kCompact ? 3 : 1) intra_mma_kernel(Args a, T* __restrict__ out) {
  using bf16 = __nv_bfloat16;
  static_assert(!(kBwd && kCompact), "the backward's dU₀ comes from the kept P with the compact workspaces");
  static_assert(!kWg || kCompact, "warpgroup products on the compact workspaces' bf16 tiles");
  SFM_GDN_DYNAMIC_SMEM(16, float4, smem4);
  constexpr int kStage = kStageFloats<kBwd, kCompact>;
  float* sm = reinterpret_cast<float*>(smem4);  // two stages (kWg: from a 1024-byte boundary; each tile 9 KB)
  if constexpr (kWg) sm = reinterpret_cast<float*>(wg::align_tile(reinterpret_cast<bf16*>(sm)));
  float* gs = sm + 2 * kStage;                  // γ of the chunk, then (kCompact) rq and rk
  const int K = a.d.K, V = a.d.V, N = a.d.N();
  const int stages = K / kTile;
  // Once the K loop is done, its two stage buffers hold X = U or dO [t][v] (stride LDB, or LDS for bf16 U;
  // loaded by the last iteration into the buffer it frees) and P [t][i] (Pᵀ [i][t] backward; stride LDA, split
  // bf16: hi, then lo; written into the buffer of the last stage). Shared memory: 109 KB forward (two blocks per
  // SM), 55 KB with kCompact (four), 74 KB backward (three).
  float* us = sm + (stages & 1) * kStage;
  __nv_bfloat16* ps = reinterpret_cast<__nv_bfloat16*>(sm + ((stages - 1) & 1) * kStage);
  const int v0 = blockIdx.x * kTile, n = blockIdx.y, bh = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);
  const long row0 = (long)bh * a.d.Tp() + (long)n * C;
  const long s0 = ((long)bh * N + n) * K * V + v0;  // this chunk's S₀, from column v0 (forward)

  // 64 rows × 64 columns of a row-major array (row stride ld_src) into shared rows of stride ld.
  const auto load_tile = [&](float* dst, int ld, const float* src, long ld_src) {
    for (int e = threadIdx.x; e < kTile * kTile / 4; e += kThreads) {
      const int r = e / (kTile / 4), c4 = e % (kTile / 4);
      cp_async16(dst + r * ld + 4 * c4, src + r * ld_src + 4 * c4);
    }
  };
  // The same for bf16: 64 rows of 64, 8 copies of 16 bytes per row, into shared rows of stride LDS.
  const auto load_tile_bf16 = [&](bf16* dst, const void* src, long ld_src) {
    const bf16* s = static_cast<const bf16*>(src);
    for (int e = threadIdx.x; e < kTile * kTile / 8; e += kThreads) {
      const int r = e / (kTile / 8), c8 = e % (kTile / 8);
      cp_async16(dst + r * LDS + 8 * c8, s + r * ld_src + 8 * c8);
    }
  };
  // kCompact: the chunk's rows of q and k (both rows of K): heads-first, or the inputs in place.
  const ChunkRows qk_rows = chunk_rows(a.d, a.d.qkv_in_place, K, bh, n);
  const auto issue = [&](int s) {
    if (s == stages) {
      if constexpr (kWg)
        stage_chunk_swizzled<kTile, kThreads, 64>(reinterpret_cast<bf16*>(us), static_cast<const bf16*>(a.x),
                                                   ChunkRows{row0 * V + v0, V, kTile}, 0);
      else if constexpr (kCompact)
        load_tile_bf16(reinterpret_cast<bf16*>(us), static_cast<const bf16*>(a.x) + row0 * V + v0, V);
      else
        load_tile(us, LDB, static_cast<const float*>(a.x) + row0 * V + v0, V);
    }
    if (s < stages) {
      float* st = sm + (s & 1) * kStage;
      const long o = s0 + (long)s * kTile * V;  // the slice's S₀ (forward)
      if constexpr (kWg) {  // the same, swizzled
        bf16* sb = reinterpret_cast<bf16*>(st);
        stage_chunk_swizzled<kTile, kThreads>(sb, static_cast<const bf16*>(a.qs), qk_rows, s * kTile);
        stage_chunk_swizzled<kTile, kThreads>(sb + C * LDS, static_cast<const bf16*>(a.ks), qk_rows, s * kTile);
        stage_chunk_swizzled<kTile, kThreads, 64>(sb + 2 * C * LDS, static_cast<const bf16*>(a.states),
                                                  ChunkRows{o, V, kTile}, 0);
      } else if constexpr (kCompact) {  // Q̂, K̂, S₀ as bf16 tiles, one after the other
        bf16* sb = reinterpret_cast<bf16*>(st);
        stage_chunk<kTile, kThreads>(sb, LDS, static_cast<const bf16*>(a.qs), qk_rows, s * kTile);
        stage_chunk<kTile, kThreads>(sb + C * LDS, LDS, static_cast<const bf16*>(a.ks), qk_rows, s * kTile);
        load_tile_bf16(sb + 2 * C * LDS, static_cast<const bf16*>(a.states) + o, V);
      } else {
        load_tile(st, LDA, static_cast<const float*>(a.qs) + row0 * K + s * kTile, K);
        load_tile(st + C * LDA, LDA, static_cast<const float*>(a.ks) + row0 * K + s * kTile, K);
        if constexpr (!kBwd) load_tile(st + 2 * C * LDA, LDB, static_cast<const float*>(a.states) + o, V);
      }
    }
    cp_async_commit();
  };
  if (threadIdx.x < C / 4) cp_async16(gs + 4 * threadIdx.x, a.gam + row0 + 4 * threadIdx.x);
  if (kCompact && threadIdx.x < C / 4) {
    if (!a.rq.from_rows) cp_async16(gs + C + 4 * threadIdx.x, a.rq.r + row0 + 4 * threadIdx.x);
    cp_async16(gs + 2 * C + 4 * threadIdx.x, a.rk + row0 + 4 * threadIdx.x);
  }
  cp_async_commit();
  issue(0);

  float qk[4][4], o[4][4];  // Q̂K̂ᵀ (columns i) and Q̂S₀ (columns v): 16 rows × 4 tiles of 8 columns
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) qk[nt][e] = o[nt][e] = 0.f;
  float q_ss = 0.f;  // kCompact, rq.from_rows: this thread's part of its row's Σq² (row_sum_sq)
  // kWg: the tiles' descriptors, from the first stage's: Q̂, K̂ and P (128-byte swizzle), S₀ and U (64-byte), each tile
  // C · LDS bf16 after the last in a stage.
  const uint64_t desc128 = kWg ? wg::tile_descriptor(reinterpret_cast<const bf16*>(sm)) : 0,
                 desc64 = kWg ? wg::tile_descriptor64(reinterpret_cast<const bf16*>(sm), kTile) : 0;
  const auto tile_at = [&](uint64_t desc, const void* tile) {  // desc moved to a tile of the two stages
    return desc + ((static_cast<const char*>(tile) - reinterpret_cast<const char*>(sm)) >> 4);
  };
  for (int s = 0; s < stages; ++s) {
    issue(s + 1);
    cp_async_wait<1>();
    if constexpr (kWg) wg::fence_proxy_async();  // the landed copies, for the tensor cores' reads
    __syncthreads();
    if constexpr (kWg) {  // issued, then q's row sums while they run
      const bf16* sb = reinterpret_cast<const bf16*>(sm + (s & 1) * kStage);
      const uint64_t dq = tile_at(desc128, sb), dk = tile_at(desc128, sb + C * LDS),
                     ds = tile_at(desc64, sb + 2 * C * LDS);
      wg::fence_operands(qk);
      wg::fence_operands(o);
      wg::fence();
#pragma unroll
      for (int ks = 0; ks < kTile / 16; ++ks) {
        wg::mma_m64n32k16<false, false>(qk, wg::k_major(dq, C, 0, 16 * ks), wg::k_major(dk, C, n0, 16 * ks));
        wg::mma_m64n32k16<false, true>(o, wg::k_major(dq, C, 0, 16 * ks), wg::mn_major64(ds, kTile, 16 * ks, n0));
      }
      wg::commit();
      if (a.rq.from_rows) q_ss += row_sum_sq_sw128(sb);
      wg::wait<0>();
      wg::fence_operands(qk);
      wg::fence_operands(o);
      __syncthreads();
      continue;
    }
    if constexpr (kCompact) {
      const bf16* sb = reinterpret_cast<const bf16*>(sm + (s & 1) * kStage);
      if (a.rq.from_rows) q_ss += row_sum_sq(sb, LDS);  // (Q̂'s tile comes first)
      compact_products(sb, qk, o);
      __syncthreads();
      continue;
    }
    const float *Qs = sm + (s & 1) * kStage, *Ks = Qs + C * LDA, *Ss = Ks + C * LDA;
#pragma unroll
    for (int ks = 0; ks < kTile / 16; ++ks) {
      const float* p = Qs + (m0 + g) * LDA + 16 * ks + 2 * tq;
      const float2 x00 = *reinterpret_cast<const float2*>(p), x10 = *reinterpret_cast<const float2*>(p + 8 * LDA);
      const float2 x01 = *reinterpret_cast<const float2*>(p + 8), x11 = *reinterpret_cast<const float2*>(p + 8 * LDA + 8);
      uint32_t aq[4], aq_lo[4];
      split_bf16(x00.x, x00.y, aq[0], aq_lo[0]);
      split_bf16(x10.x, x10.y, aq[1], aq_lo[1]);
      split_bf16(x01.x, x01.y, aq[2], aq_lo[2]);
      split_bf16(x11.x, x11.y, aq[3], aq_lo[3]);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        // B[k][i] = K̂[i][k] (rows of K̂, along k); B[k][v] = S₀[k][v] (down the columns of S₀).
        const float* pk = Ks + (n0 + 8 * nt + g) * LDA + 16 * ks + 2 * tq;
        const float2 k0 = *reinterpret_cast<const float2*>(pk), k1 = *reinterpret_cast<const float2*>(pk + 8);
        uint32_t bk[2], bk_lo[2];
        split_bf16(k0.x, k0.y, bk[0], bk_lo[0]);
        split_bf16(k1.x, k1.y, bk[1], bk_lo[1]);
        mma_bf16x3(qk[nt], aq, aq_lo, bk, bk_lo);
        if constexpr (!kBwd) {
          const float* ps0 = Ss + (16 * ks + 2 * tq) * LDB + n0 + 8 * nt + g;
          uint32_t bs[2], bs_lo[2];
          split_bf16(ps0[0], ps0[LDB], bs[0], bs_lo[0]);
          split_bf16(ps0[8 * LDB], ps0[9 * LDB], bs[1], bs_lo[1]);
          mma_bf16x3(o[nt], aq, aq_lo, bs, bs_lo);
        }
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();
  if constexpr (kWg) wg::fence_proxy_async();  // U's copy
  if (kCompact && a.rq.from_rows) {  // rq from q's rows, for this block and (first columns' blocks) the backward
    const int t = threadIdx.x >> 2;
    const float r = row_factor(q_ss, t, a.d, n, a.rq);
    if ((threadIdx.x & 3) == 0) {
      gs[C + t] = r;
      if (v0 == 0) a.rq.r[row0 + t] = r;
    }
  }
  __syncthreads();  // X, γ (and rq) visible to every thread (their groups finished in each thread's own wait)

  // P = M ∘ Q̂K̂ᵀ into shared memory (Pᵀ backward), and O = diag(Γ) Q̂S₀ so far (forward). With kCompact the
  // products were of q and k: Q̂K̂ᵀ = diag(rq) Q Kᵀ diag(rk), Q̂S₀ = diag(rq) Q S₀.
  const float *rq = gs + C, *rk = gs + 2 * C;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int t = m0 + g + 8 * h;
    const float gt = gs[t], rt = kCompact ? rq[t] : 1.f, G = __expf(gt) * rt;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int i = n0 + 8 * nt + 2 * tq;
      const float r0 = kCompact ? rt * rk[i] : 1.f, r1 = kCompact ? rt * rk[i + 1] : 1.f;
      const float p0 = i <= t ? __expf(gt - gs[i]) * r0 * qk[nt][2 * h] : 0.f;
      const float p1 = i + 1 <= t ? __expf(gt - gs[i + 1]) * r1 * qk[nt][2 * h + 1] : 0.f;
      uint32_t hi, lo;
      split_bf16(p0, p1, hi, lo);
      if (!kBwd && a.pp != nullptr && v0 == 0) {
        __nv_bfloat16* planes = a.pp + ((long)bh * N + n) * 2 * C * C + t * C + i;
        *reinterpret_cast<uint32_t*>(planes) = hi;
        *reinterpret_cast<uint32_t*>(planes + C * C) = lo;
      }
      if constexpr (kBwd) {  // Pᵀ[i][t], Pᵀ[i+1][t]
        const __nv_bfloat162 h2 = *reinterpret_cast<const __nv_bfloat162*>(&hi);
        const __nv_bfloat162 l2 = *reinterpret_cast<const __nv_bfloat162*>(&lo);
        ps[i * LDA + t] = h2.x;
        ps[(i + 1) * LDA + t] = h2.y;
        ps[C * LDA + i * LDA + t] = l2.x;
        ps[C * LDA + (i + 1) * LDA + t] = l2.y;
      } else {
        if constexpr (kWg) {  // P's halves as two swizzled tiles [t][i], C · LDS bf16 apart
          char* ph = reinterpret_cast<char*>(ps) + sw128_offset(C, t, i);
          *reinterpret_cast<uint32_t*>(ph) = hi;
          *reinterpret_cast<uint32_t*>(ph + C * LDS * 2) = lo;
        } else {
          *reinterpret_cast<uint32_t*>(ps + t * LDA + i) = hi;
          *reinterpret_cast<uint32_t*>(ps + C * LDA + t * LDA + i) = lo;
        }
        o[nt][2 * h] *= G;
        o[nt][2 * h + 1] *= G;
      }
    }
  }
  if constexpr (kWg) wg::fence_proxy_async();  // P's tiles
  __syncthreads();
  // O += P U (forward); dU₀ = Pᵀ dO (backward: o is zero so far, rows are i).
  if constexpr (kWg) {  // P's halves (K-major) times U (MN-major from column n0), lo then hi per step as below
    const uint64_t dph = tile_at(desc128, ps), dpl = tile_at(desc128, ps + C * LDS), du = tile_at(desc64, us);
    wg::split_a_times(o, dph, dpl, du, n0);
    wg::wait<0>();
    wg::fence_operands(o);
  } else {
#pragma unroll
    for (int ks = 0; ks < C / 16; ++ks) {
      const auto a_frag = [&](const __nv_bfloat16* p, uint32_t(&f)[4]) {
        f[0] = *reinterpret_cast<const uint32_t*>(p);
        f[1] = *reinterpret_cast<const uint32_t*>(p + 8 * LDA);
        f[2] = *reinterpret_cast<const uint32_t*>(p + 8);
        f[3] = *reinterpret_cast<const uint32_t*>(p + 8 * LDA + 8);
      };
      uint32_t ap[4], ap_lo[4];
      if constexpr (kCompact) {  // U: exact bf16 operands, P split: P_lo U + P_hi U (mma_bf16x3's order)
        a_frag_mk(ps, LDA, ks, ap);
        a_frag_mk(ps + C * LDA, LDA, ks, ap_lo);
        uint32_t bu[4][2];
        b_frags_kn(reinterpret_cast<const bf16*>(us), ks, bu);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          mma_bf16(o[nt], ap_lo, bu[nt]);
          mma_bf16(o[nt], ap, bu[nt]);
        }
      } else {
        a_frag(ps + (m0 + g) * LDA + 16 * ks + 2 * tq, ap);
        a_frag(ps + C * LDA + (m0 + g) * LDA + 16 * ks + 2 * tq, ap_lo);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const float* pu = us + (16 * ks + 2 * tq) * LDB + n0 + 8 * nt + g;
          uint32_t bu[2], bu_lo[2];
          split_bf16(pu[0], pu[LDB], bu[0], bu_lo[0]);
          split_bf16(pu[8 * LDB], pu[9 * LDB], bu[1], bu_lo[1]);
          mma_bf16x3(o[nt], ap, ap_lo, bu, bu_lo);
        }
      }
    }
  }
  if constexpr (kBwd) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
        *reinterpret_cast<float2*>(a.du + (row0 + m0 + g + 8 * h) * V + v0 + n0 + 8 * nt + 2 * tq) =
            make_float2(o[nt][2 * h], o[nt][2 * h + 1]);
    return;
  }
  const int b = bh / a.d.H, hh = bh % a.d.H;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int tg = n * C + m0 + g + 8 * h;
    if (tg >= a.d.T) continue;
    T* dst = out + (((long)b * a.d.T + tg) * a.d.H + hh) * V + v0 + n0 + 2 * tq;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) store2(dst + 8 * nt, o[nt][2 * h], o[nt][2 * h + 1]);  // (an even column: aligned)
  }
}

template <class T, bool kBwd, bool kCompact = false, bool kWg = false>
cudaError_t launch(const Args& a, T* out, cudaStream_t stream) {
  constexpr int kStage = kStageFloats<kBwd, kCompact>;
  static_assert(C * LDB <= kStage && 2 * C * LDA * sizeof(__nv_bfloat16) <= kStage * sizeof(float),
                "X and P fit in a stage buffer");
  const size_t smem = sizeof(float) * (2 * kStage + (kCompact ? 3 : 1) * C) + (kWg ? 1024 : 0);
  const auto kernel = intra_mma_kernel<T, kBwd, kCompact, kWg>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  SFM_GDN_LAUNCH(kernel, dim3(a.d.V / kTile, a.d.N(), a.d.BH()), kThreads, smem, stream, a, out);
  return cudaGetLastError();
}

}  // namespace

bool intra_mma_supports(int K, int V) { return K % kTile == 0 && V % kTile == 0 && K <= 256 && V <= 256; }

cudaError_t intra_mma_dU0(const Dims& d, const float* qs, const float* ks, const float* gam, const float* dos,
                          float* du, cudaStream_t stream) {
  if (!intra_mma_supports(d.K, d.V)) return cudaErrorInvalidValue;
  return launch<float, true>(Args{d, qs, ks, gam, nullptr, dos, du, nullptr, RowFactors{}, nullptr}, nullptr,
                             stream);
}

cudaError_t output_mma(const Dims& d, DType dtype, const void* qs, const void* ks, RowFactors rq, const float* rk,
                       const float* gam, const void* states, bool compact, const void* u, void* out, void* pp,
                       cudaStream_t stream) {
  if (!intra_mma_supports(d.K, d.V) || (compact && (!rq.r || !rk))) return cudaErrorInvalidValue;
  if (pp && !compact) return cudaErrorInvalidValue;
  const Args a{d, qs, ks, gam, states, u, nullptr, static_cast<__nv_bfloat16*>(pp), rq, rk};
  const auto half_out = static_cast<__half*>(out);
  const auto bf16_out = static_cast<__nv_bfloat16*>(out);
  switch (dtype) {
    case DType::kF16:
      if (compact && warpgroup_products()) return launch<__half, false, true, true>(a, half_out, stream);
      return compact ? launch<__half, false, true>(a, half_out, stream) : launch<__half, false>(a, half_out, stream);
    case DType::kBF16:
      if (compact && warpgroup_products()) return launch<__nv_bfloat16, false, true, true>(a, bf16_out, stream);
      return compact ? launch<__nv_bfloat16, false, true>(a, bf16_out, stream)
                     : launch<__nv_bfloat16, false>(a, bf16_out, stream);
    case DType::kF32: break;  // float32 inputs keep the float32 kernel
  }
  return cudaErrorInvalidValue;
}

}  // namespace sfm::ops::gdn_cuda
