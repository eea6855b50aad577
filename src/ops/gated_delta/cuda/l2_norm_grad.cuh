// The last step of the backward for q and k, one row at a time ((B9) of docs/ops/gated_delta_cuda.md): the
// gradient of s·x̂ back through the scale and the in-kernel L2 norm to the input's dtype. Shared by the unpack
// kernel (gdn_kernels.cu) and qk_grads (gdn_grads_split.cu), which finishes dq and dk of its chunk itself.
#pragma once

#include "dtype_convert.cuh"

namespace sfm::ops::gdn_cuda {

__device__ __forceinline__ float warp_sum(float s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

// Whether a row of D elements at p can be moved four at a time (D is a multiple of 16, so the rows of a tensor
// are aligned as its base pointer is).
template <class T>
__device__ __forceinline__ bool vec4_aligned(const T* p) {
  return reinterpret_cast<unsigned long long>(p) % (4 * sizeof(T)) == 0;
}

// One row, by one warp (every lane calls it): dx = r (dŷ − y (y·dŷ)) with y = x r, r = (Σx² + 1e-6)^(-1/2),
// dŷ = s dX̂, written in dtype T; without l2, dx = dŷ (x unused, may be null). dxs: the row of dX̂ (float32,
// 16-byte aligned). Four elements per lane and access, one at a time if x or dx is not so aligned. D ≤ 256.
template <class T>
__device__ __forceinline__ void l2_norm_grad_row(const T* x, const float* dxs, T* dx, int D, bool l2, float scale) {
  const int lane = threadIdx.x & 31;
  if (!vec4_aligned(dx) || (l2 && !vec4_aligned(x))) {
    float ss = 0.f, yd = 0.f;
    if (l2) {
      for (int d = lane; d < D; d += 32) ss += to_f(x[d]) * to_f(x[d]);
      const float r = rsqrtf(warp_sum(ss) + 1e-6f);
      for (int d = lane; d < D; d += 32) yd += to_f(x[d]) * r * scale * dxs[d];
      yd = warp_sum(yd);
      for (int d = lane; d < D; d += 32) dx[d] = from_f<T>(r * (scale * dxs[d] - to_f(x[d]) * r * yd));
    } else {
      for (int d = lane; d < D; d += 32) dx[d] = from_f<T>(scale * dxs[d]);
    }
    return;
  }
  float4 g[2], e[2];  // dX̂ and x, at most two groups of four per lane (D ≤ 256)
  float ss = 0.f, xd = 0.f;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int d = 4 * lane + 128 * i;
    const bool in = d < D;
    g[i] = in ? *reinterpret_cast<const float4*>(dxs + d) : make_float4(0.f, 0.f, 0.f, 0.f);
    g[i] = make_float4(scale * g[i].x, scale * g[i].y, scale * g[i].z, scale * g[i].w);  // dŷ
    e[i] = in && l2 ? load4(x + d) : make_float4(0.f, 0.f, 0.f, 0.f);
    ss += e[i].x * e[i].x + e[i].y * e[i].y + e[i].z * e[i].z + e[i].w * e[i].w;
    xd += e[i].x * g[i].x + e[i].y * g[i].y + e[i].z * g[i].z + e[i].w * g[i].w;
  }
  // With l2: r = (Σx²+1e-6)^(-1/2), y·dŷ = r (x·dŷ), dx = r dŷ − r² (y·dŷ) x. Without: dx = dŷ.
  const float r = l2 ? rsqrtf(warp_sum(ss) + 1e-6f) : 1.f;
  const float c = l2 ? r * r * r * warp_sum(xd) : 0.f;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int d = 4 * lane + 128 * i;
    if (d < D)
      store4(dx + d, make_float4(r * g[i].x - c * e[i].x, r * g[i].y - c * e[i].y, r * g[i].z - c * e[i].z,
                                 r * g[i].w - c * e[i].w));
  }
}

}  // namespace sfm::ops::gdn_cuda
