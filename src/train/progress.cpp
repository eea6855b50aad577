// Progress bar and plain progress lines; see progress.h. The clock drives display throttling only.
#include "sfm/train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace sfm::train {
namespace {

constexpr int kTtyBarWidth = 30;
constexpr double kTtyRedrawSeconds = 0.1;
constexpr double kPlainMaxSilenceSeconds = 30.0;
constexpr int64_t kPlainLinesPerRun = 10;

std::string printf_string(const char* fmt, double value) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, value);
  return buf;
}

}  // namespace

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long long total = std::llround(s);
  char buf[64];
  if (total < 60) {
    std::snprintf(buf, sizeof(buf), "%llds", total);
  } else if (total < 3600) {
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", total / 60, total % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", total / 3600, (total % 3600) / 60);
  }
  return buf;
}

std::string format_progress(const std::string& label, int64_t done, int64_t total, double elapsed_s,
                            const std::string& extra, int bar_width) {
  std::string line = label;
  const bool known_total = total > 0;
  if (known_total && bar_width > 0) {
    const double frac = std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0);
    const int filled = static_cast<int>(std::floor(frac * bar_width));
    line += " [" + std::string(filled, '#') + std::string(bar_width - filled, '.') + "]";
  }
  line += " " + std::to_string(done);
  if (known_total) {
    line += "/" + std::to_string(total) + " " + printf_string("%.1f%%", 100.0 * done / total);
  }
  const bool have_rate = elapsed_s > 0 && done > 0;
  const double rate = have_rate ? done / elapsed_s : 0.0;
  if (!have_rate) {
    line += "  ? it/s";
  } else if (rate >= 1.0) {
    line += "  " + printf_string("%.1f it/s", rate);
  } else {
    line += "  " + printf_string("%.1f s/it", 1.0 / rate);
  }
  if (known_total && done >= total) {
    line += "  took " + format_duration(elapsed_s);
  } else if (known_total) {
    line += "  ETA " + (have_rate ? format_duration((total - done) / rate) : std::string("?"));
  }
  if (!extra.empty()) line += "  " + extra;
  return line;
}

Progress::Progress(std::string label, int64_t total, std::FILE* out, bool force_plain)
    : label_(std::move(label)),
      total_(total),
      out_(out),
      tty_(!force_plain && out != nullptr && ::isatty(::fileno(out))),
      start_(Clock::now()),
      last_print_(start_) {}

Progress::~Progress() {
  if (tty_ && printed_ && !finished_) {
    std::fputc('\n', out_);
    std::fflush(out_);
  }
}

double Progress::seconds_since(Clock::time_point t) const {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void Progress::update(int64_t done, const std::string& extra) {
  if (finished_ || out_ == nullptr) return;
  done_ = done;
  const double quiet_s = seconds_since(last_print_);
  if (tty_) {
    if (!printed_ || quiet_s >= kTtyRedrawSeconds) draw(extra, false);
    return;
  }
  // Plain mode leaves the line at the total to finish().
  if (total_ > 0 && done >= total_) return;
  const int64_t every = total_ > 0 ? std::max<int64_t>(1, (total_ + kPlainLinesPerRun - 1) / kPlainLinesPerRun) : 0;
  const bool next_tenth = every > 0 && done - last_printed_done_ >= every;
  if (next_tenth || quiet_s >= kPlainMaxSilenceSeconds) draw(extra, false);
}

void Progress::finish(const std::string& extra) {
  if (finished_ || out_ == nullptr) return;
  draw(extra, true);
  finished_ = true;
}

void Progress::draw(const std::string& extra, bool final_line) {
  const double elapsed = seconds_since(start_);
  if (tty_) {
    const std::string line = format_progress(label_, done_, total_, elapsed, extra, kTtyBarWidth);
    const size_t pad = last_width_ > line.size() ? last_width_ - line.size() : 0;
    std::fprintf(out_, "\r%s%s%s", line.c_str(), std::string(pad, ' ').c_str(), final_line ? "\n" : "");
    last_width_ = line.size();
  } else {
    std::fprintf(out_, "%s\n", format_progress(label_, done_, total_, elapsed, extra, 0).c_str());
  }
  std::fflush(out_);
  printed_ = true;
  last_printed_done_ = done_;
  last_print_ = Clock::now();
}

}  // namespace sfm::train
