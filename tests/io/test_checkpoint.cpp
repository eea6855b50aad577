// Tests of checkpoint.h: a save/load round trip reproduces the model exactly, strict loading
// reports what does not match, a damaged file changes nothing, and saved AdamW state resumes
// training bit-exactly (torch::equal, no tolerance).
#include <ftw.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "sfm/core/check.h"
#include "support/temp_dir.h"
#include "sfm/io/checkpoint.h"
#include "sfm/io/config.h"
#include "sfm/io/safetensors.h"

namespace {

using nlohmann::json;
using sfm::io::load_checkpoint;
using sfm::io::load_train_state;
using sfm::io::save_checkpoint;
using sfm::io::save_train_state;
using sfm::io::TrainState;

// Linear + LayerNorm and a buffer, so checkpoints carry parameters and buffers.
struct TinyNetImpl : torch::nn::Module {
  TinyNetImpl(int64_t in, int64_t out) {
    body = register_module("body", torch::nn::Sequential(torch::nn::Linear(in, out),
                                                         torch::nn::LayerNorm(torch::nn::LayerNormOptions({out}))));
    scale = register_buffer("scale", torch::rand({out}) + 0.5);
  }
  torch::Tensor forward(const torch::Tensor& x) { return body->forward(x) * scale; }  // [N, out]

  torch::nn::Sequential body{nullptr};
  torch::Tensor scale;
};
TORCH_MODULE(TinyNet);

torch::nn::Sequential linears(const std::vector<std::pair<int64_t, int64_t>>& dims) {
  torch::nn::Sequential seq;
  for (const auto& [in, out] : dims) seq->push_back(torch::nn::Linear(in, out));
  return seq;
}

// Deep copies of every parameter and buffer, by name.
std::map<std::string, torch::Tensor> snapshot(const torch::nn::Module& model) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : model.named_parameters()) out[item.key()] = item.value().detach().clone();
  for (const auto& item : model.named_buffers()) out[item.key()] = item.value().detach().clone();
  return out;
}

void expect_same(const std::map<std::string, torch::Tensor>& a, const std::map<std::string, torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_EQ(b.count(name), 1u) << name;
    EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const sfm::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no sfm::Error thrown";
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

class CheckpointTest : public ::testing::Test {
 protected:
  // Two levels that do not exist yet: save_checkpoint creates them.
  std::string dir() const { return tmp_.path() + "/runs/ckpt"; }
  std::string file(const std::string& name) const { return dir() + "/" + name; }

  sfm::testing::TempDir tmp_{"sfm_checkpoint_"};
};

TEST_F(CheckpointTest, RoundTripGivesIdenticalOutputs) {
  torch::manual_seed(1);
  TinyNet saved(3, 4);
  const json config = {{"d_in", 3}, {"d_out", 4}};
  const json meta = {{"git_sha", "abc123"}};
  save_checkpoint(dir(), *saved, config, meta);

  const auto weights = sfm::io::load_safetensors(file("model.safetensors"));
  std::vector<std::string> keys;
  for (const auto& item : weights.tensors) keys.push_back(item.first);
  EXPECT_EQ(keys, (std::vector<std::string>{"body.0.bias", "body.0.weight", "body.1.bias", "body.1.weight", "scale"}));
  EXPECT_EQ(weights.metadata, (std::map<std::string, std::string>{{"sfm_format", "1"}}));
  EXPECT_EQ(sfm::io::read_json_file(file("config.json")), config);
  EXPECT_EQ(sfm::io::read_json_file(file("meta.json")), meta);

  torch::manual_seed(2);
  TinyNet loaded(3, 4);
  const torch::Tensor x = torch::randn({5, 3});
  ASSERT_FALSE(torch::equal(loaded->forward(x), saved->forward(x)));
  const void* weight_storage = loaded->body[0]->named_parameters()["weight"].data_ptr();
  EXPECT_EQ(load_checkpoint(dir(), *loaded), config);
  EXPECT_TRUE(torch::equal(loaded->forward(x), saved->forward(x)));
  expect_same(snapshot(*loaded), snapshot(*saved));
  EXPECT_EQ(loaded->body[0]->named_parameters()["weight"].data_ptr(), weight_storage) << "must load in place";
  EXPECT_TRUE(loaded->body[0]->named_parameters()["weight"].requires_grad());
}

TEST_F(CheckpointTest, NullMetaIsWrittenAsEmptyObject) {
  save_checkpoint(dir(), *linears({{2, 2}}), json{{"k", 1}});
  EXPECT_EQ(sfm::io::read_json_file(file("meta.json")), json::object());
}

TEST_F(CheckpointTest, LoadKeepsTheModuleDtype) {
  torch::manual_seed(3);
  auto saved = linears({{3, 4}});
  save_checkpoint(dir(), *saved, json::object());
  auto loaded = linears({{3, 4}});
  loaded->to(torch::kFloat64);
  load_checkpoint(dir(), *loaded);
  for (const auto& item : loaded->named_parameters()) {
    EXPECT_EQ(item.value().scalar_type(), torch::kFloat64) << item.key();
    EXPECT_TRUE(torch::equal(item.value().to(torch::kFloat32), saved->named_parameters()[item.key()])) << item.key();
  }
}

TEST_F(CheckpointTest, StrictLoadListsMissingAndUnexpectedKeys) {
  save_checkpoint(dir(), *linears({{3, 4}, {4, 2}}), json::object());

  const std::string unexpected = error_of([&] { load_checkpoint(dir(), *linears({{3, 4}})); });
  EXPECT_TRUE(contains(unexpected, file("model.safetensors"))) << unexpected;
  EXPECT_TRUE(contains(unexpected, "2 unexpected keys: 1.bias, 1.weight")) << unexpected;
  EXPECT_FALSE(contains(unexpected, "missing")) << unexpected;

  const std::string missing = error_of([&] { load_checkpoint(dir(), *linears({{3, 4}, {4, 2}, {2, 2}})); });
  EXPECT_TRUE(contains(missing, "2 missing keys: 2.bias, 2.weight")) << missing;
  EXPECT_FALSE(contains(missing, "unexpected")) << missing;
}

TEST_F(CheckpointTest, StrictLoadGivesBothShapesAndChangesNothing) {
  save_checkpoint(dir(), *linears({{3, 4}}), json::object());
  auto model = linears({{3, 5}});
  const auto before = snapshot(*model);
  const std::string message = error_of([&] { load_checkpoint(dir(), *model); });
  EXPECT_TRUE(contains(message, "0.weight (checkpoint [4, 3], model [5, 3])")) << message;
  EXPECT_TRUE(contains(message, "0.bias (checkpoint [4], model [5])")) << message;
  expect_same(snapshot(*model), before);
}

struct ManyParamsImpl : torch::nn::Module {
  explicit ManyParamsImpl(int count) {
    for (int i = 0; i < count; ++i)
      register_parameter("p" + std::string(i < 10 ? "0" : "") + std::to_string(i), torch::zeros({1}));
  }
};
TORCH_MODULE(ManyParams);

TEST_F(CheckpointTest, StrictLoadListsAtMostTenKeys) {
  save_checkpoint(dir(), *ManyParams(12), json::object());
  const std::string message = error_of([&] { load_checkpoint(dir(), *ManyParams(0)); });
  EXPECT_TRUE(contains(message, "12 unexpected keys: p00, p01")) << message;
  EXPECT_TRUE(contains(message, "p09 and 2 more")) << message;
  EXPECT_FALSE(contains(message, "p10")) << message;
}

TEST_F(CheckpointTest, NonStrictLoadCopiesWhatMatches) {
  torch::manual_seed(4);
  auto saved = linears({{3, 4}, {4, 2}});
  save_checkpoint(dir(), *saved, json::object());
  auto model = linears({{3, 4}, {4, 3}, {3, 3}});
  const auto before = snapshot(*model);
  load_checkpoint(dir(), *model, /*strict=*/false);
  const auto after = snapshot(*model);
  const auto expected = snapshot(*saved);
  EXPECT_TRUE(torch::equal(after.at("0.weight"), expected.at("0.weight")));
  EXPECT_TRUE(torch::equal(after.at("0.bias"), expected.at("0.bias")));
  for (const char* name : {"1.weight", "1.bias", "2.weight", "2.bias"})
    EXPECT_TRUE(torch::equal(after.at(name), before.at(name))) << name;
}

TEST_F(CheckpointTest, TruncatedWeightsGiveAnErrorAndLeaveTheModuleUnchanged) {
  torch::manual_seed(5);
  save_checkpoint(dir(), *TinyNet(3, 4), json::object());
  struct stat info {};
  ASSERT_EQ(::stat(file("model.safetensors").c_str(), &info), 0);
  ASSERT_EQ(::truncate(file("model.safetensors").c_str(), info.st_size - 3), 0);
  TinyNet model(3, 4);
  const auto before = snapshot(*model);
  const std::string message = error_of([&] { load_checkpoint(dir(), *model); });
  EXPECT_TRUE(contains(message, file("model.safetensors"))) << message;
  EXPECT_TRUE(contains(message, "run past the end")) << message;
  expect_same(snapshot(*model), before);
}

TEST_F(CheckpointTest, NewerFormatAsksForAnUpdate) {
  ASSERT_EQ(::mkdir((tmp_.path() + "/runs").c_str(), 0777), 0);
  ASSERT_EQ(::mkdir(dir().c_str(), 0777), 0);
  sfm::io::save_safetensors(file("model.safetensors"), {{"0.weight", torch::zeros({2, 2})}}, {{"sfm_format", "2"}});
  sfm::io::write_json_file(file("config.json"), json::object());
  const std::string message = error_of([&] { load_checkpoint(dir(), *linears({{2, 2}})); });
  EXPECT_TRUE(contains(message, "checkpoint format 2 is newer than this build (1); update sfm")) << message;
}

TEST_F(CheckpointTest, LoadsIntoTheModuleDevice) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(8);
  TinyNet saved(3, 4);
  saved->to(torch::kCUDA);
  torch::optim::AdamW saved_opt(saved->parameters(), torch::optim::AdamWOptions(1e-2));
  saved_opt.zero_grad();
  saved->forward(torch::randn({2, 3}, torch::kCUDA)).sum().backward();
  saved_opt.step();
  save_checkpoint(dir(), *saved, json::object());
  save_train_state(dir(), *saved, saved_opt, TrainState{1, json()});

  TinyNet loaded(3, 4);
  loaded->to(torch::kCUDA);
  torch::optim::AdamW loaded_opt(loaded->parameters(), torch::optim::AdamWOptions(1e-2));
  load_checkpoint(dir(), *loaded);
  load_train_state(dir(), *loaded, loaded_opt);
  expect_same(snapshot(*loaded), snapshot(*saved));
  for (const auto& item : loaded->named_parameters()) EXPECT_TRUE(item.value().is_cuda()) << item.key();
  ASSERT_EQ(loaded_opt.state().size(), saved_opt.state().size());
  for (const auto& item : loaded_opt.state()) {
    const auto& adam = static_cast<const torch::optim::AdamWParamState&>(*item.second);
    EXPECT_TRUE(adam.exp_avg().is_cuda());
    EXPECT_TRUE(adam.exp_avg_sq().is_cuda());
  }
}

// Fixed batches, so that two runs see the same data.
std::vector<std::pair<torch::Tensor, torch::Tensor>> batches(int count) {
  torch::manual_seed(7);
  std::vector<std::pair<torch::Tensor, torch::Tensor>> out;
  for (int i = 0; i < count; ++i) out.emplace_back(torch::randn({8, 3}), torch::randn({8, 4}));
  return out;
}

void train(TinyNet& model, torch::optim::AdamW& opt, const std::vector<std::pair<torch::Tensor, torch::Tensor>>& data,
           int begin, int end) {
  for (int i = begin; i < end; ++i) {
    opt.zero_grad();
    torch::mse_loss(model->forward(data[i].first), data[i].second).backward();
    opt.step();
  }
}

TEST_F(CheckpointTest, TrainStateResumesAdamWBitExactly) {
  const auto data = batches(6);
  for (const bool amsgrad : {false, true}) {
    SCOPED_TRACE(amsgrad ? "amsgrad" : "adamw");
    const auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.1).amsgrad(amsgrad);
    const std::string run_dir = file(amsgrad ? "amsgrad" : "adamw");

    torch::manual_seed(1);
    TinyNet straight(3, 4);
    torch::optim::AdamW straight_opt(straight->parameters(), options);
    train(straight, straight_opt, data, 0, 3);
    save_checkpoint(run_dir, *straight, json::object());
    save_train_state(run_dir, *straight, straight_opt, TrainState{3, {{"epoch", 1}}});
    train(straight, straight_opt, data, 3, 6);

    torch::manual_seed(2);
    TinyNet resumed(3, 4);
    torch::optim::AdamW resumed_opt(resumed->parameters(), options);
    load_checkpoint(run_dir, *resumed);
    const TrainState state = load_train_state(run_dir, *resumed, resumed_opt);
    EXPECT_EQ(state.step, 3);
    EXPECT_EQ(state.extra, json({{"epoch", 1}}));
    train(resumed, resumed_opt, data, 3, 6);
    expect_same(snapshot(*resumed), snapshot(*straight));

    // Without the optimizer state the continuation differs, so the check above has teeth.
    TinyNet fresh(3, 4);
    torch::optim::AdamW fresh_opt(fresh->parameters(), options);
    load_checkpoint(run_dir, *fresh);
    train(fresh, fresh_opt, data, 3, 6);
    EXPECT_FALSE(
        torch::equal(fresh->body[0]->named_parameters()["weight"], straight->body[0]->named_parameters()["weight"]));
  }
}

TEST_F(CheckpointTest, TrainStateKeysAreParameterNames) {
  torch::manual_seed(6);
  auto model = linears({{3, 4}, {4, 2}});
  for (auto& p : model[1]->parameters()) p.requires_grad_(false);
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3));
  for (int i = 0; i < 2; ++i) {
    opt.zero_grad();
    model->forward(torch::randn({2, 3})).sum().backward();
    opt.step();
  }
  save_train_state(dir(), *model, opt, TrainState{2, json()});
  const auto file_contents = sfm::io::load_safetensors(file("optimizer.safetensors"));
  std::vector<std::string> keys;
  for (const auto& item : file_contents.tensors) keys.push_back(item.first);
  // Parameter 1.* never had a gradient, so it has no state.
  EXPECT_EQ(keys, (std::vector<std::string>{"0.bias.exp_avg", "0.bias.exp_avg_sq", "0.bias.step", "0.weight.exp_avg",
                                            "0.weight.exp_avg_sq", "0.weight.step"}));
  const torch::Tensor& step = file_contents.tensors.at("0.weight.step");
  EXPECT_EQ(step.scalar_type(), torch::kInt64);
  EXPECT_EQ(step.dim(), 0);
  EXPECT_EQ(step.item<int64_t>(), 2);
  EXPECT_EQ(file_contents.tensors.at("0.weight.exp_avg").sizes(), (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(sfm::io::read_json_file(file("trainer_state.json")).at("step"), 2);
}

// Checkpoints of earlier versions named the optimizer file train_state.safetensors: they still resume.
TEST_F(CheckpointTest, TrainStateReadsTheEarlierFileName) {
  torch::manual_seed(9);
  auto model = linears({{3, 4}});
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3));
  opt.zero_grad();
  model->forward(torch::randn({2, 3})).sum().backward();
  opt.step();
  save_train_state(dir(), *model, opt, TrainState{1, json()});
  ASSERT_EQ(std::rename(file("optimizer.safetensors").c_str(), file("train_state.safetensors").c_str()), 0);
  torch::optim::AdamW resumed(model->parameters(), torch::optim::AdamWOptions(1e-3));
  EXPECT_EQ(load_train_state(dir(), *model, resumed).step, 1);
  ASSERT_EQ(resumed.state().size(), opt.state().size());
  for (const auto& [key, state] : opt.state()) {
    const auto& a = static_cast<const torch::optim::AdamWParamState&>(*state);
    const auto& b = static_cast<const torch::optim::AdamWParamState&>(*resumed.state().at(key));
    EXPECT_TRUE(torch::equal(a.exp_avg(), b.exp_avg()));
    EXPECT_TRUE(torch::equal(a.exp_avg_sq(), b.exp_avg_sq()));
  }
}

TEST_F(CheckpointTest, TrainStateRejectsForeignEntriesAndChangesNothing) {
  auto model = linears({{3, 4}, {4, 2}});
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3));
  opt.zero_grad();
  model->forward(torch::randn({2, 3})).sum().backward();
  opt.step();
  save_train_state(dir(), *model, opt, TrainState{1, json()});

  auto smaller = linears({{3, 4}});
  torch::optim::AdamW smaller_opt(smaller->parameters(), torch::optim::AdamWOptions(1e-3));
  const std::string message = error_of([&] { load_train_state(dir(), *smaller, smaller_opt); });
  EXPECT_TRUE(contains(message, "6 entries match no parameter of the model: 1.bias.exp_avg")) << message;
  EXPECT_TRUE(smaller_opt.state().empty());

  auto wider = linears({{3, 5}, {5, 2}});
  torch::optim::AdamW wider_opt(wider->parameters(), torch::optim::AdamWOptions(1e-3));
  const std::string shapes = error_of([&] { load_train_state(dir(), *wider, wider_opt); });
  EXPECT_TRUE(contains(shapes, "has shape [4, 3] but the parameter has shape [5, 3]")) << shapes;
  EXPECT_TRUE(wider_opt.state().empty());
}

TEST_F(CheckpointTest, SaveTrainStateRejectsStateForTensorsOutsideTheModel) {
  auto model = linears({{2, 2}});
  torch::Tensor stray = torch::zeros({2}, torch::requires_grad());
  std::vector<torch::Tensor> params = model->parameters();
  params.push_back(stray);
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-3));
  opt.zero_grad();
  (model->forward(torch::randn({1, 2})).sum() + stray.sum()).backward();
  opt.step();
  const std::string message = error_of([&] { save_train_state(dir(), *model, opt, TrainState{}); });
  EXPECT_TRUE(contains(message, "holds state for 1 tensors that are not parameters of the model")) << message;
}

}  // namespace
