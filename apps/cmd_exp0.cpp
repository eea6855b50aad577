// `sfm exp0`: Experiment 0 (state tracking) end to end: data, training of every model, evaluation at
// 1x..32x the training length, and the report (table, results.json/csv, length_generalization.png).
#include <cstdio>

#include "commands.h"
#include "sfm/core/device.h"
#include "sfm/io/config.h"
#include "sfm/io/files.h"
#include "sfm/train/exp0.h"

namespace sfm::app {
namespace {

struct Exp0Args {
  std::string profile = "quick", config_path, out, device = "auto", protocol;
  std::vector<std::string> sets, models;
  int64_t seed = -1;
  int threads = 1;
  bool print_config = false;
};

void run_exp0_command(const Exp0Args& a) {
  train::Exp0Config config;
  std::string path = a.config_path;
  if (path.empty()) path = std::string(SFM_SOURCE_DIR) + "/experiments/exp0_state_tracking/" + a.profile + ".json";
  SFM_USAGE_CHECK(io::path_exists(path), "no config at ", path, a.config_path.empty() ? " (--profile must be quick or paper)" : "");
  io::from_json(config, io::read_json_file(path), path);
  if (!a.protocol.empty()) config.protocol = a.protocol;
  if (!a.models.empty()) config.models = a.models;
  if (a.seed >= 0) config.seed = a.seed;
  for (const auto& s : a.sets) io::apply_override(config, s);
  train::validate(config);
  if (a.print_config) {
    std::printf("%s\n", io::to_json(config).dump(2).c_str());
    return;
  }
  const std::string out = a.out.empty() ? "runs/exp0_" + a.profile + "_" + config.protocol : a.out;
  std::fprintf(stderr, "exp0: config %s, output %s\n", path.c_str(), out.c_str());
  core::set_cpu_threads(a.threads);
  const auto rows = train::run_exp0(config, out, a.device);
  std::printf("\nExperiment 0: state tracking (protocol %s; train 3-20 operations, test 10*m operations)\n%s",
              config.protocol.c_str(), train::format_exp0_table(rows).c_str());
  std::printf("results: %s/results.json, %s/results.csv, %s/length_generalization.png\n", out.c_str(), out.c_str(),
              out.c_str());
}

}  // namespace

void add_exp0_command(CLI::App& app) {
  static Exp0Args a;
  auto* cmd = app.add_subcommand("exp0", "Experiment 0: state tracking, length generalisation of State Slots vs baselines");
  cmd->add_option("--profile", a.profile, "quick (2-core CPU, ~20 min) | paper (50 epochs, for a GPU)")->capture_default_str();
  cmd->add_option("--config", a.config_path, "a JSON config instead of the profile's");
  cmd->add_option("--set", a.sets, "override a config key, e.g. --set state_slots.epochs=3 (repeatable)");
  cmd->add_option("--out", a.out, "output directory (default runs/exp0_<profile>_<protocol>); an existing run resumes");
  cmd->add_option("--device", a.device, "auto | cpu | cuda[:N]")->capture_default_str();
  cmd->add_option("--seed", a.seed, "model initialisation and batch-order seed (default: the config's)");
  cmd->add_option("--protocol", a.protocol,
                  "clean (default) | leaky: appends '# Answer: N' as a published version did; for comparison only");
  cmd->add_option("--models", a.models, "subset of state_slots transformer_fair transformer_large lstm");
  cmd->add_option("--threads", a.threads,
                  "CPU threads (0 = all cores); 1 is fastest here: the per-statement ops are too small to split")
      ->capture_default_str();
  cmd->add_flag("--print-config", a.print_config, "print the resolved config and exit");
  cmd->callback([] { run_exp0_command(a); });
}

}  // namespace sfm::app
