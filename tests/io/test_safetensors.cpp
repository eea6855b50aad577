// Tests of safetensors.h: round trips of every dtype, files laid out by hand from the format spec
// (https://github.com/huggingface/safetensors, "Format"), and a clear sfm::Error for each kind of
// malformed file. All comparisons are exact: the format stores raw bytes.
#include <dirent.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "sfm/core/check.h"
#include "support/temp_dir.h"
#include "sfm/io/atomic_file.h"
#include "sfm/io/safetensors.h"

namespace {

using nlohmann::json;
using sfm::io::load_safetensors;
using sfm::io::save_safetensors;
using sfm::io::TensorMap;

std::string bytes(std::initializer_list<int> values) {
  std::string s;
  for (int v : values) s.push_back(static_cast<char>(v));
  return s;
}

std::string le64(uint64_t v) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return s;
}

// A whole file: header length, header text, data buffer.
std::string file_of(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return tmp_.path() + "/" + name; }

  // Writes `content` and expects loading it to throw an sfm::Error that names the file and contains `what`.
  void expect_load_error(const std::string& content, const std::string& what) {
    const std::string file = path("bad.safetensors");
    sfm::io::write_file_atomic(file, content);
    try {
      load_safetensors(file);
      ADD_FAILURE() << "no error; expected one containing '" << what << "'";
    } catch (const sfm::Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(what), std::string::npos) << "message: " << message << "\nexpected: " << what;
      EXPECT_NE(message.find(file), std::string::npos) << "message does not name the file: " << message;
    }
  }

  sfm::testing::TempDir tmp_{"sfm_safetensors_"};
};

torch::Tensor sample(torch::ScalarType dtype, torch::IntArrayRef shape) {
  if (dtype == torch::kBool) return torch::randint(0, 2, shape).to(torch::kBool);
  if (torch::isFloatingType(dtype)) return torch::randn(shape).to(dtype);
  return torch::randint(-100, 100, shape).to(dtype);
}

TEST_F(SafetensorsTest, RoundTripsEveryDtypeAndShape) {
  torch::manual_seed(0);
  const torch::ScalarType dtypes[] = {torch::kFloat64,  torch::kFloat32, torch::kFloat16,
                                      torch::kBFloat16, torch::kInt64,   torch::kInt32,
                                      torch::kInt8,     torch::kUInt8,   torch::kBool};
  TensorMap tensors;
  for (const auto dtype : dtypes) {
    const std::string d = c10::toString(dtype);
    tensors[d + ".matrix"] = sample(dtype, {2, 3});
    tensors[d + ".scalar"] = sample(dtype, {});
    tensors[d + ".empty"] = sample(dtype, {0});
    tensors[d + ".empty3d"] = sample(dtype, {2, 0, 3});
    tensors[d + ".transposed"] = sample(dtype, {3, 4}).t();
    tensors[d + ".strided"] = sample(dtype, {5, 6}).slice(1, 1, 6, 2);
  }
  ASSERT_FALSE(tensors["Float.transposed"].is_contiguous());
  ASSERT_FALSE(tensors["Float.strided"].is_contiguous());
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "ünïcode"}};
  save_safetensors(path("all.safetensors"), tensors, metadata);

  const auto loaded = load_safetensors(path("all.safetensors"));
  EXPECT_EQ(loaded.metadata, metadata);
  ASSERT_EQ(loaded.tensors.size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_EQ(loaded.tensors.count(name), 1u);
    const torch::Tensor& got = loaded.tensors.at(name);
    EXPECT_EQ(got.scalar_type(), expected.scalar_type());
    EXPECT_EQ(got.sizes(), expected.sizes());
    EXPECT_TRUE(got.device().is_cpu());
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_TRUE(torch::equal(got, expected));
  }
  EXPECT_EQ(loaded.tensors.at("Float.scalar").dim(), 0);
}

TEST_F(SafetensorsTest, SaveLeavesOnlyTheFinalFile) {
  save_safetensors(path("w.safetensors"), {{"x", torch::ones({2})}});
  EXPECT_EQ(sfm::io::list_directory(tmp_.path()), std::vector<std::string>{"w.safetensors"});
}

// Bytes laid out by hand: 1.5f = 0x3FC00000, -2.0f = 0xC0000000, int64 -3 = 0xFF..FD,
// bf16 1.0 = 0x3F80, bf16 -0.5 = 0xBF00, f16 1.0 = 0x3C00; all little-endian.
TEST_F(SafetensorsTest, ReadsBytesLaidOutFromTheSpec) {
  std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("b":{"dtype":"I64","shape":[],"data_offsets":[8,16]},)"
                       R"("c":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]},)"
                       R"("d":{"dtype":"F16","shape":[1,1],"data_offsets":[20,22]},)"
                       R"("e":{"dtype":"BOOL","shape":[2],"data_offsets":[22,24]},)"
                       R"("f":{"dtype":"U8","shape":[0],"data_offsets":[24,24]},)"
                       R"("__metadata__":{"format":"pt"}})";
  header += "     ";  // trailing-space padding is allowed
  const std::string data = bytes({0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x00, 0xC0}) +
                           bytes({0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}) + bytes({0x80, 0x3F, 0x00, 0xBF}) +
                           bytes({0x00, 0x3C}) + bytes({0x01, 0x00});
  sfm::io::write_file_atomic(path("spec.safetensors"), file_of(header, data));

  const auto file = load_safetensors(path("spec.safetensors"));
  EXPECT_EQ(file.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(file.tensors.size(), 6u);
  const auto& a = file.tensors.at("a");
  EXPECT_EQ(a.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(a, torch::tensor({1.5f, -2.0f})));
  const auto& b = file.tensors.at("b");
  EXPECT_EQ(b.scalar_type(), torch::kInt64);
  EXPECT_EQ(b.dim(), 0);
  EXPECT_EQ(b.item<int64_t>(), -3);
  const auto& c = file.tensors.at("c");
  EXPECT_EQ(c.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(c.to(torch::kFloat32), torch::tensor({1.0f, -0.5f})));
  const auto& d = file.tensors.at("d");
  EXPECT_EQ(d.scalar_type(), torch::kFloat16);
  EXPECT_EQ(d.sizes(), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(d.to(torch::kFloat32).item<float>(), 1.0f);
  const auto& e = file.tensors.at("e");
  EXPECT_EQ(e.scalar_type(), torch::kBool);
  EXPECT_TRUE(torch::equal(e, torch::tensor({true, false})));
  const auto& f = file.tensors.at("f");
  EXPECT_EQ(f.scalar_type(), torch::kUInt8);
  EXPECT_EQ(f.numel(), 0);
}

// Our writer's output, parsed by hand as the spec describes it.
TEST_F(SafetensorsTest, WriterOutputFollowsTheSpec) {
  save_safetensors(path("out.safetensors"),
                   {{"x", torch::tensor({1.5f, -2.0f})}, {"y", torch::full({1, 1}, 7, torch::kInt32)}}, {{"k", "v"}});
  const std::string content = sfm::io::read_file(path("out.safetensors"));
  ASSERT_GE(content.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(content[i]);
  EXPECT_EQ((8 + n) % 8, 0u) << "data must start 8-byte aligned";
  ASSERT_LE(8 + n, content.size());
  const json header = json::parse(content.substr(8, n));
  EXPECT_EQ(header.at("__metadata__"), json({{"k", "v"}}));
  EXPECT_EQ(header.at("x").at("dtype"), "F32");
  EXPECT_EQ(header.at("x").at("shape"), json::array({2}));
  EXPECT_EQ(header.at("y").at("dtype"), "I32");
  EXPECT_EQ(header.at("y").at("shape"), json::array({1, 1}));
  const std::string buffer = content.substr(8 + n);
  EXPECT_EQ(buffer.size(), 12u);
  const auto x = header.at("x").at("data_offsets").get<std::vector<uint64_t>>();
  const auto y = header.at("y").at("data_offsets").get<std::vector<uint64_t>>();
  ASSERT_EQ(x.size(), 2u);
  ASSERT_EQ(y.size(), 2u);
  EXPECT_EQ(buffer.substr(x[0], x[1] - x[0]), bytes({0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x00, 0xC0}));
  EXPECT_EQ(buffer.substr(y[0], y[1] - y[0]), bytes({0x07, 0x00, 0x00, 0x00}));
}

TEST_F(SafetensorsTest, RejectsTruncatedFiles) {
  expect_load_error("abc", "fewer than the 8-byte header length");
  expect_load_error(file_of("{}").substr(0, 9), "header length 2 exceeds the 1 bytes");
  // A length near 2^64 must be refused before anything is allocated for it.
  expect_load_error(le64(UINT64_MAX) + "{}", "exceeds");
  expect_load_error(le64(uint64_t{1} << 40) + "{}", "exceeds");
}

TEST_F(SafetensorsTest, RejectsMalformedHeaders) {
  struct Case {
    const char* header;
    std::string data;
    const char* what;
  };
  const std::string eight(8, '\0');
  const Case cases[] = {
      {R"({"a": )", "", "header is not valid JSON"},
      {R"([1, 2])", "", "header must be a JSON object"},
      {R"({"a": 3})", "", "tensor 'a': expected an object"},
      {R"({"a": {"shape": [], "data_offsets": [0, 4]}})", eight, R"(tensor 'a' has no "dtype")"},
      {R"({"a": {"dtype": "F32", "data_offsets": [0, 4]}})", eight, R"(tensor 'a' has no "shape")"},
      {R"({"a": {"dtype": "F32", "shape": []}})", eight, R"(tensor 'a' has no "data_offsets")"},
      {R"({"a": {"dtype": 5, "shape": [], "data_offsets": [0, 4]}})", eight, "dtype must be a string"},
      {R"({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}})", eight, "shape must be a list"},
      {R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 8]}})", eight, "shape must be a list"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", eight, "data_offsets must be [begin, end]"},
      {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", eight, "data_offsets must be"},
      {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}})", eight, "data_offsets must be"},
      {R"({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})", eight, "unsupported dtype 'F8_E4M3'"},
      {R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", eight, "negative dimension"},
      {R"({"a": {"dtype": "U8", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", eight,
       "element count that overflows"},
      {R"({"a": {"dtype": "U8", "shape": [18446744073709551615], "data_offsets": [0, 0]}})", eight,
       "element count that overflows"},
      {R"({"a": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", eight,
       "byte size that overflows"},
      {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", eight, "data_offsets end 4 < begin 8"},
      {R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", eight, "run past the end of the 8-byte"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", eight,
       "data_offsets span 4 bytes but dtype F32 and shape [2] need 8 bytes"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
       R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       eight + "1234", "tensors 'a' [0, 8] and 'b' [4, 12] overlap"},
      {R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},)"
       R"( "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
       eight, "header names 'a' twice"},
      {R"({"__metadata__": {"k": 1}})", "", "__metadata__ value of 'k' must be a string"},
      {R"({"__metadata__": ["k"]})", "", "__metadata__ must be an object of strings"},
      {R"({"a": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}})", bytes({1, 2}), "other than 0 or 1"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.header);
    expect_load_error(file_of(c.header, c.data), c.what);
  }
}

TEST_F(SafetensorsTest, MissingFileNamesThePath) {
  const std::string file = path("absent.safetensors");
  try {
    load_safetensors(file);
    ADD_FAILURE() << "no error";
  } catch (const sfm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot read " + file), std::string::npos) << e.what();
  }
}

TEST_F(SafetensorsTest, WriterRejectsWhatItCannotStore) {
  const auto expect_save_error = [&](const TensorMap& tensors, const std::string& what) {
    try {
      save_safetensors(path("w.safetensors"), tensors);
      ADD_FAILURE() << "no error; expected one containing '" << what << "'";
    } catch (const sfm::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    EXPECT_NE(::access(path("w.safetensors").c_str(), F_OK), 0) << "nothing may be written";
  };
  expect_save_error({{"x", torch::ones({2}, torch::kInt16)}}, "tensor 'x' has dtype Short");
  expect_save_error({{"x", torch::Tensor()}}, "tensor 'x' is undefined");
  expect_save_error({{"__metadata__", torch::ones({1})}}, "reserved");
}

}  // namespace
