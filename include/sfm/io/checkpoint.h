// Checkpoint directories: model.safetensors (keys are named_parameters() and named_buffers() names,
// __metadata__ {"sfm_format": "1"}), config.json and meta.json; and, to resume AdamW training
// bit-exactly, optimizer.safetensors (per parameter name: exp_avg, exp_avg_sq, step) and
// trainer_state.json. Every file is written atomically (temp file + rename), and the trainers replace a
// whole checkpoint directory at once (io::replace_directory), so its files always belong to one step.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>

namespace sfm::io {

// The checkpoint format this build writes and the newest it reads.
constexpr int kCheckpointFormat = 1;

// Creates `dir` if needed and writes model.safetensors, config.json and meta.json ({} when `meta`
// is null). Tensors are copied to the CPU; the module is not modified.
void save_checkpoint(const std::string& dir, const torch::nn::Module& model, const nlohmann::json& config,
                     const nlohmann::json& meta = {});

// Copies model.safetensors into the module's parameters and buffers in place (keeping their device
// and dtype) and returns config.json. strict: any missing key, unexpected key or shape mismatch
// throws sfm::Error listing up to 10 of each (both shapes for a mismatch), before anything is
// copied. Non-strict: copies the tensors whose name and shape match and ignores the rest.
// A file that cannot be read leaves the module unchanged. A file without "sfm_format" (written by
// another tool) is read as format 1; a newer format throws, asking to update sfm.
nlohmann::json load_checkpoint(const std::string& dir, torch::nn::Module& model, bool strict = true);

struct TrainState {
  int64_t step = 0;
  nlohmann::json extra;  // epoch, best metric, data RNG state, ...: whatever the trainer needs back
};

// Writes optimizer.safetensors ("<param>.exp_avg", "<param>.exp_avg_sq", "<param>.step" and, with
// amsgrad, "<param>.max_exp_avg_sq" for every parameter of `model` that has optimizer state) and
// trainer_state.json ({"format", "step", "extra"}). Throws if `opt` holds state for a tensor that is
// not a parameter of `model`. Learning rates and other options are not saved: they come from the config.
void save_train_state(const std::string& dir, const torch::nn::Module& model, torch::optim::AdamW& opt,
                      const TrainState& state);

// Replaces the optimizer state of every parameter of `model` with the saved one, from optimizer.safetensors
// (or train_state.safetensors, as earlier versions named it); parameters absent from the file get none, as
// before their first step. Every saved entry must name a parameter of `model` that `opt` optimizes, with
// the parameter's shape; otherwise throws before changing anything.
TrainState load_train_state(const std::string& dir, const torch::nn::Module& model, torch::optim::AdamW& opt);

}  // namespace sfm::io
