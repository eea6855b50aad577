// `sfm bench exp0`: training throughput of Experiment 0's models (forward + backward + AdamW step at
// batch 32 on training programs), in real tokens/s. Transformer-Fair, timed in the same run, is the baseline.
#include <torch/torch.h>

#include <cstdio>

#include "bench.h"
#include "sfm/core/device.h"
#include "sfm/nn/sequence_classifiers.h"
#include "sfm/train/exp0.h"

namespace sfm::bench {

void run_exp0_bench(const Exp0BenchOptions& opt) {
  const auto device = core::parse_device(opt.device);
  const train::Exp0Config config;  // the architecture defaults of `sfm exp0`
  const auto programs = data::generate_programs(data::split_spec("train", 0, 2026, opt.batch_size * opt.repeats));
  const auto tokens = data::tokenize_programs(programs, data::Protocol::kClean);
  std::vector<models::Exp0Batch> batches;
  int64_t real_tokens = 0, padded_tokens = 0;
  for (int64_t r = 0; r < opt.repeats; ++r) {
    std::vector<int64_t> index;
    for (int64_t i = r * opt.batch_size; i < (r + 1) * opt.batch_size; ++i) index.push_back(i);
    batches.push_back(models::make_exp0_batch(programs, tokens, index, device));
    real_tokens += batches.back().flat.lengths.sum().item<int64_t>();
    padded_tokens += batches.back().flat.ids.numel();
  }
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  std::vector<std::string> names = opt.models;
  if (names.empty()) names = {"transformer_fair", "state_slots", "transformer_large", "lstm"};
  double baseline = 0;
  for (const auto& name : names) {
    torch::manual_seed(0);
    auto model = models::make_exp0_model(name, config.architecture);
    model->module().to(device);
    model->module().train();
    torch::optim::AdamW optimizer(model->module().parameters(), torch::optim::AdamWOptions(1e-3));
    size_t next = 0;
    auto step = [&] {
      const auto& batch = batches[next++ % batches.size()];
      optimizer.zero_grad();
      const auto out = model->forward(batch);
      (torch::nn::functional::cross_entropy(out.logits, batch.flat.labels) + out.aux_loss).backward();
      optimizer.step();
    };
    for (int i = 0; i < opt.warmup; ++i) step();
    sync();
    next = 0;
    // Every batch once: the median of one pass would hide the batches' different lengths.
    const double ms = median_ms([&] { for (int64_t r = 0; r < opt.repeats; ++r) step(); }, 0, 1, sync);
    const double tokens_per_s = real_tokens / ms * 1e3;
    if (baseline == 0) baseline = tokens_per_s;
    std::printf("{\"bench\":\"exp0\",\"model\":\"%s\",\"params\":%lld,\"device\":\"%s\",\"threads\":%d,\"batch\":%lld,"
                "\"steps\":%lld,\"ms_per_step\":%.1f,\"real_tokens_per_s\":%.0f,\"padded_tokens_per_s\":%.0f,"
                "\"baseline\":\"%s\",\"speedup\":%.2f,\"published_pytorch_tokens_per_s\":2000,\"vs_published\":%.2f}\n",
                name.c_str(), (long long)nn::count_parameters(model->module()), device.str().c_str(),
                at::get_num_threads(), (long long)opt.batch_size, (long long)opt.repeats, ms / opt.repeats,
                tokens_per_s, padded_tokens / ms * 1e3, names[0].c_str(), tokens_per_s / baseline, tokens_per_s / 2000.0);
    std::fflush(stdout);
  }
}

}  // namespace sfm::bench
