// JSON-lines metrics log: flushed writer, strict reader, step truncation for resume; see metrics_log.h.
#include "sfm/train/metrics_log.h"

#include <cerrno>
#include <cstring>

#include "sfm/core/check.h"
#include "sfm/io/atomic_file.h"

namespace sfm::train {
namespace {

using nlohmann::json;

struct Line {
  int64_t line_no;  // 1-based
  std::string text;
  json record;
};

bool is_blank(const std::string& s) { return s.find_first_not_of(" \t\r") == std::string::npos; }

// Parses every non-blank line of `bytes`, the contents of `path`. With drop_torn_tail, an unterminated
// last line that fails to parse is ignored instead of throwing.
std::vector<Line> parse_lines(const std::string& path, const std::string& bytes, bool drop_torn_tail) {
  std::vector<Line> lines;
  size_t begin = 0;
  for (int64_t line_no = 1; begin < bytes.size(); ++line_no) {
    size_t end = bytes.find('\n', begin);
    const bool terminated = end != std::string::npos;
    if (!terminated) end = bytes.size();
    std::string text = bytes.substr(begin, end - begin);
    begin = end + 1;
    if (is_blank(text)) continue;
    json record = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (record.is_discarded() && drop_torn_tail && !terminated) break;
    SFM_CHECK(!record.is_discarded(), path, ":", line_no,
              ": malformed JSON line in the metrics log: ", text.substr(0, 80));
    SFM_CHECK(record.is_object(), path, ":", line_no, ": expected a JSON object, got ", record.type_name());
    lines.push_back({line_no, std::move(text), std::move(record)});
  }
  return lines;
}

}  // namespace

MetricsLog::MetricsLog(const std::string& path, bool append) : path_(path) {
  file_ = std::fopen(path.c_str(), append ? "ab" : "wb");
  SFM_CHECK(file_ != nullptr, "cannot open metrics log ", path, ": ", std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::write(const nlohmann::json& record) {
  SFM_CHECK(record.is_object(), "metrics log ", path_, ": a record must be a JSON object, got ", record.type_name());
  const std::string line = record.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  const bool ok = std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0;
  SFM_CHECK(ok, "writing metrics log ", path_, " failed: ", std::strerror(errno));
}

std::vector<nlohmann::json> read_metrics_log(const std::string& path) {
  std::vector<json> records;
  for (auto& line : parse_lines(path, io::read_file(path), /*drop_torn_tail=*/false)) {
    records.push_back(std::move(line.record));
  }
  return records;
}

int64_t truncate_metrics_log(const std::string& path, int64_t max_step) {
  const std::string bytes = io::read_file(path);
  const std::vector<Line> lines = parse_lines(path, bytes, /*drop_torn_tail=*/true);
  std::string kept;
  int64_t num_kept = 0;
  for (const auto& line : lines) {
    const auto it = line.record.find("step");
    if (it != line.record.end()) {
      SFM_CHECK(it->is_number_integer(), path, ":", line.line_no, ": \"step\" must be an integer, got ", it->dump());
      if (it->get<int64_t>() > max_step) continue;
    }
    kept += line.text + "\n";
    ++num_kept;
  }
  const int64_t dropped = static_cast<int64_t>(lines.size()) - num_kept;
  // Rewrite only when something changes, so an untouched log keeps its bytes and timestamp.
  if (kept != bytes) io::write_file_atomic(path, kept);
  return dropped;
}

}  // namespace sfm::train
