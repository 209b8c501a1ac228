// Broad phase of the collision check: which pairs of a scene's rectangles get the exact test.
//
// Two strategies with identical results (every pair whose bounding boxes overlap strictly on x and y
// gets the exact test, whatever the strategy, so the verdicts are the same bit for bit):
//   * all pairs: each rectangle against every later one, vectorised (cost ~ n^2 / 2 bounding-box tests,
//     the fastest for the tens of vehicles of a traffic scene);
//   * sweep: rectangles sorted by the low end of their bounding box along the axis on which the centres
//     spread most; each is tested only against the run of later ones whose interval can still reach it
//     (a linear scan over the sorted low ends), with a conservative tolerance for rounding (cost ~ n log n + candidates).
// kAuto takes all pairs up to kSweepMinRects rectangles, the sweep above.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "collision_simd.h"
#include "geometry.h"

namespace genneg {

enum class BroadPhase { kAuto, kAllPairs, kSweep };

// Scenes with more rectangles than this use the sweep under kAuto (measured crossover, see
// benchmarks/oracles_floor.py).
constexpr size_t kSweepMinRects = 64;

// Reusable per-thread buffers.
struct PairSearch {
  RectArrays sorted;  // the sweep's copy of the scene, sorted by the low end of the bounding box
  std::vector<uint32_t> order, hits;
  std::vector<std::pair<double, uint32_t>> keys;  // (low end of the bounding box, index), sorted
  PairList pairs;  // the result: (k, l), k < l, indices into the scene
};

// Fills search->pairs with every overlapping pair of the scene's rectangles (bounding boxes overlap
// strictly on x and y, and rects_overlap), k < l, indices into `scene`. With `sorted`, in increasing
// (k, l) order; otherwise in an unspecified order.
void overlapping_pairs(const RectArrays& scene, Isa isa, BroadPhase phase, bool sorted, PairSearch* search);

}  // namespace genneg
