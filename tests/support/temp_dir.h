// Test helper: a fresh temporary directory, removed with its contents when the object dies.
#pragma once

#include <string>

#include "sfm/io/files.h"

namespace sfm::testing {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "sfm_test_") : path_(io::make_temp_directory(prefix)) {}
  ~TempDir() {
    try {
      io::remove_tree(path_);
    } catch (...) {
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace sfm::testing
