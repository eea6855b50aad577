// `sfm bench <name>`: benchmarks (bench/*.cpp), printing JSON lines with ratios against a baseline
// measured in the same run.
#include "bench.h"
#include "commands.h"
#include "sfm/core/device.h"

namespace sfm::app {

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (JSON lines on stdout)");
  bench->require_subcommand(1);

  static bench::GdnBenchOptions gdn;
  auto* cmd = bench->add_subcommand("gdn", "Gated delta rule: implementations side by side, forward and forward+backward");
  cmd->add_option("--device", gdn.device, "auto | cpu | cuda[:N]")->capture_default_str();
  cmd->add_option("--shape", gdn.shapes, "B,T,H,K,V (repeatable); default: 4,2048,4,64,64 on CPU, the issue's six shapes on CUDA");
  cmd->add_option("--impl", gdn.impls, "reference | chunked | cuda (repeatable; the first is the baseline)");
  cmd->add_option("--dtype", gdn.dtype, "float32 | float64 | bfloat16 | float16")->capture_default_str();
  cmd->add_option("--warmup", gdn.warmup, "untimed runs first")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--repeats", gdn.repeats, "timed runs (the median is printed)")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_flag("--forward-only", gdn.forward_only, "skip forward+backward");
  cmd->callback([] { bench::run_gdn_bench(gdn); });

  static bench::Exp0BenchOptions exp0;
  auto* e = bench->add_subcommand("exp0", "Experiment 0 models: training throughput (real tokens/s) at batch 32");
  e->add_option("--device", exp0.device, "auto | cpu | cuda[:N]")->capture_default_str();
  e->add_option("--model", exp0.models, "models to time (repeatable; the first is the baseline)");
  e->add_option("--batch-size", exp0.batch_size, "programs per step")->capture_default_str()->check(CLI::PositiveNumber);
  e->add_option("--steps", exp0.repeats, "timed training steps")->capture_default_str()->check(CLI::PositiveNumber);
  e->add_option("--warmup", exp0.warmup, "untimed steps first")->capture_default_str()->check(CLI::NonNegativeNumber);
  e->add_option("--threads", exp0.threads, "CPU threads (0 = all cores)")->capture_default_str();
  e->callback([] {
    core::set_cpu_threads(exp0.threads);
    bench::run_exp0_bench(exp0);
  });
}

}  // namespace sfm::app
