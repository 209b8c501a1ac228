// Oriented rectangles and exact interior-overlap tests (separating-axis theorem), in float64.
//
// A vehicle box is (x, y, length, width, heading): centre in metres, full length along the heading, full
// width across it, heading in radians. Two closed rectangles have overlapping interiors iff their
// projections on every candidate axis (the two edge normals of each rectangle) overlap with positive
// length; touching edges or corners give zero-length overlap and therefore do NOT count. Every comparison
// below is strict for that reason.
#pragma once

#include <cmath>

namespace genneg {

// A rectangle in centre / unit-axis / half-extent form.
struct Rect {
  double cx = 0.0, cy = 0.0;  // centre, m
  double c = 1.0, s = 0.0;    // unit heading axis u = (c, s); the width axis is v = (-s, c)
  double hl = 0.0, hw = 0.0;  // half length along u, half width along v, m
  double ex = 0.0, ey = 0.0;  // half extents of the axis-aligned bounding box, m
};

// cos and sin of `heading` with quarter turns exact: the heading is first reduced by the nearest
// multiple k fl(pi/2) (with a single rounding, so the remainder is exactly 0 when the heading is
// k fl(pi/2) for k = 0, +-1, +-2), then rotated by k quarter turns with swaps and sign flips. Headings
// that are float64 multiples of fl(pi/2) therefore give axes made of 0 and +-1 (or within 1e-16 of
// them for other k) and axis-aligned boxes keep exactly representable edges.
void heading_axis(double heading, double* c, double* s);

// Rectangle of a box; `margin` (m) is added to the half length and half width.
Rect make_rect(double x, double y, double length, double width, double heading, double margin);

// Corners in counter-clockwise order (for a positive-length, positive-width box): (+l,+w), (-l,+w),
// (-l,-w), (+l,-w) in the box frame. corners[k][0] = x, corners[k][1] = y.
void rect_corners(const Rect& r, double corners[4][2]);

// True iff the interiors of a and b intersect. Symmetric: rects_overlap(a, b) == rects_overlap(b, a)
// bit for bit.
inline bool rects_overlap(const Rect& a, const Rect& b) {
  const double dx = b.cx - a.cx;
  const double dy = b.cy - a.cy;
  // C = u_a . u_b = cos(theta_b - theta_a), S = sin(theta_b - theta_a); |u_a . v_b| = |v_a . u_b| = |S|.
  const double C = std::fabs(a.c * b.c + a.s * b.s);
  const double S = std::fabs(a.c * b.s - a.s * b.c);
  // Axis u_a.
  if (!(std::fabs(dx * a.c + dy * a.s) < a.hl + (b.hl * C + b.hw * S))) return false;
  // Axis v_a.
  if (!(std::fabs(dy * a.c - dx * a.s) < a.hw + (b.hl * S + b.hw * C))) return false;
  // Axis u_b.
  if (!(std::fabs(dx * b.c + dy * b.s) < b.hl + (a.hl * C + a.hw * S))) return false;
  // Axis v_b.
  if (!(std::fabs(dy * b.c - dx * b.s) < b.hw + (a.hl * S + a.hw * C))) return false;
  return true;
}

// True iff the interior of r intersects the interior of the axis-aligned cell [x0, x1] x [y0, y1]
// (x0 < x1, y0 < y1).
inline bool rect_overlaps_cell(const Rect& r, double x0, double x1, double y0, double y1) {
  // Cell axes x and y: the rectangle's bounding box against the cell.
  if (!(r.cx - r.ex < x1 && r.cx + r.ex > x0)) return false;
  if (!(r.cy - r.ey < y1 && r.cy + r.ey > y0)) return false;
  // Rectangle axes: project the cell's corners, relative to the centre, on u and on v.
  const double dx0 = x0 - r.cx, dx1 = x1 - r.cx;
  const double dy0 = y0 - r.cy, dy1 = y1 - r.cy;
  const double ux_lo = std::fmin(dx0 * r.c, dx1 * r.c), ux_hi = std::fmax(dx0 * r.c, dx1 * r.c);
  const double uy_lo = std::fmin(dy0 * r.s, dy1 * r.s), uy_hi = std::fmax(dy0 * r.s, dy1 * r.s);
  if (!(ux_lo + uy_lo < r.hl && ux_hi + uy_hi > -r.hl)) return false;
  // v = (-s, c).
  const double vx_lo = std::fmin(-dx0 * r.s, -dx1 * r.s), vx_hi = std::fmax(-dx0 * r.s, -dx1 * r.s);
  const double vy_lo = std::fmin(dy0 * r.c, dy1 * r.c), vy_hi = std::fmax(dy0 * r.c, dy1 * r.c);
  if (!(vx_lo + vy_lo < r.hw && vx_hi + vy_hi > -r.hw)) return false;
  return true;
}

}  // namespace genneg
