// Vectorised parts of the collision check, with the instruction set chosen at run time (x86-64
// baseline, AVX2, AVX-512F): reading a scene's boxes into rectangle arrays (the trigonometry of
// make_rect, vectorised), and the narrow phase, one rectangle against a contiguous run of others.
//
// Every variant evaluates exactly the expressions of the scalar code (rect_frame of geometry.h for the
// preparation; the bounding-box filter, then rects_overlap of geometry.h, for the pairs) in the same
// order, with no fused multiply-add (this file's translation unit is compiled with -ffp-contract=off),
// so every variant gives bit-identical rectangles and verdicts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "boxes.h"
#include "geometry.h"

namespace genneg {

enum class Isa { kBaseline, kAvx2, kAvx512 };

// "baseline", "avx2", "avx512".
const char* isa_name(Isa isa);

// Whether this CPU (and OS) can run `isa` (__builtin_cpu_supports on x86-64; baseline only elsewhere).
bool isa_supported(Isa isa);

// The widest supported instruction set.
Isa best_isa();

// A scene's rectangles as a structure of arrays, padded with kPad readable lanes so that a vector load
// starting at any index < n stays inside the arrays (the padding holds zeros).
struct RectArrays {
  static constexpr size_t kPad = 8;
  size_t n = 0;
  std::vector<double> cx, cy, c, s, hl, hw, ex, ey;
  std::vector<double> heading;  // rad, as read by load_scene_arrays (scratch)
  std::vector<int64_t> slots;   // entry k is vehicle slot slots[k] of its scene

  // Room for n entries plus the padding; sets n and zeroes the padding.
  void resize(size_t entries);
  // source's entry order[k] becomes entry k (fields and slot).
  void assign(const RectArrays& source, const uint32_t* order);
  // Entry k as a Rect.
  Rect rect(size_t k) const;
};

// Reads the present boxes of scene `s` into `out`, in slot order, each inflated by `margin` (m): entry
// k equals make_rect(box slots[k], margin) bit for bit, whatever `isa` (the trigonometry runs `isa`'s
// vector width at a time). Throws BoxInputError for the first bad present box, as load_scene does.
// Requires isa_supported(isa).
void load_scene_arrays(Isa isa, const BoxBatch& batch, int64_t s, double margin, RectArrays* out);

// Writes to `hits` (room for end - begin entries) every index l in [begin, end), in increasing order,
// whose rectangle overlaps rectangle k: the bounding boxes overlap strictly on x and on y, and
// rects_overlap(k, l). Returns the number written. Requires isa_supported(isa) and end <= r.n.
size_t overlapping_in_range(Isa isa, const RectArrays& r, size_t k, size_t begin, size_t end, uint32_t* hits);

// Pairs of entry indices (k, l).
using PairList = std::vector<std::pair<uint32_t, uint32_t>>;

// Appends every overlapping pair (k, l), k < l, of r's entries to `pairs`, in increasing (k, l) order:
// overlapping_in_range(isa, r, k, k + 1, r.n) for every k, with the row loop compiled for `isa`.
// `hits` is scratch. Requires isa_supported(isa).
void overlapping_all_pairs(Isa isa, const RectArrays& r, std::vector<uint32_t>* hits, PairList* pairs);

}  // namespace genneg
