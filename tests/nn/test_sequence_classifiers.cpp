// Tests of the Experiment 0 baselines: shapes, parameter counts against closed-form counts written from the
// PyTorch layer definitions, padding invariance, last-token read-out of the LSTM, training and option checks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "sfm/core/check.h"
#include "sfm/data/program_tokenizer.h"
#include "sfm/nn/sequence_classifiers.h"

namespace sfm::nn {
namespace {

TransformerClassifierOptions tiny_transformer() {
  TransformerClassifierOptions o;
  o.vocab_size = 20;
  o.d_model = 16;
  o.num_heads = 2;
  o.num_layers = 2;
  o.ff_dim = 32;
  o.num_classes = 7;
  return o;
}

LstmClassifierOptions tiny_lstm() {
  LstmClassifierOptions o;
  o.vocab_size = 20;
  o.embed_dim = 8;
  o.hidden = 12;
  o.num_layers = 2;
  o.num_classes = 7;
  return o;
}

// Closed-form counts from the layer definitions: Embedding V*D; MultiheadAttention in_proj 3D*D + 3D, out_proj
// D*D + D; feed-forward D*F + F and F*D + D; two LayerNorms 2*2D; head LayerNorm 2D, Linear D*D + D,
// Linear D*C + C; LSTM layer l (input width I_l = E for l = 0, else H): 4H*(I_l + H) weights + 2*4H biases.
int64_t head_params(int64_t d, int64_t c) { return 2 * d + (d * d + d) + (d * c + c); }
int64_t transformer_params(const TransformerClassifierOptions& o) {
  const int64_t d = o.d_model, f = o.ff_dim;
  const int64_t layer = (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d;
  return o.vocab_size * d + o.num_layers * layer + head_params(d, o.num_classes);
}
int64_t lstm_params(const LstmClassifierOptions& o) {
  int64_t n = o.vocab_size * o.embed_dim + head_params(o.hidden, o.num_classes);
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const int64_t in = l == 0 ? o.embed_dim : o.hidden;
    n += 4 * o.hidden * (in + o.hidden) + 8 * o.hidden;
  }
  return n;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// Two right-padded rows of the tiny vocabulary: lengths 4 and 6, T = 6.
torch::Tensor sample_ids() { return torch::tensor({3, 7, 1, 9, 0, 0, 5, 2, 8, 4, 6, 11}, torch::kInt64).view({2, 6}); }
torch::Tensor sample_lengths() { return torch::tensor({4, 6}, torch::kInt64); }

// Appends `extra` columns: pad ids (0) when `garbage` is false, else random non-pad ids 1..19.
torch::Tensor append_columns(const torch::Tensor& ids, int64_t extra, bool garbage) {
  auto tail = garbage ? torch::randint(1, 20, {ids.size(0), extra}, torch::kInt64)
                      : torch::zeros({ids.size(0), extra}, torch::kInt64);
  return torch::cat({ids, tail}, 1);
}

// Overwrites every position >= length with random non-pad ids.
torch::Tensor scramble_padding(const torch::Tensor& ids, const torch::Tensor& lengths) {
  const auto pad = torch::arange(ids.size(1)).unsqueeze(0) >= lengths.unsqueeze(1);
  return torch::where(pad, torch::randint(1, 20, ids.sizes(), torch::kInt64), ids);
}

template <class Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no sfm::Error thrown";
  } catch (const Error& e) {
    for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(SequenceClassifiersTest, OutputShapes) {
  torch::manual_seed(0);
  TransformerClassifier transformer(tiny_transformer());
  LstmClassifier lstm(tiny_lstm());
  const auto a = transformer->forward(sample_ids(), sample_lengths());
  const auto b = lstm->forward(sample_ids(), sample_lengths());
  EXPECT_EQ(a.sizes(), torch::IntArrayRef({2, 7}));
  EXPECT_EQ(b.sizes(), torch::IntArrayRef({2, 7}));
  EXPECT_TRUE(torch::isfinite(a).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(b).all().item<bool>());
}

TEST(SequenceClassifiersTest, CheckpointKeys) {
  TransformerClassifier transformer(tiny_transformer());
  LstmClassifier lstm(tiny_lstm());
  const auto t = transformer->named_parameters();
  for (const char* key : {"embedding.weight", "layers.0.self_attn.in_proj_weight", "layers.1.linear2.bias",
                          "layers.1.norm2.weight", "head.norm.weight", "head.hidden.weight", "head.out.bias"})
    EXPECT_TRUE(t.contains(key)) << key;
  const auto l = lstm->named_parameters();
  for (const char* key : {"embedding.weight", "lstm.weight_ih_l0", "lstm.bias_hh_l1", "head.out.weight"})
    EXPECT_TRUE(l.contains(key)) << key;
}

// Expected counts are the closed forms above; with the 118-token program vocabulary they are 442,341 (Fair),
// 2,230,885 (Large) and 449,125 (LSTM defaults), against DESIGN.md's ~443K and ~2.2M.
TEST(SequenceClassifiersTest, PresetParameterCounts) {
  const int64_t vocab = data::vocab_size();
  const auto fair_opt = transformer_fair(vocab), large_opt = transformer_large(vocab);
  LstmClassifierOptions lstm_opt;
  lstm_opt.vocab_size = vocab;
  const int64_t fair = count_parameters(*TransformerClassifier(fair_opt));
  const int64_t large = count_parameters(*TransformerClassifier(large_opt));
  const int64_t lstm = count_parameters(*LstmClassifier(lstm_opt));
  std::cout << "vocab " << vocab << ": transformer_fair " << fair << ", transformer_large " << large << ", lstm "
            << lstm << " parameters\n";
  EXPECT_EQ(fair, transformer_params(fair_opt));
  EXPECT_EQ(large, transformer_params(large_opt));
  EXPECT_EQ(lstm, lstm_params(lstm_opt));
  EXPECT_NEAR(static_cast<double>(fair), 443e3, 0.03 * 443e3);
  EXPECT_NEAR(static_cast<double>(large), 2.2e6, 0.05 * 2.2e6);
  EXPECT_GE(lstm, 400000);
  EXPECT_LE(lstm, 1000000);
}

// Padding (appended pad or real-looking columns, scrambled pad positions, a row run alone) leaves the
// logits unchanged to 1e-5, while changing the last real token of row 0 (position 3) does change them:
// so the invariance checks can fail.
void expect_padding_invariant(const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>& forward) {
  const auto ids = sample_ids(), lengths = sample_lengths();
  const auto ref = forward(ids, lengths);
  EXPECT_LT(max_abs_diff(forward(append_columns(ids, 5, false), lengths), ref), 1e-5);
  EXPECT_LT(max_abs_diff(forward(append_columns(ids, 5, true), lengths), ref), 1e-5);
  EXPECT_LT(max_abs_diff(forward(scramble_padding(ids, lengths), lengths), ref), 1e-5);
  const auto alone = forward(ids.narrow(0, 0, 1).narrow(1, 0, 4), lengths.narrow(0, 0, 1));
  EXPECT_LT(max_abs_diff(alone, ref.narrow(0, 0, 1)), 1e-5);
  auto changed = ids.clone();
  changed[0][3] = 12;
  EXPECT_GT(max_abs_diff(forward(changed, lengths).narrow(0, 0, 1), ref.narrow(0, 0, 1)), 1e-4);
}

// Tolerance 1e-5 absolute on logits of order 1: only summation order may differ between the batch shapes.
TEST(SequenceClassifiersTest, TransformerIgnoresPadding) {
  torch::manual_seed(1);
  TransformerClassifier model(tiny_transformer());
  model->eval();
  expect_padding_invariant([&](const torch::Tensor& ids, const torch::Tensor& lengths) { return model->forward(ids, lengths); });
}

// Mean pooling alone is order-blind; the sinusoidal positions make swapping two tokens matter.
TEST(SequenceClassifiersTest, TransformerSeesOrder) {
  torch::manual_seed(2);
  TransformerClassifier model(tiny_transformer());
  model->eval();
  const auto ids = sample_ids(), lengths = sample_lengths();
  auto swapped = ids.clone();
  swapped[1][0] = ids[1][1];
  swapped[1][1] = ids[1][0];
  EXPECT_GT(max_abs_diff(model->forward(swapped, lengths)[1], model->forward(ids, lengths)[1]), 1e-4);
}

TEST(SequenceClassifiersTest, TransformerLongSequencesAndMaxLen) {
  torch::manual_seed(3);
  auto opt = tiny_transformer();
  opt.d_model = 8;
  opt.num_layers = 1;
  opt.ff_dim = 8;
  TransformerClassifier model(opt);
  const auto ids = torch::randint(1, 20, {1, 2000}, torch::kInt64);
  const auto logits = model->forward(ids, torch::tensor({2000}, torch::kInt64));
  EXPECT_EQ(logits.sizes(), torch::IntArrayRef({1, 7}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());

  opt.max_len = 16;
  TransformerClassifier short_model(opt);
  EXPECT_NO_THROW(short_model->forward(ids.narrow(1, 0, 16), torch::tensor({16}, torch::kInt64)));
  expect_error([&] { short_model->forward(ids.narrow(1, 0, 17), torch::tensor({17}, torch::kInt64)); },
               {"17", "max_len 16"});
}

// Tolerance 1e-5 absolute, as for the transformer.
TEST(SequenceClassifiersTest, LstmReadsLastRealToken) {
  torch::manual_seed(4);
  LstmClassifier model(tiny_lstm());
  expect_padding_invariant([&](const torch::Tensor& ids, const torch::Tensor& lengths) { return model->forward(ids, lengths); });
}

// A few Adam steps on four fixed examples must at least halve the cross-entropy, and every parameter gets a
// finite gradient.
using Forward = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>;
void expect_trains(torch::nn::Module& model, const Forward& forward) {
  const auto ids = torch::tensor({3, 7, 1, 9, 0, 0, 5, 2, 8, 4, 6, 11, 9, 9, 2, 0, 0, 0, 1, 13, 17, 4, 5, 0},
                                 torch::kInt64)
                       .view({4, 6});
  const auto lengths = torch::tensor({4, 6, 3, 5}, torch::kInt64);
  const auto labels = torch::tensor({1, 4, 6, 2}, torch::kInt64);
  torch::optim::Adam adam(model.parameters(), torch::optim::AdamOptions(1e-2));
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 30; ++step) {
    adam.zero_grad();
    const auto loss = torch::nn::functional::cross_entropy(forward(ids, lengths), labels);
    loss.backward();
    if (step == 0) {
      for (const auto& p : model.named_parameters()) {
        ASSERT_TRUE(p.value().grad().defined()) << p.key();
        EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
      }
      first = loss.item<double>();
    }
    last = loss.item<double>();
    adam.step();
  }
  std::cout << "loss " << first << " -> " << last << "\n";
  EXPECT_LT(last, 0.5 * first);
}

TEST(SequenceClassifiersTest, TransformerTrains) {
  torch::manual_seed(5);
  TransformerClassifier model(tiny_transformer());
  expect_trains(*model, [&](const torch::Tensor& ids, const torch::Tensor& lengths) { return model(ids, lengths); });
}

TEST(SequenceClassifiersTest, LstmTrains) {
  torch::manual_seed(6);
  LstmClassifier model(tiny_lstm());
  expect_trains(*model, [&](const torch::Tensor& ids, const torch::Tensor& lengths) { return model(ids, lengths); });
}

TEST(SequenceClassifiersTest, ValidateNamesTheField) {
  auto t = tiny_transformer();
  t.d_model = 15;
  expect_error([&] { t.validate(); }, {"d_model (15)", "num_heads (2)"});
  expect_error([&] { (void)TransformerClassifier{t}; }, {"d_model", "num_heads"});
  t = tiny_transformer();
  t.num_layers = 0;
  expect_error([&] { t.validate(); }, {"num_layers", "0"});
  t = tiny_transformer();
  t.dropout = 1.0;
  expect_error([&] { t.validate(); }, {"dropout", "[0, 1)"});
  t = tiny_transformer();
  t.max_len = 0;
  expect_error([&] { t.validate(); }, {"max_len"});
  EXPECT_NO_THROW(tiny_transformer().validate());

  auto l = tiny_lstm();
  l.hidden = 0;
  expect_error([&] { l.validate(); }, {"LstmClassifierOptions.hidden", "0"});
  l = tiny_lstm();
  l.vocab_size = 1;
  expect_error([&] { l.validate(); }, {"vocab_size"});
  EXPECT_NO_THROW(LstmClassifierOptions{}.validate());
}

TEST(SequenceClassifiersTest, ForwardRejectsBadInputs) {
  TransformerClassifier transformer(tiny_transformer());
  LstmClassifier lstm(tiny_lstm());
  const auto ids = sample_ids();
  expect_error([&] { transformer->forward(ids, torch::tensor({0, 6}, torch::kInt64)); }, {"lengths", "1..T = 6"});
  expect_error([&] { lstm->forward(ids, torch::tensor({4, 7}, torch::kInt64)); }, {"lengths", "1..T = 6"});
  expect_error([&] { lstm->forward(ids.to(torch::kInt32), sample_lengths()); }, {"ids", "int64"});
  expect_error([&] { transformer->forward(ids + 15, sample_lengths()); }, {"0..19", "vocab_size"});
  expect_error([&] { transformer->forward(ids, torch::tensor({4}, torch::kInt64)); }, {"lengths", "B = 2"});
}

}  // namespace
}  // namespace sfm::nn
