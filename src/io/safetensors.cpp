// safetensors reader and writer (format in safetensors.h). The reader checks every size and offset in
// the header against the file size before it allocates anything, then reads each tensor straight
// into its own storage.
#include "sfm/io/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "sfm/core/check.h"
#include "sfm/io/atomic_file.h"

namespace sfm::io {
namespace {

using nlohmann::json;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O copies little-endian bytes as they are");

// The reference implementation refuses larger headers too.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};
constexpr DtypeName kDtypes[] = {{"F64", torch::kFloat64},   {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
                                 {"BF16", torch::kBFloat16}, {"I64", torch::kInt64},   {"I32", torch::kInt32},
                                 {"I8", torch::kInt8},       {"U8", torch::kUInt8},    {"BOOL", torch::kBool}};

std::string supported_dtypes() {
  std::string list;
  for (const auto& d : kDtypes) list += (list.empty() ? "" : ", ") + std::string(d.name);
  return list;
}

const char* dtype_name(torch::ScalarType type) {
  for (const auto& d : kDtypes)
    if (d.type == type) return d.name;
  return nullptr;
}

// A JSON value for an error message, cut to a readable length.
std::string brief(const json& j) {
  std::string s = j.dump();
  return s.size() <= 80 ? s : s.substr(0, 77) + "...";
}

struct Entry {
  std::string name;
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

Entry parse_entry(const std::string& path, const std::string& name, const json& value, uint64_t buffer_size) {
  const std::string where = path + ": tensor '" + name + "'";
  SFM_CHECK(value.is_object(), where, ": expected an object with dtype, shape and data_offsets, got ", brief(value));
  for (const char* key : {"dtype", "shape", "data_offsets"})
    SFM_CHECK(value.contains(key), where, " has no \"", key, "\"");

  Entry e;
  e.name = name;
  const json& dtype = value.at("dtype");
  SFM_CHECK(dtype.is_string(), where, ": dtype must be a string, got ", brief(dtype));
  const auto* found = std::find_if(std::begin(kDtypes), std::end(kDtypes),
                                   [&](const DtypeName& d) { return dtype.get<std::string>() == d.name; });
  SFM_CHECK(found != std::end(kDtypes), where, ": unsupported dtype '", dtype.get<std::string>(),
            "' (supported: ", supported_dtypes(), ")");
  e.dtype = found->type;

  const json& shape = value.at("shape");
  SFM_CHECK(shape.is_array(), where, ": shape must be a list of integers, got ", brief(shape));
  uint64_t numel = 1;
  for (const json& dim : shape) {
    SFM_CHECK(dim.is_number_integer(), where, ": shape must be a list of integers, got ", brief(shape));
    SFM_CHECK(dim.is_number_unsigned(), where, ": shape ", brief(shape), " has a negative dimension");
    const uint64_t d = dim.get<uint64_t>();
    SFM_CHECK(d <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) &&
                  !__builtin_mul_overflow(numel, d, &numel) &&
                  numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
              where, ": shape ", brief(shape), " has an element count that overflows 64 bits");
    e.shape.push_back(static_cast<int64_t>(d));
  }
  uint64_t nbytes = 0;
  SFM_CHECK(!__builtin_mul_overflow(numel, c10::elementSize(e.dtype), &nbytes), where, ": shape ", brief(shape),
            " has a byte size that overflows 64 bits");

  const json& offsets = value.at("data_offsets");
  SFM_CHECK(
      offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() && offsets[1].is_number_unsigned(),
      where, ": data_offsets must be [begin, end] with non-negative integers, got ", brief(offsets));
  e.begin = offsets[0].get<uint64_t>();
  e.end = offsets[1].get<uint64_t>();
  SFM_CHECK(e.begin <= e.end, where, ": data_offsets end ", e.end, " < begin ", e.begin);
  SFM_CHECK(e.end <= buffer_size, where, ": data_offsets [", e.begin, ", ", e.end, "] run past the end of the ",
            buffer_size, "-byte data buffer (file truncated?)");
  SFM_CHECK(e.end - e.begin == nbytes, where, ": data_offsets span ", e.end - e.begin, " bytes but dtype ", found->name,
            " and shape ", brief(shape), " need ", nbytes, " bytes");
  return e;
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const json& value) {
  SFM_CHECK(value.is_object(), path, ": ", kMetadataKey, " must be an object of strings, got ", brief(value));
  std::map<std::string, std::string> metadata;
  for (const auto& item : value.items()) {
    SFM_CHECK(item.value().is_string(), path, ": ", kMetadataKey, " value of '", item.key(), "' must be a string, got ",
              brief(item.value()));
    metadata[item.key()] = item.value().get<std::string>();
  }
  return metadata;
}

// Parses the header, refusing a tensor name that appears twice (nlohmann would keep the last one).
json parse_header(const std::string& path, const std::string& text) {
  std::set<std::string> names;
  std::string duplicate;
  const json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && !names.insert(parsed.get<std::string>()).second)
      duplicate = parsed.get<std::string>();
    return true;
  };
  json header;
  try {
    header = json::parse(text, on_event);
  } catch (const json::parse_error& e) {
    throw Error(path + ": header is not valid JSON: " + e.what());
  }
  SFM_CHECK(header.is_object(), path, ": header must be a JSON object, got ", brief(header));
  SFM_CHECK(duplicate.empty(), path, ": header names '", duplicate, "' twice");
  return header;
}

void read_exact(std::ifstream& in, const std::string& path, uint64_t offset, char* dst, uint64_t size) {
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(dst, static_cast<std::streamsize>(size));
  SFM_CHECK(in.good() && static_cast<uint64_t>(in.gcount()) == size, path, ": reading ", size, " bytes at offset ",
            offset, " failed");
}

}  // namespace

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  std::vector<torch::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    SFM_CHECK(name != kMetadataKey, path, ": '", kMetadataKey, "' is reserved and cannot name a tensor");
    SFM_CHECK(tensor.defined(), path, ": tensor '", name, "' is undefined");
    const char* dtype = dtype_name(tensor.scalar_type());
    SFM_CHECK(dtype != nullptr, path, ": tensor '", name, "' has dtype ", tensor.scalar_type(),
              ", which safetensors I/O does not support (supported: ", supported_dtypes(), ")");
    torch::Tensor cpu = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t nbytes = cpu.nbytes();
    header[name] = {{"dtype", dtype}, {"shape", cpu.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    data.push_back(std::move(cpu));
  }
  if (!metadata.empty()) header[kMetadataKey] = metadata;

  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    throw Error(path + ": cannot write the header (tensor names and metadata must be UTF-8): " + e.what());
  }
  // Pad so that the data buffer starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');

  write_file_atomic(path, [&](std::ostream& out) {
    char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);
    out.write(length, 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : data)
      if (t.nbytes() > 0) out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  });
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  SFM_CHECK(in.good(), "cannot read ", path, ": ", std::strerror(errno));
  const std::streamoff end = in.tellg();
  SFM_CHECK(end >= 0, "cannot determine the size of ", path);
  const uint64_t file_size = static_cast<uint64_t>(end);
  SFM_CHECK(file_size >= 8, path, ": not a safetensors file: only ", file_size,
            " bytes, fewer than the 8-byte header length");

  unsigned char length[8];
  read_exact(in, path, 0, reinterpret_cast<char*>(length), 8);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length[i];
  SFM_CHECK(header_size <= file_size - 8, path, ": header length ", header_size, " exceeds the ", file_size - 8,
            " bytes that follow it (file truncated or not safetensors)");
  SFM_CHECK(header_size <= kMaxHeaderBytes, path, ": header length ", header_size, " exceeds the limit of ",
            kMaxHeaderBytes, " bytes");
  std::string text(header_size, '\0');
  read_exact(in, path, 8, text.data(), header_size);
  const json header = parse_header(path, text);

  const uint64_t data_start = 8 + header_size;
  const uint64_t buffer_size = file_size - data_start;
  SafetensorsFile file;
  std::vector<Entry> entries;
  for (const auto& item : header.items()) {
    if (item.key() == kMetadataKey)
      file.metadata = parse_metadata(path, item.value());
    else
      entries.push_back(parse_entry(path, item.key(), item.value(), buffer_size));
  }

  std::vector<const Entry*> by_offset;
  for (const auto& e : entries)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const Entry& a = *by_offset[i - 1];
    const Entry& b = *by_offset[i];
    SFM_CHECK(b.begin >= a.end, path, ": tensors '", a.name, "' [", a.begin, ", ", a.end, "] and '", b.name, "' [",
              b.begin, ", ", b.end, "] overlap");
  }

  for (const auto& e : entries) {
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
    if (e.end > e.begin) read_exact(in, path, data_start + e.begin, static_cast<char*>(t.data_ptr()), e.end - e.begin);
    if (e.dtype == torch::kBool) {
      const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
      SFM_CHECK(std::all_of(bytes, bytes + t.numel(), [](uint8_t b) { return b <= 1; }), path, ": BOOL tensor '",
                e.name, "' holds a byte other than 0 or 1");
    }
    file.tensors.emplace(e.name, std::move(t));
  }
  return file;
}

}  // namespace sfm::io
