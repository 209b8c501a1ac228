#include "geometry.h"

#include <cmath>

namespace genneg {

namespace {
constexpr double kHalfPi = 1.57079632679489661923;  // fl(pi / 2)
}

void heading_axis(double heading, double* c, double* s) {
  if (std::fabs(heading) < 1e7) {  // |k| < 2^23: rect_frame's reduction is exact
    const double k = std::nearbyint(heading / kHalfPi);
    const double k4 = std::floor(0.25 * k);
    double ex = 0.0, ey = 0.0;
    rect_frame(heading, k, k4, 0.0, 0.0, c, s, &ex, &ey);
    return;
  }
  // Far outside the oracles' valid range (kMaxAbsHeadingRad): exact remainder, then libm.
  int q = 0;
  const double r = std::remquo(heading, kHalfPi, &q);
  const double cr = std::cos(r);
  const double sr = std::sin(r);
  switch (q & 3) {
    case 0: *c = cr;  *s = sr;  break;
    case 1: *c = -sr; *s = cr;  break;
    case 2: *c = -cr; *s = -sr; break;
    default: *c = sr; *s = -cr; break;
  }
}

Rect make_rect(double x, double y, double length, double width, double heading, double margin) {
  Rect r;
  r.cx = x;
  r.cy = y;
  r.hl = 0.5 * length + margin;
  r.hw = 0.5 * width + margin;
  if (std::fabs(heading) < 1e7) {
    const double k = std::nearbyint(heading / kHalfPi);
    rect_frame(heading, k, std::floor(0.25 * k), r.hl, r.hw, &r.c, &r.s, &r.ex, &r.ey);
  } else {
    heading_axis(heading, &r.c, &r.s);
    r.ex = r.hl * std::fabs(r.c) + r.hw * std::fabs(r.s);
    r.ey = r.hl * std::fabs(r.s) + r.hw * std::fabs(r.c);
  }
  return r;
}

void rect_corners(const Rect& r, double corners[4][2]) {
  const double lx = r.hl * r.c, ly = r.hl * r.s;   // half-length vector
  const double wx = -r.hw * r.s, wy = r.hw * r.c;  // half-width vector
  corners[0][0] = r.cx + lx + wx; corners[0][1] = r.cy + ly + wy;
  corners[1][0] = r.cx - lx + wx; corners[1][1] = r.cy - ly + wy;
  corners[2][0] = r.cx - lx - wx; corners[2][1] = r.cy - ly - wy;
  corners[3][0] = r.cx + lx - wx; corners[3][1] = r.cy + ly - wy;
}

}  // namespace genneg
