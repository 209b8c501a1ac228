// Offroad against road polygons: the drivable area U is a union of closed polygons with holes, given
// by the rings (exterior and holes, any orientation) of that union, i.e. its boundary. A vehicle is
// offroad iff the interior of its rectangle is not covered by U.
//
// Test (exact): the interior of the rectangle either meets the boundary of U (then it holds points
// outside U: offroad), or lies entirely inside or entirely outside U, decided by the rectangle's centre
// (crossing number over every ring, even-odd). A segment meets the open rectangle iff their projections
// overlap, strictly for the rectangle, on the rectangle's two axes and on the segment's normal
// (separating-axis theorem). Every test is evaluated in float64 relative to the centre of the rectangle
// with a forward error bound, and when the value is within its bound of zero, again exactly with
// floating-point expansions (exact.h); the crossing test is an orientation test filtered the same way.
// The verdict is therefore the exact one for the rectangle centre + hl (c, s) + hw (-s, c) of the
// rounded float64 frame (make_rect), at any coordinates. A rectangle touching the boundary from inside
// (a box edge on a road edge, a corner on a vertex) is on the road.
//
// Candidate segments come from a uniform grid over the road's bounding box (segments listed in every
// cell their bounding box meets); the crossing count uses the segments listed in the grid row of the
// centre.
#pragma once

#include <cstdint>
#include <vector>

#include "boxes.h"
#include "geometry.h"

namespace genneg {

struct RoadGeometry {
  std::vector<double> x0, y0, x1, y1;  // boundary segments, m
  double min_x = 0.0, min_y = 0.0, max_x = 0.0, max_y = 0.0;  // bounding box of the segments, m
  double cell_m = 1.0;
  int64_t nx = 1, ny = 1;
  std::vector<int64_t> cell_start;  // CSR: cell (i, j) = i * nx + j lists cell_segments[start .. next)
  std::vector<uint32_t> cell_segments;
  std::vector<int64_t> row_start;  // CSR: grid row i lists row_segments[start .. next)
  std::vector<uint32_t> row_segments;
};

// Builds the road from `rings` closed rings of points xy (x, y interleaved, float64, m): ring r is
// points ring_offsets[r] .. ring_offsets[r + 1] - 1 (the closing edge back to the first point is
// implied; a repeated last point is harmless). Throws std::invalid_argument for a non-finite point, a
// ring of fewer than 3 points, or no rings at all.
RoadGeometry build_road(const double* xy, const int64_t* ring_offsets, int64_t rings);

// Whether the interior of r is not covered by the road.
bool rect_offroad_polygons(const Rect& r, const RoadGeometry& road);

// out: (S, A) row-major bytes, 1 = offroad; absent slots get 0.
void offroad_polygons(const BoxBatch& batch, const RoadGeometry& road, int threads, uint8_t* out);

}  // namespace genneg
