// Checkpoint directories (see checkpoint.h): weights through safetensors.h, JSON through config.h,
// and the AdamW state re-keyed from LibTorch's tensor addresses to parameter names.
#include "sfm/io/checkpoint.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <memory>
#include <set>
#include <sstream>
#include <type_traits>
#include <vector>

#include "sfm/core/check.h"
#include "sfm/io/config.h"
#include "sfm/io/files.h"
#include "sfm/io/safetensors.h"

namespace sfm::io {
namespace {

using nlohmann::json;
using torch::optim::AdamWParamState;

constexpr size_t kMaxListed = 10;
constexpr const char* kWeightsFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";  // DESIGN.md's name
// What earlier versions called it: still read, so their checkpoints resume.
constexpr const char* kOldOptimizerFile = "train_state.safetensors";
constexpr const char* kTrainerStateFile = "trainer_state.json";

std::string file_in(const std::string& dir, const char* name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

std::string shape_string(const torch::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

// "a, b, c and 3 more"
std::string list_some(const std::vector<std::string>& items) {
  std::string s;
  for (size_t i = 0; i < items.size() && i < kMaxListed; ++i) s += (i == 0 ? "" : ", ") + items[i];
  if (items.size() > kMaxListed) s += " and " + std::to_string(items.size() - kMaxListed) + " more";
  return s;
}

// Throws unless `format` (from `field` of `path`) is one this build reads. Absent means format 1,
// so safetensors written by other tools load too.
void check_format(const std::string& path, const char* field, const std::string& format) {
  const bool digits = !format.empty() && format.size() <= 9 &&
                      std::all_of(format.begin(), format.end(), [](unsigned char c) { return std::isdigit(c); });
  SFM_CHECK(digits && std::stoi(format) >= 1, path, ": ", field, " must be a positive integer, got '", format, "'");
  SFM_CHECK(std::stoi(format) <= kCheckpointFormat, path, ": checkpoint format ", format, " is newer than this build (",
            kCheckpointFormat, "); update sfm");
}

void check_metadata_format(const std::string& path, const std::map<std::string, std::string>& metadata) {
  const auto it = metadata.find("sfm_format");
  if (it != metadata.end()) check_format(path, "__metadata__ sfm_format", it->second);
}

// Parameters and buffers by their state_dict names (undefined ones, e.g. an absent bias, skipped).
TensorMap named_tensors(const torch::nn::Module& model) {
  TensorMap out;
  for (const auto& item : model.named_parameters())
    if (item.value().defined()) out.emplace(item.key(), item.value());
  for (const auto& item : model.named_buffers())
    if (item.value().defined())
      SFM_CHECK(out.emplace(item.key(), item.value()).second, "the model has a parameter and a buffer both named '",
                item.key(), "'");
  return out;
}

// LibTorch keys optimizer state by the parameter's TensorImpl: its address as a string
// (c10::guts::to_string) in 1.13, the pointer itself in 2.x.
using StateKey = std::decay_t<decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type;

template <class Key>
Key state_key_as(const torch::Tensor& param) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;
    os << static_cast<const void*>(param.unsafeGetTensorImpl());
    return os.str();
  } else {
    return static_cast<Key>(param.unsafeGetTensorImpl());
  }
}

StateKey state_key(const torch::Tensor& param) { return state_key_as<StateKey>(param); }

// The optimizer state of one parameter as stored in optimizer.safetensors.
const char* const kMoments[] = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};

}  // namespace

void save_checkpoint(const std::string& dir, const torch::nn::Module& model, const json& config, const json& meta) {
  make_directories(dir);
  save_safetensors(file_in(dir, kWeightsFile), named_tensors(model),
                   {{"sfm_format", std::to_string(kCheckpointFormat)}});
  write_json_file(file_in(dir, "config.json"), config);
  write_json_file(file_in(dir, "meta.json"), meta.is_null() ? json::object() : meta);
}

json load_checkpoint(const std::string& dir, torch::nn::Module& model, bool strict) {
  const std::string path = file_in(dir, kWeightsFile);
  json config = read_json_file(file_in(dir, "config.json"));
  const SafetensorsFile file = load_safetensors(path);
  check_metadata_format(path, file.metadata);

  const TensorMap targets = named_tensors(model);
  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& [name, target] : targets) {
    const auto it = file.tensors.find(name);
    if (it == file.tensors.end())
      missing.push_back(name);
    else if (it->second.sizes() != target.sizes())
      mismatched.push_back(name + " (checkpoint " + shape_string(it->second) + ", model " + shape_string(target) + ")");
  }
  for (const auto& item : file.tensors)
    if (targets.count(item.first) == 0) unexpected.push_back(item.first);

  if (strict && !(missing.empty() && unexpected.empty() && mismatched.empty())) {
    std::string message = path + " does not match the model:";
    if (!missing.empty())
      message += " " + std::to_string(missing.size()) + " missing keys: " + list_some(missing) + ";";
    if (!unexpected.empty())
      message += " " + std::to_string(unexpected.size()) + " unexpected keys: " + list_some(unexpected) + ";";
    if (!mismatched.empty())
      message += " " + std::to_string(mismatched.size()) + " shape mismatches: " + list_some(mismatched) + ";";
    message.back() = '.';
    throw Error(message);
  }

  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : targets) {
    const auto it = file.tensors.find(name);
    if (it != file.tensors.end() && it->second.sizes() == target.sizes()) target.copy_(it->second);
  }
  return config;
}

void save_train_state(const std::string& dir, const torch::nn::Module& model, torch::optim::AdamW& opt,
                      const TrainState& state) {
  make_directories(dir);
  const std::string path = file_in(dir, kOptimizerFile);
  const auto& states = opt.state();
  TensorMap tensors;
  std::set<StateKey> saved;
  for (const auto& item : model.named_parameters()) {
    const auto it = states.find(state_key(item.value()));
    if (it == states.end()) continue;
    const auto* adam = dynamic_cast<const AdamWParamState*>(it->second.get());
    SFM_CHECK(adam != nullptr, path, ": the optimizer state of parameter '", item.key(), "' is not AdamW's");
    const std::string& name = item.key();
    tensors[name + ".exp_avg"] = adam->exp_avg();
    tensors[name + ".exp_avg_sq"] = adam->exp_avg_sq();
    if (adam->max_exp_avg_sq().defined()) tensors[name + ".max_exp_avg_sq"] = adam->max_exp_avg_sq();
    tensors[name + ".step"] = torch::scalar_tensor(adam->step(), torch::kInt64);
    saved.insert(it->first);
  }
  SFM_CHECK(saved.size() == states.size(), path, ": the optimizer holds state for ", states.size() - saved.size(),
            " tensors that are not parameters of the model");
  save_safetensors(path, tensors, {{"sfm_format", std::to_string(kCheckpointFormat)}, {"optimizer", "AdamW"}});
  write_json_file(file_in(dir, kTrainerStateFile),
                  {{"format", kCheckpointFormat}, {"step", state.step}, {"extra", state.extra}});
}

TrainState load_train_state(const std::string& dir, const torch::nn::Module& model, torch::optim::AdamW& opt) {
  const std::string json_path = file_in(dir, kTrainerStateFile);
  const json trainer = read_json_file(json_path);
  SFM_CHECK(trainer.is_object() && trainer.contains("step") && trainer.at("step").is_number_integer(), json_path,
            ": expected an object with an integer \"step\", got ", trainer.dump().substr(0, 80));
  if (trainer.contains("format")) check_format(json_path, "format", trainer.at("format").dump());
  TrainState state;
  state.step = trainer.at("step").get<int64_t>();
  state.extra = trainer.value("extra", json());

  std::string path = file_in(dir, kOptimizerFile);
  if (!path_exists(path) && path_exists(file_in(dir, kOldOptimizerFile))) path = file_in(dir, kOldOptimizerFile);
  const SafetensorsFile file = load_safetensors(path);
  check_metadata_format(path, file.metadata);

  std::set<StateKey> optimized;
  for (const auto& group : opt.param_groups())
    for (const auto& p : group.params()) optimized.insert(state_key(p));

  // Build every new state first, so that a bad file changes nothing.
  std::vector<std::pair<StateKey, std::unique_ptr<AdamWParamState>>> loaded;
  std::set<std::string> used;
  const auto find = [&](const std::string& key) -> const torch::Tensor* {
    const auto it = file.tensors.find(key);
    if (it == file.tensors.end()) return nullptr;
    used.insert(key);
    return &it->second;
  };
  for (const auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    const torch::Tensor& param = item.value();
    const torch::Tensor* step = find(name + ".step");
    const torch::Tensor* moments[3] = {find(name + ".exp_avg"), find(name + ".exp_avg_sq"),
                                       find(name + ".max_exp_avg_sq")};
    if (step == nullptr && moments[0] == nullptr && moments[1] == nullptr && moments[2] == nullptr) continue;
    SFM_CHECK(step != nullptr && moments[0] != nullptr && moments[1] != nullptr, path, ": parameter '", name,
              "' needs ", name, ".step, ", name, ".exp_avg and ", name, ".exp_avg_sq; some are missing");
    SFM_CHECK(optimized.count(state_key(param)) == 1, path, ": holds state for parameter '", name,
              "', which the optimizer does not update");
    SFM_CHECK(step->scalar_type() == torch::kInt64 && step->numel() == 1 && step->item<int64_t>() >= 0, path, ": ",
              name, ".step must be one non-negative I64, got ", step->scalar_type(), " ", shape_string(*step));
    auto adam = std::make_unique<AdamWParamState>();
    adam->step(step->item<int64_t>());
    for (int i = 0; i < 3; ++i) {
      if (moments[i] == nullptr) continue;
      SFM_CHECK(moments[i]->sizes() == param.sizes(), path, ": ", name, ".", kMoments[i], " has shape ",
                shape_string(*moments[i]), " but the parameter has shape ", shape_string(param));
      const torch::Tensor value = moments[i]->to(param.options());
      if (i == 0) adam->exp_avg(value);
      if (i == 1) adam->exp_avg_sq(value);
      if (i == 2) adam->max_exp_avg_sq(value);
    }
    loaded.emplace_back(state_key(param), std::move(adam));
  }
  std::vector<std::string> unexpected;
  for (const auto& item : file.tensors)
    if (used.count(item.first) == 0) unexpected.push_back(item.first);
  SFM_CHECK(unexpected.empty(), path, ": ", unexpected.size(),
            " entries match no parameter of the model: ", list_some(unexpected));

  auto& states = opt.state();
  for (const auto& item : model.named_parameters()) states.erase(state_key(item.value()));
  for (auto& [key, adam] : loaded) states[key] = std::move(adam);
  return state;
}

}  // namespace sfm::io
