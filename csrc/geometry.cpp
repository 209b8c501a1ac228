#include "geometry.h"

#include <cstdint>

namespace genneg {

namespace {
constexpr double kHalfPi = 1.57079632679489661923;  // fl(pi / 2)
}

void heading_axis(double heading, double* c, double* s) {
  constexpr double kQuarterPi = 0.78539816339744830962;
  if (std::fabs(heading) <= kQuarterPi) {  // most headings: no reduction needed
    *c = std::cos(heading);
    *s = std::sin(heading);
    return;
  }
  double r = 0.0;
  int64_t quadrant = 0;
  if (std::fabs(heading) < 1e9) {
    // heading - k fl(pi/2) rounded once (exact whenever the result is representable, e.g. 0 for
    // heading == k fl(pi/2), k = +-1, +-2); cheaper than remquo and equal to it on these cases.
    const double k = std::nearbyint(heading / kHalfPi);
    r = std::fma(-k, kHalfPi, heading);
    quadrant = static_cast<int64_t>(k);
  } else {
    int q = 0;
    r = std::remquo(heading, kHalfPi, &q);  // exact remainder, low bits of the quotient
    quadrant = q;
  }
  const double cr = std::cos(r);
  const double sr = std::sin(r);
  switch (quadrant & 3) {
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
  heading_axis(heading, &r.c, &r.s);
  r.hl = 0.5 * length + margin;
  r.hw = 0.5 * width + margin;
  r.ex = r.hl * std::fabs(r.c) + r.hw * std::fabs(r.s);
  r.ey = r.hl * std::fabs(r.s) + r.hw * std::fabs(r.c);
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
