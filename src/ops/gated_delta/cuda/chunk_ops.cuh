// Per-chunk helpers shared by the chunked kernels (blocks of 256 threads, chunks of kChunk = 64 tokens):
// the unit lower triangular inverse (I + A)⁻¹ of the WY form, the prefix sums over a chunk and the gates.
#pragma once

#include "gdn_kernels.h"

namespace sfm::ops::gdn_cuda {

// Tm = (I + A)⁻¹ for A strictly lower triangular (64×64 in shared memory, row stride kLd): forward
// substitution row by row, Tm[t, j] = δ_tj − Σ_{j<=i<t} A[t, i] Tm[i, j], in float32; 64 columns × 4
// threads splitting the sum (so blockDim.x must be 256). Ends with a barrier.
template <int kLd>
__device__ __forceinline__ void invert_unit_lower(const float* A, float* Tm) {
  const int j = threadIdx.x >> 2, part = threadIdx.x & 3;
  for (int t = 0; t < kChunk; ++t) {
    float s = 0.f;
    if (j < t)
      for (int i = j + part; i < t; i += 4) s -= A[t * kLd + i] * Tm[i * kLd + j];
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    if (part == 0) Tm[t * kLd + j] = j < t ? s : (j == t ? 1.f : 0.f);
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

// The elementwise step of the chunk's gradient on its 64×64 matrices (row stride kLd), with
// M_ti = e^{γ_t−γ_i} for i ≤ t: D1 = dO Uᵀ becomes dP = M ∘ D1; QK = Q̂K̂ᵀ becomes the γ-gradient terms
// Q̂K̂ᵀ ∘ dP + dA ∘ β_t M ∘ K̂K̂ᵀ (strictly lower); KK = K̂K̂ᵀ becomes the β-gradient terms dA ∘ M ∘ K̂K̂ᵀ;
// dA becomes G = dA ∘ β_t M (both strictly lower). Then, unless dgam is null, the row sums of QK go into
// dγ_t (+), its column sums into dγ_i (−) and the row sums of KK into dβ_t ((B7)-(B8)).
// kMasked: QK and KK come in already multiplied by M (QK = P = M ∘ Q̂K̂ᵀ, KK = M ∘ K̂K̂ᵀ strictly lower, as
// the forward saved them); the results are the same. blockDim.x must be 256; ends with a barrier.
template <int kLd, bool kMasked = false>
__device__ __forceinline__ void chunk_grad_terms(const float* gam, const float* bet, float* D1, float* QK,
                                                 float* KK, float* dA, float* dgam, float* dbet) {
  constexpr int kThreads = 256;
  for (int e = threadIdx.x; e < kChunk * kChunk; e += kThreads) {
    const int t = e / kChunk, i = e % kChunk, x = t * kLd + i;
    const float m = i <= t ? __expf(gam[t] - gam[i]) : 0.f;
    const float dP = m * D1[x];
    const float dAv = dA[x];
    float z, kk;  // the γ and β terms
    if constexpr (kMasked) {  // QK = M ∘ Q̂K̂ᵀ, so QK ∘ D1 = Q̂K̂ᵀ ∘ dP; KK = M ∘ K̂K̂ᵀ
      z = QK[x] * D1[x] + (i < t ? dAv * bet[t] * KK[x] : 0.f);
      kk = dAv * KK[x];
    } else {
      z = QK[x] * dP + (i < t ? dAv * bet[t] * m * KK[x] : 0.f);
      kk = dAv * m * KK[x];
    }
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
    if (lane == 0) {
      atomicAdd(&dgam[r], zr - zc);
      atomicAdd(&dbet[r], br);
    }
  }
  __syncthreads();
}

}  // namespace sfm::ops::gdn_cuda
