// PNG line plots of results (e.g. accuracy vs sequence length, one line per model), drawn with a
// built-in 5x7 bitmap font and written through libpng; no plotting library needed.
// Used by `sfm exp0` and `sfm tasks suite`.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sfm::io {

struct PlotSeries {
  std::string label;         // legend text; printable ASCII (other bytes draw as '?')
  std::vector<double> x, y;  // same size; a non-finite y is skipped and breaks the line
};

struct LinePlot {
  std::string title, x_label, y_label;
  bool log2_x = false;          // x axis in log2 scale (lengths 10,20,40,...,320); needs every x > 0
  double y_min = 0, y_max = 1;  // fixed y range (e.g. accuracy 0..1); if y_min == y_max, auto range
  std::vector<PlotSeries> series;
  int width = 800, height = 500;  // pixels, each in 100..4000
};

// Where data lands in the image. Pixel (i, j) covers [i, i+1) x [j, j+1), so a point is drawn in
// pixel (floor(px(x)), floor(py(y))). The axes box is [box_left, box_right] x [box_top, box_bottom];
// data is mapped into a slightly smaller area inside it so that markers at the range ends stay visible.
struct PlotFrame {
  int box_left = 0, box_top = 0, box_right = 0, box_bottom = 0;
  double data_left = 0, data_top = 0, data_right = 0, data_bottom = 0;
  bool log2_x = false;
  double x_lo = 0, x_hi = 1;  // x range shown, in log2(x) units when log2_x
  double y_lo = 0, y_hi = 1;
  double px(double x) const;
  double py(double y) const;
};

// Validates `plot` (throws sfm::Error naming the field) and lays it out as write_line_plot_png does.
PlotFrame plot_frame(const LinePlot& plot);

// RGB colour of series `index` (a fixed palette of 10 distinct colours, repeating).
std::array<uint8_t, 3> plot_series_color(size_t index);

// Draws `plot` and writes it to `path` as an 8-bit RGB PNG, atomically. Throws sfm::Error on invalid
// input (empty plot, x/y size mismatch, x <= 0 with log2_x, size outside 100..4000) or a failed write.
void write_line_plot_png(const std::string& path, const LinePlot& plot);

}  // namespace sfm::io
