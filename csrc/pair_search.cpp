#include "pair_search.h"

#include <algorithm>
#include <cmath>

namespace genneg {

namespace {

void sweep(const RectArrays& scene, Isa isa, PairSearch* search) {
  const size_t n = scene.n;
  // The axis on which the centres spread most.
  double x_min = INFINITY, x_max = -INFINITY, y_min = INFINITY, y_max = -INFINITY;
  double reach = 0.0;  // largest |centre| + extent, for the rounding tolerance
  for (size_t k = 0; k < n; ++k) {
    x_min = std::fmin(x_min, scene.cx[k]);
    x_max = std::fmax(x_max, scene.cx[k]);
    y_min = std::fmin(y_min, scene.cy[k]);
    y_max = std::fmax(y_max, scene.cy[k]);
    reach = std::fmax(reach, std::fmax(std::fabs(scene.cx[k]), std::fabs(scene.cy[k])) +
                                 std::fmax(scene.ex[k], scene.ey[k]));
  }
  const bool along_x = x_max - x_min >= y_max - y_min;
  auto& keys = search->keys;
  keys.resize(n);
  for (size_t k = 0; k < n; ++k) {
    keys[k] = {along_x ? scene.cx[k] - scene.ex[k] : scene.cy[k] - scene.ey[k], static_cast<uint32_t>(k)};
  }
  std::sort(keys.begin(), keys.end());
  auto& order = search->order;
  order.resize(n);
  for (size_t k = 0; k < n; ++k) order[k] = keys[k].second;
  RectArrays& arrays = search->sorted;
  arrays.assign(scene, order.data());
  // The bounding-box filter |c_l - c_k| < e_k + e_l is evaluated with three roundings, lo and hi with
  // one each: all within a few units of 2^-53 * reach. A pair the filter passes therefore has
  // lo_l <= hi_k + tolerance; later entries cannot pass it and are not visited.
  const double tolerance = 1e-12 * reach;
  search->hits.resize(n);
  for (size_t k = 0; k + 1 < n; ++k) {
    const double limit = (along_x ? arrays.cx[k] + arrays.ex[k] : arrays.cy[k] + arrays.ey[k]) + tolerance;
    // Entries k + 1 .. end - 1 start at or below the limit (a linear scan: they are all tested anyway).
    size_t end = k + 1;
    while (end < n && keys[end].first <= limit) ++end;
    const size_t found = overlapping_in_range(isa, arrays, k, k + 1, end, search->hits.data());
    for (size_t h = 0; h < found; ++h) {
      const uint32_t a = order[k], b = order[search->hits[h]];
      search->pairs.emplace_back(std::min(a, b), std::max(a, b));
    }
  }
}

}  // namespace

void overlapping_pairs(const RectArrays& scene, Isa isa, BroadPhase phase, bool sorted, PairSearch* search) {
  search->pairs.clear();
  if (scene.n < 2) return;
  const bool use_sweep = phase == BroadPhase::kSweep || (phase == BroadPhase::kAuto && scene.n > kSweepMinRects);
  if (!use_sweep) {
    overlapping_all_pairs(isa, scene, &search->hits, &search->pairs);  // in increasing (k, l) order
    return;
  }
  sweep(scene, isa, search);
  if (sorted) std::sort(search->pairs.begin(), search->pairs.end());
}

}  // namespace genneg
