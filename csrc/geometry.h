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

// The arithmetic of a rectangle's frame, written once for a float64 and for the vector types of
// collision_simd.cpp (GCC vector extensions: the same operators, lane by lane), so that every
// instruction set rounds exactly alike. Every translation unit that instantiates it is compiled with
// -ffp-contract=off (CMakeLists.txt): no multiply-add is fused.
//
// Inputs: `heading` (rad, |heading| <= kMaxAbsHeadingRad of boxes.h), `k` = nearbyint(heading / fl(pi/2))
// (round half to even) and `k4` = floor(k / 4), computed by the caller with its own rounding
// instruction; `hl`, `hw` the half length and half width (m). Outputs the unit heading axis (c, s) and
// the half extents (ex, ey) of the axis-aligned bounding box.
//
// Reduction: r = fl(heading - k fl(pi/2)) with a single rounding (Cody-Waite: fl(pi/2) = P1 + P2 with
// P1 of 26 bits; k P1 and k P2 are exact for |k| < 2^26, heading - k P1 is exact by Sterbenz's lemma),
// the same value as fma(-k, fl(pi/2), heading); r = 0 exactly when heading = k fl(pi/2).
// sin r and cos r on |r| <= pi/4 + tiny: the minimax polynomials of fdlibm's __kernel_sin and
// __kernel_cos (Sun Microsystems, 1993), evaluated in Horner form (within 2 ulp of the true value;
// sin 0 = 0 and cos 0 = 1 exactly). The quadrant q = k - 4 k4 then rotates (cos r, sin r) by q quarter
// turns with swaps and sign flips, which are exact.
template <class V>
__attribute__((always_inline)) inline void rect_frame(const V& heading, const V& k, const V& k4, const V& hl,
                                                      const V& hw, V* c, V* s, V* ex, V* ey) {
  constexpr double kHalfPiHigh = 1.5707963109016418457;      // first 26 bits of fl(pi/2)
  constexpr double kHalfPiLow = 1.5893254712295856734e-08;   // fl(pi/2) - kHalfPiHigh (24 bits), exact
  const V r = (heading - k * kHalfPiHigh) - k * kHalfPiLow;
  const V z = r * r;
  const V sin_tail = 8.33333333332248946124e-03 +
                     z * (-1.98412698298579493134e-04 +
                          z * (2.75573137070700676789e-06 +
                               z * (-2.50507602534068634195e-08 + z * 1.58969099521155010221e-10)));
  const V sin_r = r + (z * r) * (-1.66666666666666324348e-01 + z * sin_tail);
  const V cos_tail = z * (4.16666666666666019037e-02 +
                          z * (-1.38888888888741095749e-03 +
                               z * (2.48015872894767294178e-05 +
                                    z * (-2.75573143513906633035e-07 +
                                         z * (2.08757232129817482790e-09 + z * -1.13596475577881948265e-11)))));
  const V cos_r = 1.0 - (0.5 * z - z * cos_tail);
  const V q = k - 4.0 * k4;  // 0, 1, 2 or 3
  const auto odd = (q == 1.0) | (q == 3.0);
  const auto flip_c = (q == 1.0) | (q == 2.0);
  const auto flip_s = (q == 2.0) | (q == 3.0);
  const V c0 = odd ? sin_r : cos_r;
  const V s0 = odd ? cos_r : sin_r;
  *c = flip_c ? -c0 : c0;
  *s = flip_s ? -s0 : s0;
  const V abs_c = *c < 0.0 ? -*c : *c;
  const V abs_s = *s < 0.0 ? -*s : *s;
  *ex = hl * abs_c + hw * abs_s;
  *ey = hl * abs_s + hw * abs_c;
}

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
