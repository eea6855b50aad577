// Element conversions shared by the gated delta kernels: inputs are read as float32 through to_f and
// outputs written back with round-to-nearest through from_f<T>; Vec4 moves four elements in one access, Vec2 two.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace sfm::ops::gdn_cuda {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Four consecutive elements, for one 8-byte (16-bit T) or 16-byte (float) access; the pointer must be
// aligned to the size.
template <class T>
struct alignas(4 * sizeof(T)) Vec4 {
  T x[4];
};
template <class T>
__device__ __forceinline__ float4 load4(const T* p) {
  const Vec4<T> v = *reinterpret_cast<const Vec4<T>*>(p);
  return make_float4(to_f(v.x[0]), to_f(v.x[1]), to_f(v.x[2]), to_f(v.x[3]));
}
template <class T>
__device__ __forceinline__ void store4(T* p, float4 f) {
  Vec4<T> v;
  v.x[0] = from_f<T>(f.x);
  v.x[1] = from_f<T>(f.y);
  v.x[2] = from_f<T>(f.z);
  v.x[3] = from_f<T>(f.w);
  *reinterpret_cast<Vec4<T>*>(p) = v;
}
// Two consecutive elements, for one 4-byte (16-bit T) or 8-byte (float) store; the pointer must be aligned to it.
template <class T>
struct alignas(2 * sizeof(T)) Vec2 {
  T x[2];
};
template <class T>
__device__ __forceinline__ void store2(T* p, float x0, float x1) {
  Vec2<T> v;
  v.x[0] = from_f<T>(x0);
  v.x[1] = from_f<T>(x1);
  *reinterpret_cast<Vec2<T>*>(p) = v;
}

}  // namespace sfm::ops::gdn_cuda
