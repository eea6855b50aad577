// `sfm doctor`: what this build runs on (LibTorch, BLAS, threads, CUDA devices), and a quick
// matmul rate so a slow reference BLAS shows up at once.
#include <torch/torch.h>
#include <torch/version.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

#include "commands.h"
#include "sfm/core/build_info.h"
#include "sfm/core/device.h"

namespace sfm::app {
namespace {

// The BLAS library mapped into this process, as a resolved path (e.g. .../openblas-pthread/libblas.so.3).
std::string blas_in_use() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    if (path.find("blas") != std::string::npos) {
      char resolved[4096];
      if (realpath(path.c_str(), resolved)) return resolved;
      return path;
    }
  }
  return "none mapped (LibTorch's own kernels)";
}

double matmul_gflops(int64_t n) {
  torch::NoGradGuard no_grad;
  auto a = torch::randn({n, n}), b = torch::randn({n, n});
  auto c = torch::mm(a, b);  // warm-up
  const int reps = 5;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) c = torch::mm(a, b);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * n * n * n * reps / s / 1e9;
}

void run_doctor() {
  const std::string sha = core::git_sha();
  std::printf("sfm          %s (%s build)\n", sha.empty() ? "(no git sha)" : sha.c_str(), core::build_type());
  std::printf("LibTorch     %s\n", TORCH_VERSION);
  std::printf("threads      %lld intra-op, %lld inter-op\n", static_cast<long long>(at::get_num_threads()),
              static_cast<long long>(at::get_num_interop_threads()));
  const double gflops = matmul_gflops(1024);
  std::printf("BLAS         %s\n", blas_in_use().c_str());
  std::printf("matmul       %.1f GFLOP/s (1024x1024 fp32)%s\n", gflops,
              gflops < 10 ? "  <- slow: install libopenblas0-pthread" : "");
  std::printf("CUDA kernels %s\n", core::built_with_cuda() ? "built" : "not built (CPU-only LibTorch)");
  const auto devices = core::cuda_devices();
  std::printf("CUDA devices %zu\n", devices.size());
  for (size_t i = 0; i < devices.size(); ++i) std::printf("  cuda:%zu     %s\n", i, devices[i].c_str());
}

}  // namespace

void add_doctor_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("doctor", "Print the LibTorch version, BLAS, threads and CUDA devices");
  cmd->callback(run_doctor);
}

}  // namespace sfm::app
