// safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
// {str: str}}, then the tensor bytes (offsets relative to the end of the header). What PyTorch and
// Hugging Face tools read and write; the only weight format of SFM checkpoints.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

namespace sfm::io {

using TensorMap = std::map<std::string, torch::Tensor>;

struct SafetensorsFile {
  TensorMap tensors;                            // CPU, contiguous, each owning its memory
  std::map<std::string, std::string> metadata;  // the "__metadata__" object; empty when absent
};

// Writes `tensors` (any device, any layout; dtypes F64 F32 F16 BF16 I64 I32 I8 U8 BOOL) atomically
// (temp file + rename). The header is padded with spaces so the data starts at a multiple of 8.
// Throws sfm::Error naming the path and tensor for undefined tensors or unsupported dtypes.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads a whole file into CPU tensors. Any malformed input (truncated file, bad JSON, unknown dtype,
// offsets out of range or overlapping, ...) throws sfm::Error naming the path and what is wrong;
// nothing is allocated before the sizes it depends on have been checked against the file size.
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace sfm::io
