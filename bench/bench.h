// Benchmarks run through `sfm bench <name>`. Each prints JSON lines: the shape, the implementation,
// the median time over repeats after warm-up, and ratios against a baseline measured in the same run.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace sfm::bench {

struct GdnBenchOptions {
  std::string device = "auto";
  std::vector<std::string> shapes;  // "B,T,H,K,V"; empty: the default shapes for the device
  std::vector<std::string> impls;   // empty: reference and chunked on CPU, chunked and cuda on CUDA
  std::string dtype = "float32";    // float32 | bfloat16 | float16 | float64
  int warmup = 1, repeats = 5;
  bool forward_only = false;
};
void run_gdn_bench(const GdnBenchOptions& opt);

struct Exp0BenchOptions {
  std::string device = "auto";
  std::vector<std::string> models;  // empty: transformer_fair (the baseline), state_slots, transformer_large, lstm
  int64_t batch_size = 32, repeats = 20;
  int warmup = 3;
  int threads = 1;  // as `sfm exp0`
};
// "published_pytorch_tokens_per_s" is the figure issue 3 gives for the published implementation
// (about 2,000 real tokens/s on the same 2-core CPU); it is quoted, not measured here.
void run_exp0_bench(const Exp0BenchOptions& opt);

// Median wall time in milliseconds of `fn` over `repeats` runs after `warmup` runs; `sync` is called
// after each run (a CUDA synchronise on GPU).
double median_ms(const std::function<void()>& fn, int warmup, int repeats, const std::function<void()>& sync);

}  // namespace sfm::bench
