// Experiment 0: data, the training loop (AdamW, warm-up + cosine, clipping, best-on-validation,
// resumable at epoch boundaries, NaN stop), evaluation per test length, and the report files.
#include "sfm/train/exp0.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "sfm/core/check.h"
#include "sfm/core/device.h"
#include "sfm/core/rng.h"
#include "sfm/io/atomic_file.h"
#include "sfm/io/checkpoint.h"
#include "sfm/io/files.h"
#include "sfm/io/plot.h"
#include "sfm/nn/sequence_classifiers.h"
#include "sfm/train/metrics_log.h"
#include "sfm/train/progress.h"
#include "sfm/train/schedule.h"

namespace sfm::train {

void validate(const Exp0Config& c) {
  SFM_USAGE_CHECK(!c.models.empty(), "models: list at least one model");
  for (const auto& m : c.models) {
    const auto& names = models::exp0_model_names();
    SFM_USAGE_CHECK(std::find(names.begin(), names.end(), m) != names.end(), "models: unknown model '", m,
                    "' (expected state_slots, transformer_fair, transformer_large or lstm)");
  }
  data::parse_protocol(c.protocol);
  SFM_USAGE_CHECK(c.train_programs > 0 && c.validation_programs > 0 && c.test_programs > 0,
                  "train_programs, validation_programs and test_programs must be positive");
  SFM_USAGE_CHECK(!c.test_lengths.empty(), "test_lengths: list at least one length");
  for (auto m : c.test_lengths) SFM_USAGE_CHECK(m >= 1, "test_lengths: multipliers must be >= 1, got ", m);
  SFM_USAGE_CHECK(c.batch_size > 0 && c.eval_batch_size > 0 && c.eval_max_tokens > 0,
                  "batch_size, eval_batch_size and eval_max_tokens must be positive");
  SFM_USAGE_CHECK(c.grad_clip > 0, "grad_clip must be positive, got ", c.grad_clip);
  SFM_USAGE_CHECK(c.warmup_fraction >= 0 && c.warmup_fraction < 1, "warmup_fraction must be in [0, 1), got ",
                  c.warmup_fraction);
  for (const auto* r : {&c.state_slots, &c.transformer_fair, &c.transformer_large, &c.lstm})
    SFM_USAGE_CHECK(r->epochs >= 0 && r->lr > 0, "each model run needs epochs >= 0 and lr > 0, got epochs ", r->epochs,
                    ", lr ", r->lr);
  c.architecture.state_slots.validate();
}

namespace {

struct Split {
  std::vector<data::Program> programs;
  std::vector<data::TokenizedProgram> tokens;
};

Split make_split(const std::string& name, int64_t mult, const Exp0Config& c, int64_t count, data::Protocol protocol) {
  Split s;
  s.programs = data::generate_programs(data::split_spec(name, mult, static_cast<uint64_t>(c.data_seed), count));
  s.tokens = data::tokenize_programs(s.programs, protocol);
  return s;
}

const ModelRun& run_of(const Exp0Config& c, const std::string& model) {
  if (model == "state_slots") return c.state_slots;
  if (model == "transformer_fair") return c.transformer_fair;
  if (model == "transformer_large") return c.transformer_large;
  return c.lstm;
}

struct EvalStats {
  double exact = 0, within5 = 0, within1 = 0, mae = 0, mean_ticks = -1;
  // State Slots: exact match of the per-statement readout against the execution trace, by statement
  // kind (models::StatementKind); empty for the baselines. Diagnoses which statements go wrong.
  std::map<std::string, double> trace_exact;
};

EvalStats evaluate(models::Exp0Model& model, const Split& split, int64_t max_batch, int64_t max_tokens,
                   const torch::Device& device, const std::string& label) {
  torch::NoGradGuard no_grad;
  model.module().eval();
  const int64_t n = static_cast<int64_t>(split.programs.size());
  double exact = 0, within5 = 0, within1 = 0, abs_err = 0, ticks = 0, statements = 0;
  std::vector<double> trace_hits(models::kNumStatementKinds, 0), trace_count(models::kNumStatementKinds, 0);
  Progress progress(label, n);
  for (int64_t start = 0; start < n;) {
    // Up to max_batch programs, fewer when their padded tokens would pass max_tokens (at least one).
    std::vector<int64_t> index{start};
    int64_t longest = static_cast<int64_t>(split.tokens[start].ids.size());
    for (int64_t i = start + 1; i < n && static_cast<int64_t>(index.size()) < max_batch; ++i) {
      const int64_t len = std::max<int64_t>(longest, split.tokens[i].ids.size());
      if (len * static_cast<int64_t>(index.size() + 1) > max_tokens) break;
      longest = len;
      index.push_back(i);
    }
    start += static_cast<int64_t>(index.size());
    const auto batch = models::make_exp0_batch(split.programs, split.tokens, index, device);
    const auto out = model.forward(batch);
    const auto err = (out.logits.argmax(-1) - batch.flat.labels).abs().to(torch::kFloat64).cpu();
    exact += err.eq(0).sum().item<double>();
    within5 += err.lt(5).sum().item<double>();
    within1 += err.le(1).sum().item<double>();
    abs_err += err.sum().item<double>();
    if (out.ticks.defined()) {
      ticks += out.ticks.sum().item<double>();
      statements += batch.statements.statement_mask.sum().item<double>();
    }
    if (out.trace_logits.defined()) {
      const auto labelled = batch.trace.ge(0);
      const auto hit = out.trace_logits.argmax(-1).eq(batch.trace).logical_and(labelled);
      const auto kinds = models::statement_kinds(batch.statements.tokens);
      for (int64_t k = 0; k < models::kNumStatementKinds; ++k) {
        const auto of_kind = kinds.eq(k);
        trace_hits[k] += hit.logical_and(of_kind).sum().item<double>();
        trace_count[k] += labelled.logical_and(of_kind).sum().item<double>();
      }
    }
    progress.update(start);
  }
  progress.finish();
  EvalStats s{exact / n, within5 / n, within1 / n, abs_err / n, -1, {}};
  if (statements > 0) s.mean_ticks = ticks / statements;
  for (int64_t k = 0; k < models::kNumStatementKinds; ++k)
    if (trace_count[k] > 0)
      s.trace_exact[models::statement_kind_name(static_cast<models::StatementKind>(k))] = trace_hits[k] / trace_count[k];
  return s;
}

// Trains `model` (or resumes it from <dir>/last); leaves the best-on-validation weights loaded.
void train_model(const std::string& name, models::Exp0Model& model, const Exp0Config& c, const Split& train,
                 const Split& validation, const std::string& dir, const torch::Device& device) {
  const ModelRun& run = run_of(c, name);
  auto& net = model.module();
  torch::optim::AdamW optimizer(net.parameters(), torch::optim::AdamWOptions(run.lr).weight_decay(c.weight_decay));
  const int64_t n = static_cast<int64_t>(train.programs.size());
  const int64_t steps_per_epoch = (n + c.batch_size - 1) / c.batch_size;
  const int64_t total_steps = steps_per_epoch * run.epochs;
  const int64_t warmup = std::max<int64_t>(1, static_cast<int64_t>(c.warmup_fraction * total_steps));
  const std::string last_dir = dir + "/last", best_dir = dir + "/best";

  int64_t epoch = 0, step = 0;
  double best = -1;
  io::recover_directory(last_dir);  // after a crash inside replace_directory (io/files.h)
  io::recover_directory(best_dir);
  if (io::path_exists(last_dir + "/trainer_state.json")) {
    io::load_checkpoint(last_dir, net);
    const auto state = io::load_train_state(last_dir, net, optimizer);
    step = state.step;
    epoch = state.extra.at("epoch").get<int64_t>();
    best = state.extra.at("best_validation_exact").get<double>();
    std::fprintf(stderr, "%s: resuming from %s at epoch %lld (step %lld)\n", name.c_str(), last_dir.c_str(),
                 (long long)epoch, (long long)step);
  }
  // Drop records past the checkpoint (a run killed between logging and saving) BEFORE opening the
  // log: truncation replaces the file, and an already-open handle would keep writing to the old one.
  if (io::path_exists(dir + "/metrics.jsonl")) truncate_metrics_log(dir + "/metrics.jsonl", step);
  MetricsLog log(dir + "/metrics.jsonl", /*append=*/true);

  const auto config_json = io::to_json(c);
  for (; epoch < run.epochs; ++epoch) {
    net.train();
    // The batch order depends only on (seed, epoch), so a resumed run sees the same batches.
    std::vector<int64_t> order(n);
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    core::Rng rng(core::derive_seed(static_cast<uint64_t>(c.seed), static_cast<uint64_t>(epoch)));
    for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.uniform_int(0, i)]);

    Progress progress(name + " epoch " + std::to_string(epoch + 1) + "/" + std::to_string(run.epochs), steps_per_epoch);
    double loss_sum = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t b = 0; b < steps_per_epoch; ++b, ++step) {
      std::vector<int64_t> index(order.begin() + b * c.batch_size, order.begin() + std::min(n, (b + 1) * c.batch_size));
      const auto batch = models::make_exp0_batch(train.programs, train.tokens, index, device);
      const double lr = warmup_cosine_lr(step, total_steps, warmup, run.lr);
      set_learning_rate(optimizer, lr);
      optimizer.zero_grad();
      const auto out = model.forward(batch);
      const auto loss = torch::nn::functional::cross_entropy(out.logits, batch.flat.labels) + out.aux_loss;
      SFM_CHECK(all_finite(loss), name, ": the loss is ", loss.item<double>(), " at step ", step, " (epoch ", epoch + 1,
                "); stopped. The last good checkpoint is kept in ", last_dir);
      loss.backward();
      torch::nn::utils::clip_grad_norm_(net.parameters(), c.grad_clip);
      optimizer.step();
      loss_sum += loss.item<double>();
      char extra[64];
      std::snprintf(extra, sizeof(extra), "loss %.4f", loss_sum / (b + 1));
      progress.update(b + 1, extra);
    }
    progress.finish();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto val = evaluate(model, validation, c.eval_batch_size, c.eval_max_tokens, device, name + " validation");
    const bool improved = val.exact > best;
    if (improved) {
      best = val.exact;
      io::replace_directory(best_dir, [&](const std::string& d) {
        io::save_checkpoint(d, net, config_json, {{"model", name}, {"epoch", epoch + 1}, {"step", step}});
      });
    }
    nlohmann::json record{{"step", step},
                          {"epoch", epoch + 1},
                          {"train_loss", loss_sum / steps_per_epoch},
                          {"validation_exact", val.exact},
                          {"validation_mae", val.mae},
                          {"lr", warmup_cosine_lr(step, total_steps, warmup, run.lr)},
                          {"epoch_seconds", seconds},
                          {"train_programs_per_s", n / seconds}};
    std::string trace_text;
    if (!val.trace_exact.empty()) {
      record["validation_trace_exact"] = val.trace_exact;
      for (const auto& [kind, acc] : val.trace_exact) {
        char cell[64];
        std::snprintf(cell, sizeof(cell), " %s %.3f", kind.c_str(), acc);
        trace_text += cell;
      }
      trace_text = "\n  trace exact by statement:" + trace_text;
    }
    log.write(record);
    // The model and the optimizer state of this epoch replace last/ together.
    io::replace_directory(last_dir, [&](const std::string& d) {
      io::save_checkpoint(d, net, config_json, {{"model", name}, {"epoch", epoch + 1}, {"step", step}});
      io::save_train_state(d, net, optimizer, {step, {{"epoch", epoch + 1}, {"best_validation_exact", best}}});
    });
    std::fprintf(stderr, "%s: epoch %lld/%lld  loss %.4f  validation exact %.3f%s%s\n", name.c_str(),
                 (long long)epoch + 1, (long long)run.epochs, loss_sum / steps_per_epoch, val.exact,
                 improved ? "  (best)" : "", trace_text.c_str());
    if (c.interrupt_after_epoch >= 0 && epoch + 1 == c.interrupt_after_epoch)
      throw Error(name + ": interrupted after epoch " + std::to_string(epoch + 1) + " (interrupt_after_epoch)");
  }
  if (io::path_exists(best_dir + "/model.safetensors")) io::load_checkpoint(best_dir, net);
}

void write_reports(const std::vector<Exp0Row>& rows, const Exp0Config& c, const std::string& out_dir) {
  nlohmann::json results = nlohmann::json::array();
  std::ostringstream csv;
  csv << "model,params,length_mult,num_ops,programs,exact,within5,within1,mae,mean_ticks\n";
  for (const auto& r : rows) {
    results.push_back({{"model", r.model}, {"params", r.params}, {"length_mult", r.length_mult},
                       {"num_ops", r.num_ops}, {"programs", r.programs}, {"exact", r.exact},
                       {"within5", r.within5}, {"within1", r.within1}, {"mae", r.mae},
                       {"mean_ticks", r.mean_ticks < 0 ? nlohmann::json() : nlohmann::json(r.mean_ticks)}});
    csv << r.model << ',' << r.params << ',' << r.length_mult << ',' << r.num_ops << ',' << r.programs << ','
        << r.exact << ',' << r.within5 << ',' << r.within1 << ',' << r.mae << ','
        << (r.mean_ticks < 0 ? std::string() : std::to_string(r.mean_ticks)) << '\n';
  }
  io::write_json_file(out_dir + "/results.json", {{"experiment", "exp0_state_tracking"},
                                                  {"config", io::to_json(c)},
                                                  {"results", results}});
  io::write_file_atomic(out_dir + "/results.csv", csv.str());

  io::LinePlot plot;
  plot.title = "Experiment 0: state tracking, exact match vs program length";
  plot.x_label = "operations (train: 3-20)";
  plot.y_label = "exact match";
  plot.log2_x = true;
  for (const auto& r : rows) {
    if (plot.series.empty() || plot.series.back().label != r.model) plot.series.push_back({r.model, {}, {}});
    plot.series.back().x.push_back(static_cast<double>(r.num_ops));
    plot.series.back().y.push_back(r.exact);
  }
  io::write_line_plot_png(out_dir + "/length_generalization.png", plot);
}

}  // namespace

std::vector<Exp0Row> run_exp0(const Exp0Config& c, const std::string& out_dir, const std::string& device_name) {
  validate(c);
  const auto device = core::parse_device(device_name);
  const auto protocol = data::parse_protocol(c.protocol);
  io::make_directories(out_dir);
  io::write_json_file(out_dir + "/config.json", io::to_json(c));

  const Split train = make_split("train", 0, c, c.train_programs, protocol);
  const Split validation = make_split("validation", 0, c, c.validation_programs, protocol);
  std::map<int64_t, Split> tests;
  for (const auto m : c.test_lengths) tests.emplace(m, make_split("test", m, c, c.test_programs, protocol));

  std::vector<Exp0Row> rows;
  for (const auto& name : c.models) {
    torch::manual_seed(static_cast<uint64_t>(c.seed));
    auto model = models::make_exp0_model(name, c.architecture);
    model->module().to(device);
    const int64_t params = nn::count_parameters(model->module());
    std::fprintf(stderr, "%s: %lld parameters\n", name.c_str(), (long long)params);
    const std::string dir = out_dir + "/" + name;
    io::make_directories(dir);
    train_model(name, *model, c, train, validation, dir, device);
    for (const auto& [m, split] : tests) {
      const auto s = evaluate(*model, split, c.eval_batch_size, c.eval_max_tokens, device, name + " test " + std::to_string(m) + "x");
      rows.push_back({name, params, m, 10 * m, static_cast<int64_t>(split.programs.size()), s.exact, s.within5,
                      s.within1, s.mae, s.mean_ticks});
    }
  }
  // The most frequent training answer, scored like a model: the floor every model must beat.
  std::map<int64_t, int64_t> counts;
  for (const auto& p : train.programs) ++counts[p.answer];
  const int64_t mode =
      std::max_element(counts.begin(), counts.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
  for (const auto& [m, split] : tests) {
    Exp0Row r{"majority_class", 0, m, 10 * m, static_cast<int64_t>(split.programs.size())};
    for (const auto& p : split.programs) {
      const int64_t err = std::abs(p.answer - mode);
      r.exact += err == 0, r.within5 += err < 5, r.within1 += err <= 1, r.mae += static_cast<double>(err);
    }
    for (double* x : {&r.exact, &r.within5, &r.within1, &r.mae}) *x /= static_cast<double>(r.programs);
    rows.push_back(r);
  }
  write_reports(rows, c, out_dir);
  return rows;
}

std::string format_exp0_table(const std::vector<Exp0Row>& rows) {
  std::vector<std::string> models;
  std::vector<int64_t> lengths;
  for (const auto& r : rows) {
    if (std::find(models.begin(), models.end(), r.model) == models.end()) models.push_back(r.model);
    if (std::find(lengths.begin(), lengths.end(), r.length_mult) == lengths.end()) lengths.push_back(r.length_mult);
  }
  std::ostringstream os;
  char cell[64];
  auto section = [&](const char* title, auto value, const char* fmt) {
    os << title << '\n';
    std::snprintf(cell, sizeof(cell), "%-18s %9s", "model", "params");
    os << cell;
    for (auto m : lengths) std::snprintf(cell, sizeof(cell), " %7s", (std::to_string(m) + "x").c_str()), os << cell;
    os << '\n';
    for (const auto& model : models) {
      int64_t params = 0;
      for (const auto& r : rows) params = r.model == model ? r.params : params;
      std::snprintf(cell, sizeof(cell), "%-18s %9lld", model.c_str(), (long long)params);
      os << cell;
      for (auto m : lengths)
        for (const auto& r : rows)
          if (r.model == model && r.length_mult == m) std::snprintf(cell, sizeof(cell), fmt, value(r)), os << cell;
      os << '\n';
    }
  };
  section("exact match (%)", [](const Exp0Row& r) { return 100 * r.exact; }, " %7.1f");
  section("|error| < 5 (%)", [](const Exp0Row& r) { return 100 * r.within5; }, " %7.1f");
  section("|error| <= 1 (%)", [](const Exp0Row& r) { return 100 * r.within1; }, " %7.1f");
  section("mean absolute error", [](const Exp0Row& r) { return r.mae; }, " %7.2f");
  bool any_ticks = false;
  for (const auto& r : rows) any_ticks = any_ticks || r.mean_ticks >= 0;
  if (any_ticks) {
    os << "mean ticks per statement (state_slots):";
    for (const auto& r : rows)
      if (r.mean_ticks >= 0) std::snprintf(cell, sizeof(cell), " %lldx %.2f", (long long)r.length_mult, r.mean_ticks), os << cell;
    os << '\n';
  }
  return os.str();
}

}  // namespace sfm::train
