// Vehicle-vehicle collisions: vehicle i of scene s collides iff the interior of its rectangle (inflated
// by `margin` m on every side) intersects the interior of another present vehicle's inflated rectangle
// in the same scene. Touching edges or corners is not a collision.
#pragma once

#include <cstdint>
#include <vector>

#include "boxes.h"
#include "collision_simd.h"
#include "pair_search.h"

namespace genneg {

// How the pairs are searched; every choice gives the same verdicts (collision_simd.h, pair_search.h).
struct PairOptions {
  Isa isa = best_isa();  // must be supported by this CPU
  BroadPhase broad_phase = BroadPhase::kAuto;
};

// out: (S, A) row-major bytes, 1 = collides; absent slots get 0.
void collisions(const BoxBatch& batch, double margin, int threads, uint8_t* out, const PairOptions& options = {});

// Every colliding pair as (scene, i, j) with i < j, scenes ascending, then i, then j; flattened triples.
std::vector<int64_t> collision_pairs(const BoxBatch& batch, double margin, int threads,
                                     const PairOptions& options = {});

}  // namespace genneg
