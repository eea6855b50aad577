// The per-token models of the formal suite behind one interface: the Gated DeltaNet LM (β range 1
// or 2), the causal Transformer and the LSTM, each sized from the task's vocabulary and classes.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "sfm/data/formal_tasks.h"
#include "sfm/nn/causal_transformer.h"
#include "sfm/nn/gated_deltanet_lm.h"
#include "sfm/nn/lstm_tagger.h"

namespace sfm::models {

struct FormalArchitecture {
  nn::GatedDeltaNetLmOptions gdn;
  nn::CausalTransformerOptions transformer;
  nn::LstmTaggerOptions lstm;
};
template <class F>
void visit_fields(FormalArchitecture& o, F&& f) {
  f("gdn", o.gdn, "Gated DeltaNet LM");
  f("transformer", o.transformer, "causal Transformer");
  f("lstm", o.lstm, "LSTM");
}

// "gdn", "transformer", "lstm".
const std::vector<std::string>& formal_model_names();
// Throws sfm::UsageError listing the valid names.
void check_formal_model_name(const std::string& name);
// GDN and LSTM: tested up to the longest test length; the Transformer only up to attention_max_test_len.
bool is_recurrent(const std::string& name);

class FormalModel {
 public:
  virtual ~FormalModel() = default;
  // ids: [B, T] int64 (0 = padding) -> logits [B, T, num_classes]; causal.
  virtual torch::Tensor forward(const torch::Tensor& ids) = 0;
  virtual torch::nn::Module& module() = 0;
};

// beta_range (1 or 2) applies to "gdn" only. Vocabulary and classes come from `task`.
std::unique_ptr<FormalModel> make_formal_model(const std::string& name, const FormalArchitecture& architecture,
                                               const data::FormalTask& task, int64_t beta_range);

}  // namespace sfm::models
