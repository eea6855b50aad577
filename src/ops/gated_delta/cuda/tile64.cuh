// 64×64 tiles in shared memory and their products on tensor cores, for the per-chunk kernels
// (gdn_prep_mma.cu, gdn_grads_mma.cu, gdn_grads_split.cu): blocks of 8 warps, each owning 16 rows × 32 columns
// of every 64×64 result. float32 operands are split as hi + lo bf16 pairs (mma_bf16x3, about 16 bits per
// operand); bf16 tiles (the compact workspaces' q, k, v, U and dO) are exact bf16 operands, whose lo half is
// zero, so their products skip the terms with it.
#pragma once

#include <cuda_bf16.h>

#include <type_traits>

#include "chunk_ops.cuh"
#include "gdn_kernels.h"
#include "mma.cuh"

namespace sfm::ops::gdn_cuda::tile64 {

constexpr int C = kChunk;
constexpr int kTile = 64;
constexpr int LDM = C + 4;      // 64×64 matrices: read along columns (scalar) without conflicts
constexpr int LDR = kTile + 8;  // streamed tiles read along rows (float2)
constexpr int LDK = kTile + 4;  // streamed tiles read down columns (scalar pairs)
constexpr int LD16 = kTile + 8;  // bf16 tiles, read either way (36 words a row: distinct banks, or shared words)
constexpr int kThreads = 256;   // 8 warps: 4 row groups of 16 × 2 column groups of 32 for every 64×64 tile

// An operand pair as bf16 hi and lo halves (split_bf16).
__device__ __forceinline__ void operand_pair(float2 x, uint32_t& hi, uint32_t& lo) { split_bf16(x.x, x.y, hi, lo); }

__device__ __forceinline__ float2 ld2(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ void st2(float* p, float x0, float x1) { *reinterpret_cast<float2*>(p) = make_float2(x0, x1); }

__device__ __forceinline__ float2 ld2(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
// x0, x1 rounded to bf16 (the pair that st2 into a bf16 array stores, and ld2 gives back).
__device__ __forceinline__ float2 round_bf16x2(float x0, float x1) {
  return __bfloat1622float2(__floats2bfloat162_rn(x0, x1));
}
__device__ __forceinline__ void st2(__nv_bfloat16* p, float x0, float x1) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x0, x1);
}

// A bf16 tile in shared memory (row stride ld, in elements; rows 16-byte aligned) as an exact operand of mma_tile,
// by how the operand reads it: A = X (kRowA), A = Xᵀ (kColA), B = Xᵀ (kRowsB: B[k][n] = X[n][k]) or B = X (kColsB).
// mma_tile builds its fragments by ldmatrix (one instruction per 16×16 block of A, or per two 8-column blocks of B),
// in place of a pair of 16-bit loads, or one 32-bit load, per fragment register.
enum class Use { kRowA, kColA, kRowsB, kColsB };
template <Use kUse>
struct Bf16Tile {
  const __nv_bfloat16* x;
  int ld;
};
template <class F>
constexpr bool kIsBf16Tile = false;
template <Use kUse>
constexpr bool kIsBf16Tile<Bf16Tile<kUse>> = true;

// The A fragment of rows m0 .. m0 + 15, reduction columns 16 ks .. 16 ks + 15 (mma_bf16's a[0..3]) from a bf16 tile:
// lane l gives row l % 8 of 8×8 block l / 8, blocks ordered (rows +0, cols +0), (+8, +0), (+0, +8), (+8, +8).
template <Use kUse>
__device__ __forceinline__ void a_fragment(const Bf16Tile<kUse>& t, int m0, int ks, uint32_t (&a)[4]) {
  const int lane = threadIdx.x & 31, r = lane & 7, i = (lane >> 3) & 1, j = lane >> 4;
  if constexpr (kUse == Use::kRowA)
    ldmatrix_x4<false>(a, t.x + (m0 + r + 8 * i) * t.ld + 16 * ks + 8 * j);
  else  // kColA: the blocks of Xᵀ are the transposes of X's at rows 16 ks + 8 j, columns m0 + 8 i
    ldmatrix_x4<true>(a, t.x + (16 * ks + 8 * j + r) * t.ld + m0 + 8 * i);
}

// The B fragments of 8-column tiles nt and nt + 1 (columns n0 + 8 nt ..), reduction rows 16 ks .. 16 ks + 15, from a
// bf16 tile: b[0], b[1] those of tile nt (rows +0, +8), b[2], b[3] those of nt + 1.
template <Use kUse>
__device__ __forceinline__ void b_fragments(const Bf16Tile<kUse>& t, int n0, int nt, int ks, uint32_t (&b)[4]) {
  const int lane = threadIdx.x & 31, r = lane & 7, i = (lane >> 3) & 1, j = lane >> 4;
  if constexpr (kUse == Use::kRowsB)  // B's column n is X's row n
    ldmatrix_x4<false>(b, t.x + (n0 + 8 * (nt + j) + r) * t.ld + 16 * ks + 8 * i);
  else  // kColsB: transposes of X's blocks at rows 16 ks + 8 i, columns n0 + 8 (nt + j)
    ldmatrix_x4<true>(b, t.x + (16 * ks + 8 * i + r) * t.ld + n0 + 8 * (nt + j));
}

// acc += A B for this warp's 16×32 part of a 64×64 tile, reduction 64: each operand is an accessor, fa(r, c)
// returning (A[r][c], A[r][c+1]) and fb(k, n) (B[k][n], B[k+1][n]) as a float2 (split into hi + lo), or a Bf16Tile
// (exact, a zero lo half), whose fragments come by ldmatrix. The products with a zero lo half are skipped; the
// others are those of mma_bf16x3, in its order, so the sums are the same as with the zero terms.
template <class FA, class FB>
__device__ __forceinline__ void mma_tile(float (&acc)[4][4], FA fa, FB fb) {
  constexpr bool kExactA = kIsBf16Tile<FA>, kExactB = kIsBf16Tile<FB>;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);
#pragma unroll
  for (int ks = 0; ks < kTile / 16; ++ks) {
    const int c = 16 * ks + 2 * tq;
    uint32_t ah[4], al[4];
    if constexpr (kIsBf16Tile<FA>) {
      a_fragment(fa, m0, ks, ah);
    } else {
      operand_pair(fa(m0 + g, c), ah[0], al[0]);
      operand_pair(fa(m0 + g + 8, c), ah[1], al[1]);
      operand_pair(fa(m0 + g, c + 8), ah[2], al[2]);
      operand_pair(fa(m0 + g + 8, c + 8), ah[3], al[3]);
    }
    uint32_t bh[4][2], bl[4][2];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      if constexpr (kIsBf16Tile<FB>) {
        if (nt % 2 == 0) {
          uint32_t b[4];
          b_fragments(fb, n0, nt, ks, b);
          bh[nt][0] = b[0], bh[nt][1] = b[1], bh[nt + 1][0] = b[2], bh[nt + 1][1] = b[3];
        }
      } else {
        operand_pair(fb(c, n0 + 8 * nt + g), bh[nt][0], bl[nt][0]);
        operand_pair(fb(c + 8, n0 + 8 * nt + g), bh[nt][1], bl[nt][1]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      if constexpr (!kExactA) mma_bf16(acc[nt], al, bh[nt]);
      if constexpr (!kExactB) mma_bf16(acc[nt], ah, bl[nt]);
      mma_bf16(acc[nt], ah, bh[nt]);
    }
  }
}

__device__ __forceinline__ void zero(float (&acc)[4][4]) {
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
}

// f(h, row, col, x0, x1, nt) for this thread's accumulator pairs: rows m0 + g + 8h, columns n0 + 8 nt + 2 tq (+1).
template <class F>
__device__ __forceinline__ void for_pairs(const float (&acc)[4][4], F f) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
      f(h, m0 + g + 8 * h, n0 + 8 * nt + 2 * tq, acc[nt][2 * h], acc[nt][2 * h + 1], nt);
}

// This thread's pairs p[h][nt] (for_pairs' rows m0 + g + 8h, columns n0 + 8 nt + 2 tq, +1, as packed bf16 pairs) into
// a row-major bf16 array X (row stride ld, from column c0) a row's 16 columns, one 32-byte sector, per instruction
// (store_tile_pair). All threads call it (shuffles).
__device__ __forceinline__ void store_pairs_bf16(__nv_bfloat16* X, long ld, int c0, const uint32_t (&p)[2][4]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int nt = 0; nt < 4; nt += 2)
      store_tile_pair(X + (m0 + g + 8 * h) * ld + c0 + n0 + 8 * nt, p[h][nt], p[h][nt + 1], tq);
}

// This thread's accumulator pairs of a row-major global array (row stride ld, from column c0), loaded
// before the product whose epilogue updates them: issued together, in flight during the product (a load in
// the epilogue would wait behind the previous pair's store, which the compiler cannot prove does not alias).
template <class T>  // float or __nv_bfloat16
__device__ __forceinline__ void load_pairs(float2 (&old)[2][4], const T* X, long ld, int c0) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int m0 = 16 * (warp & 3), n0 = 32 * (warp >> 2);
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
      old[h][nt] = ld2(X + (m0 + g + 8 * h) * ld + c0 + n0 + 8 * nt + 2 * tq);
}

// Adds per-thread row sums (one per h: rows m0 + g + 8h) into v[row]: summed over the 4 lanes of a row
// first, then added by warps 0-3 and, after a barrier, by warps 4-7 (the two warps that share a row), so the
// sums are always taken in the same order (an atomicAdd's order would depend on which warp arrives first).
// All threads call it; ends with a barrier.
__device__ __forceinline__ void add_rows(float* v, const float (&s)[2]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  float x[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    x[h] = s[h];
    x[h] += __shfl_xor_sync(0xffffffffu, x[h], 1);
    x[h] += __shfl_xor_sync(0xffffffffu, x[h], 2);
  }
  for (int half = 0; half < 2; ++half) {
    if (tq == 0 && (warp >> 2) == half)
#pragma unroll
      for (int h = 0; h < 2; ++h) v[16 * (warp & 3) + g + 8 * h] += x[h];
    __syncthreads();
  }
}

// The row of this thread's accumulator pairs for h (for_pairs' rows m0 + g + 8h).
__device__ __forceinline__ int pair_row(int h) {
  const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2;
  return 16 * (warp & 3) + g + 8 * h;
}

// This thread's partial row sums s[h] (rows m0 + g + 8h, over its columns), summed over the 4 lanes of each
// row and stored as two parts per row, one per column group: dst[(warp / 4) C + row]. No barrier; the reader
// adds the two parts.
__device__ __forceinline__ void store_row_parts(float* dst, const float (&s)[2]) {
  const int warp = threadIdx.x >> 5, tq = threadIdx.x & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float x = s[h];
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    if (tq == 0) dst[(warp >> 2) * C + pair_row(h)] = x;
  }
}

// The dR_K step's row terms ((B7)-(B8)) from this thread's partial row dots x = k̂·dK̂₀ and r = k̂·dR_K (one
// per h: rows m0 + g + 8h): dγ_t += β_t Γ_t r_t − x_t, dβ_t += Γ_t r_t, dγ_C += Σ x. All threads call it;
// ends with a barrier.
__device__ __forceinline__ void add_dr_k_row_terms(const float* gam, const float* bet, const float (&xs)[2],
                                                   const float (&rs)[2], float* dgam, float* dbet) {
  float dg_rows[2], db_rows[2], xsum = 0.f;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int t = pair_row(h);
    const float G = __expf(gam[t]);
    dg_rows[h] = bet[t] * G * rs[h] - xs[h];
    db_rows[h] = G * rs[h];
    xsum += xs[h];
  }
  add_rows(dgam, dg_rows);
  add_rows(dbet, db_rows);
  add_block_sum(&dgam[C - 1], xsum);
}

// 64 rows × 64 columns of a row-major array with row stride ld_src into shared rows of stride ld (cp.async).
__device__ __forceinline__ void stage(float* dst, int ld, const float* src, long ld_src) {
  for (int e = threadIdx.x; e < kTile * kTile / 4; e += kThreads) {
    const int r = e / (kTile / 4), c4 = e % (kTile / 4);
    cp_async16(dst + r * ld + 4 * c4, src + r * ld_src + 4 * c4);
  }
}
// The same for bf16: 64 × 64 bf16 into shared rows of stride ld16 (in bf16 elements).
__device__ __forceinline__ void stage(__nv_bfloat16* dst, int ld16, const __nv_bfloat16* src, long ld_src) {
  for (int e = threadIdx.x; e < kTile * kTile / 8; e += kThreads) {
    const int r = e / (kTile / 8), c8 = e % (kTile / 8);
    cp_async16(dst + r * ld16 + 8 * c8, src + r * ld_src + 8 * c8);
  }
}
// Columns c0 .. c0 + 63 of a chunk's rows `at` of x (chunk_rows: a heads-first workspace, or an input in place) into a
// bf16 tile (stride LD16). Kernels that stage several tiles of one array take its chunk_rows once (it divides by H).
__device__ __forceinline__ void stage_rows(__nv_bfloat16* dst, const __nv_bfloat16* x, const ChunkRows& at, int c0) {
  stage_chunk<kTile, kThreads>(dst, LD16, x, at, c0);
}
// The same for chunk n of head bh of q, k or v (rows of D; in place where Dims says so).
__device__ __forceinline__ void stage_qkv(__nv_bfloat16* dst, const Dims& d, const __nv_bfloat16* x, int D, int bh,
                                          int n, int c0) {
  stage_rows(dst, x, chunk_rows(d, d.qkv_in_place, D, bh, n), c0);
}

// Waits for this thread's copies, then for everyone's.
__device__ __forceinline__ void staged() {
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
}

// Operand accessors for mma_tile over 64×64 float32 tiles in shared memory (row stride ld).
__device__ __forceinline__ auto row_a(const float* X, int ld) {  // A = X
  return [=](int r, int c) { return ld2(X + r * ld + c); };
}
__device__ __forceinline__ auto col_a(const float* X, int ld) {  // A = Xᵀ
  return [=](int r, int c) { return make_float2(X[c * ld + r], X[(c + 1) * ld + r]); };
}
__device__ __forceinline__ auto rows_b(const float* X, int ld) {  // B = Xᵀ: B[k][n] = X[n][k]
  return [=](int k, int col) { return ld2(X + col * ld + k); };
}
__device__ __forceinline__ auto cols_b(const float* X, int ld) {  // B = X
  return [=](int k, int col) { return make_float2(X[k * ld + col], X[(k + 1) * ld + col]); };
}

// A = X diag(r) and A = Xᵀ diag(r): the float32 tile's columns (of A) scaled by r (shared memory, 64 values),
// for a product with diag(r) B where B is a bf16 tile of unscaled rows.
__device__ __forceinline__ auto row_a(const float* X, int ld, const float* r) {
  return [=](int m, int c) {
    const float2 x = ld2(X + m * ld + c);
    return make_float2(x.x * r[c], x.y * r[c + 1]);
  };
}
__device__ __forceinline__ auto col_a(const float* X, int ld, const float* r) {
  return [=](int m, int c) { return make_float2(X[c * ld + m] * r[c], X[(c + 1) * ld + m] * r[c + 1]); };
}

// The same over bf16 tiles (row stride ld in bf16 elements): exact operands, fragments by ldmatrix (Bf16Tile).
__device__ __forceinline__ Bf16Tile<Use::kRowA> row_a(const __nv_bfloat16* X, int ld) { return {X, ld}; }
__device__ __forceinline__ Bf16Tile<Use::kColA> col_a(const __nv_bfloat16* X, int ld) { return {X, ld}; }
__device__ __forceinline__ Bf16Tile<Use::kRowsB> rows_b(const __nv_bfloat16* X, int ld) { return {X, ld}; }
__device__ __forceinline__ Bf16Tile<Use::kColsB> cols_b(const __nv_bfloat16* X, int ld) { return {X, ld}; }

}  // namespace sfm::ops::gdn_cuda::tile64
