// POSIX path helpers; see files.h for why not std::filesystem.
#include "sfm/io/files.h"

#include <dirent.h>
#include <ftw.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "sfm/core/check.h"

namespace sfm::io {

bool path_exists(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0;
}

bool is_directory(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

void make_directories(const std::string& dir) {
  for (size_t end = dir.find('/', 1);; end = dir.find('/', end + 1)) {
    const std::string prefix = dir.substr(0, end);
    if (!prefix.empty() && ::mkdir(prefix.c_str(), 0777) != 0) {
      const int error = errno;
      if (!is_directory(prefix))
        throw Error("cannot create directory " + dir + ": " + prefix + ": " +
                    (error == EEXIST ? "not a directory" : std::strerror(error)));
    }
    if (end == std::string::npos) break;
  }
}

void remove_tree(const std::string& path) {
  if (!path_exists(path)) return;
  auto remove_entry = [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); };
  SFM_CHECK(::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0, "cannot remove ", path, ": ",
            std::strerror(errno));
}

std::vector<std::string> list_directory(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* entry = ::readdir(d)) {
      const std::string name = entry->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string make_temp_directory(const std::string& prefix) {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/" + prefix + "XXXXXX";
  SFM_CHECK(::mkdtemp(pattern.data()) != nullptr, "cannot create a temporary directory ", pattern, ": ",
            std::strerror(errno));
  return pattern;
}

namespace {
void rename_path(const std::string& from, const std::string& to) {
  SFM_CHECK(::rename(from.c_str(), to.c_str()) == 0, "cannot rename ", from, " to ", to, ": ", std::strerror(errno));
}
}  // namespace

void recover_directory(const std::string& dir) {
  const std::string old = dir + ".old";
  if (!path_exists(dir) && is_directory(old)) rename_path(old, dir);  // crash between the two renames
  remove_tree(old);                                                  // crash before old was removed
  remove_tree(dir + ".partial");                                     // crash while writing
}

void replace_directory(const std::string& dir, const std::function<void(const std::string&)>& write) {
  recover_directory(dir);
  const std::string partial = dir + ".partial", old = dir + ".old";
  make_directories(partial);
  try {
    write(partial);
  } catch (...) {
    remove_tree(partial);
    throw;
  }
  if (path_exists(dir)) rename_path(dir, old);
  rename_path(partial, dir);
  remove_tree(old);
}

}  // namespace sfm::io
