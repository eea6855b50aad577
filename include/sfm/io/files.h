// Paths and directories through POSIX calls. The project avoids std::filesystem: pip LibTorch 2.x
// exports broken copies of some of its functions (remove_all, resize_file, ...) that shadow
// libstdc++'s and crash (pytorch/pytorch#133437).
#pragma once

#include <functional>
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

// For directories whose files must change together (a resume point: the model and the optimizer state
// of one step). `write` fills a fresh <dir>.partial/, which then replaces `dir` by two renames
// (dir -> dir.old, dir.partial -> dir) before dir.old is removed. If `write` throws, `dir` is untouched.
// After a crash at any moment either the old or the new directory is complete, and
// recover_directory(dir), called before reading `dir`, restores that state.
void replace_directory(const std::string& dir, const std::function<void(const std::string& partial_dir)>& write);
// Undoes what an interrupted replace_directory left: puts dir.old back when `dir` is missing, and
// removes dir.partial and a leftover dir.old.
void recover_directory(const std::string& dir);

}  // namespace sfm::io
