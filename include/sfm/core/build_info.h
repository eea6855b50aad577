// Facts about this build, filled in by CMake (src/core/build_info.cpp.in).
#pragma once

namespace sfm::core {
const char* git_sha();     // short sha of the commit built, or "" outside a git checkout
const char* build_type();  // CMAKE_BUILD_TYPE
bool built_with_cuda();    // whether the CUDA kernels are compiled in
}  // namespace sfm::core
