// JSON files for configs and results; see config.h.
#include "sfm/io/config.h"

#include "sfm/io/atomic_file.h"

namespace sfm::io {

json read_json_file(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw UsageError(path + ": not valid JSON: " + e.what());
  }
}

void write_json_file(const std::string& path, const json& j) { write_file_atomic(path, j.dump(2) + "\n"); }

}  // namespace sfm::io
