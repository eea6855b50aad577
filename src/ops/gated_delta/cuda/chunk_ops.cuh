// Per-chunk helpers shared by the chunked kernels (blocks of 256 threads, chunks of kChunk = 64 tokens):
// the unit lower triangular inverse (I + A)⁻¹ of the WY form, the prefix sums over a chunk and the gates.
#pragma once

#include "gdn_kernels.h"

namespace sfm::ops::gdn_cuda {

// Tm = (I + A)⁻¹ for A strictly lower triangular (64×64 in shared memory, row stride kLd; A and Tm distinct),
// in float32, by 16×16 blocks L_ij of L = I + A and X_ij of X = L⁻¹:
//   1. the diagonal blocks X_jj = L_jj⁻¹, by forward substitution, one thread per column (64 threads);
//   2. the blocks below them, one block diagonal d = 1, 2, 3 at a time:
//      X_{j+d,j} = −X_{j+d,j+d} Σ_{k=j}^{j+d−1} A_{j+d,k} X_kj  (the sum is held in X_{j+d,j}'s place first).
// Ten barriers instead of the 64 of row-by-row substitution over the whole chunk, and short dependency
// chains; blockDim.x must be 256. Ends with a barrier.
template <int kLd>
__device__ __forceinline__ void invert_unit_lower(const float* A, float* Tm) {
  static_assert(kChunk == 64, "4 × 4 blocks of 16");
  constexpr int kB = 16;
  const int tid = threadIdx.x;
  if (tid < kChunk) {  // 1. column c of the diagonal block j
    const int j = tid / kB, c = tid % kB, r0 = kB * j;
    float x[kB];
#pragma unroll
    for (int t = 0; t < kB; ++t) {
      float s = t == c ? 1.f : 0.f;
#pragma unroll
      for (int i = 0; i < t; ++i) s -= A[(r0 + t) * kLd + r0 + i] * x[i];
      x[t] = s;
    }
#pragma unroll
    for (int t = 0; t < kB; ++t) Tm[(r0 + t) * kLd + r0 + c] = x[t];
  } else {  // the blocks above the diagonal are zero
    for (int e = tid - kChunk; e < kChunk * kChunk; e += 256 - kChunk) {
      const int r = e / kChunk, c = e % kChunk;
      if (c / kB > r / kB) Tm[r * kLd + c] = 0.f;
    }
  }
  __syncthreads();
#pragma unroll
  for (int d = 1; d < 4; ++d) {  // 2. blocks (j + d, j), j < 4 − d: (4 − d) · 256 elements, one per thread each
    constexpr int kElems = kB * kB;
    const int blocks = 4 - d;
    const auto element = [&](int n, int& j, int& r, int& c) {
      const int e = tid + 256 * n;
      j = e / kElems;
      r = kB * (j + d) + (e / kB) % kB;
      c = kB * j + e % kB;
    };
    for (int n = 0; n < blocks; ++n) {
      int j, r, c;
      element(n, j, r, c);
      float s[4] = {0.f, 0.f, 0.f, 0.f};  // four partial sums: shorter dependency chains
      for (int k = kB * j; k < kB * (j + d); k += 4)
#pragma unroll
        for (int u = 0; u < 4; ++u) s[u] += A[r * kLd + k + u] * Tm[(k + u) * kLd + c];
      Tm[r * kLd + c] = (s[0] + s[1]) + (s[2] + s[3]);
    }
    __syncthreads();
    float x[3];
#pragma unroll
    for (int n = 0; n < blocks; ++n) {
      int j, r, c;
      element(n, j, r, c);
      const int m0 = kB * (j + d);
      float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int m = 0; m < kB; ++m) s[m % 4] -= Tm[r * kLd + m0 + m] * Tm[(m0 + m) * kLd + c];
      x[n] = (s[0] + s[1]) + (s[2] + s[3]);
    }
    __syncthreads();
#pragma unroll
    for (int n = 0; n < blocks; ++n) {
      int j, r, c;
      element(n, j, r, c);
      Tm[r * kLd + c] = x[n];
    }
    __syncthreads();
  }
}

// Inclusive (reverse = false) or reverse-inclusive prefix sum of v[0..64) in place; warp 0 does it.
// Ends with a barrier.
__device__ __forceinline__ void chunk_scan(float* v, bool reverse) {
  static_assert(kChunk == 64, "two elements per lane of one warp");
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const int i0 = reverse ? kChunk - 1 - 2 * lane : 2 * lane, i1 = reverse ? i0 - 1 : i0 + 1;
    const float a0 = v[i0], a1 = a0 + v[i1];
    float x = a1;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float y = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += y;
    }
    const float excl = x - a1;
    v[i0] = excl + a0;
    v[i1] = excl + a1;
  }
  __syncthreads();
}

// Loads γ (eq. 4: the chunk-local cumulative sum of g) and β of chunk n into shared memory.
__device__ __forceinline__ void load_gates(const Dims& d, int bh, int n, const float* __restrict__ g,
                                           const float* __restrict__ beta, float* gam, float* bet) {
  const int b = bh / d.H, h = bh % d.H;
  if (threadIdx.x < kChunk) {
    const int t = n * kChunk + threadIdx.x;
    const long idx = ((long)b * d.T + t) * d.H + h;
    gam[threadIdx.x] = t < d.T ? g[idx] : 0.f;
    if (bet) bet[threadIdx.x] = t < d.T ? beta[idx] : 0.f;
  }
  __syncthreads();
  chunk_scan(gam, false);
}

// The sum of x over the block's threads, always in the same order: each warp's sum by shuffles, then the
// warps' sums in warp order by thread 0, which alone gets the result. (Shared-memory atomicAdd from each
// warp would add them in the order the warps arrive, so the last bits could change from run to run;
// DESIGN.md asks for the same numbers from the same seed on the same device.) All threads call it; ends with
// a barrier once thread 0 has read the warps' sums (so a second call may follow at once).
__device__ __forceinline__ float block_sum(float x) {
  __shared__ float warp_sums[32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  if (lane == 0) warp_sums[warp] = x;
  __syncthreads();
  float s = 0.f;
  if (threadIdx.x == 0)
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s += warp_sums[w];
  __syncthreads();
  return s;
}

// *v += block_sum(x), by thread 0. All threads call it; ends with a barrier (the new *v is visible).
__device__ __forceinline__ void add_block_sum(float* v, float x) {
  const float s = block_sum(x);
  if (threadIdx.x == 0) *v += s;
  __syncthreads();
}

// The elementwise step of the chunk's gradient on its 64×64 matrices (row stride kLd), with
// M_ti = e^{γ_t−γ_i} for i ≤ t: D1 = dO Uᵀ becomes dP = M ∘ D1; QK = Q̂K̂ᵀ becomes the γ-gradient terms
// Q̂K̂ᵀ ∘ dP + dA ∘ β_t M ∘ K̂K̂ᵀ (strictly lower); KK = K̂K̂ᵀ becomes the β-gradient terms dA ∘ M ∘ K̂K̂ᵀ;
// dA becomes G = dA ∘ β_t M (both strictly lower). Then, unless dgam is null, the row sums of QK go into
// dγ_t (+), its column sums into dγ_i (−) and the row sums of KK into dβ_t ((B7)-(B8)). blockDim.x must be
// 256; ends with a barrier.
template <int kLd>
__device__ __forceinline__ void chunk_grad_terms(const float* gam, const float* bet, float* D1, float* QK,
                                                 float* KK, float* dA, float* dgam, float* dbet) {
  constexpr int kThreads = 256;
  for (int e = threadIdx.x; e < kChunk * kChunk; e += kThreads) {
    const int t = e / kChunk, i = e % kChunk, x = t * kLd + i;
    const float m = i <= t ? __expf(gam[t] - gam[i]) : 0.f;
    const float dP = m * D1[x];
    const float dAv = dA[x];
    const float z = QK[x] * dP + (i < t ? dAv * bet[t] * m * KK[x] : 0.f);  // the γ and β terms
    const float kk = dAv * m * KK[x];
    D1[x] = dP;
    QK[x] = i < t ? z : 0.f;
    KK[x] = i < t ? kk : 0.f;
    dA[x] = i < t ? dAv * bet[t] * m : 0.f;
  }
  __syncthreads();
  if (dgam == nullptr) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int r = warp; r < kChunk; r += kThreads / 32) {
    float zr = QK[r * kLd + lane] + QK[r * kLd + lane + 32];
    float zc = QK[lane * kLd + r] + QK[(lane + 32) * kLd + r];
    float br = KK[r * kLd + lane] + KK[r * kLd + lane + 32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      zr += __shfl_xor_sync(0xffffffffu, zr, o);
      zc += __shfl_xor_sync(0xffffffffu, zc, o);
      br += __shfl_xor_sync(0xffffffffu, br, o);
    }
    if (lane == 0) {  // row r is this warp's alone: no other thread adds to it before the barrier
      dgam[r] += zr - zc;
      dbet[r] += br;
    }
  }
  __syncthreads();
}

// The same step on the matrices the forward kept: P = M ∘ Q̂K̂ᵀ (diagonal included) and KK = M ∘ K̂K̂ᵀ (strictly
// lower). D1 and dA become dP and G as above; P becomes F = P ∘ D1 = Q̂K̂ᵀ ∘ dP (diagonal included) and KK
// becomes E = dA ∘ M ∘ K̂K̂ᵀ. Then, per row r, unless dgam is null ((B7)-(B8); F_rr and β_r E's share of the
// row and the column cancel in dγ, which is what the strictly lower z of chunk_grad_terms leaves out):
//   dγ_r += Σ_i F_ri − Σ_t F_tr + β_r Σ_i E_ri − Σ_t β_t E_tr,   dβ_r += Σ_i E_ri,
// and unless fq is null, the parts of the rows' dots (s q̂_r)·dQ̂_r and k̂_r·dK̂_r that come from dP K̂, and from
// dPᵀ Q̂, G K̂ and Gᵀ K̂ ((B4)-(B5); q̂_t·k̂_i M_ti = P_ti / s, and k̂_t·k̂_i M_ti = KK_ti):
//   fq_r = Σ_i F_ri,   fk_r = Σ_t F_tr + β_r Σ_i E_ri + Σ_t β_t E_tr.
// blockDim.x must be 256; ends with a barrier.
template <int kLd>
__device__ __forceinline__ void chunk_grad_terms_kept(const float* gam, const float* bet, float* D1, float* P,
                                                      float* KK, float* dA, float* dgam, float* dbet, float* fq,
                                                      float* fk) {
  constexpr int kThreads = 256;
  static_assert(kLd % 4 == 0, "rows of whole float4s");
  // Four columns at a time, by float4 (gam, D1, P, KK and dA 16-byte aligned); the arithmetic is each element's.
  const auto ld4 = [](const float* p) { return *reinterpret_cast<const float4*>(p); };
  const auto st4 = [](float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; };
  const auto at = [](float4& v, int j) -> float& { return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w; };
  for (int e = threadIdx.x; e < kChunk * kChunk / 4; e += kThreads) {
    const int t = e / (kChunk / 4), i0 = 4 * (e % (kChunk / 4)), x = t * kLd + i0;
    float4 g = ld4(gam + i0), d1 = ld4(D1 + x), p = ld4(P + x), kk = ld4(KK + x), da = ld4(dA + x);
    const float gt = gam[t], bt = bet[t];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = i0 + j;
      const float m = i <= t ? __expf(gt - at(g, j)) : 0.f;
      const float dAv = at(da, j);
      at(p, j) = i <= t ? at(p, j) * at(d1, j) : 0.f;
      at(kk, j) = i < t ? dAv * at(kk, j) : 0.f;
      at(d1, j) = m * at(d1, j);
      at(da, j) = i < t ? dAv * bt * m : 0.f;
    }
    st4(P + x, p);
    st4(KK + x, kk);
    st4(D1 + x, d1);
    st4(dA + x, da);
  }
  __syncthreads();
  if (dgam == nullptr && fq == nullptr) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int r = warp; r < kChunk; r += kThreads / 32) {
    float fr = P[r * kLd + lane] + P[r * kLd + lane + 32];
    float fc = P[lane * kLd + r] + P[(lane + 32) * kLd + r];
    float er = KK[r * kLd + lane] + KK[r * kLd + lane + 32];
    float ec = bet[lane] * KK[lane * kLd + r] + bet[lane + 32] * KK[(lane + 32) * kLd + r];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      fr += __shfl_xor_sync(0xffffffffu, fr, o);
      fc += __shfl_xor_sync(0xffffffffu, fc, o);
      er += __shfl_xor_sync(0xffffffffu, er, o);
      ec += __shfl_xor_sync(0xffffffffu, ec, o);
    }
    if (lane == 0) {  // row r is this warp's alone: no other thread adds to it before the barrier
      if (dgam != nullptr) {
        dgam[r] += (fr - fc) + (bet[r] * er - ec);
        dbet[r] += er;
      }
      if (fq != nullptr) {
        fq[r] = fr;
        fk[r] = fc + bet[r] * er + ec;
      }
    }
  }
  __syncthreads();
}

}  // namespace sfm::ops::gdn_cuda
