// Offroad: the drivable area is a raster drivable[H, W] (nonzero = drivable) with origin (ox, oy) and
// resolution res (m per cell); cell (i, j) covers [ox + j res, ox + (j+1) res] x [oy + i res, oy + (i+1) res].
// A vehicle is offroad iff the interior of its rectangle intersects the interior of a non-drivable cell,
// or part of it lies outside the raster (a corner strictly outside the raster's rectangle).
#pragma once

#include <cstdint>

#include "boxes.h"
#include "geometry.h"

namespace genneg {

struct Raster {
  const uint8_t* data = nullptr;
  int64_t height = 0, width = 0;
  int64_t stride_row = 0, stride_col = 0;  // bytes
  double origin_x = 0.0, origin_y = 0.0, resolution = 1.0;

  bool drivable(int64_t i, int64_t j) const { return data[i * stride_row + j * stride_col] != 0; }
};

enum class OffroadMode {
  kExact,    // the whole rectangle: every non-drivable cell under its bounding box is tested exactly
  kCorners,  // approximate: only the four corners are looked up (what Waymax and torchdrivesim do)
};

// Exact test of one rectangle.
bool rect_offroad_exact(const Rect& r, const Raster& raster);

// Approximate test: a corner strictly outside the raster, or inside a non-drivable cell (a corner on a
// cell edge is looked up in the cell above/right of it, clamped to the raster).
bool rect_offroad_corners(const Rect& r, const Raster& raster);

// out: (S, A) row-major bytes, 1 = offroad; absent slots get 0.
void offroad(const BoxBatch& batch, const Raster& raster, OffroadMode mode, int threads, uint8_t* out);

}  // namespace genneg
