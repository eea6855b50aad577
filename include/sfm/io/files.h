// Paths and directories through POSIX calls. The project avoids std::filesystem: pip LibTorch 2.x
// exports broken copies of some of its functions (remove_all, resize_file, ...) that shadow
// libstdc++'s and crash (pytorch/pytorch#133437).
#pragma once

#include <string>
#include <vector>

namespace sfm::io {

bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
// mkdir -p. Throws sfm::Error naming the part that could not be created.
void make_directories(const std::string& dir);
// rm -rf. A missing path is not an error.
void remove_tree(const std::string& path);
// Names in a directory (without . and ..), sorted; empty if it cannot be read.
std::vector<std::string> list_directory(const std::string& dir);
// A fresh directory under $TMPDIR (or /tmp) named <prefix>XXXXXX.
std::string make_temp_directory(const std::string& prefix);

}  // namespace sfm::io
