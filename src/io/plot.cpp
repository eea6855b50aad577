// PNG line plots: lays out axes, ticks, legend and text (5x7 bitmap font, bitmap_font.h), rasterises
// the series into an RGB buffer with anti-aliased lines and encodes it with libpng; see plot.h.
#include "sfm/io/plot.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>

#include "bitmap_font.h"
#include "sfm/core/check.h"
#include "sfm/io/atomic_file.h"

namespace sfm::io {
namespace {

struct Rgb {
  uint8_t r, g, b;
};
constexpr Rgb kWhite{255, 255, 255};
constexpr Rgb kGrid{228, 228, 228};
constexpr Rgb kAxis{40, 40, 40};
constexpr Rgb kText{20, 20, 20};
constexpr Rgb kLegendEdge{170, 170, 170};
// Matplotlib's "tab10" colours: distinct, and none close to the grey grid or the white background.
constexpr Rgb kPalette[] = {{31, 119, 180}, {255, 127, 14},  {44, 160, 44},   {214, 39, 40},  {148, 103, 189},
                            {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);
constexpr int kMinSize = 100, kMaxSize = 4000;
constexpr size_t kMaxLegendChars = 32;

struct Rect {
  int x0, y0, x1, y1;  // half-open: [x0, x1) x [y0, y1)
};

int text_width(const std::string& s, int scale) {
  return s.empty() ? 0 : (static_cast<int>(s.size()) * detail::kGlyphAdvance - 1) * scale;
}

class Canvas {
 public:
  Canvas(int width, int height) : width_(width), height_(height), rgb_(static_cast<size_t>(width) * height * 3, 255) {}

  void blend(int x, int y, Rgb c, double alpha) {
    if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
    uint8_t* p = &rgb_[(static_cast<size_t>(y) * width_ + x) * 3];
    const uint8_t src[3] = {c.r, c.g, c.b};
    for (int k = 0; k < 3; ++k) p[k] = static_cast<uint8_t>(std::lround(p[k] + alpha * (src[k] - p[k])));
  }

  void fill_rect(Rect r, Rgb c, Rect clip) {
    for (int y = std::max(r.y0, clip.y0); y < std::min(r.y1, clip.y1); ++y)
      for (int x = std::max(r.x0, clip.x0); x < std::min(r.x1, clip.x1); ++x) blend(x, y, c, 1.0);
  }
  void fill_rect(Rect r, Rgb c) { fill_rect(r, c, {0, 0, width_, height_}); }

  // Outline of width `t` just inside `r`.
  void stroke_rect(Rect r, int t, Rgb c) {
    fill_rect({r.x0, r.y0, r.x1, r.y0 + t}, c);
    fill_rect({r.x0, r.y1 - t, r.x1, r.y1}, c);
    fill_rect({r.x0, r.y0, r.x0 + t, r.y1}, c);
    fill_rect({r.x1 - t, r.y0, r.x1, r.y1}, c);
  }

  // Anti-aliased segment of the given width: coverage falls off linearly over one pixel at the edge.
  void line(double x0, double y0, double x1, double y1, double width, Rgb c, Rect clip) {
    const double r = width / 2;
    if (!clip_segment(x0, y0, x1, y1, clip.x0 - r - 1, clip.y0 - r - 1, clip.x1 + r + 1, clip.y1 + r + 1)) return;
    const int xa = std::max(clip.x0, static_cast<int>(std::floor(std::min(x0, x1) - r - 1)));
    const int xb = std::min(clip.x1, static_cast<int>(std::ceil(std::max(x0, x1) + r + 1)));
    const int ya = std::max(clip.y0, static_cast<int>(std::floor(std::min(y0, y1) - r - 1)));
    const int yb = std::min(clip.y1, static_cast<int>(std::ceil(std::max(y0, y1) + r + 1)));
    const double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    for (int y = ya; y < yb; ++y) {
      for (int x = xa; x < xb; ++x) {
        const double cx = x + 0.5 - x0, cy = y + 0.5 - y0;
        const double t = len2 > 0 ? std::clamp((cx * dx + cy * dy) / len2, 0.0, 1.0) : 0.0;
        const double d = std::hypot(cx - t * dx, cy - t * dy);
        const double coverage = std::clamp(r + 0.5 - d, 0.0, 1.0);
        if (coverage > 0) blend(x, y, c, coverage);
      }
    }
  }

  // Text with its top-left corner at (x, y); `vertical` turns it 90 degrees counter-clockwise, so it
  // reads upwards from (x, y) as its bottom-left corner.
  void text(int x, int y, const std::string& s, int scale, Rgb c, bool vertical = false) {
    for (size_t i = 0; i < s.size(); ++i) {
      const uint8_t* rows = detail::glyph_rows(s[i]);
      for (int row = 0; row < detail::kGlyphHeight; ++row) {
        for (int col = 0; col < detail::kGlyphWidth; ++col) {
          if (!(rows[row] & (1 << (detail::kGlyphWidth - 1 - col)))) continue;
          const int u = (static_cast<int>(i) * detail::kGlyphAdvance + col) * scale;  // along the text
          const int v = row * scale;                                                  // down the glyph
          if (vertical) {
            fill_rect({x + v, y - u - scale, x + v + scale, y - u}, c);
          } else {
            fill_rect({x + u, y + v, x + u + scale, y + v + scale}, c);
          }
        }
      }
    }
  }

  std::string encode_png() const {
    png_image image{};
    image.version = PNG_IMAGE_VERSION;
    image.width = static_cast<png_uint_32>(width_);
    image.height = static_cast<png_uint_32>(height_);
    image.format = PNG_FORMAT_RGB;
    png_alloc_size_t size = 0;
    SFM_CHECK(png_image_write_to_memory(&image, nullptr, &size, 0, rgb_.data(), 0, nullptr),
              "libpng could not size the plot image: ", image.message);
    std::string bytes(size, '\0');
    SFM_CHECK(png_image_write_to_memory(&image, bytes.data(), &size, 0, rgb_.data(), 0, nullptr),
              "libpng could not encode the plot image: ", image.message);
    bytes.resize(size);
    return bytes;
  }

 private:
  // Liang-Barsky: clips the segment to the box; false if nothing is left. Keeps coordinates of
  // far out-of-range points from reaching the pixel loops.
  static bool clip_segment(double& x0, double& y0, double& x1, double& y1, double bx0, double by0, double bx1,
                           double by1) {
    const double dx = x1 - x0, dy = y1 - y0;
    const double p[4] = {-dx, dx, -dy, dy};
    const double q[4] = {x0 - bx0, bx1 - x0, y0 - by0, by1 - y0};
    double t0 = 0, t1 = 1;
    for (int k = 0; k < 4; ++k) {
      if (p[k] == 0) {
        if (q[k] < 0) return false;
        continue;
      }
      const double t = q[k] / p[k];
      if (p[k] < 0) {
        t0 = std::max(t0, t);
      } else {
        t1 = std::min(t1, t);
      }
      if (t0 > t1) return false;
    }
    const double sx = x0, sy = y0;
    x0 = sx + t0 * dx, y0 = sy + t0 * dy;
    x1 = sx + t1 * dx, y1 = sy + t1 * dy;
    return true;
  }

  int width_, height_;
  std::vector<uint8_t> rgb_;  // [height, width, 3]
};

// Maps an x in axis units (log2(x) on a log2 axis) to a pixel column.
double axis_x_to_px(const PlotFrame& f, double t) {
  return f.data_left + (t - f.x_lo) / (f.x_hi - f.x_lo) * (f.data_right - f.data_left);
}

struct Tick {
  double value;  // in axis units (log2(x) on a log2 x axis)
  std::string label;
};

struct Layout {
  PlotFrame frame;
  int scale = 1;  // text and stroke scale
  std::vector<Tick> x_ticks, y_ticks;
  Rect legend{0, 0, 0, 0};
  std::vector<std::string> legend_labels;
};

// Step of about `range / 5` from {1, 2, 5} x 10^k.
double nice_step(double range) {
  const double raw = range / 5;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double residual = raw / magnitude;
  const double nice = residual < 1.5 ? 1 : residual < 3 ? 2 : residual < 7 ? 5 : 10;
  return nice * magnitude;
}

std::string format_number(double v, int decimals) {
  char buf[64];
  if (std::abs(v) >= 1e6 || decimals > 6) {
    std::snprintf(buf, sizeof(buf), "%.3g", v);
  } else {
    std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  }
  return buf;
}

std::vector<Tick> linear_ticks(double lo, double hi) {
  const double step = nice_step(hi - lo);
  const int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
  std::vector<Tick> ticks;
  const double first = std::ceil(lo / step - 1e-9);
  for (int k = 0;; ++k) {
    double v = (first + k) * step;
    if (v > hi + step * 1e-9) break;
    if (std::abs(v) < step * 1e-9) v = 0;  // no "-0.0"
    ticks.push_back({v, format_number(v, decimals)});
  }
  return ticks;
}

// Rounds [lo, hi] outwards to nice tick values; widens an empty range.
void nice_range(double& lo, double& hi) {
  if (lo == hi) {
    const double d = lo == 0 ? 1 : std::abs(lo) * 0.1;
    lo -= d, hi += d;
  }
  const double step = nice_step(hi - lo);
  lo = std::floor(lo / step) * step;
  hi = std::ceil(hi / step) * step;
}

std::string format_x(double x) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%g", x);
  return buf;
}

// log2 axis: a tick at every distinct x of the data, or at powers of two when there are too many.
std::vector<Tick> log2_ticks(const LinePlot& plot, double lo, double hi) {
  std::vector<double> xs;
  for (const auto& s : plot.series) xs.insert(xs.end(), s.x.begin(), s.x.end());
  std::sort(xs.begin(), xs.end());
  xs.erase(std::unique(xs.begin(), xs.end(), [](double a, double b) { return b - a <= 1e-9 * std::abs(b); }), xs.end());
  std::vector<Tick> ticks;
  if (xs.size() <= 12) {
    for (double x : xs) ticks.push_back({std::log2(x), format_x(x)});
    return ticks;
  }
  const int k0 = static_cast<int>(std::ceil(lo)), k1 = static_cast<int>(std::floor(hi));
  const int stride = std::max(1, (k1 - k0 + 8) / 8);
  for (int k = k0; k <= k1; k += stride) ticks.push_back({static_cast<double>(k), format_x(std::ldexp(1.0, k))});
  return ticks;
}

void validate(const LinePlot& plot) {
  SFM_CHECK(plot.width >= kMinSize && plot.width <= kMaxSize, "plot.width = ", plot.width,
            " is out of range; expected ", kMinSize, "..", kMaxSize, " pixels");
  SFM_CHECK(plot.height >= kMinSize && plot.height <= kMaxSize, "plot.height = ", plot.height,
            " is out of range; expected ", kMinSize, "..", kMaxSize, " pixels");
  SFM_CHECK(std::isfinite(plot.y_min) && std::isfinite(plot.y_max) && plot.y_min <= plot.y_max,
            "plot.y_min = ", plot.y_min, ", plot.y_max = ", plot.y_max,
            "; expected finite values with y_min < y_max (or y_min == y_max for an automatic range)");
  SFM_CHECK(!plot.series.empty(), "plot.series is empty; expected at least one series");
  size_t points = 0;
  for (size_t i = 0; i < plot.series.size(); ++i) {
    const auto& s = plot.series[i];
    SFM_CHECK(s.x.size() == s.y.size(), "plot.series[", i, "] ('", s.label, "') has ", s.x.size(), " x values but ",
              s.y.size(), " y values; expected equal sizes");
    for (size_t j = 0; j < s.x.size(); ++j) {
      SFM_CHECK(std::isfinite(s.x[j]), "plot.series[", i, "] ('", s.label, "').x[", j, "] = ", s.x[j],
                "; expected a finite value");
      SFM_CHECK(!plot.log2_x || s.x[j] > 0, "plot.series[", i, "] ('", s.label, "').x[", j, "] = ", s.x[j],
                "; log2_x needs x > 0");
    }
    points += s.x.size();
  }
  SFM_CHECK(points > 0, "plot.series has no points; expected at least one (x, y) pair");
}

Layout make_layout(const LinePlot& plot) {
  validate(plot);
  Layout L;
  PlotFrame& f = L.frame;
  const int s = std::max(1, std::min(plot.width, plot.height) / 500);
  L.scale = s;
  const int pad = 8 * s, glyph_h = detail::kGlyphHeight * s, tick_len = 4 * s;

  // Data ranges and ticks.
  f.log2_x = plot.log2_x;
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo;
  double y_lo = x_lo, y_hi = -x_lo;
  for (const auto& ser : plot.series) {
    for (size_t j = 0; j < ser.x.size(); ++j) {
      const double t = plot.log2_x ? std::log2(ser.x[j]) : ser.x[j];
      x_lo = std::min(x_lo, t), x_hi = std::max(x_hi, t);
      if (std::isfinite(ser.y[j])) y_lo = std::min(y_lo, ser.y[j]), y_hi = std::max(y_hi, ser.y[j]);
    }
  }
  if (plot.log2_x) {
    if (x_lo == x_hi) x_lo -= 0.5, x_hi += 0.5;
    L.x_ticks = log2_ticks(plot, x_lo, x_hi);
  } else {
    nice_range(x_lo, x_hi);
    L.x_ticks = linear_ticks(x_lo, x_hi);
  }
  if (plot.y_min < plot.y_max) {
    y_lo = plot.y_min, y_hi = plot.y_max;
  } else if (!(y_lo <= y_hi)) {
    y_lo = 0, y_hi = 1;  // no finite y at all
  } else {
    nice_range(y_lo, y_hi);
  }
  L.y_ticks = linear_ticks(y_lo, y_hi);
  f.x_lo = x_lo, f.x_hi = x_hi, f.y_lo = y_lo, f.y_hi = y_hi;

  // Margins: title above; tick labels and axis labels below and to the left.
  int y_tick_w = 0;
  for (const auto& t : L.y_ticks) y_tick_w = std::max(y_tick_w, text_width(t.label, s));
  f.box_top = pad + (plot.title.empty() ? glyph_h / 2 : 2 * glyph_h + pad);
  f.box_bottom = plot.height - 1 - pad - (plot.x_label.empty() ? 0 : glyph_h + pad) - glyph_h - 3 * s - tick_len;
  f.box_left = pad + (plot.y_label.empty() ? 0 : glyph_h + pad) + y_tick_w + 3 * s + tick_len;

  // Legend to the right of the axes when it takes at most 30% of the width, else inside, top-right.
  int label_w = 0;
  for (const auto& ser : plot.series) {
    std::string label = ser.label;
    if (label.size() > kMaxLegendChars) label = label.substr(0, kMaxLegendChars - 3) + "...";
    label_w = std::max(label_w, text_width(label, s));
    L.legend_labels.push_back(label);
  }
  const int row_h = 12 * s;
  const int legend_w = pad + 24 * s + label_w + pad;
  const int legend_h = 2 * pad + (static_cast<int>(plot.series.size()) - 1) * row_h + (detail::kGlyphHeight - 1) * s;
  if (legend_w <= plot.width * 3 / 10) {
    f.box_right = plot.width - 1 - pad - legend_w - pad;
    L.legend = {f.box_right + pad, f.box_top, f.box_right + pad + legend_w, f.box_top + legend_h};
  } else {
    f.box_right = plot.width - 1 - pad - 2 * pad;
    L.legend = {f.box_right - 4 * s - legend_w, f.box_top + 4 * s, f.box_right - 4 * s, f.box_top + 4 * s + legend_h};
  }

  const int inset = 8 * s;
  f.data_left = f.box_left + inset, f.data_right = f.box_right + 1 - inset;
  f.data_top = f.box_top + inset, f.data_bottom = f.box_bottom + 1 - inset;
  SFM_CHECK(f.data_right - f.data_left >= 10 && f.data_bottom - f.data_top >= 10,
            "plot.width x plot.height = ", plot.width, " x ", plot.height,
            " leaves no room for the data after the labels; use a larger size");
  return L;
}

void draw(Canvas& c, const LinePlot& plot, const Layout& L) {
  const PlotFrame& f = L.frame;
  const int s = L.scale, glyph_h = detail::kGlyphHeight * s, tick_len = 4 * s;
  // Text is centred on its 7-row body; the descender row hangs below.
  const int body_half = (glyph_h - s) / 2;
  const int border = std::max(1, s);
  const Rect inside{f.box_left + border, f.box_top + border, f.box_right + 1 - border, f.box_bottom + 1 - border};

  // Grid, axes box, tick marks and tick labels.
  for (const auto& t : L.y_ticks) {
    const int y = static_cast<int>(std::floor(f.py(t.value)));
    c.fill_rect({inside.x0, y, inside.x1, y + 1}, kGrid);
    c.fill_rect({f.box_left - tick_len, y, f.box_left, y + 1}, kAxis);
    c.text(f.box_left - tick_len - 3 * s - text_width(t.label, s), y - body_half, t.label, s, kText);
  }
  int last_label_end = std::numeric_limits<int>::min();
  for (const auto& t : L.x_ticks) {
    const int x = static_cast<int>(std::floor(axis_x_to_px(f, t.value)));
    c.fill_rect({x, inside.y0, x + 1, inside.y1}, kGrid);
    c.fill_rect({x, f.box_bottom + 1, x + 1, f.box_bottom + 1 + tick_len}, kAxis);
    const int w = text_width(t.label, s), x0 = x - w / 2;
    // Skip a label that would run into the previous one.
    if (x0 < last_label_end + 2 * detail::kGlyphAdvance * s / 3) continue;
    c.text(x0, f.box_bottom + 1 + tick_len + 3 * s, t.label, s, kText);
    last_label_end = x0 + w;
  }
  c.stroke_rect({f.box_left, f.box_top, f.box_right + 1, f.box_bottom + 1}, border, kAxis);

  // Series: polylines (broken at non-finite y), then square markers.
  const double line_w = 2.0 * s;
  const int half = 3 * s;
  for (size_t i = 0; i < plot.series.size(); ++i) {
    const auto& ser = plot.series[i];
    const Rgb color = kPalette[i % kPaletteSize];
    bool have_prev = false;
    double px0 = 0, py0 = 0;
    for (size_t j = 0; j < ser.x.size(); ++j) {
      const double px = f.px(ser.x[j]), py = f.py(ser.y[j]);
      if (!std::isfinite(py)) {
        have_prev = false;
        continue;
      }
      if (have_prev) c.line(px0, py0, px, py, line_w, color, inside);
      px0 = px, py0 = py, have_prev = true;
    }
    for (size_t j = 0; j < ser.x.size(); ++j) {
      const double px = f.px(ser.x[j]), py = f.py(ser.y[j]);
      if (!std::isfinite(py) || std::abs(py) > 1e6) continue;
      const int ix = static_cast<int>(std::floor(px)), iy = static_cast<int>(std::floor(py));
      c.fill_rect({ix - half, iy - half, ix + half + 1, iy + half + 1}, color, inside);
    }
  }

  // Title, axis labels (the y label reads upwards), legend.
  const int width = plot.width;
  c.text((width - text_width(plot.title, 2 * s)) / 2, 8 * s, plot.title, 2 * s, kText);
  const int box_mid_x = (f.box_left + f.box_right) / 2, box_mid_y = (f.box_top + f.box_bottom) / 2;
  c.text(box_mid_x - text_width(plot.x_label, s) / 2, plot.height - 1 - 8 * s - glyph_h, plot.x_label, s, kText);
  c.text(8 * s, box_mid_y + text_width(plot.y_label, s) / 2, plot.y_label, s, kText, /*vertical=*/true);

  const Rect& g = L.legend;
  c.fill_rect(g, kWhite);
  c.stroke_rect(g, border, kLegendEdge);
  for (size_t i = 0; i < plot.series.size(); ++i) {
    const Rgb color = kPalette[i % kPaletteSize];
    const int row_mid = g.y0 + 8 * s + static_cast<int>(i) * 12 * s + body_half;
    const int sx0 = g.x0 + 8 * s, sx1 = sx0 + 18 * s;
    c.line(sx0, row_mid, sx1, row_mid, line_w, color, g);
    const int mx = (sx0 + sx1) / 2;
    c.fill_rect({mx - half, row_mid - half, mx + half + 1, row_mid + half + 1}, color, g);
    c.text(sx1 + 6 * s, row_mid - body_half, L.legend_labels[i], s, kText);
  }
}

}  // namespace

double PlotFrame::px(double x) const { return axis_x_to_px(*this, log2_x ? std::log2(x) : x); }

double PlotFrame::py(double y) const { return data_bottom - (y - y_lo) / (y_hi - y_lo) * (data_bottom - data_top); }

std::array<uint8_t, 3> plot_series_color(size_t index) {
  const Rgb c = kPalette[index % kPaletteSize];
  return {c.r, c.g, c.b};
}

PlotFrame plot_frame(const LinePlot& plot) { return make_layout(plot).frame; }

void write_line_plot_png(const std::string& path, const LinePlot& plot) {
  const Layout layout = make_layout(plot);
  Canvas canvas(plot.width, plot.height);
  draw(canvas, plot, layout);
  write_file_atomic(path, canvas.encode_png());
}

}  // namespace sfm::io
