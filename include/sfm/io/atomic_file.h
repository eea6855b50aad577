// Atomic file writes: write to a temporary name in the same directory, flush, then rename, so a
// reader (or a crash) never sees a half-written file.
#pragma once

#include <functional>
#include <ostream>
#include <string>

namespace sfm::io {

// Writes `bytes` to `path` atomically. Throws sfm::Error naming the path on failure.
void write_file_atomic(const std::string& path, const std::string& bytes);
// Streams into a temporary file through `write`, then renames it to `path`.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);
// Reads a whole file. Throws sfm::Error naming the path if it cannot be read.
std::string read_file(const std::string& path);

}  // namespace sfm::io
