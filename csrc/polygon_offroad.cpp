#include "polygon_offroad.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

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

// Whether segment (x0, y0)-(x1, y1), given relative to the centre of r, meets the open rectangle r.
bool segment_meets_open_rect(const Rect& r, double x0, double y0, double x1, double y1) {
  // Axis u = (c, s): the rectangle projects to (-hl, hl).
  const double a0 = x0 * r.c + y0 * r.s, a1 = x1 * r.c + y1 * r.s;
  if (!(std::fmin(a0, a1) < r.hl && std::fmax(a0, a1) > -r.hl)) return false;
  // Axis v = (-s, c): (-hw, hw).
  const double b0 = y0 * r.c - x0 * r.s, b1 = y1 * r.c - x1 * r.s;
  if (!(std::fmin(b0, b1) < r.hw && std::fmax(b0, b1) > -r.hw)) return false;
  // Normal n of the segment (unnormalised): the segment projects to one point, the rectangle to the
  // open interval of half width hl |u.n| + hw |v.n| around 0 (its centre is the origin).
  const double nx = y0 - y1, ny = x1 - x0;
  const double p = x0 * nx + y0 * ny;
  const double half = r.hl * std::fabs(r.c * nx + r.s * ny) + r.hw * std::fabs(r.c * ny - r.s * nx);
  return std::fabs(p) < half;
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
  // A corner strictly outside the road's bounding box is outside the road.
  if (r.cx - r.ex < g.min_x || r.cx + r.ex > g.max_x || r.cy - r.ey < g.min_y || r.cy + r.ey > g.max_y) return true;
  const int64_t j0 = clamp_cell((r.cx - r.ex - g.min_x) / g.cell_m, g.nx);
  const int64_t j1 = clamp_cell((r.cx + r.ex - g.min_x) / g.cell_m, g.nx);
  const int64_t i0 = clamp_cell((r.cy - r.ey - g.min_y) / g.cell_m, g.ny);
  const int64_t i1 = clamp_cell((r.cy + r.ey - g.min_y) / g.cell_m, g.ny);
  for (int64_t i = i0; i <= i1; ++i) {
    for (int64_t j = j0; j <= j1; ++j) {
      const size_t cell = static_cast<size_t>(i * g.nx + j);
      for (int64_t e = g.cell_start[cell]; e < g.cell_start[cell + 1]; ++e) {
        const uint32_t k = g.cell_segments[static_cast<size_t>(e)];
        if (segment_meets_open_rect(r, g.x0[k] - r.cx, g.y0[k] - r.cy, g.x1[k] - r.cx, g.y1[k] - r.cy)) return true;
      }
    }
  }
  // The interior misses the boundary: inside or outside as a whole, as its centre. Crossings of the ray
  // from the centre towards +x, half-open in y so that a vertex on the ray counts once.
  const int64_t row = clamp_cell((r.cy - g.min_y) / g.cell_m, g.ny);
  bool inside = false;
  for (int64_t e = g.row_start[static_cast<size_t>(row)]; e < g.row_start[static_cast<size_t>(row) + 1]; ++e) {
    const uint32_t k = g.row_segments[static_cast<size_t>(e)];
    const double ya = g.y0[k] - r.cy, yb = g.y1[k] - r.cy;
    if ((ya > 0.0) == (yb > 0.0)) continue;
    const double xa = g.x0[k] - r.cx, xb = g.x1[k] - r.cx;
    const double x = xa + (0.0 - ya) * (xb - xa) / (yb - ya);
    if (x > 0.0) inside = !inside;
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
