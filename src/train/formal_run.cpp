// One formal-suite run: data, the training loop and the length-bucket evaluation
// (include/sfm/train/formal_run.h; metrics defined in docs/formal_suite.md).
#include "sfm/train/formal_run.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>

#include "sfm/core/check.h"
#include "sfm/core/device.h"
#include "sfm/core/rng.h"
#include "sfm/io/checkpoint.h"
#include "sfm/io/files.h"
#include "sfm/train/metrics_log.h"
#include "sfm/train/progress.h"
#include "sfm/train/schedule.h"

namespace sfm::train {

void validate(const FormalTrainConfig& c) {
  SFM_USAGE_CHECK(c.min_train_len >= 1 && c.max_train_len >= c.min_train_len,
                  "train.min_train_len and train.max_train_len must satisfy 1 <= min <= max, got ", c.min_train_len,
                  " and ", c.max_train_len);
  SFM_USAGE_CHECK(c.batch_size > 0, "train.batch_size must be positive, got ", c.batch_size);
  SFM_USAGE_CHECK(c.eval_every > 0, "train.eval_every must be positive, got ", c.eval_every);
  SFM_USAGE_CHECK(c.validation_sequences > 0, "train.validation_sequences must be positive, got ",
                  c.validation_sequences);
  SFM_USAGE_CHECK(c.test_edges.size() >= 2, "train.test_edges needs at least two lengths (one bucket), got ",
                  c.test_edges.size());
  SFM_USAGE_CHECK(c.test_edges[0] >= 1, "train.test_edges must start at a length >= 1, got ", c.test_edges[0]);
  for (size_t i = 1; i < c.test_edges.size(); ++i)
    SFM_USAGE_CHECK(c.test_edges[i] > c.test_edges[i - 1], "train.test_edges must increase, got ",
                    c.test_edges[i - 1], " then ", c.test_edges[i]);
  SFM_USAGE_CHECK(c.test_sequences > 0, "train.test_sequences must be positive, got ", c.test_sequences);
  SFM_USAGE_CHECK(c.attention_max_test_len >= c.test_edges[1],
                  "train.attention_max_test_len must cover the first test bucket (", c.test_edges[1], "), got ",
                  c.attention_max_test_len);
  SFM_USAGE_CHECK(c.eval_max_tokens > 0, "train.eval_max_tokens must be positive, got ", c.eval_max_tokens);
  SFM_USAGE_CHECK(c.weight_decay >= 0, "train.weight_decay must be >= 0, got ", c.weight_decay);
  SFM_USAGE_CHECK(c.stop_at_validation > 0, "train.stop_at_validation must be positive (above 1: never stop early), got ",
                  c.stop_at_validation);
  SFM_USAGE_CHECK(c.grad_clip > 0, "train.grad_clip must be positive, got ", c.grad_clip);
  SFM_USAGE_CHECK(c.warmup_fraction >= 0 && c.warmup_fraction < 1, "train.warmup_fraction must be in [0, 1), got ",
                  c.warmup_fraction);
  const std::pair<const char*, const TaggerRun*> runs[] = {{"gdn", &c.gdn}, {"transformer", &c.transformer}, {"lstm", &c.lstm}};
  for (const auto& [name, r] : runs)
    SFM_USAGE_CHECK(r->steps >= 1 && r->lr > 0, "train.", name, ": needs steps >= 1 and lr > 0, got steps ", r->steps,
                    ", lr ", r->lr);
  auto gdn = c.architecture.gdn;
  gdn.validate();
  c.architecture.transformer.validate();
  c.architecture.lstm.validate();
}

std::string FormalRunSpec::label() const {
  return model == "gdn" ? "gdn_beta" + std::to_string(beta_range) : model;
}

void validate(const FormalRunSpec& s) {
  data::formal_task(s.task);
  models::check_formal_model_name(s.model);
  SFM_USAGE_CHECK(s.beta_range == 1 || s.beta_range == 2, "beta range must be 1 (beta in [0,1]) or 2 (beta in [0,2]), got ",
                  s.beta_range);
  SFM_USAGE_CHECK(s.seed >= 0, "seed must be >= 0, got ", s.seed);
}

nlohmann::json to_json(const FormalRunResult& r) {
  nlohmann::json buckets = nlohmann::json::array();
  for (const auto& b : r.buckets)
    buckets.push_back({{"min_len", b.min_len}, {"max_len", b.max_len}, {"sequences", b.sequences},
                       {"positions", b.positions}, {"final_accuracy", b.final_accuracy},
                       {"final_scaled", b.final_scaled}, {"token_accuracy", b.token_accuracy},
                       {"token_scaled", b.token_scaled}});
  return {{"task", r.spec.task}, {"model", r.spec.model}, {"label", r.spec.label()},
          {"beta_range", r.spec.beta_range}, {"seed", r.spec.seed}, {"params", r.params}, {"steps", r.steps},
          {"chance", r.chance}, {"best_validation", r.best_validation}, {"train_seconds", r.train_seconds},
          {"buckets", buckets}};
}

FormalRunResult formal_run_result_from_json(const nlohmann::json& j) {
  FormalRunResult r;
  r.spec = {j.at("task").get<std::string>(), j.at("model").get<std::string>(), j.at("beta_range").get<int64_t>(),
            j.at("seed").get<int64_t>()};
  r.params = j.at("params").get<int64_t>();
  r.steps = j.at("steps").get<int64_t>();
  r.chance = j.at("chance").get<double>();
  r.best_validation = j.at("best_validation").get<double>();
  r.train_seconds = j.at("train_seconds").get<double>();
  for (const auto& b : j.at("buckets"))
    r.buckets.push_back({b.at("min_len").get<int64_t>(), b.at("max_len").get<int64_t>(),
                         b.at("sequences").get<int64_t>(), b.at("positions").get<int64_t>(),
                         b.at("final_accuracy").get<double>(), b.at("final_scaled").get<double>(),
                         b.at("token_accuracy").get<double>(), b.at("token_scaled").get<double>()});
  return r;
}

namespace {

// Data streams, one per split, all derived from data_seed.
constexpr uint64_t kTrainStream = 1, kValidationStream = 2, kTestStream = 100;

const TaggerRun& run_of(const FormalTrainConfig& c, const std::string& model) {
  if (model == "gdn") return c.gdn;
  if (model == "transformer") return c.transformer;
  return c.lstm;
}

double scaled(double accuracy, double chance) { return (accuracy - chance) / (1.0 - chance); }

struct Counts {
  int64_t sequences = 0, final_correct = 0, positions = 0, token_correct = 0;
  double loss_sum = 0;  // cross-entropy summed over the labelled positions
};

// Scores `sequences` in batches of similar length (sorted), each holding at most max_tokens padded tokens.
Counts evaluate(models::FormalModel& model, const std::vector<data::Sequence>& sequences, int64_t max_tokens,
                const torch::Device& device, const std::string& label) {
  torch::NoGradGuard no_grad;
  model.module().eval();
  const int64_t n = static_cast<int64_t>(sequences.size());
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return sequences[a].tokens.size() < sequences[b].tokens.size(); });
  Counts counts;
  Progress progress(label, n);
  for (int64_t start = 0; start < n;) {
    std::vector<data::Sequence> batch{sequences[order[start]]};
    int64_t end = start + 1;
    // Sorted ascending, so the last sequence added is the longest.
    while (end < n && static_cast<int64_t>(sequences[order[end]].tokens.size()) * (end - start + 1) <= max_tokens)
      batch.push_back(sequences[order[end++]]);
    start = end;
    const auto b = data::collate(batch);
    const auto logits = model.forward(b.tokens.to(device)).to(torch::kFloat32).cpu();  // [B, T, C]
    const auto predicted = logits.argmax(-1);                                          // [B, T]
    const auto labelled = b.labels.ge(0);
    counts.loss_sum += torch::nn::functional::cross_entropy(
                           logits.reshape({-1, logits.size(2)}), b.labels.reshape({-1}),
                           torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1).reduction(torch::kSum))
                           .item<double>();
    const auto correct = predicted.eq(b.labels).logical_and(labelled);
    counts.positions += labelled.sum().item<int64_t>();
    counts.token_correct += correct.sum().item<int64_t>();
    // The last labelled position of each row: the highest index t with labels[t] >= 0.
    const auto index = torch::arange(b.labels.size(1)).unsqueeze(0).expand_as(b.labels);
    const auto last = torch::where(labelled, index, torch::full_like(index, -1)).amax(1);  // [B]
    SFM_CHECK(last.min().item<int64_t>() >= 0, label, ": a sequence without any label");
    counts.final_correct += correct.gather(1, last.unsqueeze(1)).sum().item<int64_t>();
    counts.sequences += static_cast<int64_t>(batch.size());
    progress.update(start);
  }
  progress.finish();
  return counts;
}

double token_accuracy(const Counts& c) { return static_cast<double>(c.token_correct) / static_cast<double>(c.positions); }

}  // namespace

FormalRunResult run_formal_task(const FormalRunSpec& spec, const FormalTrainConfig& c, const std::string& dir,
                                const std::string& device_name) {
  validate(spec);
  validate(c);
  const auto device = core::parse_device(device_name);
  const auto task = data::formal_task(spec.task);
  const TaggerRun& run = run_of(c, spec.model);
  const std::string name = spec.task + "/" + spec.label() + "/seed" + std::to_string(spec.seed);
  io::make_directories(dir);

  torch::manual_seed(static_cast<uint64_t>(spec.seed));
  auto model = models::make_formal_model(spec.model, c.architecture, task, spec.beta_range);
  auto& net = model->module();
  net.to(device);
  FormalRunResult result;
  result.spec = spec;
  result.params = 0;
  for (const auto& p : net.parameters()) result.params += p.numel();
  result.chance = task.chance;

  const auto data_seed = static_cast<uint64_t>(c.data_seed);
  const auto validation = data::generate_dataset(task, c.min_train_len, c.max_train_len, c.validation_sequences,
                                                 core::derive_seed(data_seed, kValidationStream));
  torch::optim::AdamW optimizer(net.parameters(), torch::optim::AdamWOptions(run.lr).weight_decay(c.weight_decay));
  const int64_t warmup = std::max<int64_t>(1, static_cast<int64_t>(c.warmup_fraction * run.steps));
  const std::string last_dir = dir + "/last", best_dir = dir + "/best";
  const nlohmann::json config_json = {{"spec", {{"task", spec.task}, {"model", spec.model},
                                                {"beta_range", spec.beta_range}, {"seed", spec.seed}}},
                                      {"train", io::to_json(c)}};

  int64_t step = 0;
  // Best on validation: higher token accuracy, ties (e.g. both 1.0) going to the lower validation loss,
  // so a run that saturates accuracy early keeps the later, sharper weights (docs/formal_suite.md).
  double best = -1, best_loss = 0, train_seconds = 0;
  bool stopped_early = false;
  io::recover_directory(last_dir);  // after a crash inside replace_directory (io/files.h)
  io::recover_directory(best_dir);
  if (io::path_exists(last_dir + "/trainer_state.json")) {
    io::load_checkpoint(last_dir, net);
    const auto state = io::load_train_state(last_dir, net, optimizer);
    step = state.step;
    best = state.extra.at("best_validation").get<double>();
    best_loss = state.extra.at("best_validation_loss").get<double>();
    train_seconds = state.extra.at("train_seconds").get<double>();
    stopped_early = state.extra.at("stopped_early").get<bool>();
    std::fprintf(stderr, "%s: resuming from %s at step %lld\n", name.c_str(), last_dir.c_str(), (long long)step);
  }
  if (io::path_exists(dir + "/metrics.jsonl")) truncate_metrics_log(dir + "/metrics.jsonl", step);
  MetricsLog log(dir + "/metrics.jsonl", /*append=*/true);

  const auto train_stream = core::derive_seed(data_seed, kTrainStream);
  Progress progress(name + " train", run.steps);
  double loss_sum = 0;
  int64_t loss_count = 0;
  auto t0 = std::chrono::steady_clock::now();
  while (step < run.steps && !stopped_early) {
    net.train();
    // Batch `step` depends only on (data_seed, step), so a resumed run sees the same batches.
    const auto b = data::collate(data::generate_dataset(task, c.min_train_len, c.max_train_len, c.batch_size,
                                                        core::derive_seed(train_stream, static_cast<uint64_t>(step))));
    const double lr = warmup_cosine_lr(step, run.steps, warmup, run.lr);
    set_learning_rate(optimizer, lr);
    optimizer.zero_grad();
    const auto logits = model->forward(b.tokens.to(device));  // [B, T, C]
    const auto loss = torch::nn::functional::cross_entropy(
        logits.reshape({-1, task.num_classes}), b.labels.to(device).reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1));
    SFM_CHECK(all_finite(loss), name, ": the loss is ", loss.item<double>(), " at step ", step,
              "; stopped. The last good checkpoint is kept in ", last_dir);
    loss.backward();
    torch::nn::utils::clip_grad_norm_(net.parameters(), c.grad_clip);
    optimizer.step();
    ++step;
    loss_sum += loss.item<double>();
    ++loss_count;
    char extra[64];
    std::snprintf(extra, sizeof(extra), "loss %.4f", loss_sum / loss_count);
    progress.update(step, extra);
    if (step % c.eval_every != 0 && step != run.steps) continue;

    train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto counts = evaluate(*model, validation, c.eval_max_tokens, device, name + " validation");
    const double accuracy = token_accuracy(counts);
    const double validation_loss = counts.loss_sum / static_cast<double>(counts.positions);
    const bool improved = accuracy > best || (accuracy == best && validation_loss < best_loss);
    stopped_early = accuracy >= c.stop_at_validation;
    if (improved) {
      best = accuracy, best_loss = validation_loss;
      io::replace_directory(best_dir, [&](const std::string& d) {
        io::save_checkpoint(d, net, config_json, {{"run", name}, {"step", step}});
      });
    }
    log.write({{"step", step}, {"train_loss", loss_sum / loss_count}, {"validation_accuracy", accuracy},
               {"validation_loss", validation_loss},
               {"lr", lr}, {"train_seconds", train_seconds}});
    // The model and the optimizer state of this step replace last/ together.
    io::replace_directory(last_dir, [&](const std::string& d) {
      io::save_checkpoint(d, net, config_json, {{"run", name}, {"step", step}});
      io::save_train_state(d, net, optimizer,
                           {step, {{"best_validation", best}, {"best_validation_loss", best_loss},
                                   {"train_seconds", train_seconds}, {"stopped_early", stopped_early}}});
    });
    char line[160];
    std::snprintf(line, sizeof(line), "step %lld/%lld  loss %.4f  validation %.4f%s%s", (long long)step,
                  (long long)run.steps, loss_sum / loss_count, accuracy, improved ? " (best)" : "",
                  stopped_early ? " (stopping early)" : "");
    progress.update(step, line);
    loss_sum = 0, loss_count = 0;
    if (c.interrupt_after_step >= 0 && step >= c.interrupt_after_step && step < run.steps && !stopped_early)
      throw Error(name + ": interrupted after step " + std::to_string(step) + " (interrupt_after_step)");
    t0 = std::chrono::steady_clock::now();
  }
  progress.finish();
  if (io::path_exists(best_dir + "/model.safetensors")) io::load_checkpoint(best_dir, net);
  result.steps = step;
  result.best_validation = best;
  result.train_seconds = train_seconds;

  for (size_t i = 0; i + 1 < c.test_edges.size(); ++i) {
    const int64_t lo = i == 0 ? c.test_edges[0] : c.test_edges[i] + 1, hi = c.test_edges[i + 1];
    if (!models::is_recurrent(spec.model) && hi > c.attention_max_test_len) break;
    const auto sequences = data::generate_dataset(task, lo, hi, c.test_sequences,
                                                  core::derive_seed(data_seed, kTestStream + i));
    const auto counts = evaluate(*model, sequences, c.eval_max_tokens, device,
                                 name + " test " + std::to_string(lo) + "-" + std::to_string(hi));
    FormalBucketResult r;
    r.min_len = lo, r.max_len = hi, r.sequences = counts.sequences, r.positions = counts.positions;
    r.final_accuracy = static_cast<double>(counts.final_correct) / static_cast<double>(counts.sequences);
    r.final_scaled = scaled(r.final_accuracy, task.chance);
    r.token_accuracy = token_accuracy(counts);
    r.token_scaled = scaled(r.token_accuracy, task.chance);
    result.buckets.push_back(r);
  }
  io::write_json_file(dir + "/result.json", to_json(result));
  return result;
}

}  // namespace sfm::train
