#include "boxes.h"

#include <cmath>
#include <cstdio>

namespace genneg {

namespace {
const char* const kFieldNames[5] = {"x", "y", "length", "width", "heading"};

std::string format_value(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);  // std::to_string shows 5e-324 as 0.000000
  return buf;
}
}  // namespace

void load_scene(const BoxBatch& batch, int64_t s, double margin, SceneRects* out) {
  out->rects.clear();
  out->slots.clear();
  for (int64_t a = 0; a < batch.agents; ++a) {
    if (!batch.present(s, a)) continue;
    double v[5];
    for (int64_t f = 0; f < 5; ++f) {
      v[f] = batch.field(s, a, f);
      if (!std::isfinite(v[f])) {
        throw BoxInputError(s, a, std::string("non-finite ") + kFieldNames[f] + " (" + format_value(v[f]) + ")");
      }
    }
    if (!(v[2] > 0.0)) throw BoxInputError(s, a, "length must be > 0 m, got " + format_value(v[2]));
    if (!(v[3] > 0.0)) throw BoxInputError(s, a, "width must be > 0 m, got " + format_value(v[3]));
    for (int64_t f = 0; f < 2; ++f) {
      if (std::fabs(v[f]) > kMaxAbsCoordinateM) {
        throw BoxInputError(s, a, std::string(kFieldNames[f]) + " " + format_value(v[f]) +
                                      " m is outside the valid range |" + kFieldNames[f] + "| <= 1e100 m");
      }
    }
    for (int64_t f = 2; f < 4; ++f) {
      if (v[f] < kMinSizeM || v[f] > kMaxSizeM) {
        throw BoxInputError(s, a, std::string(kFieldNames[f]) + " " + format_value(v[f]) +
                                      " m is outside the valid range [1e-100, 1e100] m");
      }
    }
    if (std::fabs(v[4]) > kMaxAbsHeadingRad) {
      throw BoxInputError(s, a, "heading " + format_value(v[4]) +
                                    " rad is outside the valid range |heading| <= 1e4 rad; reduce it first");
    }
    out->rects.push_back(make_rect(v[0], v[1], v[2], v[3], v[4], margin));
    out->slots.push_back(a);
  }
}

}  // namespace genneg
