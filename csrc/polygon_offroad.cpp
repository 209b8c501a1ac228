#include "polygon_offroad.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "exact.h"
#include "thread_pool.h"

namespace genneg {

namespace {

int64_t clamp_cell(double t, int64_t n) {
  if (!(t > 0.0)) return 0;
  if (t >= static_cast<double>(n - 1)) return n - 1;
  return static_cast<int64_t>(t);
}

// Fills a CSR table from (key, segment) items.
void fill_csr(int64_t keys, const std::vector<std::pair<int64_t, uint32_t>>& items, std::vector<int64_t>* start,
              std::vector<uint32_t>* values) {
  start->assign(static_cast<size_t>(keys) + 1, 0);
  for (const auto& [key, seg] : items) ++(*start)[static_cast<size_t>(key) + 1];
  for (int64_t k = 0; k < keys; ++k) (*start)[static_cast<size_t>(k) + 1] += (*start)[static_cast<size_t>(k)];
  values->resize(items.size());
  std::vector<int64_t> fill(start->begin(), start->end() - 1);
  for (const auto& [key, seg] : items) (*values)[static_cast<size_t>(fill[static_cast<size_t>(key)]++)] = seg;
}

constexpr double kUnitRoundoff = 1.1102230246251565e-16;  // 2^-53
// Forward error bounds of the float64 evaluations below, in units of the roundoff times the sum of the
// magnitudes of their terms: each is at most 6 roundings deep (a coordinate difference, products,
// sums), so 8 u covers it with room; a value within the bound of zero goes to the exact evaluation.
constexpr double kFilter = 8.0 * kUnitRoundoff;

// The sign of a - b for float64 a, b: exact (the rounded difference keeps the sign).
inline int sign_of_difference(double a, double b) { return a > b ? 1 : (a < b ? -1 : 0); }

// Exact twin of segment_meets_open_rect: the same three separating-axis tests, every quantity an
// expansion of the float64 inputs (road points, centre, unit axis, half extents), so the answer is the
// exact answer for the rectangle centre + hl (c, s) +- hw (-s, c) (with (c, s) as rounded to float64).
bool segment_meets_open_rect_exact(const Rect& r, double x0, double y0, double x1, double y1) {
  const Expansion dx0 = difference(x0, r.cx), dy0 = difference(y0, r.cy);
  const Expansion dx1 = difference(x1, r.cx), dy1 = difference(y1, r.cy);
  // Projections on u = (c, s) and v = (-s, c), against the open intervals (-hl, hl) and (-hw, hw).
  auto overlaps = [](const Expansion& a0, const Expansion& a1, double half) {
    const bool below = sum(a0, expansion_of(-half)).sign() < 0 || sum(a1, expansion_of(-half)).sign() < 0;
    const bool above = sum(a0, expansion_of(half)).sign() > 0 || sum(a1, expansion_of(half)).sign() > 0;
    return below && above;
  };
  const Expansion a0 = sum(scaled(dx0, r.c), scaled(dy0, r.s)), a1 = sum(scaled(dx1, r.c), scaled(dy1, r.s));
  if (!overlaps(a0, a1, r.hl)) return false;
  const Expansion b0 = sum(scaled(dy0, r.c), negated(scaled(dx0, r.s)));
  const Expansion b1 = sum(scaled(dy1, r.c), negated(scaled(dx1, r.s)));
  if (!overlaps(b0, b1, r.hw)) return false;
  // Normal n = (y0 - y1, x1 - x0): |p| < hl |u.n| + hw |v.n| with p = (P0 - centre) . n.
  const Expansion nx = difference(y0, y1), ny = difference(x1, x0);
  const Expansion p = sum(product(dx0, nx), product(dy0, ny));
  const Expansion un = sum(scaled(nx, r.c), scaled(ny, r.s));
  const Expansion vn = sum(scaled(ny, r.c), negated(scaled(nx, r.s)));
  const Expansion margin = sum(sum(scaled(un, un.sign() * r.hl), scaled(vn, vn.sign() * r.hw)),
                               scaled(p, -static_cast<double>(p.sign())));
  return margin.sign() > 0;
}

// Whether segment (x0, y0)-(x1, y1) (road coordinates, m) meets the open rectangle r: separating-axis
// tests in float64 relative to the centre, each with a forward error bound; a test too close to call
// sends the segment to segment_meets_open_rect_exact.
bool segment_meets_open_rect(const Rect& r, double x0, double y0, double x1, double y1) {
  const double rx0 = x0 - r.cx, ry0 = y0 - r.cy, rx1 = x1 - r.cx, ry1 = y1 - r.cy;
  bool uncertain = false;
  // -1: separated for certain; 0: uncertain; +1: the open interval (-half, half) and [min a, max a]
  // overlap for certain.
  auto axis = [&uncertain](double a0, double e0, double a1, double e1, double half) {
    // below: some end < half; above: some end > -half.
    const bool below_sure = a0 < half - e0 || a1 < half - e1;
    const bool below_maybe = a0 < half + e0 || a1 < half + e1;
    const bool above_sure = a0 > -half + e0 || a1 > -half + e1;
    const bool above_maybe = a0 > -half - e0 || a1 > -half - e1;
    if (!below_maybe || !above_maybe) return -1;
    if (below_sure && above_sure) return 1;
    uncertain = true;
    return 0;
  };
  const double ac = std::fabs(r.c), as = std::fabs(r.s);
  const double m0 = std::fabs(rx0) * ac + std::fabs(ry0) * as, m1 = std::fabs(rx1) * ac + std::fabs(ry1) * as;
  if (axis(rx0 * r.c + ry0 * r.s, kFilter * m0, rx1 * r.c + ry1 * r.s, kFilter * m1, r.hl) < 0) return false;
  const double w0 = std::fabs(ry0) * ac + std::fabs(rx0) * as, w1 = std::fabs(ry1) * ac + std::fabs(rx1) * as;
  if (axis(ry0 * r.c - rx0 * r.s, kFilter * w0, ry1 * r.c - rx1 * r.s, kFilter * w1, r.hw) < 0) return false;
  // Normal n of the segment (unnormalised): the segment projects to one point, the rectangle to the
  // open interval of half width hl |u.n| + hw |v.n| around 0 (its centre is the origin).
  const double nx = y0 - y1, ny = x1 - x0;
  const double p = rx0 * nx + ry0 * ny;
  const double half = r.hl * std::fabs(r.c * nx + r.s * ny) + r.hw * std::fabs(r.c * ny - r.s * nx);
  const double bound = kFilter * (std::fabs(rx0 * nx) + std::fabs(ry0 * ny) +
                                  r.hl * (ac * std::fabs(nx) + as * std::fabs(ny)) +
                                  r.hw * (ac * std::fabs(ny) + as * std::fabs(nx)));
  const double gap = half - std::fabs(p);
  if (gap < -bound) return false;
  if (gap > bound && !uncertain) return true;
  return segment_meets_open_rect_exact(r, x0, y0, x1, y1);
}

// Whether the ray from the centre of r towards +x crosses segment (x0, y0)-(x1, y1) whose ends lie on
// either side of the ray's line (half-open in y): the sign of orient(centre, P0, P1) times the sign of
// y1 - y0, the orientation filtered as in Shewchuk's orient2d and evaluated exactly near zero.
bool ray_crosses(const Rect& r, double x0, double y0, double x1, double y1) {
  const double ax = x0 - r.cx, ay = y0 - r.cy, bx = x1 - r.cx, by = y1 - r.cy;
  const double left = ax * by, right = ay * bx;
  const double det = left - right;
  int orientation = 0;
  if (std::fabs(det) > 4.0 * kUnitRoundoff * (std::fabs(left) + std::fabs(right))) {
    orientation = det > 0.0 ? 1 : -1;
  } else {
    const Expansion dax = difference(x0, r.cx), day = difference(y0, r.cy);
    const Expansion dbx = difference(x1, r.cx), dby = difference(y1, r.cy);
    orientation = sum(product(dax, dby), negated(product(day, dbx))).sign();
  }
  return orientation * sign_of_difference(y1, y0) > 0;
}

}  // namespace

RoadGeometry build_road(const double* xy, const int64_t* ring_offsets, int64_t rings) {
  if (rings <= 0) throw std::invalid_argument("the road needs at least one ring");
  RoadGeometry g;
  g.min_x = g.min_y = INFINITY;
  g.max_x = g.max_y = -INFINITY;
  for (int64_t r = 0; r < rings; ++r) {
    const int64_t begin = ring_offsets[r], end = ring_offsets[r + 1];
    if (end - begin < 3) {
      throw std::invalid_argument("ring " + std::to_string(r) + " has " + std::to_string(end - begin) +
                                  " points; a ring needs at least 3");
    }
    for (int64_t k = begin; k < end; ++k) {
      const double px = xy[2 * k], py = xy[2 * k + 1];
      if (!std::isfinite(px) || !std::isfinite(py)) {
        throw std::invalid_argument("point " + std::to_string(k) + " of the road is not finite");
      }
      const int64_t next = k + 1 < end ? k + 1 : begin;
      const double qx = xy[2 * next], qy = xy[2 * next + 1];
      if (px == qx && py == qy) continue;  // repeated point (e.g. a closing point): no edge
      g.x0.push_back(px);
      g.y0.push_back(py);
      g.x1.push_back(qx);
      g.y1.push_back(qy);
      g.min_x = std::fmin(g.min_x, px);
      g.max_x = std::fmax(g.max_x, px);
      g.min_y = std::fmin(g.min_y, py);
      g.max_y = std::fmax(g.max_y, py);
    }
  }
  const size_t n = g.x0.size();
  if (n < 3) throw std::invalid_argument("the road's rings have fewer than 3 edges in all");
  // About four cells per segment, at most 1024 x 1024 cells.
  const double w = g.max_x - g.min_x, h = g.max_y - g.min_y;
  const double target_cells = std::fmin(1024.0 * 1024.0, std::fmax(1.0, 4.0 * static_cast<double>(n)));
  g.cell_m = std::fmax(std::sqrt(std::fmax(w * h, 1e-12) / target_cells), std::fmax(w, h) / 1024.0);
  g.cell_m = std::fmax(g.cell_m, 1e-9 * (1.0 + std::fmax(std::fabs(g.max_x), std::fabs(g.max_y))));
  g.nx = std::min<int64_t>(1024, std::max<int64_t>(1, static_cast<int64_t>(std::ceil(w / g.cell_m))));
  g.ny = std::min<int64_t>(1024, std::max<int64_t>(1, static_cast<int64_t>(std::ceil(h / g.cell_m))));
  std::vector<std::pair<int64_t, uint32_t>> cells, rows;
  for (size_t k = 0; k < n; ++k) {
    // Cells meeting the segment's bounding box. The cell index of a coordinate, fl((x - min) / cell), is
    // monotone in x, so a box whose bounding box meets the segment's visits one of these cells.
    const int64_t j0 = clamp_cell((std::fmin(g.x0[k], g.x1[k]) - g.min_x) / g.cell_m, g.nx);
    const int64_t j1 = clamp_cell((std::fmax(g.x0[k], g.x1[k]) - g.min_x) / g.cell_m, g.nx);
    const int64_t i0 = clamp_cell((std::fmin(g.y0[k], g.y1[k]) - g.min_y) / g.cell_m, g.ny);
    const int64_t i1 = clamp_cell((std::fmax(g.y0[k], g.y1[k]) - g.min_y) / g.cell_m, g.ny);
    for (int64_t i = i0; i <= i1; ++i) {
      rows.emplace_back(i, static_cast<uint32_t>(k));
      for (int64_t j = j0; j <= j1; ++j) cells.emplace_back(i * g.nx + j, static_cast<uint32_t>(k));
    }
  }
  fill_csr(g.nx * g.ny, cells, &g.cell_start, &g.cell_segments);
  fill_csr(g.ny, rows, &g.row_start, &g.row_segments);
  return g;
}

bool rect_offroad_polygons(const Rect& r, const RoadGeometry& g) {
  // The bounding box of r, widened by a bound on its rounding (ex and ey are rounded sums of products):
  // the candidate cells cover the exact rectangle.
  const double tx = kFilter * (std::fabs(r.cx) + r.ex), ty = kFilter * (std::fabs(r.cy) + r.ey);
  // A corner certainly outside the road's bounding box is outside the road.
  if (r.cx - r.ex < g.min_x - tx || r.cx + r.ex > g.max_x + tx || r.cy - r.ey < g.min_y - ty ||
      r.cy + r.ey > g.max_y + ty) {
    return true;
  }
  const int64_t j0 = clamp_cell((r.cx - r.ex - tx - g.min_x) / g.cell_m, g.nx);
  const int64_t j1 = clamp_cell((r.cx + r.ex + tx - g.min_x) / g.cell_m, g.nx);
  const int64_t i0 = clamp_cell((r.cy - r.ey - ty - g.min_y) / g.cell_m, g.ny);
  const int64_t i1 = clamp_cell((r.cy + r.ey + ty - g.min_y) / g.cell_m, g.ny);
  for (int64_t i = i0; i <= i1; ++i) {
    for (int64_t j = j0; j <= j1; ++j) {
      const size_t cell = static_cast<size_t>(i * g.nx + j);
      for (int64_t e = g.cell_start[cell]; e < g.cell_start[cell + 1]; ++e) {
        const uint32_t k = g.cell_segments[static_cast<size_t>(e)];
        if (segment_meets_open_rect(r, g.x0[k], g.y0[k], g.x1[k], g.y1[k])) return true;
      }
    }
  }
  // The interior misses the boundary: inside or outside as a whole, as its centre. Crossings of the ray
  // from the centre towards +x, half-open in y so that a vertex on the ray counts once.
  const int64_t row = clamp_cell((r.cy - g.min_y) / g.cell_m, g.ny);
  bool inside = false;
  for (int64_t e = g.row_start[static_cast<size_t>(row)]; e < g.row_start[static_cast<size_t>(row) + 1]; ++e) {
    const uint32_t k = g.row_segments[static_cast<size_t>(e)];
    if ((g.y0[k] > r.cy) == (g.y1[k] > r.cy)) continue;
    if (ray_crosses(r, g.x0[k], g.y0[k], g.x1[k], g.y1[k])) inside = !inside;
  }
  return !inside;
}

void offroad_polygons(const BoxBatch& batch, const RoadGeometry& road, int threads, uint8_t* out) {
  const int64_t A = batch.agents;
  parallel_for(batch.scenes, threads, [&](int64_t begin, int64_t end) {
    SceneRects scene;
    for (int64_t s = begin; s < end; ++s) {
      uint8_t* row = out + s * A;
      for (int64_t a = 0; a < A; ++a) row[a] = 0;
      load_scene(batch, s, 0.0, &scene);
      for (size_t k = 0; k < scene.rects.size(); ++k) {
        row[scene.slots[k]] = rect_offroad_polygons(scene.rects[k], road) ? 1 : 0;
      }
    }
  }, std::max<int64_t>(1, 2000 / std::max<int64_t>(1, A)));
}

}  // namespace genneg
