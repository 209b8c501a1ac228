// Vectorised narrow phase of the collision check: one rectangle against a contiguous run of others,
// with the instruction set chosen at run time (x86-64 baseline, AVX2, AVX-512F).
//
// Every variant evaluates exactly the expressions of the scalar test (the bounding-box filter of
// collision.cpp, then rects_overlap of geometry.h) in the same order, with no fused multiply-add (this
// file's translation unit is compiled with -ffp-contract=off), so every variant gives bit-identical
// verdicts. The rectangles come from the shared scalar preparation (make_rect); nothing here computes
// trigonometry.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "geometry.h"

namespace genneg {

enum class Isa { kBaseline, kAvx2, kAvx512 };

// "baseline", "avx2", "avx512".
const char* isa_name(Isa isa);

// Whether this CPU (and OS) can run `isa` (__builtin_cpu_supports on x86-64; baseline only elsewhere).
bool isa_supported(Isa isa);

// The widest supported instruction set.
Isa best_isa();

// A scene's rectangles as a structure of arrays, in the order given, padded with kPad readable lanes so
// that a vector load starting at any index < n stays inside the arrays.
struct RectArrays {
  static constexpr size_t kPad = 8;
  size_t n = 0;
  std::vector<double> cx, cy, c, s, hl, hw, ex, ey;

  // source[order[k]] becomes entry k (order == nullptr: the identity).
  void assign(const std::vector<Rect>& source, const uint32_t* order);
  // Entry k as a Rect.
  Rect rect(size_t k) const;
};

// Writes to `hits` (room for end - begin entries) every index l in [begin, end), in increasing order,
// whose rectangle overlaps rectangle k: the bounding boxes overlap strictly on x and on y, and
// rects_overlap(k, l). Returns the number written. Requires isa_supported(isa) and end <= r.n.
size_t overlapping_in_range(Isa isa, const RectArrays& r, size_t k, size_t begin, size_t end, uint32_t* hits);

}  // namespace genneg
