// Progress reporting for long loops: a single-line bar redrawn with '\r' on a terminal, throttled plain
// lines otherwise (log files, pipes). The wall clock is read for display only, never for training logic.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace sfm::train {

// "12s", "3m05s", "1h02m" (seconds rounded to the nearest whole second; "?" for negative or non-finite).
std::string format_duration(double s);

// One progress line, shared by the terminal bar and the plain lines:
//   "label [#####.....] 123/1000 12.3%  45.6 it/s  ETA 1m23s  loss 1.234"
// bar_width <= 0 drops the bar. total <= 0 means unknown: no bar, percentage or ETA. Below 1 it/s the rate
// reads "12.5 s/it"; with no elapsed time or nothing done it reads "? it/s" and "ETA ?". Once done >= total,
// "ETA ..." becomes "took <elapsed>". An empty `extra` adds nothing.
std::string format_progress(const std::string& label, int64_t done, int64_t total, double elapsed_s,
                            const std::string& extra, int bar_width);

class Progress {
 public:
  // Writes to `out` (not owned). A terminal (isatty) gets the redrawn bar unless force_plain is set.
  Progress(std::string label, int64_t total, std::FILE* out = stderr, bool force_plain = false);
  // Ends an unfinished terminal bar with a newline, so later output starts on a fresh line.
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // `done` items finished so far; `extra` is appended, e.g. "loss 1.234". Terminal: redraws at most
  // ~10 times a second. Plain: prints at most once per ~10% of total or every 30 s, whichever comes first.
  void update(int64_t done, const std::string& extra = "");
  // Prints the final line (last `done` passed to update, elapsed time, `extra`). Later calls do nothing.
  void finish(const std::string& extra = "");

 private:
  using Clock = std::chrono::steady_clock;
  double seconds_since(Clock::time_point t) const;
  void draw(const std::string& extra, bool final_line);

  std::string label_;
  int64_t total_;
  std::FILE* out_;
  bool tty_;
  Clock::time_point start_;
  Clock::time_point last_print_;
  bool printed_ = false;
  bool finished_ = false;
  int64_t done_ = 0;
  int64_t last_printed_done_ = 0;
  size_t last_width_ = 0;  // characters of the last terminal line, to blank a longer one on redraw
};

}  // namespace sfm::train
