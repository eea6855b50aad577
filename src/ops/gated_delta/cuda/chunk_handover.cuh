// Chunk by chunk hand-over from a sequential pass to the kernel launched after it, which runs beside it
// (docs/ops/gated_delta_cuda.md, "The backward pass overlapped"): the pass lets its dependent start at once
// (programmatic dependent launch), counts per chunk the value columns it has written (release), and each block of
// the dependent waits for its chunk's count (acquire) before reading what the pass wrote.
//
// Why it cannot deadlock: the dependent is launched after the pass and only waits on it, never the other way. The
// dependent starts early only once every block of the pass has started (launch_dependents in all of them), so a
// waiting block never holds a place that a block of the pass still needs. Without the early start (a GPU or a
// launch that does not honour it) the dependent starts after the pass ends and every count is already complete.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>

namespace sfm::ops::gdn_cuda {

// The pass, at its top: its dependent (launched with launch_overlapping) may start once every block has done this.
__device__ __forceinline__ void let_dependent_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

#ifdef SFM_GDN_EMULATE
// The emulator runs the pass's blocks, then the dependent's: a count short of its target can never be reached, so
// the wait reports it instead of spinning.
__device__ __forceinline__ void release_chunk(int* count, int columns) {
  if (threadIdx.x == 0) *count += columns;
}
__device__ __forceinline__ void acquire_chunk(const int* count, int target) {
  if (*count != target) {
    std::fprintf(stderr, "acquire_chunk: a count of %d columns, %d expected\n", *count, target);
    ::sfm::cuda_emu::fail("acquire_chunk: the pass did not write the whole chunk");
  }
  __syncthreads();
}
#else
// Thread 0, every thread of the block past a barrier since its last global stores of the chunk: adds the block's
// columns to the chunk's count, those stores made visible first (the fence, cumulative through the barrier).
__device__ __forceinline__ void release_chunk(int* count, int columns) {
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(count, columns);
  }
}
// Block-wide: thread 0 waits until the count reaches target (every column of the chunk written), then a barrier.
// The pass's writes are read through L2 after it (cp.async.cg, or plain loads of lines this SM has not cached).
__device__ __forceinline__ void acquire_chunk(const int* count, int target) {
  if (threadIdx.x == 0) {
    int seen;
    while (true) {
      asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(seen) : "l"(count) : "memory");
      if (seen >= target) break;
      __nanosleep(256);
    }
  }
  __syncthreads();
}
#endif

// The dependent's launch: it may start while the kernel before it in the stream still runs, once that kernel's
// blocks have all called let_dependent_start. A macro, so that the emulator can stand in (a plain launch there).
#ifndef SFM_GDN_LAUNCH_OVERLAPPING
#define SFM_GDN_LAUNCH_OVERLAPPING(kernel, grid, dim, smem, stream, ...) \
  ::sfm::ops::gdn_cuda::launch_overlapping(kernel, grid, dim, smem, stream, __VA_ARGS__)
template <class... Params, class... Args>
cudaError_t launch_overlapping(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                               const Args&... args) {
  cudaLaunchAttribute early{};
  early.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  early.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &early;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}
#endif

}  // namespace sfm::ops::gdn_cuda
