// Compiled with -ffp-contract=off (CMakeLists.txt): a multiply feeding an add must stay two roundings,
// as in the scalar code, or the AVX-512 variant (whose target implies FMA) could round differently.
#include "collision_simd.h"

#include <cmath>
#include <stdexcept>

#if defined(__x86_64__) || defined(__i386__)
#define GENNEG_X86 1
#include <immintrin.h>
#endif

namespace genneg {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    default: return "baseline";
  }
}

bool isa_supported(Isa isa) {
  if (isa == Isa::kBaseline) return true;
#ifdef GENNEG_X86
  __builtin_cpu_init();
  if (isa == Isa::kAvx2) return __builtin_cpu_supports("avx2");
  if (isa == Isa::kAvx512) return __builtin_cpu_supports("avx512f");
#endif
  return false;
}

Isa best_isa() {
  static const Isa best = isa_supported(Isa::kAvx512) ? Isa::kAvx512
                          : isa_supported(Isa::kAvx2) ? Isa::kAvx2
                                                      : Isa::kBaseline;
  return best;
}

void RectArrays::resize(size_t entries) {
  n = entries;
  const size_t padded = n + kPad;
  if (cx.size() < padded) {
    for (auto* v : {&cx, &cy, &c, &s, &hl, &hw, &ex, &ey, &heading}) v->resize(padded);
    slots.resize(padded);
  }
  // Lanes past n are read by the vector loads and masked out of the result; keep them finite.
  for (size_t k = n; k < padded; ++k) {
    cx[k] = cy[k] = c[k] = s[k] = hl[k] = hw[k] = ex[k] = ey[k] = heading[k] = 0.0;
  }
}

void RectArrays::assign(const RectArrays& source, const uint32_t* order) {
  resize(source.n);
  for (size_t k = 0; k < n; ++k) {
    const size_t from = order[k];
    cx[k] = source.cx[from];
    cy[k] = source.cy[from];
    c[k] = source.c[from];
    s[k] = source.s[from];
    hl[k] = source.hl[from];
    hw[k] = source.hw[from];
    ex[k] = source.ex[from];
    ey[k] = source.ey[from];
    heading[k] = source.heading[from];
    slots[k] = source.slots[from];
  }
}

Rect RectArrays::rect(size_t k) const {
  Rect r;
  r.cx = cx[k];
  r.cy = cy[k];
  r.c = c[k];
  r.s = s[k];
  r.hl = hl[k];
  r.hw = hw[k];
  r.ex = ex[k];
  r.ey = ey[k];
  return r;
}

namespace {

constexpr double kHalfPi = 1.57079632679489661923;  // fl(pi / 2)

// Reads the present boxes of scene s (fields of type T) into out: centre, half length and half width
// (make_rect's expressions), heading and slot. Returns false if a present box is outside the valid
// range of boxes.h (every comparison is false for NaN, so non-finite fields fail too).
template <class T>
bool read_boxes(const BoxBatch& b, int64_t s, double margin, RectArrays* out) {
  out->resize(static_cast<size_t>(b.agents));
  const char* scene = b.data + s * b.stride_scene;
  const int64_t f = b.stride_field;
  double* const cx = out->cx.data();
  double* const cy = out->cy.data();
  double* const hl = out->hl.data();
  double* const hw = out->hw.data();
  double* const headings = out->heading.data();
  int64_t* const slots = out->slots.data();
  size_t n = 0;
  bool ok = true;
  for (int64_t a = 0; a < b.agents; ++a) {
    if (!b.present(s, a)) continue;
    const char* p = scene + a * b.stride_agent;
    const double x = static_cast<double>(*reinterpret_cast<const T*>(p));
    const double y = static_cast<double>(*reinterpret_cast<const T*>(p + f));
    const double length = static_cast<double>(*reinterpret_cast<const T*>(p + 2 * f));
    const double width = static_cast<double>(*reinterpret_cast<const T*>(p + 3 * f));
    const double heading = static_cast<double>(*reinterpret_cast<const T*>(p + 4 * f));
    const bool in_range = (std::fabs(x) <= kMaxAbsCoordinateM) & (std::fabs(y) <= kMaxAbsCoordinateM) &
                          (length >= kMinSizeM) & (length <= kMaxSizeM) & (width >= kMinSizeM) &
                          (width <= kMaxSizeM) & (std::fabs(heading) <= kMaxAbsHeadingRad);
    ok = ok && in_range;
    cx[n] = x;
    cy[n] = y;
    hl[n] = 0.5 * length + margin;
    hw[n] = 0.5 * width + margin;
    headings[n] = heading;
    slots[n] = a;
    ++n;
  }
  out->resize(n);
  return ok;
}

void frames_baseline(RectArrays* r) {
  for (size_t k = 0; k < r->n; ++k) {
    const double q = std::nearbyint(r->heading[k] / kHalfPi);
    rect_frame(r->heading[k], q, std::floor(0.25 * q), r->hl[k], r->hw[k], &r->c[k], &r->s[k], &r->ex[k], &r->ey[k]);
  }
}

#ifdef GENNEG_X86

__attribute__((target("avx2"))) void frames_avx2(RectArrays* r) {
  const __m256d half_pi = _mm256_set1_pd(kHalfPi), quarter = _mm256_set1_pd(0.25);
  for (size_t k = 0; k < r->n; k += 4) {
    const __m256d heading = _mm256_loadu_pd(&r->heading[k]);
    const __m256d q = _mm256_round_pd(_mm256_div_pd(heading, half_pi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256d q4 = _mm256_floor_pd(_mm256_mul_pd(quarter, q));
    const __m256d hl = _mm256_loadu_pd(&r->hl[k]), hw = _mm256_loadu_pd(&r->hw[k]);
    __m256d c, s, ex, ey;
    rect_frame(heading, q, q4, hl, hw, &c, &s, &ex, &ey);
    _mm256_storeu_pd(&r->c[k], c);
    _mm256_storeu_pd(&r->s[k], s);
    _mm256_storeu_pd(&r->ex[k], ex);
    _mm256_storeu_pd(&r->ey[k], ey);
  }
}

__attribute__((target("avx512f"))) void frames_avx512(RectArrays* r) {
  const __m512d half_pi = _mm512_set1_pd(kHalfPi), quarter = _mm512_set1_pd(0.25);
  for (size_t k = 0; k < r->n; k += 8) {
    const __m512d heading = _mm512_loadu_pd(&r->heading[k]);
    const __m512d q = _mm512_roundscale_pd(_mm512_div_pd(heading, half_pi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512d q4 = _mm512_roundscale_pd(_mm512_mul_pd(quarter, q), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512d hl = _mm512_loadu_pd(&r->hl[k]), hw = _mm512_loadu_pd(&r->hw[k]);
    __m512d c, s, ex, ey;
    rect_frame(heading, q, q4, hl, hw, &c, &s, &ex, &ey);
    _mm512_storeu_pd(&r->c[k], c);
    _mm512_storeu_pd(&r->s[k], s);
    _mm512_storeu_pd(&r->ex[k], ex);
    _mm512_storeu_pd(&r->ey[k], ey);
  }
}

#endif  // GENNEG_X86

// The scalar test, the reference of the vector variants: the bounding-box filter, then rects_overlap.
size_t overlapping_baseline(const RectArrays& r, size_t k, size_t begin, size_t end, uint32_t* hits) {
  const double cxk = r.cx[k], cyk = r.cy[k], exk = r.ex[k], eyk = r.ey[k];
  size_t count = 0;
  for (size_t l = begin; l < end; ++l) {
    const bool x_overlap = std::fabs(r.cx[l] - cxk) < exk + r.ex[l];
    const bool y_overlap = std::fabs(r.cy[l] - cyk) < eyk + r.ey[l];
    if (x_overlap && y_overlap && rects_overlap(r.rect(k), r.rect(l))) hits[count++] = static_cast<uint32_t>(l);
  }
  return count;
}

#ifdef GENNEG_X86

// Appends begin + (set bits of `mask`) to hits.
inline size_t append_bits(uint32_t mask, size_t base, uint32_t* hits, size_t count) {
  while (mask != 0) {
    hits[count++] = static_cast<uint32_t>(base + static_cast<size_t>(__builtin_ctz(mask)));
    mask &= mask - 1;
  }
  return count;
}

// Four lanes of l at a time. Lane by lane the arithmetic is rects_overlap(rect k, rect l) with a = k,
// b = l: dx = b.cx - a.cx, C = |a.c b.c + a.s b.s|, S = |a.c b.s - a.s b.c|, then the four axes.
__attribute__((target("avx2"))) inline size_t overlapping_avx2(const RectArrays& r, size_t k, size_t begin, size_t end,
                                                        uint32_t* hits) {
  const __m256d sign = _mm256_set1_pd(-0.0);
#define GENNEG_ABS(v) _mm256_andnot_pd(sign, (v))
#define GENNEG_LT(a, b) _mm256_cmp_pd((a), (b), _CMP_LT_OQ)
  const __m256d cxk = _mm256_set1_pd(r.cx[k]), cyk = _mm256_set1_pd(r.cy[k]);
  const __m256d exk = _mm256_set1_pd(r.ex[k]), eyk = _mm256_set1_pd(r.ey[k]);
  const __m256d ck = _mm256_set1_pd(r.c[k]), sk = _mm256_set1_pd(r.s[k]);
  const __m256d hlk = _mm256_set1_pd(r.hl[k]), hwk = _mm256_set1_pd(r.hw[k]);
  size_t count = 0;
  for (size_t l = begin; l < end; l += 4) {
    const __m256d dx = _mm256_sub_pd(_mm256_loadu_pd(&r.cx[l]), cxk);
    const __m256d dy = _mm256_sub_pd(_mm256_loadu_pd(&r.cy[l]), cyk);
    const __m256d box = _mm256_and_pd(GENNEG_LT(GENNEG_ABS(dx), _mm256_add_pd(exk, _mm256_loadu_pd(&r.ex[l]))),
                                      GENNEG_LT(GENNEG_ABS(dy), _mm256_add_pd(eyk, _mm256_loadu_pd(&r.ey[l]))));
    uint32_t mask = static_cast<uint32_t>(_mm256_movemask_pd(box));
    if (end - l < 4) mask &= (1u << (end - l)) - 1u;
    if (mask == 0) continue;
    const __m256d c = _mm256_loadu_pd(&r.c[l]), s = _mm256_loadu_pd(&r.s[l]);
    const __m256d hl = _mm256_loadu_pd(&r.hl[l]), hw = _mm256_loadu_pd(&r.hw[l]);
    const __m256d C = GENNEG_ABS(_mm256_add_pd(_mm256_mul_pd(ck, c), _mm256_mul_pd(sk, s)));
    const __m256d S = GENNEG_ABS(_mm256_sub_pd(_mm256_mul_pd(ck, s), _mm256_mul_pd(sk, c)));
    // Axis u_a: |dx a.c + dy a.s| < a.hl + (b.hl C + b.hw S).
    const __m256d t1 = GENNEG_LT(GENNEG_ABS(_mm256_add_pd(_mm256_mul_pd(dx, ck), _mm256_mul_pd(dy, sk))),
                                 _mm256_add_pd(hlk, _mm256_add_pd(_mm256_mul_pd(hl, C), _mm256_mul_pd(hw, S))));
    // Axis v_a: |dy a.c - dx a.s| < a.hw + (b.hl S + b.hw C).
    const __m256d t2 = GENNEG_LT(GENNEG_ABS(_mm256_sub_pd(_mm256_mul_pd(dy, ck), _mm256_mul_pd(dx, sk))),
                                 _mm256_add_pd(hwk, _mm256_add_pd(_mm256_mul_pd(hl, S), _mm256_mul_pd(hw, C))));
    // Axis u_b: |dx b.c + dy b.s| < b.hl + (a.hl C + a.hw S).
    const __m256d t3 = GENNEG_LT(GENNEG_ABS(_mm256_add_pd(_mm256_mul_pd(dx, c), _mm256_mul_pd(dy, s))),
                                 _mm256_add_pd(hl, _mm256_add_pd(_mm256_mul_pd(hlk, C), _mm256_mul_pd(hwk, S))));
    // Axis v_b: |dy b.c - dx b.s| < b.hw + (a.hl S + a.hw C).
    const __m256d t4 = GENNEG_LT(GENNEG_ABS(_mm256_sub_pd(_mm256_mul_pd(dy, c), _mm256_mul_pd(dx, s))),
                                 _mm256_add_pd(hw, _mm256_add_pd(_mm256_mul_pd(hlk, S), _mm256_mul_pd(hwk, C))));
    mask &= static_cast<uint32_t>(_mm256_movemask_pd(_mm256_and_pd(_mm256_and_pd(t1, t2), _mm256_and_pd(t3, t4))));
    count = append_bits(mask, l, hits, count);
  }
#undef GENNEG_ABS
#undef GENNEG_LT
  return count;
}

// Eight lanes at a time; the same arithmetic as overlapping_avx2.
__attribute__((target("avx512f"))) inline size_t overlapping_avx512(const RectArrays& r, size_t k, size_t begin,
                                                             size_t end, uint32_t* hits) {
#define GENNEG_ABS(v) _mm512_abs_pd(v)
#define GENNEG_LT(a, b) _mm512_cmp_pd_mask((a), (b), _CMP_LT_OQ)
  const __m512d cxk = _mm512_set1_pd(r.cx[k]), cyk = _mm512_set1_pd(r.cy[k]);
  const __m512d exk = _mm512_set1_pd(r.ex[k]), eyk = _mm512_set1_pd(r.ey[k]);
  const __m512d ck = _mm512_set1_pd(r.c[k]), sk = _mm512_set1_pd(r.s[k]);
  const __m512d hlk = _mm512_set1_pd(r.hl[k]), hwk = _mm512_set1_pd(r.hw[k]);
  size_t count = 0;
  for (size_t l = begin; l < end; l += 8) {
    const __m512d dx = _mm512_sub_pd(_mm512_loadu_pd(&r.cx[l]), cxk);
    const __m512d dy = _mm512_sub_pd(_mm512_loadu_pd(&r.cy[l]), cyk);
    uint32_t mask = static_cast<uint32_t>(GENNEG_LT(GENNEG_ABS(dx), _mm512_add_pd(exk, _mm512_loadu_pd(&r.ex[l]))) &
                                          GENNEG_LT(GENNEG_ABS(dy), _mm512_add_pd(eyk, _mm512_loadu_pd(&r.ey[l]))));
    if (end - l < 8) mask &= (1u << (end - l)) - 1u;
    if (mask == 0) continue;
    const __m512d c = _mm512_loadu_pd(&r.c[l]), s = _mm512_loadu_pd(&r.s[l]);
    const __m512d hl = _mm512_loadu_pd(&r.hl[l]), hw = _mm512_loadu_pd(&r.hw[l]);
    const __m512d C = GENNEG_ABS(_mm512_add_pd(_mm512_mul_pd(ck, c), _mm512_mul_pd(sk, s)));
    const __m512d S = GENNEG_ABS(_mm512_sub_pd(_mm512_mul_pd(ck, s), _mm512_mul_pd(sk, c)));
    const __mmask8 t1 = GENNEG_LT(GENNEG_ABS(_mm512_add_pd(_mm512_mul_pd(dx, ck), _mm512_mul_pd(dy, sk))),
                                  _mm512_add_pd(hlk, _mm512_add_pd(_mm512_mul_pd(hl, C), _mm512_mul_pd(hw, S))));
    const __mmask8 t2 = GENNEG_LT(GENNEG_ABS(_mm512_sub_pd(_mm512_mul_pd(dy, ck), _mm512_mul_pd(dx, sk))),
                                  _mm512_add_pd(hwk, _mm512_add_pd(_mm512_mul_pd(hl, S), _mm512_mul_pd(hw, C))));
    const __mmask8 t3 = GENNEG_LT(GENNEG_ABS(_mm512_add_pd(_mm512_mul_pd(dx, c), _mm512_mul_pd(dy, s))),
                                  _mm512_add_pd(hl, _mm512_add_pd(_mm512_mul_pd(hlk, C), _mm512_mul_pd(hwk, S))));
    const __mmask8 t4 = GENNEG_LT(GENNEG_ABS(_mm512_sub_pd(_mm512_mul_pd(dy, c), _mm512_mul_pd(dx, s))),
                                  _mm512_add_pd(hw, _mm512_add_pd(_mm512_mul_pd(hlk, S), _mm512_mul_pd(hwk, C))));
    mask &= static_cast<uint32_t>(t1 & t2 & t3 & t4);
    count = append_bits(mask, l, hits, count);
  }
#undef GENNEG_ABS
#undef GENNEG_LT
  return count;
}

#endif  // GENNEG_X86

}  // namespace

void load_scene_arrays(Isa isa, const BoxBatch& batch, int64_t s, double margin, RectArrays* out) {
  const bool ok = batch.dtype == Dtype::kFloat32 ? read_boxes<float>(batch, s, margin, out)
                                                 : read_boxes<double>(batch, s, margin, out);
  if (!ok) {
    SceneRects scene;
    load_scene(batch, s, margin, &scene);  // throws BoxInputError naming the first bad box
    throw std::logic_error("load_scene_arrays: a box failed the range check but load_scene accepted it");
  }
#ifdef GENNEG_X86
  if (isa == Isa::kAvx512) return frames_avx512(out);
  if (isa == Isa::kAvx2) return frames_avx2(out);
#else
  (void)isa;
#endif
  frames_baseline(out);
}

namespace {

// The rows k of the upper triangle, each row kernel inlined into a loop compiled for its instruction set.
void all_pairs_baseline(const RectArrays& r, uint32_t* hits, PairList* pairs) {
  for (size_t k = 0; k + 1 < r.n; ++k) {
    const size_t found = overlapping_baseline(r, k, k + 1, r.n, hits);
    for (size_t h = 0; h < found; ++h) pairs->emplace_back(static_cast<uint32_t>(k), hits[h]);
  }
}

#ifdef GENNEG_X86
__attribute__((target("avx2"))) void all_pairs_avx2(const RectArrays& r, uint32_t* hits, PairList* pairs) {
  for (size_t k = 0; k + 1 < r.n; ++k) {
    const size_t found = overlapping_avx2(r, k, k + 1, r.n, hits);
    for (size_t h = 0; h < found; ++h) pairs->emplace_back(static_cast<uint32_t>(k), hits[h]);
  }
}

__attribute__((target("avx512f"))) void all_pairs_avx512(const RectArrays& r, uint32_t* hits, PairList* pairs) {
  for (size_t k = 0; k + 1 < r.n; ++k) {
    const size_t found = overlapping_avx512(r, k, k + 1, r.n, hits);
    for (size_t h = 0; h < found; ++h) pairs->emplace_back(static_cast<uint32_t>(k), hits[h]);
  }
}
#endif  // GENNEG_X86

}  // namespace

void overlapping_all_pairs(Isa isa, const RectArrays& r, std::vector<uint32_t>* hits, PairList* pairs) {
  hits->resize(r.n);
#ifdef GENNEG_X86
  if (isa == Isa::kAvx512) return all_pairs_avx512(r, hits->data(), pairs);
  if (isa == Isa::kAvx2) return all_pairs_avx2(r, hits->data(), pairs);
#else
  (void)isa;
#endif
  all_pairs_baseline(r, hits->data(), pairs);
}

size_t overlapping_in_range(Isa isa, const RectArrays& r, size_t k, size_t begin, size_t end, uint32_t* hits) {
#ifdef GENNEG_X86
  if (isa == Isa::kAvx512) return overlapping_avx512(r, k, begin, end, hits);
  if (isa == Isa::kAvx2) return overlapping_avx2(r, k, begin, end, hits);
#else
  (void)isa;
#endif
  return overlapping_baseline(r, k, begin, end, hits);
}

}  // namespace genneg
