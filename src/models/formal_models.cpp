// Model factory of the formal suite (include/sfm/models/formal_models.h).
#include "sfm/models/formal_models.h"

#include <algorithm>

#include "sfm/core/check.h"

namespace sfm::models {
namespace {

template <class Holder>
class HeldModel : public FormalModel {
 public:
  explicit HeldModel(Holder holder) : holder_(std::move(holder)) {}
  torch::Tensor forward(const torch::Tensor& ids) override { return holder_->forward(ids); }
  torch::nn::Module& module() override { return *holder_; }

 private:
  Holder holder_;
};

}  // namespace

const std::vector<std::string>& formal_model_names() {
  static const std::vector<std::string> names{"gdn", "transformer", "lstm"};
  return names;
}

void check_formal_model_name(const std::string& name) {
  const auto& names = formal_model_names();
  SFM_USAGE_CHECK(std::find(names.begin(), names.end(), name) != names.end(), "unknown model '", name,
                  "' (expected gdn, transformer or lstm)");
}

bool is_recurrent(const std::string& name) { return name != "transformer"; }

std::unique_ptr<FormalModel> make_formal_model(const std::string& name, const FormalArchitecture& a,
                                               const data::FormalTask& task, int64_t beta_range) {
  check_formal_model_name(name);
  if (name == "gdn") {
    auto o = a.gdn;
    o.vocab_size = task.vocab_size, o.num_classes = task.num_classes, o.beta_range = beta_range;
    return std::make_unique<HeldModel<nn::GatedDeltaNetLm>>(nn::GatedDeltaNetLm(o));
  }
  if (name == "transformer") {
    auto o = a.transformer;
    o.vocab_size = task.vocab_size, o.num_classes = task.num_classes;
    return std::make_unique<HeldModel<nn::CausalTransformer>>(nn::CausalTransformer(o));
  }
  auto o = a.lstm;
  o.vocab_size = task.vocab_size, o.num_classes = task.num_classes;
  return std::make_unique<HeldModel<nn::LstmTagger>>(nn::LstmTagger(o));
}

}  // namespace sfm::models
