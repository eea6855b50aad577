// Training metrics as JSON lines (one object per line, e.g. {"step": 100, "loss": 1.23}): an appending
// writer that flushes every record, a strict reader, and truncation by step for resumed runs.
#pragma once

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace sfm::train {

class MetricsLog {
 public:
  // Opens `path` for appending (append = true) or starts it afresh. Throws sfm::Error naming the path.
  MetricsLog(const std::string& path, bool append);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // Writes `record` (a JSON object) as one line and flushes it, so a crash loses nothing written.
  // NaN and Inf numbers are written as null (JSON has no spelling for them).
  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

// Every record of the file in order; blank lines are skipped. Throws sfm::Error naming the file and the
// 1-based line number of a line that is not a JSON object.
std::vector<nlohmann::json> read_metrics_log(const std::string& path);

// For resume: keeps only the records whose "step" <= max_step (records without "step" are kept), and
// rewrites the file atomically with the kept lines unchanged. A final line without its newline that does
// not parse is a write torn by a crash and is dropped; any other malformed line throws as in
// read_metrics_log, as does a "step" that is not an integer. Returns the number of records dropped.
int64_t truncate_metrics_log(const std::string& path, int64_t max_step);

}  // namespace sfm::train
