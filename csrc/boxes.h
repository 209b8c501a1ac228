// A batch of vehicle boxes as the caller laid it out: (S, A, 5) float32 or float64 with arbitrary byte
// strides, plus an optional (S, A) byte mask of present vehicles. Nothing is copied; values are read
// through the strides and converted to float64 once per box.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "geometry.h"

namespace genneg {

enum class Dtype { kFloat32, kFloat64 };

// The valid range of every input number (the same bounds as genneg.reference.traffic_oracle). Inside it
// every intermediate of the geometry is a finite, normal float64 and the geometry is exact up to float64
// rounding; outside it the oracles raise ValueError instead of overflowing, underflowing or reducing a
// huge heading inexactly (reduction by the nearest multiple of fl(pi/2) drifts by |heading| * 4e-17 rad
// from the true angle, < 1e-12 rad within the bound). Lengths are bounded far from overflow, not by
// plausibility: every finite float32 (a wild model sample the Gen-neG loop must still label) is inside.
constexpr double kMaxAbsCoordinateM = 1e100; // |x|, |y| of a box centre, |origin| of a raster, m
constexpr double kMinSizeM = 1e-100;         // length, width, resolution, m (strictly positive sizes)
constexpr double kMaxSizeM = 1e100;          // length, width, margin, resolution, m
constexpr double kMaxAbsHeadingRad = 1e4;    // |heading|, rad (about 1,600 turns)

struct BoxBatch {
  const char* data = nullptr;
  Dtype dtype = Dtype::kFloat64;
  int64_t scenes = 0, agents = 0;
  int64_t stride_scene = 0, stride_agent = 0, stride_field = 0;  // bytes
  const uint8_t* valid = nullptr;                                 // nullptr: every slot present
  int64_t valid_stride_scene = 0, valid_stride_agent = 0;         // bytes

  bool present(int64_t s, int64_t a) const {
    return valid == nullptr || valid[s * valid_stride_scene + a * valid_stride_agent] != 0;
  }
  double field(int64_t s, int64_t a, int64_t f) const {
    const char* p = data + s * stride_scene + a * stride_agent + f * stride_field;
    return dtype == Dtype::kFloat32 ? static_cast<double>(*reinterpret_cast<const float*>(p))
                                    : *reinterpret_cast<const double*>(p);
  }
};

// A bad present box: which one, and what is wrong with it.
class BoxInputError : public std::invalid_argument {
 public:
  BoxInputError(int64_t scene, int64_t vehicle, const std::string& what)
      : std::invalid_argument(what), scene_(scene), vehicle_(vehicle) {}
  int64_t scene() const { return scene_; }
  int64_t vehicle() const { return vehicle_; }

 private:
  int64_t scene_, vehicle_;
};

// The present boxes of one scene as rectangles, in slot order.
struct SceneRects {
  std::vector<Rect> rects;
  std::vector<int64_t> slots;  // rects[k] is vehicle slots[k]
};

// Read scene `s`: every present box becomes a Rect inflated by `margin` (m). Absent slots are skipped
// without looking at their values. Throws BoxInputError for the first present box with a non-finite
// field or a field outside the valid range above (|x|, |y| <= kMaxAbsCoordinateM; kMinSizeM <= length,
// width <= kMaxSizeM; |heading| <= kMaxAbsHeadingRad).
void load_scene(const BoxBatch& batch, int64_t s, double margin, SceneRects* out);

}  // namespace genneg
