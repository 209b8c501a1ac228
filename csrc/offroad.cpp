#include "offroad.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "thread_pool.h"

namespace genneg {

namespace {

// Cell index of coordinate t (cells of size res starting at origin), as a double clamped to
// [-1, n] so that it converts to int64 without overflow.
double cell_coordinate(double t, double origin, double res, int64_t n) {
  const double q = std::floor((t - origin) / res);
  return std::fmin(std::fmax(q, -1.0), static_cast<double>(n));
}

// x-range [*lo, *hi] of the convex quadrilateral `corners` restricted to ya <= y <= yb: its corners
// inside the strip and its edges' crossings of the strip's two lines. Empty (lo > hi) if none.
void strip_x_range(const double corners[4][2], double ya, double yb, double* lo, double* hi) {
  double l = INFINITY, h = -INFINITY;
  for (int k = 0; k < 4; ++k) {
    const double px = corners[k][0], py = corners[k][1];
    if (py >= ya && py <= yb) {
      l = std::fmin(l, px);
      h = std::fmax(h, px);
    }
    const double qx = corners[(k + 1) & 3][0], qy = corners[(k + 1) & 3][1];
    for (const double yl : {ya, yb}) {
      if ((py < yl && qy > yl) || (py > yl && qy < yl)) {
        const double x = px + (yl - py) * (qx - px) / (qy - py);
        l = std::fmin(l, x);
        h = std::fmax(h, x);
      }
    }
  }
  *lo = l;
  *hi = h;
}

// Calls hit(j) for the non-drivable cells j0 <= j <= j1 of row i, in order, until one returns true
// (then returns true). Rows with contiguous cells are scanned eight cells at a time: a word with no
// zero byte (the common case under a vehicle) is skipped whole.
template <typename Hit>
bool for_each_zero_cell(const Raster& raster, int64_t i, int64_t j0, int64_t j1, Hit&& hit) {
  const uint8_t* row = raster.data + i * raster.stride_row;
  constexpr uint64_t kOnes = 0x0101010101010101ULL;
  constexpr uint64_t kHighs = 0x8080808080808080ULL;
  auto scan_word = [&](int64_t j) {  // cells j .. j+7
    uint64_t word;
    std::memcpy(&word, row + j, sizeof(word));
    if (((word - kOnes) & ~word & kHighs) == 0) return false;  // no zero byte among these 8 cells
    for (int64_t k = j; k < j + 8; ++k) {
      if (row[k] == 0 && hit(k)) return true;
    }
    return false;
  };
  if (raster.stride_col == 1 && j1 - j0 + 1 >= 8) {
    int64_t j = j0;
    for (; j + 8 <= j1 + 1; j += 8) {
      if (scan_word(j)) return true;
    }
    // The last partial word overlaps the previous one: cells seen twice are simply tested again.
    return j <= j1 && scan_word(j1 - 7);
  }
  for (int64_t j = j0; j <= j1; ++j) {
    if (row[j * raster.stride_col] == 0 && hit(j)) return true;
  }
  return false;
}

}  // namespace

bool rect_offroad_exact(const Rect& r, const Raster& raster) {
  const double res = raster.resolution;
  const double ox = raster.origin_x, oy = raster.origin_y;
  const double x_lo = r.cx - r.ex, x_hi = r.cx + r.ex;
  const double y_lo = r.cy - r.ey, y_hi = r.cy + r.ey;
  // The bounding box's extremes are corners: one strictly outside the raster means part of the box is.
  if (x_lo < ox || y_lo < oy) return true;
  if (x_hi > ox + static_cast<double>(raster.width) * res) return true;
  if (y_hi > oy + static_cast<double>(raster.height) * res) return true;
  // Candidate cells: those whose closed extent meets the bounding box; widened by one where the
  // division rounded, so that no cell whose interior meets the box is skipped. The exact test decides.
  int64_t j0 = static_cast<int64_t>(cell_coordinate(x_lo, ox, res, raster.width));
  int64_t j1 = static_cast<int64_t>(cell_coordinate(x_hi, ox, res, raster.width));
  int64_t i0 = static_cast<int64_t>(cell_coordinate(y_lo, oy, res, raster.height));
  int64_t i1 = static_cast<int64_t>(cell_coordinate(y_hi, oy, res, raster.height));
  if (j0 > 0 && ox + static_cast<double>(j0) * res > x_lo) --j0;
  if (i0 > 0 && oy + static_cast<double>(i0) * res > y_lo) --i0;
  if (j1 < raster.width - 1 && ox + static_cast<double>(j1 + 1) * res < x_hi) ++j1;
  if (i1 < raster.height - 1 && oy + static_cast<double>(i1 + 1) * res < y_hi) ++i1;
  j0 = std::max<int64_t>(j0, 0);
  i0 = std::max<int64_t>(i0, 0);
  j1 = std::min<int64_t>(j1, raster.width - 1);
  i1 = std::min<int64_t>(i1, raster.height - 1);
  double corners[4][2];
  bool have_corners = false;
  for (int64_t i = i0; i <= i1; ++i) {
    const double y0 = oy + static_cast<double>(i) * res;
    const double y1 = oy + static_cast<double>(i + 1) * res;
    // Computed at the first non-drivable cell of the row: the x-range of the rectangle's slice by this
    // row, widened by a relative 1e-9 for rounding, so cells under the bounding box's empty corners are
    // dismissed without the full test. The exact test decides every cell that remains.
    double slice_lo = 0.0, slice_hi = -1.0;
    bool have_slice = false;
    auto bad_cell_overlaps = [&](int64_t j) {
      const double x0 = ox + static_cast<double>(j) * res;
      const double x1 = ox + static_cast<double>(j + 1) * res;
      if (!have_slice) {
        if (!have_corners) {
          rect_corners(r, corners);
          have_corners = true;
        }
        strip_x_range(corners, std::fmax(y0, y_lo), std::fmin(y1, y_hi), &slice_lo, &slice_hi);
        const double tol = 1e-9 * (res + std::fabs(slice_lo) + std::fabs(slice_hi));
        slice_lo -= tol;
        slice_hi += tol;
        have_slice = true;
      }
      if (x1 <= slice_lo || x0 >= slice_hi) return false;
      return rect_overlaps_cell(r, x0, x1, y0, y1);
    };
    if (for_each_zero_cell(raster, i, j0, j1, bad_cell_overlaps)) return true;
  }
  return false;
}

bool rect_offroad_corners(const Rect& r, const Raster& raster) {
  double corners[4][2];
  rect_corners(r, corners);
  const double res = raster.resolution;
  const double x_max = raster.origin_x + static_cast<double>(raster.width) * res;
  const double y_max = raster.origin_y + static_cast<double>(raster.height) * res;
  for (const auto& p : corners) {
    if (p[0] < raster.origin_x || p[0] > x_max || p[1] < raster.origin_y || p[1] > y_max) return true;
    const auto j = static_cast<int64_t>(cell_coordinate(p[0], raster.origin_x, res, raster.width));
    const auto i = static_cast<int64_t>(cell_coordinate(p[1], raster.origin_y, res, raster.height));
    if (!raster.drivable(std::clamp<int64_t>(i, 0, raster.height - 1),
                         std::clamp<int64_t>(j, 0, raster.width - 1))) {
      return true;
    }
  }
  return false;
}

void offroad(const BoxBatch& batch, const Raster& raster, OffroadMode mode, int threads, uint8_t* out) {
  const int64_t A = batch.agents;
  parallel_for(batch.scenes, threads, [&](int64_t begin, int64_t end) {
    SceneRects scene;
    for (int64_t s = begin; s < end; ++s) {
      uint8_t* row = out + s * A;
      for (int64_t a = 0; a < A; ++a) row[a] = 0;
      load_scene(batch, s, 0.0, &scene);
      for (size_t k = 0; k < scene.rects.size(); ++k) {
        const bool off = mode == OffroadMode::kExact ? rect_offroad_exact(scene.rects[k], raster)
                                                     : rect_offroad_corners(scene.rects[k], raster);
        row[scene.slots[k]] = off ? 1 : 0;
      }
    }
  }, std::max<int64_t>(1, 2000 / std::max<int64_t>(1, A)));  // ~2,000 boxes per thread at least
}

}  // namespace genneg
