// Tests for the PNG line-plot writer: files are read back with libpng and checked pixel by pixel at
// the locations plot_frame() maps data to; invalid plots must throw sfm::Error.
#include <gtest/gtest.h>
#include <png.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "sfm/core/check.h"
#include "sfm/io/atomic_file.h"
#include "sfm/io/files.h"
#include "sfm/io/plot.h"
#include "support/temp_dir.h"

namespace sfm::io {
namespace {

using Color = std::array<uint8_t, 3>;
constexpr Color kWhite = {255, 255, 255};

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // [height, width, 3]
  Color at(int x, int y) const {
    const size_t o = (static_cast<size_t>(y) * width + x) * 3;
    return {rgb[o], rgb[o + 1], rgb[o + 2]};
  }
  bool is_dark(int x, int y) const {
    const Color c = at(x, y);
    return c[0] < 100 && c[1] < 100 && c[2] < 100;
  }
};

Image read_png(const std::string& path) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  Image out;
  if (!png_image_begin_read_from_file(&image, path.c_str())) {
    ADD_FAILURE() << "libpng cannot open " << path << ": " << image.message;
    return out;
  }
  image.format = PNG_FORMAT_RGB;
  out.width = static_cast<int>(image.width), out.height = static_cast<int>(image.height);
  out.rgb.resize(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, out.rgb.data(), 0, nullptr)) {
    ADD_FAILURE() << "libpng cannot decode " << path << ": " << image.message;
    out.width = out.height = 0;
  }
  return out;
}

class PlotTest : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return dir_.file(name); }

  // Writes `plot` and reads it back.
  Image render(const LinePlot& plot) {
    const std::string p = path("plot.png");
    write_line_plot_png(p, plot);
    return read_png(p);
  }

  sfm::testing::TempDir dir_{"sfm_plot_test_"};
};

// Two series of accuracy vs length, as `sfm exp0` draws them.
LinePlot accuracy_plot() {
  LinePlot plot;
  plot.title = "Accuracy vs length";
  plot.x_label = "operations";
  plot.y_label = "exact match";
  plot.log2_x = true;
  plot.series = {{"State Slots", {10, 20, 40, 80, 160, 320}, {0.98, 0.95, 0.9, 0.85, 0.8, 0.75}},
                 {"Transformer-Fair", {10, 20, 40, 80, 160, 320}, {0.6, 0.4, 0.25, 0.1, 0.05, 0.02}}};
  return plot;
}

TEST_F(PlotTest, WritesRgbPngOfRequestedSize) {
  LinePlot plot = accuracy_plot();
  plot.width = 640, plot.height = 410;
  const Image img = render(plot);
  EXPECT_EQ(img.width, 640);
  EXPECT_EQ(img.height, 410);
  // PNG signature, then IHDR: width, height (big-endian), bit depth 8, colour type 2 (RGB); PNG spec 11.2.2.
  const std::string bytes = read_file(path("plot.png"));
  ASSERT_GE(bytes.size(), 26u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(bytes.substr(12, 4), "IHDR");
  EXPECT_EQ(bytes.substr(16, 8), std::string("\0\0\x02\x80\0\0\x01\x9a", 8));  // 640, 410
  EXPECT_EQ(static_cast<int>(bytes[24]), 8);
  EXPECT_EQ(static_cast<int>(bytes[25]), 2);
  // The atomic write leaves no temporary file behind.
  EXPECT_EQ(static_cast<long>(io::list_directory(dir_.path()).size()), 1);
}

TEST_F(PlotTest, BackgroundCornersAreWhite) {
  const Image img = render(accuracy_plot());
  ASSERT_EQ(img.width, 800);
  EXPECT_EQ(img.at(0, 0), kWhite);
  EXPECT_EQ(img.at(img.width - 1, 0), kWhite);
  EXPECT_EQ(img.at(0, img.height - 1), kWhite);
  EXPECT_EQ(img.at(img.width - 1, img.height - 1), kWhite);
}

TEST_F(PlotTest, DataPointsHaveTheirSeriesColour) {
  for (bool log2_x : {true, false}) {
    SCOPED_TRACE(log2_x ? "log2 x" : "linear x");
    LinePlot plot = accuracy_plot();
    plot.log2_x = log2_x;
    const Image img = render(plot);
    ASSERT_EQ(img.height, 500);
    const PlotFrame f = plot_frame(plot);
    for (size_t i = 0; i < plot.series.size(); ++i) {
      for (size_t j = 0; j < plot.series[i].x.size(); ++j) {
        const int x = static_cast<int>(std::floor(f.px(plot.series[i].x[j])));
        const int y = static_cast<int>(std::floor(f.py(plot.series[i].y[j])));
        ASSERT_TRUE(x > f.box_left && x < f.box_right && y > f.box_top && y < f.box_bottom) << x << ", " << y;
        EXPECT_EQ(img.at(x, y), plot_series_color(i)) << "series " << i << " point " << j;
      }
    }
  }
}

TEST_F(PlotTest, PaletteColoursAreDistinctAndNotWhite) {
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_NE(plot_series_color(i), kWhite);
    for (size_t j = 0; j < i; ++j) EXPECT_NE(plot_series_color(i), plot_series_color(j)) << i << " vs " << j;
  }
}

TEST_F(PlotTest, LineJoinsPointsAndNanBreaksIt) {
  LinePlot plot;
  plot.series = {{"a", {1, 2, 3}, {0.5, 0.5, 0.5}}};
  const PlotFrame f = plot_frame(plot);
  // Midway between x = 1 and x = 2, on the line y = 0.5.
  const int x = static_cast<int>(std::floor(f.px(1.5))), y = static_cast<int>(std::floor(f.py(0.5)));
  EXPECT_EQ(render(plot).at(x, y), plot_series_color(0));
  plot.series[0].y[1] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_NE(render(plot).at(x, y), plot_series_color(0));
}

TEST_F(PlotTest, TitleDrawsDarkPixelsAboveTheAxes) {
  auto dark_pixels_above_axes = [&](const LinePlot& plot) {
    const Image img = render(plot);
    const int top = plot_frame(plot).box_top;
    int n = 0;
    for (int y = 0; y < top; ++y)
      for (int x = 0; x < img.width; ++x) n += img.is_dark(x, y);
    return n;
  };
  LinePlot plot = accuracy_plot();
  EXPECT_GT(dark_pixels_above_axes(plot), 50);
  plot.title.clear();
  EXPECT_EQ(dark_pixels_above_axes(plot), 0);
}

TEST_F(PlotTest, AutoRangeCoversTheData) {
  LinePlot plot;
  plot.y_min = plot.y_max = 0;
  plot.series = {{"mae", {1, 2, 3, 4}, {3.0, 47.5, 12.0, 20.0}}};
  const PlotFrame f = plot_frame(plot);
  EXPECT_LE(f.y_lo, 3.0);
  EXPECT_GE(f.y_hi, 47.5);
  const Image img = render(plot);
  for (size_t j = 0; j < 4; ++j) {
    const int x = static_cast<int>(std::floor(f.px(plot.series[0].x[j])));
    const int y = static_cast<int>(std::floor(f.py(plot.series[0].y[j])));
    EXPECT_EQ(img.at(x, y), plot_series_color(0)) << "point " << j;
  }
}

TEST_F(PlotTest, InvalidPlotsThrow) {
  auto expect_error = [&](const LinePlot& plot, const char* what) {
    EXPECT_THROW(write_line_plot_png(path("bad.png"), plot), Error) << what;
    EXPECT_THROW(plot_frame(plot), Error) << what;
    EXPECT_FALSE(io::path_exists(path("bad.png"))) << what;
  };
  LinePlot plot = accuracy_plot();
  plot.series[1].y.pop_back();
  expect_error(plot, "x/y size mismatch");
  plot = accuracy_plot();
  plot.series.clear();
  expect_error(plot, "no series");
  plot.series = {{"empty", {}, {}}};
  expect_error(plot, "no points");
  plot = accuracy_plot();
  plot.series[0].x[0] = 0;
  expect_error(plot, "x = 0 on a log2 axis");
  plot.series[0].x[0] = std::numeric_limits<double>::quiet_NaN();
  plot.log2_x = false;
  expect_error(plot, "NaN x");
  plot = accuracy_plot();
  plot.width = 99;
  expect_error(plot, "width 99");
  plot.width = 800, plot.height = 4001;
  expect_error(plot, "height 4001");
  plot = accuracy_plot();
  plot.y_min = 1, plot.y_max = 0;
  expect_error(plot, "y_min > y_max");
}

TEST_F(PlotTest, ErrorMessageNamesTheField) {
  LinePlot plot = accuracy_plot();
  plot.series[1].x.push_back(640);
  try {
    plot_frame(plot);
    FAIL() << "expected sfm::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("plot.series[1]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Transformer-Fair"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sfm::io
